"""The corpus being packed (pass 1 of `launch/make_shards.py`): its samples (SourceFile: a file, a
segment of one or the output of a Kaldi pipe command), a fingerprint of them, and decoding each
into the FLAC cache in worker processes.

Listing the samples of each corpus layout: layouts.py (folders) and corpus_lists.py (a Kaldi data
directory, a CSV/JSONL table). Every sample is listed or skipped with a reason, never silently; a
sample that cannot be decoded becomes a record with its reason, and a decoder process that dies
costs only its own samples. Pass 2 (planning shards, writing tars): shard_writer.py; the job that
runs both: packing.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from mrl_dist.data.audio import AudioError, DecodedAudio, decode_file, encode_flac, seconds_to_samples

PIPE_STDERR_TAIL = 400  # characters of a failing pipe command's stderr kept in its skip entry


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One sample to pack: a whole audio file, the part [start, end) seconds of one, or (pipe) the
    WAV/FLAC bytes a shell command writes to stdout (a Kaldi `wav.scp` entry `recid cmd ... |`).

    key: the sample's name in the shards (`<speaker>/<video>/<utt>` for VoxCeleb: the trial-list
    path without extension); speaker: its speaker ("" -> the key's first part); path: absolute
    file path, or the command of a pipe (run in `cwd`); size, mtime_ns: the file's (0 for a pipe);
    video: VoxCeleb's video id, written into the sample's json; origin: where it was listed
    (`wav.scp:12`), for messages only.
    """

    key: str
    path: str
    size: int
    mtime_ns: int
    speaker: str = ""
    video: str | None = None
    start: float | None = None  # seconds into the audio; None: the whole file
    end: float | None = None  # None: to the end of the audio
    pipe: bool = False
    cwd: str | None = None  # a pipe command's working folder
    origin: str = ""

    def __post_init__(self):
        if not self.speaker:
            object.__setattr__(self, "speaker", self.key.split("/")[0])

    def identity(self) -> dict:
        """The fields a decode record repeats: a record is reused only while they are equal."""
        fields = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns, "speaker": self.speaker}
        optional = {"video": self.video, "start": self.start, "end": self.end, "cwd": self.cwd}
        fields.update({name: value for name, value in optional.items() if value is not None})
        if self.pipe:
            fields["pipe"] = True
        return fields

    @classmethod
    def from_record(cls, record: dict) -> SourceFile:
        """The source a decode record (see decode_to_cache) was made from, to decode it again."""
        optional = {name: record[name] for name in ("video", "start", "end", "pipe", "cwd") if name in record}
        return cls(record["key"], record["path"], record["size"], record["mtime_ns"], record["speaker"], **optional)


def skip_entry(path: str, reason: str, detail: str) -> dict:
    """The manifest's record of a file that was not packed."""
    return {"path": path, "reason": reason, "detail": detail}


def fingerprint(sources: Iterable[SourceFile], skipped: Iterable[dict]) -> str:
    """sha256 over what was found (keys, paths, sizes, mtimes, speakers, segments, pipe commands):
    a resume only reuses work for the same input."""
    digest = hashlib.sha256()
    for source in sources:
        fields = "\0".join(f"{name}={value}" for name, value in sorted(source.identity().items()))
        digest.update(f"{source.key}\0{fields}\n".encode())
    for entry in skipped:
        digest.update(f"{entry['path']}\0{entry['reason']}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    name = hashlib.sha1(key.encode()).hexdigest()
    return cache_dir / name[:2] / f"{name}.flac"


def decode_to_cache(task: tuple[SourceFile, str]) -> dict:
    """Pass-1 worker: decodes one source to 16 kHz mono FLAC in the cache (atomically).

    Returns the decode record {key, **source.identity(), bytes, frames, seconds,
    original_sample_rate, original_channels} or, for a bad sample, {key, **source.identity(),
    reason, detail}. Bad audio is a record, not an exception: one file never stops the run.
    """
    source, cache_file = task
    record = {"key": source.key, **source.identity()}
    try:
        audio = decode_source(source, decode_file)
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


# The recording decoded last in this process: a Kaldi recording's segments are listed next to each
# other (utterance ids start with the recording id), so each recording is decoded about once.
_last_recording: tuple[tuple, DecodedAudio] | None = None


def decode_source(source: SourceFile, read_file=decode_file) -> DecodedAudio:
    """The audio of one sample: its file (read with `read_file`) or pipe output, cut to its segment.

    Raises AudioError: the reasons of decode_file, `pipe-failed` (the command's exit status and
    stderr tail) and `bad-segment` (a segment past the end of its recording).
    """
    global _last_recording
    if source.start is None and source.end is None:
        return read_pipe(source.path, source.cwd, read_file) if source.pipe else read_file(source.path)
    recording = (source.path, source.pipe, source.cwd, source.size, source.mtime_ns)
    if _last_recording is not None and _last_recording[0] == recording:
        audio = _last_recording[1]
    else:
        audio = read_pipe(source.path, source.cwd, read_file) if source.pipe else read_file(source.path)
        _last_recording = (recording, audio)
    return cut_segment(audio, source.start or 0.0, source.end, f"{source.key} ({source.origin or source.path})")


def cut_segment(audio: DecodedAudio, start: float, end: float | None, where: str) -> DecodedAudio:
    """audio.wave[start:end] (seconds; end None: to the end); AudioError(`bad-segment`) when the
    segment reaches past the end of the audio (a wrong segments file, not something to pad)."""
    first = seconds_to_samples(start)
    last = len(audio.wave) if end is None else seconds_to_samples(end)
    if last > len(audio.wave):
        raise AudioError(
            "bad-segment", f"{where}: segment ends at {end} s, past the end of its recording ({audio.seconds:.3f} s)"
        )
    return DecodedAudio(audio.wave[first:last], audio.original_sample_rate, audio.original_channels)


def read_pipe(command: str, cwd: str | None, read_file=decode_file) -> DecodedAudio:
    """Runs a Kaldi `wav.scp` pipe command with a shell and decodes the WAV or FLAC it writes.

    Raises AudioError(`pipe-failed`) with the exit status and stderr tail when the command fails,
    else the reasons of decode_file for the bytes it wrote.
    """
    result = subprocess.run(command, shell=True, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip()[-PIPE_STDERR_TAIL:]
        raise AudioError("pipe-failed", f"{command!r} exited with status {result.returncode}: {tail or '(no stderr)'}")
    data = result.stdout
    if data[:4] in (b"RIFF", b"RF64"):
        suffix = ".wav"
    elif data[:4] == b"fLaC":
        suffix = ".flac"
    else:
        raise AudioError("unreadable", f"{command!r} wrote {len(data)} bytes that are neither WAV nor FLAC")
    # decode_file's checks (truncated, empty, non-finite) read a file; the bytes go through one.
    with tempfile.NamedTemporaryFile(suffix=suffix) as temporary:
        temporary.write(data)
        temporary.flush()
        try:
            return read_file(temporary.name)
        except AudioError as error:
            raise AudioError(error.reason, error.detail.replace(temporary.name, f"output of {command!r}")) from None


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
                **source.identity(),
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
