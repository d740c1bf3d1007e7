"""Building blocks of `launch/make_shards.py`: list sources, decode them to a FLAC cache, plan
shards, write deterministic tars.

Determinism: the shard plan depends only on the sorted source list and each file's FLAC bytes
(reproducible: same audio, same bytes), never on worker count or completion order; tar headers
carry no time, owner or permissions of this machine. So any `--workers` gives byte-identical
shards, and an interrupted run can keep the shards it finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrl_dist.data.audio import AUDIO_EXTENSIONS, AudioError, decode_file, encode_flac

SHUFFLE_SEED = 0
TAR_BLOCK = 512
# json.dumps(meta, sort_keys=True, separators=(",", ":")) without building an encoder per call:
# planning calls it once per utterance (a million for VoxCeleb2).
_SAMPLE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


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


def sample_json(record: dict, label: int) -> bytes:
    """The `.json` member of a sample: compact, sorted keys (part of the byte-identical promise)."""
    speaker, video, _ = record["key"].split("/")
    meta = {
        "speaker": speaker,
        "label": label,
        "video": video,
        "seconds": record["seconds"],
        "frames": record["frames"],
        "source": record["path"],
        "original_sample_rate": record["original_sample_rate"],
        "original_channels": record["original_channels"],
    }
    return _SAMPLE_JSON.encode(meta).encode()


def _member_bytes(name: str, size: int) -> int:
    header = TAR_BLOCK * (1 if len(name) < 100 else 4)  # GNU long names take extra blocks
    return header + -(-size // TAR_BLOCK) * TAR_BLOCK


@dataclass
class ShardPlan:
    name: str
    records: list[dict]  # decode records in write order, each with "label"


def plan_shards(records: Sequence[dict], labels: dict[str, int], split: str, shard_bytes: int) -> list[ShardPlan]:
    """Cuts the valid records, in a fixed-seed shuffled order, into shards of about `shard_bytes`.

    records must be sorted by key; the shuffle mixes speakers in every shard and depends only on
    the record list, so any worker count gives the same plan.
    """
    # RandomState's stream is frozen by NumPy's compatibility policy: the plan stays the same
    # across NumPy versions, unlike Generator methods.
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(records))
    shards: list[ShardPlan] = []
    current: list[dict] = []
    size = 0
    for index in order:
        record = {**records[index], "label": labels[records[index]["key"].split("/")[0]]}
        cost = _member_bytes(record["key"] + ".flac", record["bytes"]) + _member_bytes(
            record["key"] + ".json", len(sample_json(record, record["label"]))
        )
        if current and size + cost > shard_bytes:
            shards.append(ShardPlan(f"{split}-{len(shards):06d}.tar", current))
            current, size = [], 0
        current.append(record)
        size += cost
    if current:
        shards.append(ShardPlan(f"{split}-{len(shards):06d}.tar", current))
    return shards


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_digest(identity: dict, plan: ShardPlan) -> str:
    """sha256 naming what determines a shard's bytes: the run's identity (format, arguments,
    input fingerprint, version), the shard name and its records (keys, sources, labels) in order.

    A shard record (see write_shard) only vouches for a shard of the plan with this digest.
    """
    payload = {"identity": identity, "name": plan.name, "records": plan.records}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shard_record_path(records_dir: str | Path, name: str) -> Path:
    return Path(records_dir) / f"{name}.json"


def read_shard_record(records_dir: str | Path, name: str, digest: str) -> tuple[int, str] | None:
    """(samples, sha256) from the record write_shard left for shard `name` of the plan with
    `digest`; None when there is none, it is unreadable or it was written for another plan."""
    try:
        record = json.loads(shard_record_path(records_dir, name).read_text())
        if record["name"] == name and record["plan"] == digest:
            return int(record["samples"]), str(record["sha256"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def write_shard(task: tuple) -> tuple[str, str, int]:
    """Pass-2 worker: writes one shard atomically from the cache; returns (name, sha256, bytes).

    task = (output folder, plan, cache folder[, records folder, plan digest]). Members per sample,
    in plan order: `<key>.flac`, `<key>.json`. A cache file that went missing is decoded again
    from its source (same audio, same bytes).

    With a records folder, the sha256 of the finished temporary is first recorded there, in
    `NAME.tar.json` with the plan digest (see plan_digest), and only then is the temporary renamed
    into place: a shard that is on disk under its final name always has a record, so a run killed
    before it noted the shard's sha256 can verify and keep it on resume. Once the shard is sealed
    (recorded and renamed) its samples' cache files are deleted: each sample is then on disk once,
    in its shard.
    """
    output, plan, cache_dir, *recording = task
    target = Path(output) / plan.name
    temporary = target.with_name(f".{plan.name}.tmp.{os.getpid()}")
    with open(temporary, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for record in plan.records:
                flac = _cached_flac(record, Path(cache_dir))
                meta = sample_json(record, record["label"])
                for extension, data in (("flac", flac), ("json", meta)):
                    tar.addfile(_tar_member(f"{record['key']}.{extension}", len(data)), io.BytesIO(data))
        handle.flush()
        os.fsync(handle.fileno())
    sha = sha256_file(temporary)
    if recording:
        records_dir, digest = recording
        path = shard_record_path(records_dir, plan.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        written.write_text(
            json.dumps({"name": plan.name, "plan": digest, "samples": len(plan.records), "sha256": sha}, sort_keys=True)
            + "\n"
        )
        os.replace(written, path)  # atomic: a record is whole or absent
    os.replace(temporary, target)
    release_cache(plan.records, Path(cache_dir))
    return plan.name, sha, target.stat().st_size


def release_cache(records: Iterable[dict], cache_dir: Path) -> None:
    """Deletes the cache files of `records` (those already gone are fine): call it only for the
    records of a sealed shard, which from then on is their only copy."""
    for record in records:
        cache_path(cache_dir, record["key"]).unlink(missing_ok=True)


def _cached_flac(record: dict, cache_dir: Path) -> bytes:
    path = cache_path(cache_dir, record["key"])
    if path.is_file() and path.stat().st_size == record["bytes"]:
        return path.read_bytes()
    data = encode_flac(decode_file(record["path"]).wave)
    if len(data) != record["bytes"]:
        raise RuntimeError(
            f"{record['path']} decodes differently than in pass 1 "
            "(was it changed during the run?); delete the output and re-run"
        )
    return data
