"""The corpus being packed (pass 1 of `launch/make_shards.py`): its audio files in VoxCeleb layout,
a fingerprint of them, and decoding each into the FLAC cache in worker processes.

Every file is listed or skipped with a reason, never silently; a file that cannot be decoded
becomes a record with its reason, and a decoder process that dies costs only its own files.
Pass 2 (planning shards, writing tars): shard_writer.py; the job that runs both: packing.py.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from mrl_dist.data.audio import AUDIO_EXTENSIONS, AudioError, decode_file, encode_flac


@dataclass(frozen=True)
class SourceFile:
    """One input audio file; key is `<speaker>/<video>/<utt>` (the VoxCeleb trial-list path
    without extension)."""

    key: str
    path: str  # absolute
    size: int
    mtime_ns: int

    @property
    def speaker(self) -> str:
        return self.key.split("/")[0]

    @property
    def video(self) -> str:
        return self.key.split("/")[1]


def skip_entry(path: str, reason: str, detail: str) -> dict:
    """The manifest's record of a file that was not packed."""
    return {"path": path, "reason": reason, "detail": detail}


def _check_layout(relative: Path) -> tuple[str | None, str]:
    """Returns (reason, detail) why `relative` is not `<speaker>/<video>/<utt>.<ext>`, or (None, key)."""
    extension = relative.suffix.lower().lstrip(".")
    if extension not in AUDIO_EXTENSIONS:
        return "not-audio", f"extension {relative.suffix!r} is none of {sorted(AUDIO_EXTENSIONS)}"
    parts = relative.parts
    if len(parts) != 3:
        return "bad-path", f"expected <speaker>/<video>/<utt>.<ext>, got {len(parts)} path levels"
    stem = relative.name[: -len(relative.suffix)]
    # webdataset ends a key at the first dot of the basename and trial lists split on blanks.
    if not stem or "." in stem or any(c.isspace() for c in str(relative)):
        return "bad-path", "utterance name must be non-empty, without dots or blanks"
    try:
        str(relative).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name cannot be a tar/JSON key
        return "bad-path", "file name is not valid UTF-8"
    return None, f"{parts[0]}/{parts[1]}/{stem}"


def list_sources(inputs: Sequence[str | Path], exclude: Path | None = None):
    """Lists every file under the inputs, sorted by key (then input order, then extension).

    Returns (sources: list[SourceFile], skipped: list[skip_entry]); files not in VoxCeleb layout
    and second copies of a key are skipped with a reason, never silently.
    """
    found: list[tuple[str, int, str, SourceFile]] = []
    skipped = []
    for index, root in enumerate(inputs):
        root = Path(root).absolute()
        if not root.is_dir():
            raise FileNotFoundError(f"--input {root} is not a directory")
        for folder, dirs, files in os.walk(root):
            if exclude is not None and Path(folder).resolve() == exclude.resolve():
                dirs[:] = []
                continue
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                reason, key_or_detail = _check_layout(path.relative_to(root))
                if reason is not None:
                    skipped.append(skip_entry(str(path), reason, key_or_detail))
                    continue
                try:
                    stat = path.stat()
                except OSError as error:  # e.g. a dangling symlink
                    skipped.append(skip_entry(str(path), "unreadable", f"{path}: {error}"))
                    continue
                source = SourceFile(key_or_detail, str(path), stat.st_size, stat.st_mtime_ns)
                found.append((source.key, index, path.suffix.lower(), source))
    found.sort(key=lambda item: item[:3])
    sources: list[SourceFile] = []
    for _, _, _, source in found:
        if sources and sources[-1].key == source.key:
            skipped.append(
                skip_entry(source.path, "duplicate", f"key {source.key} is also {sources[-1].path}, which is packed")
            )
            continue
        sources.append(source)
    return sources, skipped


def fingerprint(sources: Iterable[SourceFile], skipped: Iterable[dict]) -> str:
    """sha256 over what was found (paths, sizes, mtimes): a resume only reuses work for the same input."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(f"{source.path}\0{source.size}\0{source.mtime_ns}\n".encode())
    for entry in skipped:
        digest.update(f"{entry['path']}\0{entry['reason']}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    name = hashlib.sha1(key.encode()).hexdigest()
    return cache_dir / name[:2] / f"{name}.flac"


def decode_to_cache(task: tuple[SourceFile, str]) -> dict:
    """Pass-1 worker: decodes one source to 16 kHz mono FLAC in the cache (atomically).

    Returns the decode record {key, path, size, mtime_ns, bytes, frames, seconds,
    original_sample_rate, original_channels} or, for a bad file, {key, path, size, mtime_ns,
    reason, detail}. Bad audio is a record, not an exception: one file never stops the run.
    """
    source, cache_file = task
    record = {"key": source.key, "path": source.path, "size": source.size, "mtime_ns": source.mtime_ns}
    try:
        audio = decode_file(source.path)
    except AudioError as error:
        return {**record, "reason": error.reason, "detail": error.detail}
    data = encode_flac(audio.wave)
    target = Path(cache_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return {
        **record,
        "bytes": len(data),
        "frames": len(audio.wave),
        "seconds": audio.seconds,
        "original_sample_rate": audio.original_sample_rate,
        "original_channels": audio.original_channels,
    }


def _decode_chunk(function: Callable, tasks: list) -> list[dict]:
    return [function(task) for task in tasks]


def _decode_alone(function: Callable, task: tuple[SourceFile, str]) -> dict:
    with ProcessPoolExecutor(1) as single:
        try:
            return single.submit(function, task).result()
        except BrokenProcessPool:
            source = task[0]
            return {
                "key": source.key,
                "path": source.path,
                "size": source.size,
                "mtime_ns": source.mtime_ns,
                "reason": "decoder-crashed",
                "detail": f"{source.path}: the decoding process died (crash or out of memory)",
            }


def decode_in_processes(function: Callable, tasks: Sequence, workers: int, chunk: int = 8) -> Iterator[dict]:
    """Yields function(task) for each task, in task order, computed in `workers` processes.

    A process that dies (an FFmpeg crash on a damaged file, the OOM killer) would hang a
    multiprocessing.Pool forever. Here it costs one file: the files that were in flight when the
    pool broke are decoded again one by one in fresh processes, and a file that kills its
    process again gets a `decoder-crashed` record.
    """
    chunks = [list(tasks[i : i + chunk]) for i in range(0, len(tasks), chunk)]
    executor = ProcessPoolExecutor(workers)
    pending: deque = deque()
    position = 0
    try:
        while position < len(chunks) or pending:
            while position < len(chunks) and len(pending) < 4 * workers:
                pending.append((chunks[position], executor.submit(_decode_chunk, function, chunks[position])))
                position += 1
            tasks_of_chunk, future = pending.popleft()
            try:
                yield from future.result()
            except BrokenProcessPool:
                executor.shutdown(wait=True, cancel_futures=True)
                for tasks_in_flight, other in [(tasks_of_chunk, future), *pending]:
                    if other.done() and other.exception() is None:
                        yield from other.result()
                    else:
                        for task in tasks_in_flight:
                            yield _decode_alone(function, task)
                pending.clear()
                executor = ProcessPoolExecutor(workers)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
