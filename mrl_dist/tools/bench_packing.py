"""Packing at VoxCeleb2 scale: what `launch/make_shards.py` costs per hour of audio, on one core.

Measured on synthetic speech (the demo corpus' voices) written as AAC m4a like VoxCeleb2's:

  transcode:    pass 1's stages per file (PyAV AAC decode, down-mix + soxr resample to 16 kHz,
                FLAC encode) and its whole worker (`decode_to_cache`), as x real time per core;
  flac levels:  FLAC bytes per hour at level 0 (the shards') and higher levels, and what each
                level costs the loader: random 2 s crops decoded per second;
  pass 2:       `write_shard` (read cache, tar, fsync, sha256) in MB of shards per second;
  disk:         the peak total size of the output folder during a real `pack_split`, sampled;
  planning:     a VoxCeleb2-sized listing (1,092,009 records, no audio) through fingerprint,
                the pass-1 resume read, `plan_split`, the plan digests and the manifest round
                trip, in a fresh process (its peak RSS is the memory it needs); listing the
                files themselves (`list_sources`) is timed on empty files and extrapolated.

`voxceleb2_estimate` turns these into the time and disk of packing VoxCeleb2 dev at N cores.
Used by `launch/bench_packing.py`.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..data.audio import SAMPLE_RATE, _read_with_pyav, encode_flac, read_flac_crop, seconds_to_samples, to_mono_16k
from ..data.corpus import SourceFile, cache_path, decode_to_cache
from ..data.layouts import list_sources
from ..data.manifest import MANIFEST_SUFFIX, read_manifest, write_json_atomic
from ..data.packing import MAX_SHARD_WRITERS, decode_all, pack_split, plan_split, run_identity
from ..data.shard_writer import plan_digest, shard_record_path, write_shard

VOXCELEB2_UTTERANCES = 1_092_009  # VoxCeleb2 dev
VOXCELEB2_HOURS = 2_290
VOXCELEB2_SPEAKERS = 5_994
PCM16_BYTES_PER_HOUR = SAMPLE_RATE * 2 * 3600


def synthetic_m4a_corpus(root: Path, utterances: int, sample_rate: int, channels: int, seed: int = 0) -> float:
    """Writes ROOT/<speaker>/<video>/<utt>.m4a (AAC) of 4-11 s synthetic speech; returns seconds.

    Eight speakers from mrl_dist/demo's source-filter voices, one recording session per video;
    a stereo file's second channel is the first slightly attenuated plus faint noise.
    """
    from ..demo.synthetic_voice import synthesize_utterance
    from ..demo.voices import sample_session, sample_speaker
    from .m4a import write_m4a

    rng = np.random.default_rng(seed)
    voices = [sample_speaker(rng, sample_rate) for _ in range(8)]
    sessions = {}
    total = 0.0
    for index in range(utterances):
        speaker, video = index % len(voices), index // (4 * len(voices))  # 4 per video
        if (speaker, video) not in sessions:
            sessions[speaker, video] = sample_session(rng, sample_rate)
        seconds = float(rng.uniform(4.0, 11.0))  # VoxCeleb2's mean is 7.55 s
        wave = synthesize_utterance(rng, voices[speaker], sessions[speaker, video], seconds)[:, None]
        if channels == 2:
            wave = np.concatenate(
                [wave, 0.9 * wave + 0.002 * rng.standard_normal(wave.shape).astype(np.float32)], axis=1
            )
        write_m4a(root / f"id{speaker:05d}" / f"v{video:04d}" / f"{index:05d}.m4a", wave, sample_rate)
        total += seconds
    return total


@dataclass
class TranscodeResult:
    """Pass 1 on one core: x real time of each stage and of the whole `decode_to_cache` worker."""

    source: str  # e.g. "16 kHz mono AAC"
    files: int
    audio_seconds: float
    source_bytes: int  # of the m4a files
    decode: float  # PyAV decode to float, x real time
    resample: float  # down-mix + soxr to 16 kHz
    encode: float  # 16-bit FLAC level 0
    worker: float  # decode_to_cache, cache write included

    @property
    def shares(self) -> tuple[float, float, float]:
        """Fractions of the stage time spent decoding, resampling and encoding."""
        decode, resample, encode = 1 / self.decode, 1 / self.resample, 1 / self.encode
        total = decode + resample + encode
        return decode / total, resample / total, encode / total


def measure_transcode(corpus: Path, source: str, cache: Path, repeats: int = 2) -> TranscodeResult:
    """Times each stage over every m4a under `corpus`, best of `repeats` passes per stage."""
    sources, _ = list_sources([corpus])
    best = {"decode": np.inf, "resample": np.inf, "encode": np.inf, "worker": np.inf}
    seconds = 0.0
    for _ in range(repeats):
        spent = dict.fromkeys(best, 0.0)
        seconds = 0.0
        for item in sources:
            start = time.perf_counter()
            wave, rate = _read_with_pyav(Path(item.path))
            decoded = time.perf_counter()
            mono = to_mono_16k(wave, rate)
            resampled = time.perf_counter()
            encode_flac(mono)
            spent["decode"] += decoded - start
            spent["resample"] += resampled - decoded
            spent["encode"] += time.perf_counter() - resampled
            start = time.perf_counter()
            record = decode_to_cache((item, str(cache_path(cache, item.key))))
            spent["worker"] += time.perf_counter() - start
            seconds += record["seconds"]
        best = {stage: min(best[stage], spent[stage]) for stage in best}
    return TranscodeResult(
        source,
        len(sources),
        seconds,
        sum(item.size for item in sources),
        **{stage: seconds / best[stage] for stage in best},
    )


@dataclass
class FlacLevelResult:
    """One FLAC level: bytes per hour of 16 kHz audio and random 2 s crops decoded per second."""

    level: int
    bytes_per_hour: float
    crops_per_second: float


def measure_flac_levels(cache: Path, levels: list[int], crops: int, crop_seconds: float = 2.0) -> list[FlacLevelResult]:
    """Re-encodes the level-0 FLAC files under `cache` (pass-1 output) at each level.

    The PCM inside is exactly what encode_flac quantised, so a level's bytes are what the shards
    would hold with audio.FLAC_COMPRESSION_LEVEL = level / 8 (soundfile's 0..1 scale).
    """
    pcm = [sf.read(path, dtype="int16")[0] for path in sorted(cache.rglob("*.flac"))]
    hours = sum(len(wave) for wave in pcm) / SAMPLE_RATE / 3600
    frames = seconds_to_samples(crop_seconds)
    results = []
    for level in levels:
        blobs = []
        for wave in pcm:
            buffer = io.BytesIO()
            sf.write(buffer, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=level / 8)
            blobs.append(buffer.getvalue())
        rng = np.random.default_rng(0)
        long_enough = [blob for blob, wave in zip(blobs, pcm) if len(wave) > frames]
        best = np.inf
        for _ in range(3):  # best of 3: other jobs on a shared machine only slow a run down
            start = time.perf_counter()
            for index in range(crops):
                read_flac_crop(long_enough[index % len(long_enough)], None, frames, rng=rng)
            best = min(best, time.perf_counter() - start)
        results.append(FlacLevelResult(level, sum(map(len, blobs)) / hours, crops / best))
    return results


def measure_pass2(corpus: Path, work: Path, shard_size_mb: float) -> tuple[float, float]:
    """(MB of shards per second of one `write_shard` process, shard bytes per hour of audio).

    Runs pass 1 and pass 2 of pack_split on one process, without its orchestration.
    """
    sources, skipped = list_sources([corpus])
    identity = run_identity([corpus], "bench", None, shard_size_mb, 0.5, sources, skipped)
    cache = work / "cache"
    records = [decode_to_cache((item, str(cache_path(cache, item.key)))) for item in sources]
    plans, manifest = plan_split(identity, records, skipped)
    output = work / "shards"
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    written = sum(
        write_shard((str(output), plan, str(cache), str(work / "records"), plan_digest(identity, plan)))[2]
        for plan in plans
    )
    return written / 1e6 / (time.perf_counter() - start), written / manifest["total_hours"]


def folder_bytes(root: Path) -> int:
    """Total apparent size of the files under `root` (files vanishing meanwhile are skipped)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass  # released or renamed while walking
    return total


class FolderSampler:
    """Samples folder_bytes(root) every `interval` seconds on a thread; `peak` is the largest.

    Use as a context manager around the work to watch. A sample is a lower bound of the true
    peak between samples.
    """

    def __init__(self, root: Path, interval: float = 0.001):
        self.root, self.interval, self.peak = Path(root), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, folder_bytes(self.root))
            time.sleep(self.interval)

    def __enter__(self) -> FolderSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class DiskResult:
    """Peak and final size of one pack_split's output folder."""

    workers: int
    final_bytes: int
    peak_bytes: int
    largest_shard: int
    shards: int


def measure_disk(corpus: Path, output: Path, workers: int, shard_size_mb: float) -> DiskResult:
    """Packs `corpus` into `output` while sampling the folder's size (FolderSampler)."""
    with FolderSampler(output) as sampler:
        manifest = pack_split([corpus], output, "bench", workers=workers, shard_size_mb=shard_size_mb, progress=False)
    sizes = [(output / shard["name"]).stat().st_size for shard in manifest["shards"]]
    return DiskResult(workers, folder_bytes(output), sampler.peak, max(sizes), len(sizes))


def synthetic_listing(utterances: int, speakers: int, seed: int = 0) -> tuple[list[SourceFile], list[dict]]:
    """(sources sorted by key, their pass-1 decode records): a VoxCeleb2-like listing, no audio.

    Keys `idXXXXX/<11-char video>/NNNNN`, about 24 videos per speaker, 4-20 s utterances (mean
    7.55 s, like VoxCeleb2 dev), FLAC at 60 % of 16-bit PCM.
    """
    rng = np.random.default_rng(seed)
    speaker_of = np.sort(rng.integers(0, speakers, utterances))
    frames = (np.minimum(4.0 + rng.exponential(3.55, utterances), 20.0) * SAMPLE_RATE).astype(int)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    letters = rng.integers(0, len(alphabet), (utterances // 8 + 1, 11))
    video_ids = ["".join(alphabet[c] for c in row) for row in letters.tolist()]
    sources, records = [], []
    for index in range(utterances):
        # 8 utterances per video id (VoxCeleb2: 7.5); an id that spans two speakers is two videos.
        key = f"id{speaker_of[index]:05d}/{video_ids[index // 8]}/{index % 8 + 1:05d}"
        path = f"/data/voxceleb2/dev/aac/{key}.m4a"
        source = SourceFile(key, path, int(frames[index]) // 4, 1_600_000_000_000_000_000 + index)
        sources.append(source)
        records.append(
            {
                "key": key,
                **source.identity(),  # what a real decode record repeats of its source
                "bytes": int(frames[index] * 1.2),
                "frames": int(frames[index]),
                "seconds": int(frames[index]) / SAMPLE_RATE,
                "original_sample_rate": 16000,
                "original_channels": 1,
            }
        )
    order = sorted(range(utterances), key=lambda i: sources[i].key)
    return [sources[i] for i in order], [records[i] for i in order]


def measure_listing(root: Path, files: int = 20_000) -> float:
    """Seconds per file of list_sources (walk, layout check, stat, sort) over `files` empty
    files in VoxCeleb layout on this machine's disk (warm: just written)."""
    for index in range(files):
        folder = root / f"id{index // 200:05d}" / f"v{index // 8:07d}"
        if index % 8 == 0:
            folder.mkdir(parents=True)
        (folder / f"{index % 8 + 1:05d}.m4a").touch()
    start = time.perf_counter()
    sources, _ = list_sources([root])
    elapsed = time.perf_counter() - start
    if len(sources) != files:
        raise RuntimeError(f"list_sources found {len(sources)} of the {files} files under {root}")
    return elapsed / files


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    Linux's VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    process spawned from a large one (a long pytest session, ~0.9 GB) would report its parent's
    size. ru_maxrss where /proc is missing (macOS counts it in bytes, Linux in KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def planning_at_scale(folder: str | os.PathLike, utterances: int, speakers: int) -> dict:
    """Times the packer's planning path over synthetic_listing; returns stage seconds and sizes.

    Stages: fingerprint (run_identity), the pass-1 log of every record (what pass 1 writes) and
    its resume read (decode_all with nothing left to decode), plan_split, the plan digest of every
    shard (pass 2's resume check), writing the manifest and reading it back (read_manifest).
    Runs in this process; measure_planning runs it in a fresh one for its peak memory.
    """
    folder = Path(folder)
    rss_start = peak_rss_bytes()
    sources, records = synthetic_listing(utterances, speakers)
    seconds = {}
    start = time.perf_counter()
    identity = run_identity([folder / "aac"], "train", None, 256.0, 0.5, sources, [])
    seconds["fingerprint"] = time.perf_counter() - start
    state = folder / ".train.tmp"
    state.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(state / "decoded.jsonl", "w") as log:
        for record in records:
            log.write(json.dumps(record, sort_keys=True) + "\n")
    seconds["pass-1 log"] = time.perf_counter() - start
    del records
    start = time.perf_counter()
    records = decode_all(sources, state, workers=1, progress=False)
    seconds["pass-1 resume read"] = time.perf_counter() - start
    start = time.perf_counter()
    plans, manifest = plan_split(identity, records, [])
    seconds["plan_split"] = time.perf_counter() - start
    start = time.perf_counter()
    for plan in plans:
        plan_digest(identity, plan)
        shard_record_path(state / "shards", plan.name)
    seconds["plan digests"] = time.perf_counter() - start
    path = folder / f"train{MANIFEST_SUFFIX}"
    start = time.perf_counter()
    write_json_atomic(path, manifest)
    seconds["write manifest"] = time.perf_counter() - start
    start = time.perf_counter()
    read = read_manifest(path)
    seconds["read manifest"] = time.perf_counter() - start
    if read.total_samples != utterances or sum(s.samples for s in read.shards) != utterances:
        raise RuntimeError(f"{path} reads back {read.total_samples} samples, not {utterances}")
    return {
        "seconds": seconds,
        "shards": len(plans),
        "speakers": read.num_speakers,
        "samples": read.total_samples,
        "manifest_bytes": path.stat().st_size,
        "jsonl_bytes": (state / "decoded.jsonl").stat().st_size,
        "rss_start": rss_start,
    }


def measure_planning(folder: Path, utterances: int = VOXCELEB2_UTTERANCES, speakers: int = VOXCELEB2_SPEAKERS) -> dict:
    """planning_at_scale in a fresh (spawned) process; adds its `peak_rss` in bytes."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        return fresh.submit(_planning_with_rss, str(folder), utterances, speakers).result()


def _planning_with_rss(folder: str, utterances: int, speakers: int) -> dict:
    result = planning_at_scale(folder, utterances, speakers)
    return {**result, "peak_rss": peak_rss_bytes()}


def voxceleb2_estimate(
    cores: int,
    transcode: TranscodeResult,
    pass2_mb_per_s: float,
    shard_bytes_per_hour: float,
    planning_seconds: float,
    disk_gb_per_s: float,
    shard_size_mb: float = 256.0,
) -> dict:
    """Hours and GB to pack VoxCeleb2 dev on `cores` cores from this machine's per-core rates.

    CPU-bound times scale linearly with the processes (pass 2: at most MAX_SHARD_WRITERS); the
    disk-bound times are the bytes each pass
    moves over one disk of `disk_gb_per_s`: pass 1 reads the m4a and writes the cache, pass 2
    reads the cache and writes the shards (the sha256 re-read comes from the page cache).
    """
    final = shard_bytes_per_hour * VOXCELEB2_HOURS
    source = transcode.source_bytes / transcode.audio_seconds * 3600 * VOXCELEB2_HOURS
    disk = disk_gb_per_s * 1e9 * 3600  # bytes per hour
    writers = min(cores, MAX_SHARD_WRITERS)
    pass1 = VOXCELEB2_HOURS / (transcode.worker * cores)
    pass2 = final / 1e6 / (pass2_mb_per_s * writers) / 3600
    return {
        "cores": cores,
        "pass1_hours": pass1,
        "pass2_hours": pass2,
        "pass1_disk_hours": max(pass1, (source + final) / disk),
        "pass2_disk_hours": max(pass2, 2 * final / disk),
        "planning_hours": planning_seconds / 3600,
        "source_gb": source / 1e9,
        "final_gb": final / 1e9,
        "peak_gb": (final + writers * shard_size_mb * 2**20) / 1e9,
    }
