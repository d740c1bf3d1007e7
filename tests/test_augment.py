"""mrl_dist.data.augment: additive noise at a measured SNR, RIR reverberation, speed perturbation."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
from conftest import write_wav

from mrl_dist.data.augment import (
    NoiseCategory,
    ShardNoise,
    add_noise,
    add_reverb,
    augment_from_dict,
    check_augment_sources,
    mix_at_snr,
    noise_categories,
    num_classes,
    reverberate,
    speed_perturb,
)
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.pipeline import make_train_loader
from mrl_dist.data.shard_reader import SkipCounter
from mrl_dist.data.stages import decode_crop


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(frames)
    ).astype(np.float32)


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    added = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added**2))


@pytest.fixture(scope="module")
def musan(tmp_path_factory):
    """A MUSAN-layout noise folder: one subfolder per category, files at any rate."""
    folder = tmp_path_factory.mktemp("musan")
    rng = np.random.default_rng(1)
    write_wav(folder / "noise" / "fan.wav", 0.1 * rng.standard_normal(3 * 16000), 16000)
    write_wav(folder / "noise" / "street" / "cars.wav", 0.2 * rng.standard_normal(16000), 8000)
    write_wav(folder / "speech" / "talk.wav", 0.1 * rng.standard_normal(2 * 16000), 16000)
    return folder


@pytest.fixture(scope="module")
def noise_folder(musan):
    return musan / "noise"


@pytest.fixture(scope="module")
def rir_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rirs")
    rng = np.random.default_rng(2)
    for i, decay in enumerate((0.05, 0.2)):
        t = np.arange(int(0.3 * 16000)) / 16000
        rir = rng.standard_normal(len(t)) * np.exp(-t / decay) * 0.1
        rir[40 + 10 * i] = 1.0  # the direct path
        write_wav(folder / f"room{i}.wav", rir, 16000, subtype="FLOAT")
    return folder


def noisy_crops(categories, count=20, seed=0):
    clean = [{"key": f"k{i}", "wave": speech_like(16000, seed=i)} for i in range(count)]
    noisy = add_noise(iter(clean), categories, 1.0, np.random.default_rng(seed), SkipCounter())
    return clean, list(noisy)


def test_mix_at_snr_adds_noise_at_exactly_the_requested_snr():
    clean = speech_like(32000)
    noise = np.random.default_rng(3).standard_normal(32000).astype(np.float32)
    for target in (0.0, 7.5, 20.0):
        assert snr_db(clean, mix_at_snr(clean, noise, target)) == pytest.approx(target, abs=0.01)


def test_noise_from_a_folder_lands_in_the_category_snr_range(noise_folder):
    categories = {"noise": NoiseCategory(str(noise_folder), (5.0, 15.0))}
    clean, noisy = noisy_crops(categories)
    measured = [snr_db(c["wave"], n["wave"]) for c, n in zip(clean, noisy)]
    assert all(5.0 - 0.01 <= value <= 15.0 + 0.01 for value in measured)
    assert np.std(measured) > 1.0  # a random SNR per sample, not one fixed value
    assert all(n["wave"].shape == c["wave"].shape for c, n in zip(clean, noisy))


def test_noise_from_shards_is_mixed_at_the_requested_snr(tmp_path):
    shard = tmp_path / "noise-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            flac = io.BytesIO()
            sf.write(
                flac, (0.1 * np.random.default_rng(i).standard_normal(20000)), 16000, format="FLAC", subtype="PCM_16"
            )
            member = tarfile.TarInfo(f"musan/noise/n{i}.flac")
            member.size = len(flac.getvalue())
            tar.addfile(member, io.BytesIO(flac.getvalue()))
    source = ShardNoise(str(shard), np.random.default_rng(0), SkipCounter(), pool_size=3)
    assert source.draw(40000, np.random.default_rng(1)).shape == (40000,)  # repeated to length
    clean, noisy = noisy_crops({"noise": NoiseCategory(str(shard), (10.0, 10.0))})
    assert [round(snr_db(c["wave"], n["wave"]), 2) for c, n in zip(clean, noisy)] == [10.0] * 20


def test_babble_mixes_count_clips_each_at_its_own_snr(noise_folder):
    categories = {"speech": NoiseCategory(str(noise_folder), (10.0, 10.0), count=(3, 3))}
    clean, noisy = noisy_crops(categories)
    # Three independent clips at 10 dB each: about 10 - 10 log10(3) = 5.2 dB in total.
    measured = np.mean([snr_db(c["wave"], n["wave"]) for c, n in zip(clean, noisy)])
    assert measured == pytest.approx(10 - 10 * np.log10(3), abs=0.5)


def test_reverb_keeps_length_and_level_and_changes_the_signal(rir_folder):
    clean = [{"key": "k", "wave": speech_like(16000)}]
    wet = list(add_reverb(iter(clean), str(rir_folder), 1.0, np.random.default_rng(0)))[0]["wave"]
    assert wet.shape == (16000,) and wet.dtype == np.float32
    assert rms(wet) == pytest.approx(rms(clean[0]["wave"]), rel=1e-4)
    assert np.corrcoef(wet, clean[0]["wave"])[0, 1] < 0.99


def test_reverb_with_a_delayed_unit_impulse_changes_nothing():
    wave = speech_like(8000)
    impulse = np.zeros(500, dtype=np.float32)
    impulse[123] = 0.5  # delay and gain are undone: aligned to the direct path, same RMS
    np.testing.assert_allclose(reverberate(wave, impulse), wave, atol=1e-5)


def test_speed_perturbation_makes_each_speed_a_new_class():
    samples = [{"key": f"k{i}", "label": i % 5} for i in range(300)]
    out = list(speed_perturb(iter(samples), 5, np.random.default_rng(0)))
    for before, after in zip(samples, out):
        k = {1.0: 0, 0.9: 1, 1.1: 2}[after["speed"]]
        assert after["label"] == before["label"] + k * 5
    assert {s["speed"] for s in out} == {0.9, 1.0, 1.1}
    assert num_classes(5, speed_perturb=True) == 15 and num_classes(5, False) == 5


def test_speed_perturbed_crop_plays_faster_at_the_crop_length():
    t = np.arange(4 * 16000) / 16000
    flac = io.BytesIO()
    sf.write(flac, 0.5 * np.sin(2 * np.pi * 1000 * t), 16000, format="FLAC", subtype="PCM_16")
    for speed, pitch in ((1.1, 1100), (0.9, 900)):
        sample = {"key": "k", "url": "u", "label": 0, "flac": flac.getvalue(), "speed": speed}
        (crop,) = decode_crop([sample], 16000, np.random.default_rng(0), SkipCounter())
        assert crop["wave"].shape == (16000,)
        spectrum = np.abs(np.fft.rfft(crop["wave"]))
        peak_hz = np.fft.rfftfreq(16000, 1 / 16000)[np.argmax(spectrum)]
        assert peak_hz == pytest.approx(pitch, abs=2)


def test_noise_dir_categories_follow_the_musan_layout(musan):
    config = augment_from_dict({"noise_dir": str(musan), "noise_prob": 0.5})
    categories = noise_categories(config)
    assert sorted(categories) == ["noise", "speech"]  # no music/ folder here
    assert categories["speech"] == NoiseCategory(str(musan / "speech"), (13.0, 20.0), (3, 7))
    flat = augment_from_dict({"noise_dir": str(musan / "noise"), "noise_snr": {"noise": [2, 4]}})
    assert noise_categories(flat) == {"noise": NoiseCategory(str(musan / "noise"), (2.0, 4.0))}


def test_train_loader_applies_the_training_config_augment_block(packed, musan, rir_folder):
    # The shape mrl_dist.config.AugmentConfig gives after dataclasses.asdict.
    block = {
        "noise_dir": str(musan),
        "rir_dir": str(rir_folder),
        "reverb_prob": 0.5,
        "noise_prob": 0.5,
        "speed_perturb": True,
        "noise_snr": {"noise": [0.0, 15.0], "speech": [13.0, 20.0], "music": [5.0, 15.0]},
    }
    loader = make_train_loader(
        packed,
        batch_size=4,
        crop_seconds=1.0,
        num_workers=0,
        seed=0,
        rank=0,
        world_size=1,
        steps_per_epoch=6,
        augment=block,
    )
    speakers = read_manifest(packed).num_speakers
    assert loader.num_classes == 3 * speakers
    batches = list(loader)
    labels = np.concatenate([b["label"].numpy() for b in batches])
    assert labels.max() < 3 * speakers and labels.max() >= speakers
    assert all(b["wave"].shape == (4, 16000) and np.isfinite(b["wave"].numpy()).all() for b in batches)


def test_augment_config_errors_name_the_key_and_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"train.yaml: data.augment.reverb_probability: unknown key"):
        augment_from_dict({"reverb_probability": 0.3}, where="train.yaml")
    with pytest.raises(ValueError, match=r"noise_snr.music: must be \[low, high\]"):
        augment_from_dict({"noise_snr": {"music": [15, 5]}})
    with pytest.raises(FileNotFoundError, match="rir_dir: .*absent is not a folder"):
        check_augment_sources(augment_from_dict({"rir_dir": str(tmp_path / "absent"), "reverb_prob": 0.5}))
