"""Crops per second of one loader worker: shard pipeline vs naive per-file loading vs raw limit.

Builds a synthetic VoxCeleb-layout corpus (FLAC files, plus m4a copies when PyAV can encode AAC)
in a temporary folder, packs it with make_shards, then times, in this one process:

  (a) pipeline:  make_train_loader(num_workers=0): tar streaming, shuffle buffer, crop-only
                 FLAC decoding, batching into tensors; (a') the same over a mix of two corpora
                 (data/mix.py: a stream and shuffle buffer per corpus, weighted draws);
  (b) naive:     a map-style dataset that opens each file, decodes all of it and crops (what the
                 previous attempt did), batched by a DataLoader with num_workers=0;
  (c) raw limit: decode only the crop's FLAC frames from bytes already in memory, bare loop.

Target: (a) within 1.5x of (c) and at least 2x faster than (b). Used by `launch/bench_loader.py`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.audio import SAMPLE_RATE, decode_file, encode_flac, read_flac_crop, seconds_to_samples
from ..data.manifest import read_manifest
from ..data.packing import pack_split
from ..data.pipeline import make_train_loader
from ..data.shard_reader import SkipCounter, iter_tar_samples


def synthetic_utterance(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """[T] float32: a voiced, syllable-modulated harmonic signal plus noise; it compresses with
    FLAC about as well as studio speech does (roughly 50-60 %)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t), 0, None)
    wave = 0.15 * voiced * envelope + 0.01 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def write_corpus(root: Path, utterances: int, seconds: float, with_m4a: bool) -> list[Path]:
    """ROOT/flac/<speaker>/<video>/<utt>.flac (and ROOT/m4a/... copies); returns the FLAC paths."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(utterances):
        relative = f"id{i % 20:05d}/video{i // 20:03d}/{i:05d}"
        wave = synthetic_utterance(seconds, rng)
        path = root / "flac" / f"{relative}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        # The same FLAC settings as the shards: (a)-(c) differ only in how they read.
        path.write_bytes(encode_flac(wave))
        files.append(path)
        if with_m4a:
            from .m4a import write_m4a

            write_m4a(root / "m4a" / f"{relative}.m4a", wave[:, None], SAMPLE_RATE)
    return files


class NaiveCrops(Dataset):
    """The per-file loader: open, decode the whole utterance, crop."""

    def __init__(self, files: list[Path], crop_frames: int):
        self.files, self.crop_frames = files, crop_frames

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        if path.suffix == ".flac":  # the plain read, without decode_file's checks
            wave, _ = sf.read(str(path), dtype="float32")
        else:
            wave = decode_file(path).wave
        start = np.random.randint(0, max(1, len(wave) - self.crop_frames + 1))
        return torch.from_numpy(np.resize(wave[start : start + self.crop_frames], self.crop_frames))


def time_crops(batches, crops: int, batch_size: int, window: int = 4) -> tuple[float, float]:
    """(crops/s over the whole run, crops/s of the fastest `window`-batch stretch), after one
    warm-up batch (shuffle buffer filled, imports done). The best window estimates the speed
    on an idle core; a shared machine's other jobs only ever slow a stretch down."""
    iterator = iter(batches)
    next(iterator)
    start = time.perf_counter()
    times = []
    done = 0
    while done < crops:
        before = time.perf_counter()
        for _ in range(window):
            next(iterator)
        times.append(time.perf_counter() - before)
        done += window * batch_size
    return done / (time.perf_counter() - start), window * batch_size / min(times)


def bench_pipeline(source, crop_seconds: float, crops: int, batch_size: int):
    """`source`: a manifest, or a mix of corpora (a list of {manifest, weight, name})."""
    loader = make_train_loader(
        source,
        batch_size=batch_size,
        crop_seconds=crop_seconds,
        num_workers=0,
        seed=0,
        rank=0,
        world_size=1,
        shuffle_buffer=256,
        steps_per_epoch=crops // batch_size + 16,
    )
    return time_crops(loader, crops, batch_size)


def bench_naive(files: list[Path], crop_seconds: float, crops: int, batch_size: int):
    dataset = NaiveCrops(files, seconds_to_samples(crop_seconds))

    def endless():
        while True:
            yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)

    return time_crops(endless(), crops, batch_size)


def bench_raw(manifest: Path, crop_seconds: float, crops: int, batch_size: int):
    blobs = [s["flac"] for s in iter_tar_samples(read_manifest(manifest).urls, SkipCounter())]
    rng = np.random.default_rng(0)
    frames = seconds_to_samples(crop_seconds)

    def bare_loop():
        index = 0
        while True:
            for _ in range(batch_size):
                read_flac_crop(blobs[index % len(blobs)], None, frames, rng=rng)
                index += 1
            yield None

    return time_crops(bare_loop(), crops, batch_size)


def measure_loaders(
    utterances: int, seconds: float, crop_seconds: float, crops: int, batch_size: int, repeats: int, m4a: bool = True
) -> tuple[dict[str, float], dict[str, float]]:
    """(whole-run crops/s, best-window crops/s) per loader name, each the best of `repeats`
    interleaved runs; the naive m4a row is added when `m4a` and PyAV can encode AAC."""
    import av

    with_m4a = m4a and "aac" in av.codecs_available
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = write_corpus(root, utterances, seconds, with_m4a)
        pack_split([root / "flac"], root / "shards", "bench", workers=1, shard_size_mb=16, progress=False)
        manifest = root / "shards" / "bench.manifest.json"
        # The same corpus packed a second time stands in for a second corpus of a training mix.
        pack_split([root / "flac"], root / "shards-2", "bench", workers=1, shard_size_mb=16, progress=False)
        mix = [
            {"manifest": str(manifest), "weight": 1.0, "name": "one"},
            {"manifest": str(root / "shards-2" / "bench.manifest.json"), "weight": 0.5, "name": "two"},
        ]
        loaders = [
            ("(a) shard pipeline", lambda: bench_pipeline(manifest, crop_seconds, crops, batch_size)),
            (
                "(a') shard pipeline, 2 corpora mixed 1 : 0.5",
                lambda: bench_pipeline(mix, crop_seconds, crops, batch_size),
            ),
            ("(b) naive per-file FLAC", lambda: bench_naive(files, crop_seconds, crops, batch_size)),
            ("(c) raw limit", lambda: bench_raw(manifest, crop_seconds, crops, batch_size)),
        ]
        if with_m4a:
            m4a_files = sorted((root / "m4a").rglob("*.m4a"))
            loaders.insert(
                2,
                (
                    "(b') naive per-file m4a (VoxCeleb2 as shipped)",
                    lambda: bench_naive(m4a_files, crop_seconds, crops // 4, batch_size),
                ),
            )
        # Interleaved repeats, best of each: other jobs on a shared machine only slow runs down.
        whole = {name: 0.0 for name, _ in loaders}
        best = dict(whole)
        for _ in range(repeats):
            for name, run in loaders:
                rate, window_rate = run()
                whole[name], best[name] = max(whole[name], rate), max(best[name], window_rate)
    return whole, best
