"""Crops per second of one loader worker: shard pipeline vs naive per-file loading vs raw limit,
for each shard codec (make_shards --codec flac|pcm, data/codecs.py).

Builds a synthetic VoxCeleb-layout corpus (FLAC files, plus m4a copies when PyAV can encode AAC)
in a temporary folder, packs it with make_shards once per codec, then times, in this one process:

  (a) pipeline:  make_train_loader(num_workers=0): tar streaming, shuffle buffer, crop-only
                 FLAC decoding (PCM: slicing), batching into tensors, per codec; (a') the FLAC
                 pipeline over a mix of two corpora (data/mix.py: a stream and shuffle buffer per
                 corpus, weighted draws);
  (b) naive:     a map-style dataset that opens each file, decodes all of it and crops (what the
                 previous attempt did), batched by a DataLoader with num_workers=0;
  (c) raw limit: read only the crop from audio members already in memory, bare loop, per codec.

and what each codec costs on disk: shard bytes per crop (the stream reads every byte of a shard,
one sample per crop) and per second of audio (`measure_storage`, also for a real corpus).
`measure_decode_paths` times other ways of getting a crop out of stored audio, side by side.

Target: (a) within 1.5x of (c) and at least 2x faster than (b). Used by `launch/bench_loader.py`.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.audio import SAMPLE_RATE, decode_file, encode_flac, seconds_to_samples, to_int16
from ..data.codecs import CODECS, encode_wav, read_member_crop
from ..data.manifest import read_manifest
from ..data.packing import pack_split
from ..data.pipeline import make_train_loader
from ..data.shard_reader import SkipCounter, audio_member, iter_tar_samples
from .bench_packing import VOXCELEB2_HOURS

NAIVE_FLAC = "(b) naive per-file FLAC"


def pipeline_row(codec: str) -> str:
    return f"(a) shard pipeline, {codec}"


def raw_row(codec: str) -> str:
    return f"(c) raw limit, {codec}"


@dataclass(frozen=True)
class CodecStorage:
    """What a split of one codec costs on disk, shard bytes (tar headers and `.json` included)."""

    codec: str
    bytes_per_crop: float  # per sample: the shard stream reads each sample whole for its one crop
    bytes_per_audio_second: float

    @property
    def voxceleb2_dev_bytes(self) -> float:
        """An estimate: these bytes per second of audio times VoxCeleb2 dev's 2,290 hours."""
        return self.bytes_per_audio_second * VOXCELEB2_HOURS * 3600


def split_storage(manifest_path: Path, codec: str) -> CodecStorage:
    manifest = read_manifest(manifest_path)
    total = sum(Path(url).stat().st_size for url in manifest.urls)
    return CodecStorage(codec, total / manifest.total_samples, total / (manifest.total_hours * 3600))


def measure_storage(corpus: Path, workers: int | None = None) -> dict[str, CodecStorage]:
    """Packs a VoxCeleb-layout folder once per codec into a temporary folder: codec -> storage."""
    with tempfile.TemporaryDirectory() as folder:
        storage = {}
        for codec in CODECS:
            output = Path(folder) / codec
            pack_split([corpus], output, "bench", workers=workers, progress=False, codec=codec)
            storage[codec] = split_storage(output / "bench.manifest.json", codec)
    return storage


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
    """The split's audio members (FLAC or WAV) in memory, one random crop each in turn."""
    members = [audio_member(s) for s in iter_tar_samples(read_manifest(manifest).urls, SkipCounter())]
    rng = np.random.default_rng(0)
    frames = seconds_to_samples(crop_seconds)

    def bare_loop():
        index = 0
        while True:
            for _ in range(batch_size):
                member, data = members[index % len(members)]
                read_member_crop(data, member, None, frames, rng=rng)
                index += 1
            yield None

    return time_crops(bare_loop(), crops, batch_size)


def measure_loaders(
    utterances: int, seconds: float, crop_seconds: float, crops: int, batch_size: int, repeats: int, m4a: bool = True
) -> tuple[dict[str, float], dict[str, float], dict[str, CodecStorage]]:
    """(whole-run crops/s, best-window crops/s) per loader name, each the best of `repeats`
    interleaved runs, and the storage of the corpus's split per codec; the naive m4a row is added
    when `m4a` and PyAV can encode AAC."""
    import av

    with_m4a = m4a and "aac" in av.codecs_available
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = write_corpus(root, utterances, seconds, with_m4a)
        manifests = {}
        for codec in CODECS:
            output = root / f"shards-{codec}"
            pack_split([root / "flac"], output, "bench", workers=1, shard_size_mb=16, progress=False, codec=codec)
            manifests[codec] = output / "bench.manifest.json"
        storage = {codec: split_storage(manifest, codec) for codec, manifest in manifests.items()}
        # The same corpus packed a second time stands in for a second corpus of a training mix.
        pack_split([root / "flac"], root / "shards-2", "bench", workers=1, shard_size_mb=16, progress=False)
        mix = [
            {"manifest": str(manifests["flac"]), "weight": 1.0, "name": "one"},
            {"manifest": str(root / "shards-2" / "bench.manifest.json"), "weight": 0.5, "name": "two"},
        ]

        def pipeline(codec: str) -> Callable[[], tuple[float, float]]:
            return lambda: bench_pipeline(manifests[codec], crop_seconds, crops, batch_size)

        def raw(codec: str) -> Callable[[], tuple[float, float]]:
            return lambda: bench_raw(manifests[codec], crop_seconds, crops, batch_size)

        loaders = [(pipeline_row(codec), pipeline(codec)) for codec in CODECS]
        loaders += [
            (
                "(a') shard pipeline, flac, 2 corpora mixed 1 : 0.5",
                lambda: bench_pipeline(mix, crop_seconds, crops, batch_size),
            ),
            (NAIVE_FLAC, lambda: bench_naive(files, crop_seconds, crops, batch_size)),
        ]
        loaders += [(raw_row(codec), raw(codec)) for codec in CODECS]
        if with_m4a:
            m4a_files = sorted((root / "m4a").rglob("*.m4a"))
            loaders.insert(
                len(CODECS) + 2,
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
    return whole, best, storage


def decode_paths(seconds: float) -> dict[str, tuple[Callable, bytes, bool]]:
    """Ways to get a random crop out of one stored utterance: name -> (crop(data, frames, rng),
    data, whether it decodes the whole utterance: slow, timed over fewer crops)."""
    import av
    import soundfile as sf

    pcm = to_int16(synthetic_utterance(seconds, np.random.default_rng(1)))

    def flac(level: float) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=level)
        return buffer.getvalue()

    def window(member: str):
        return lambda data, frames, rng: read_member_crop(data, member, None, frames, rng=rng)

    def soundfile_int16(data, frames, rng):
        with sf.SoundFile(io.BytesIO(data)) as audio:
            audio.seek(int(rng.integers(audio.frames - frames + 1)))
            return audio.read(frames, dtype="int16").astype(np.float32) / 32768.0

    def soundfile_whole(data, frames, rng):
        wave = sf.read(io.BytesIO(data), dtype="float32")[0]
        start = int(rng.integers(len(wave) - frames + 1))
        return wave[start : start + frames]

    def pyav_whole(data, frames, rng):
        with av.open(io.BytesIO(data)) as container:
            wave = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)]) / np.float32(32768)
        start = int(rng.integers(len(wave) - frames + 1))
        return wave[start : start + frames]

    def soundfile_seek(data, frames, rng):
        with sf.SoundFile(io.BytesIO(data)) as audio:
            audio.seek(int(rng.integers(audio.frames - frames + 1)))
            return audio.read(frames, dtype="float32")

    level0 = flac(0.0)
    return {
        "FLAC level 0, soundfile seek + read float32 (the flac loader)": (window("flac"), level0, False),
        "FLAC level 0, soundfile seek + read int16, scaled in numpy": (soundfile_int16, level0, False),
        "FLAC level 5 (4,096-sample blocks), soundfile seek + read": (window("flac"), flac(5 / 8), False),
        "FLAC level 0, soundfile decodes the whole utterance": (soundfile_whole, level0, True),
        "FLAC level 0, PyAV (FFmpeg) decodes the whole utterance": (pyav_whole, level0, True),
        "PCM WAV, soundfile seek + read float32": (soundfile_seek, encode_wav(pcm), False),
        "PCM WAV, numpy slice of the member's bytes (the pcm loader)": (window("wav"), encode_wav(pcm), False),
    }


def measure_decode_paths(seconds: float, crop_seconds: float, crops: int, repeats: int) -> dict[str, float]:
    """Microseconds per random crop of each of `decode_paths`, the best of `repeats` runs of
    `crops` crops (fewer for whole-utterance decoders), from one utterance already in memory."""
    frames = seconds_to_samples(crop_seconds)
    results = {}
    for name, (crop, data, whole) in decode_paths(seconds).items():
        rng = np.random.default_rng(0)
        count = max(20, crops // 10) if whole else crops
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(count):
                crop(data, frames, rng)
            best = min(best, (time.perf_counter() - began) / count)
        results[name] = best * 1e6
    return results
