"""Training-time augmentation stages: speed perturbation, reverberation, additive noise.

Stages follow the pipeline contract (`Iterable[dict] -> Iterable[dict]`) and work on the cropped
waveform in numpy, each with its own numpy Generator so that turning one on does not change the
random draws of the others. Order, as in WeSpeaker: speed (chosen before the crop, which then
reads `crop * speed` samples) -> crop -> reverb -> noise.

Config: the `data.augment` block of the training YAML (`mrl_dist.config.AugmentConfig`, checked
by the config's rules), e.g.

    speed_perturb: true          # 0.9/1.0/1.1; perturbed copies are new speaker classes
    rir_dir: /data/RIRS_NOISES/simulated_rirs
    reverb_prob: 0.5
    noise_dir: /data/musan       # MUSAN layout: one subfolder per category
    noise_prob: 0.5
    noise_snr: {noise: [0, 15], speech: [13, 20], music: [5, 15]}
    noise_count: {noise: [1, 1], speech: [3, 7], music: [1, 1]}

Each `noise_snr` category with a subfolder in `noise_dir` is used (one category picked uniformly
per noisy sample); a `noise_dir` without such subfolders is the one category `noise`. Babble
(`speech`) mixes 3-7 clips, each at its own SNR (`noise_count`), as Kaldi's recipe does.
`noise_dir` may also be shards of noise audio (a `*.manifest.json` or a brace pattern of tars
with `.flac` or `.wav` members); that is the one category `noise`. Noise files: wav/flac/ogg, any rate.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf

from mrl_dist.config import AugmentConfig, config_from_dict
from mrl_dist.data.audio import SAMPLE_RATE, AudioError, repeat_to_length, to_mono_16k
from mrl_dist.data.codecs import read_member_crop
from mrl_dist.data.crops import random_crop_start
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.shard_reader import (
    AUDIO,
    SkipCounter,
    audio_member,
    expand_urls,
    iter_tar_samples,
    resampled_shards,
)

SPEED_FACTORS = (1.0, 0.9, 1.1)  # index k: label offset k * num_speakers
NOISE_FILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})


def num_classes(num_speakers: int, speed_perturb: bool) -> int:
    """Classifier width: speed-perturbed copies of a speaker are classes of their own."""
    return num_speakers * len(SPEED_FACTORS) if speed_perturb else num_speakers


@dataclass(frozen=True)
class NoiseCategory:
    source: str
    snr_db: tuple[float, float]
    count: tuple[int, int] = (1, 1)  # clips mixed at once, e.g. several babble speakers


def augment_from_dict(payload: dict, where: str = "data.augment") -> AugmentConfig:
    """A `data.augment` block given as a plain mapping, converted and checked by the run
    config's own rules (errors name `where` and the key)."""
    return config_from_dict({"data": {"augment": payload}}, source=where).data.augment


def is_shard_source(source: str) -> bool:
    """Whether a noise source names shards (a manifest, tars, a `pipe:` command), not a folder."""
    return source.endswith(".manifest.json") or ".tar" in source or source.startswith("pipe:")


def check_augment_sources(config: AugmentConfig) -> None:
    """The folders the active stages read exist (checked once, in the main process, before any
    loader worker starts)."""
    for name, prob in (("rir_dir", config.reverb_prob), ("noise_dir", config.noise_prob)):
        folder = getattr(config, name)
        if folder and prob > 0 and not is_shard_source(folder) and not Path(folder).is_dir():
            raise FileNotFoundError(f"data.augment.{name}: {folder} is not a folder")


def noise_categories(config: AugmentConfig) -> dict[str, NoiseCategory]:
    """The categories `noise_dir` holds (see the module docstring)."""
    if not config.noise_dir:
        return {}
    names = [f.name for f in fields(config.noise_snr)]
    snr = {name: tuple(getattr(config.noise_snr, name)) for name in names}
    count = {name: tuple(getattr(config.noise_count, name)) for name in names}
    found = (
        {}
        if is_shard_source(config.noise_dir)
        else {
            name: NoiseCategory(str(Path(config.noise_dir) / name), snr[name], count[name])
            for name in sorted(names)
            if (Path(config.noise_dir) / name).is_dir()
        }
    )
    return found or {"noise": NoiseCategory(config.noise_dir, snr["noise"], count["noise"])}


def speed_perturb(samples: Iterable[dict], num_speakers: int, rng: np.random.Generator):
    """Stage: picks a speed per sample and relabels it as a new class (WeSpeaker's recipe).

    Before: {"label": int, ...}. After: + {"speed": float}; label += k * num_speakers for
    SPEED_FACTORS[k] (0.9 -> k=1, 1.1 -> k=2). The crop stage applies the speed.
    """
    for sample in samples:
        k = int(rng.integers(len(SPEED_FACTORS)))
        yield {**sample, "speed": SPEED_FACTORS[k], "label": sample["label"] + k * num_speakers}


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """wave [T] + noise [T] scaled so that 10 log10(P_wave / P_added) == snr_db."""
    signal_power = float(np.mean(np.square(wave, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if noise_power == 0.0:
        return wave
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolves wave [T] with an RIR; returns [T] aligned to the direct path, at the dry RMS level.

    Starting at the RIR's peak removes the propagation delay (crops stay aligned with labels of
    any frame-level use); restoring the RMS keeps the loudness distribution of the data.
    """
    rir = rir.astype(np.float64)
    energy = np.sqrt(np.sum(rir**2))
    if energy == 0.0 or len(wave) == 0:
        return wave
    peak = int(np.argmax(np.abs(rir)))
    size = len(wave) + len(rir) - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, n_fft) * np.fft.rfft(rir / energy, n_fft), n_fft)
    wet = wet[peak : peak + len(wave)]
    dry_rms = np.sqrt(np.mean(np.square(wave, dtype=np.float64)))
    wet_rms = np.sqrt(np.mean(wet**2))
    if wet_rms > 0:
        wet *= dry_rms / wet_rms
    return wet.astype(np.float32)


@functools.lru_cache(maxsize=512)
def _load_audio_16k(path: str) -> np.ndarray:
    """Whole file as [T] float32 16 kHz mono; cached per process (RIRs are short and reused)."""
    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    return to_mono_16k(wave, rate)


def _audio_files(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in NOISE_FILE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no {sorted(NOISE_FILE_EXTENSIONS)} audio under {folder}")
    return files


class FolderNoise:
    """Noise clips from a folder: each draw reads a random segment of a random file."""

    def __init__(self, folder: str):
        self.files = _audio_files(Path(folder))
        self._info: dict[str, tuple[int, int]] = {}

    def draw(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        path = self.files[int(rng.integers(len(self.files)))]
        if path not in self._info:
            info = sf.info(path)
            self._info[path] = (int(info.frames), int(info.samplerate))
        total, rate = self._info[path]
        # Read only the segment needed (in the file's own rate), then convert.
        wanted = int(np.ceil(frames * rate / SAMPLE_RATE)) + 1
        start = random_crop_start(rng, total, wanted)
        wave, rate = sf.read(path, start=start, frames=wanted, dtype="float32", always_2d=True)
        wave = to_mono_16k(wave, rate)
        if len(wave) == 0:
            raise AudioError("empty", f"noise file {path}")
        return repeat_to_length(wave, frames) if len(wave) < frames else wave[:frames]


class ShardNoise:
    """Noise clips streamed from shards: a pool of audio members (FLAC, or WAV from a split packed
    with `--codec pcm`), one replaced after every draw.

    Memory stays at `pool_size` stored clips however large the noise corpus is.
    """

    def __init__(self, source: str, rng: np.random.Generator, skips: SkipCounter, pool_size: int = 64):
        urls = read_manifest(source).urls if source.endswith(".manifest.json") else expand_urls(source)
        self._stream = iter_tar_samples(
            resampled_shards(urls, rng), skips, want=frozenset({AUDIO}), max_empty_shards=max(8, 2 * len(urls))
        )
        # (member extension, bytes) pairs: read_member_crop needs to know which kind it holds.
        self._pool = [audio_member(next(self._stream)) for _ in range(pool_size)]

    def draw(self, frames: int, rng: np.random.Generator) -> np.ndarray:
        slot = int(rng.integers(len(self._pool)))
        member, data = self._pool[slot]
        wave = read_member_crop(data, member, None, frames, rng=rng)
        self._pool[slot] = audio_member(next(self._stream))
        return repeat_to_length(wave, frames)


def noise_source(source: str, rng: np.random.Generator, skips: SkipCounter):
    return FolderNoise(source) if Path(source).is_dir() else ShardNoise(source, rng, skips)


def add_reverb(samples: Iterable[dict], reverb_dir: str, prob: float, rng: np.random.Generator):
    """Stage: with probability `prob`, convolves the crop with a random RIR from `reverb_dir`.

    Before/after: {"wave": [T] float32 16 kHz, ...} (same T).
    """
    rirs = _audio_files(Path(reverb_dir))
    for sample in samples:
        if rng.random() < prob:
            rir = _load_audio_16k(rirs[int(rng.integers(len(rirs)))])
            sample = {**sample, "wave": reverberate(sample["wave"], rir)}
        yield sample


def add_noise(
    samples: Iterable[dict],
    categories: dict[str, NoiseCategory],
    prob: float,
    rng: np.random.Generator,
    skips: SkipCounter,
):
    """Stage: with probability `prob`, mixes clips of one random category at a random SNR.

    Before/after: {"wave": [T] float32 16 kHz, ...} (same T). Each of the category's `count`
    clips gets its own SNR from the category's range. Noise sources open lazily, in the worker.
    """
    names = sorted(categories)
    sources = {}
    for sample in samples:
        if names and rng.random() < prob:
            name = names[int(rng.integers(len(names)))]
            category = categories[name]
            if name not in sources:
                sources[name] = noise_source(category.source, rng, skips)
            wave = sample["wave"]
            clean = wave
            for _ in range(int(rng.integers(category.count[0], category.count[1] + 1))):
                noise = sources[name].draw(len(wave), rng)
                wave = mix_at_snr(clean, noise, float(rng.uniform(*category.snr_db))) - clean + wave
            sample = {**sample, "wave": wave.astype(np.float32)}
        yield sample


def augment_stages(config: AugmentConfig, rng: np.random.Generator, skips: SkipCounter):
    """The post-crop stages `config` turns on, as `samples -> samples` callables, each with its
    own child generator of `rng`."""
    reverb_rng, noise_rng = rng.spawn(2)
    stages = []
    rir_dir = config.rir_dir
    if rir_dir and config.reverb_prob > 0:
        stages.append(lambda s: add_reverb(s, rir_dir, config.reverb_prob, reverb_rng))
    categories = noise_categories(config)
    if categories and config.noise_prob > 0:
        stages.append(lambda s: add_noise(s, categories, config.noise_prob, noise_rng, skips))
    return stages
