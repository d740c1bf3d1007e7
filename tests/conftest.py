"""Shared fixtures: a small VoxCeleb-layout corpus with every kind of awkward file, packed once.

The corpus (a few seconds of audio per file) holds good 16 kHz wavs, a stereo 44.1 kHz wav, an
8 kHz wav, an AAC m4a (when this PyAV build can encode AAC) and broken files, each broken one
with the skip reason `make_shards.py` must report for it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mrl_dist.tools.m4a import write_m4a

REPO = Path(__file__).resolve().parents[1]
# Commands the tests start (launch/*.py, accelerate launch) import this checkout's mrl_dist,
# whichever checkout pip installed in editable mode.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
SPEAKERS = ["id00001", "id00002", "id00003", "id00004"]


def tone(seconds: float, sample_rate: int, freq: float, channels: int = 1, seed: int = 0):
    """[T] or [T, C] float32: a tone plus a little noise, distinct per (freq, seed)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (1.0 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype=subtype)
    return path


def aac_available() -> bool:
    import av

    return "aac" in av.codecs_available


@dataclass
class Corpus:
    root: Path
    good: dict[str, Path] = field(default_factory=dict)  # key -> file
    broken: dict[str, str] = field(default_factory=dict)  # absolute path -> expected reason
    converted: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (rate, channels)
    trials: Path | None = None


def build_corpus(root: Path) -> Corpus:
    corpus = Corpus(root)
    for s, speaker in enumerate(SPEAKERS):
        for video in ("vidA", "vidB"):
            for u in (1, 2):
                key = f"{speaker}/{video}/{u:05d}"
                seconds = 1.0 + 0.5 * ((s + u) % 4)
                seed = zlib.crc32(key.encode())
                corpus.good[key] = write_wav(root / f"{key}.wav", tone(seconds, 16000, 150 + 60 * s, seed=seed), 16000)
    stereo = "id00002/vidS/00001"
    corpus.good[stereo] = write_wav(root / f"{stereo}.wav", tone(1.5, 44100, 300, 2), 44100)
    corpus.converted[stereo] = (44100, 2)
    narrow = "id00003/vid8/00001"
    corpus.good[narrow] = write_wav(root / f"{narrow}.wav", tone(2.0, 8000, 200), 8000)
    corpus.converted[narrow] = (8000, 1)
    if aac_available():
        m4a = "id00004/vidM/00001"
        corpus.good[m4a] = write_m4a(root / f"{m4a}.m4a", tone(1.5, 44100, 330, 2), 44100)
        corpus.converted[m4a] = (44100, 2)

    def broken(relative: str, reason: str, content: bytes | None = None) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        corpus.broken[str(path)] = reason
        return path

    broken("id00001/bad/00001.wav", "empty", b"")
    broken("id00001/bad/00002.wav", "unreadable", b"RIFF not really a wave file" * 10)
    broken("id00001/bad/00003.m4a", "unreadable", b"\x00\x00\x00\x18ftypM4A garbage" * 20)
    whole = write_wav(root / "id00001/bad/00004.wav", tone(2.0, 16000, 200), 16000).read_bytes()
    broken("id00001/bad/00004.wav", "truncated", whole[: len(whole) // 2])
    nan = tone(1.0, 16000, 200)
    nan[100:200] = np.nan
    write_wav(broken("id00002/bad/00001.wav", "non-finite"), nan, 16000, subtype="FLOAT")
    write_wav(broken("id00003/bad/00001.wav", "too-short"), tone(0.2, 16000, 200), 16000)
    write_wav(broken("id00004/00001.wav", "bad-path"), tone(1.0, 16000, 200), 16000)
    write_wav(broken("id00004/vidA/00003.take2.wav", "bad-path"), tone(1.0, 16000, 200), 16000)
    broken("id00004/vidA/notes.txt", "not-audio", b"not audio")

    trial_keys = sorted(k for k in corpus.good if k.startswith(("id00001", "id00002")))
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a}.wav {b}.wav"
        for a, b in zip(trial_keys, trial_keys[1:] + trial_keys[:1])
    ]
    corpus.trials = root.parent / f"{root.name}-trials.txt"
    corpus.trials.write_text("\n".join(lines) + "\n")
    return corpus


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Every test starts without an Accelerator left over from the previous one (trainer tests
    build several in one process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def make_shards():
    """The packing library behind `launch/make_shards.py` (`pack_split`, `write_shard`, ...)."""
    from mrl_dist.data import packing

    return packing


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("voxceleb") / "dev")


@pytest.fixture(scope="session")
def packed(corpus, make_shards, tmp_path_factory) -> Path:
    """The corpus packed with --workers 1 into shards of about 0.1 MiB; returns the manifest path."""
    output = tmp_path_factory.mktemp("shards")
    make_shards.pack_split(
        [corpus.root], output, "train", trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False
    )
    return output / "train.manifest.json"


@pytest.fixture
def isolated_hub(tmp_path, monkeypatch):
    """Empty torch hub cache, no $MRL_DIST_CHECKPOINTS and no URL overrides, so checkpoint lookups
    only see what a test puts there. Yields hub's `checkpoints` folder."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for env in ("MRL_DIST_CHECKPOINTS", "MRL_DIST_CHECKPOINT_URL", "MRL_DIST_REDIMNET2_URL", "MRL_DIST_OFFLINE"):
        monkeypatch.delenv(env, raising=False)
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    yield tmp_path / "torch_home" / "hub" / "checkpoints"
    torch.hub.set_dir(os.path.join(os.path.expanduser("~"), ".cache", "torch", "hub"))


@pytest.fixture(scope="session")
def official_file(tmp_path_factory):
    """`official_file("b0")`: an official-format checkpoint (`{"model_config", "state_dict"}`) of
    a preset, made here so that tests needing a b0 or b2 *file* (name resolution, a pretrained
    trunk) run in a fresh clone. Weights are seeded random, perturbed like the official parity
    fixtures (every parameter + 0.05 N(0, 1), BatchNorm statistics randomised) so that every
    layer matters. Official *parity* is tested against the fixtures in tests/fixtures_path.py."""
    import torch

    from mrl_dist.models import build_preset, save_official_checkpoint
    from mrl_dist.tools.bench_inference import randomise_batchnorms

    folder = tmp_path_factory.mktemp("official_files")
    made: dict[str, Path] = {}

    def make(preset: str) -> Path:
        if preset not in made:
            torch.manual_seed(0)
            model = build_preset(preset)
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
            randomise_batchnorms(model, seed=2)
            made[preset] = save_official_checkpoint(model.eval(), folder / f"{preset}-random.pt")
        return made[preset]

    return make


@pytest.fixture(scope="session")
def loaded_b0(official_file):
    """A b0 loaded from `official_file("b0")`, shared by the session: never change it; a test that
    builds a model on it takes `pretrained`, its own copy."""
    from mrl_dist.models import load_pretrained

    return load_pretrained(official_file("b0"))


@pytest.fixture()
def pretrained(loaded_b0):
    """A test's own copy of `loaded_b0`: `ReDimNetMRL.from_redimnet` takes over the trunk's
    modules, so freezing or training one test's model would otherwise change the next test's trunk."""
    import copy

    return copy.deepcopy(loaded_b0)
