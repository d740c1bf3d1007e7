"""make_shards --codec pcm: `.wav` members that every reader takes as it takes FLAC ones.

A split packed as PCM must give the loaders, evaluation, the feature cache, make_trials and shard
noise the same samples as the FLAC split of the same corpus; packing it must stay deterministic
and resumable; a damaged PCM member is a counted skip like a damaged FLAC one.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_wav

from mrl_dist.data.cli import parse_make_shards_args
from mrl_dist.data.codecs import read_member_crop, read_member_window, wav_layout
from mrl_dist.data.features import crop_batches
from mrl_dist.data.holdout import make_holdout
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.packing import pack_split
from mrl_dist.data.pipeline import make_eval_loader, make_train_loader
from mrl_dist.data.shard_reader import SkipCounter, iter_tar_samples
from mrl_dist.data.stages import decode_crop, parse_meta

SPEAKERS = ("id00001", "id00002", "id00003")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 speakers x 3 utterances of 2.5-4.5 s (long enough that 1 s crops seek)."""
    root = tmp_path_factory.mktemp("codecs") / "dev"
    for s, speaker in enumerate(SPEAKERS):
        for u in range(3):
            wave = tone(2.5 + 0.5 * ((s + u) % 5), 16000, 140 + 70 * s + 11 * u, seed=10 * s + u)
            write_wav(root / f"{speaker}/vid{u % 2}/{u:05d}.wav", wave, 16000)
    return root


def pack(corpus: Path, output: Path, codec: str, **options) -> Path:
    """Packs `corpus` as split `train`; returns its manifest path."""
    pack_split([corpus], output, "train", codec=codec, **{"workers": 1, "progress": False, **options})
    return output / "train.manifest.json"


@pytest.fixture(scope="module")
def splits(corpus, tmp_path_factory) -> dict[str, Path]:
    """codec -> manifest of the corpus packed with it, one shard each (the same sample order)."""
    return {codec: pack(corpus, tmp_path_factory.mktemp(codec), codec) for codec in ("flac", "pcm")}


def members(manifest_path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every tar member of a split, in order."""
    found = []
    for url in read_manifest(manifest_path).urls:
        with tarfile.open(url) as tar:
            found += [(member.name, tar.extractfile(member).read()) for member in tar]
    return found


def train_batches(manifest_path: Path) -> list[dict]:
    loader = make_train_loader(
        manifest_path,
        batch_size=3,
        crop_seconds=1.0,
        num_workers=0,
        seed=11,
        rank=0,
        world_size=1,
        shuffle_buffer=4,
        steps_per_epoch=5,
    )
    return list(loader)


def test_pcm_split_holds_wav_members_of_the_same_samples_and_names_its_codec(splits):
    flac, pcm = members(splits["flac"]), members(splits["pcm"])
    assert [name.replace(".flac", ".wav") for name, _ in flac] == [name for name, _ in pcm]
    for (_, flac_bytes), (name, wav_bytes) in zip(flac, pcm):
        if name.endswith(".wav"):
            expected, _ = sf.read(io.BytesIO(flac_bytes), dtype="int16")
            stored, rate = sf.read(io.BytesIO(wav_bytes), dtype="int16")  # any WAV reader plays it
            assert rate == 16000 and np.array_equal(stored, expected), name
    manifest = json.loads(splits["pcm"].read_text())
    assert manifest["codec"] == manifest["arguments"]["codec"] == "pcm"
    assert read_manifest(splits["pcm"]).codec == "pcm" and read_manifest(splits["flac"]).codec == "flac"


def test_training_crops_of_a_pcm_split_equal_the_flac_splits_at_the_same_seed(splits):
    flac, pcm = train_batches(splits["flac"]), train_batches(splits["pcm"])
    assert [b["key"] for b in flac] == [b["key"] for b in pcm]
    for ours, theirs in zip(flac, pcm):
        # Both hold the same int16 samples and scale them by 1/32768: equal to the last bit.
        assert np.array_equal(ours["wave"].numpy(), theirs["wave"].numpy())
        assert ours["label"].tolist() == theirs["label"].tolist()


def test_evaluation_reads_the_same_whole_utterances_from_a_pcm_split(splits):
    def whole(manifest_path):
        return {
            key: wave[:length].numpy()
            for batch in make_eval_loader(manifest_path, batch_size=4)
            for key, wave, length in zip(batch["key"], batch["wave"], batch["lengths"])
        }

    flac, pcm = whole(splits["flac"]), whole(splits["pcm"])
    assert sorted(flac) == sorted(pcm) and len(pcm) == 9
    assert all(np.array_equal(flac[key], pcm[key]) for key in flac)


def test_feature_cache_crops_of_a_pcm_shard_equal_the_flac_shards(splits):
    def crops(manifest_path):
        skips = SkipCounter("test")
        url = read_manifest(manifest_path).urls[0]
        options = dict(crops_per_utterance=2, crop_frames=16000, seed=3, batch_size=4, augment=None, skips=skips)
        batches = list(crop_batches(url, **options))
        assert skips.total == 0
        return batches

    flac, pcm = crops(splits["flac"]), crops(splits["pcm"])
    assert sum(len(b["key"]) for b in pcm) == 18
    for ours, theirs in zip(flac, pcm, strict=True):
        assert ours["key"] == theirs["key"] and ours["start"].tolist() == theirs["start"].tolist()
        assert np.array_equal(ours["wave"].numpy(), theirs["wave"].numpy())


def test_make_trials_copies_pcm_members_and_keeps_the_codec(splits, tmp_path):
    result = make_holdout(splits["pcm"], 2, tmp_path / "val", seed=0)
    for manifest_path in (result.manifest, result.rest_manifest):
        assert json.loads(manifest_path.read_text())["codec"] == "pcm"
        assert {name.rsplit(".", 1)[1] for name, _ in members(manifest_path)} == {"wav", "json"}
    evaluated = {key for batch in make_eval_loader(result.manifest, batch_size=4) for key in batch["key"]}
    assert len(evaluated) == result.holdout_samples == 6


def test_shard_noise_draws_the_same_clips_from_a_pcm_split(splits):
    from mrl_dist.data.augment import ShardNoise

    def draws(manifest_path):
        rng = np.random.default_rng(5)
        noise = ShardNoise(str(manifest_path), rng, SkipCounter("noise"), pool_size=4)
        return [noise.draw(8000, rng) for _ in range(6)]

    for ours, theirs in zip(draws(splits["flac"]), draws(splits["pcm"]), strict=True):
        assert ours.shape == (8000,) and np.array_equal(ours, theirs)


def test_pcm_packing_is_byte_identical_for_one_and_two_workers(corpus, tmp_path):
    one = pack(corpus, tmp_path / "one", "pcm", shard_size_mb=0.2)
    two = pack(corpus, tmp_path / "two", "pcm", shard_size_mb=0.2, workers=2)
    names = sorted(path.name for path in one.parent.iterdir())
    assert len(read_manifest(one).shards) >= 3
    assert names == sorted(path.name for path in two.parent.iterdir())
    for name in names:
        assert (one.parent / name).read_bytes() == (two.parent / name).read_bytes(), name


def test_a_pcm_split_that_lost_and_damaged_shards_is_repacked_to_the_same_bytes(corpus, tmp_path):
    reference = pack(corpus, tmp_path / "reference", "pcm", shard_size_mb=0.2)
    shutil.copytree(reference.parent, tmp_path / "out")
    shards = read_manifest(tmp_path / "out" / "train.manifest.json").urls
    Path(shards[0]).unlink()
    with open(shards[1], "r+b") as handle:
        handle.seek(2000)
        handle.write(b"damage")
    pack(corpus, tmp_path / "out", "pcm", shard_size_mb=0.2)
    for path in sorted(reference.parent.iterdir()):
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_codec_is_part_of_the_packing_identity(corpus, splits, tmp_path):
    shutil.copytree(splits["flac"].parent, tmp_path / "out")
    pack(corpus, tmp_path / "out", "pcm")  # the FLAC split is not taken for a PCM one: re-packed
    assert [name for name, _ in members(tmp_path / "out" / "train.manifest.json")] == [
        name for name, _ in members(splits["pcm"])
    ]


def test_a_manifest_written_before_codecs_existed_is_a_finished_flac_split(corpus, splits, tmp_path):
    shutil.copytree(splits["flac"].parent, tmp_path / "out")
    manifest_path = tmp_path / "out" / "train.manifest.json"
    old = json.loads(manifest_path.read_text())
    del old["codec"], old["arguments"]["codec"]
    manifest_path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    shard = Path(read_manifest(manifest_path).urls[0])
    written = shard.stat().st_mtime_ns
    assert pack_split([corpus], tmp_path / "out", "train", workers=1, progress=False) == old  # only verified
    assert shard.stat().st_mtime_ns == written and read_manifest(manifest_path).codec == "flac"


def damaged_pcm_shard(manifest_path: Path, target: Path) -> tuple[str, dict[str, str]]:
    """A copy of the split's first shard whose 1st `.wav` member is cut in half and 2nd is not a
    WAV; returns (its path, key -> the skip reason expected)."""
    damaged: dict[str, str] = {}
    with tarfile.open(read_manifest(manifest_path).urls[0]) as source, tarfile.open(target, "w") as tar:
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(".wav") and len(damaged) < 2:
                key = member.name.removesuffix(".wav")
                data, damaged[key] = (
                    (data[: len(data) // 2], "truncated") if not damaged else (b"x" * 64, "undecodable")
                )
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return str(target), damaged


def test_truncated_or_broken_pcm_members_are_counted_skips(splits, tmp_path):
    url, damaged = damaged_pcm_shard(splits["pcm"], tmp_path / "damaged.tar")
    skips = SkipCounter("test")
    samples = parse_meta(iter_tar_samples([url], skips), skips)
    crops = list(decode_crop(samples, 16000, np.random.default_rng(0), skips))
    assert skips.by_reason == {"truncated": 1, "undecodable": 1}
    assert {crop["key"] for crop in crops} == {f"{s}/vid{u % 2}/{u:05d}" for s in SPEAKERS for u in range(3)} - set(
        damaged
    )


def test_wav_members_written_by_other_tools_are_read_past_their_extra_chunks():
    wave = tone(1.2, 16000, 300)
    buffer = io.BytesIO()
    sf.write(buffer, wave, 16000, format="WAV", subtype="PCM_16")
    plain = buffer.getvalue()
    # A LIST chunk before the data, as many editors write one.
    listed = plain[:36] + b"LIST" + (6).to_bytes(4, "little") + b"INFOab" + plain[36:]
    listed = listed[:4] + (len(listed) - 8).to_bytes(4, "little") + listed[8:]
    assert wav_layout(listed)[1] == wav_layout(plain)[1] == len(wave)
    first = read_member_crop(plain, "wav", 500, 4000)
    assert np.array_equal(read_member_crop(listed, "wav", 500, 4000), first)
    assert np.array_equal(first, sf.read(io.BytesIO(plain), start=500, frames=4000, dtype="float32")[0])
    assert read_member_window(plain, "wav", 10**6, lambda total: 0)[0].shape == (len(wave),)  # shorter: whole


def test_an_unknown_codec_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_make_shards_args(["--input", str(tmp_path), "--output", str(tmp_path), "--split", "x", "--codec", "mp3"])
    assert exit_info.value.code == 2
    assert "--codec: invalid choice: 'mp3'" in capsys.readouterr().err


def test_the_loader_benchmark_reports_crops_per_second_and_disk_per_codec(capsys):
    import torch

    from mrl_dist.tools.cli import bench_loader_main

    threads = torch.get_num_threads()  # the benchmark pins one thread (one loader worker is one core)
    try:
        arguments = "--utterances 4 --seconds 3 --crop-seconds 1 --crops 32 --batch-size 8 --repeats 1 --no-m4a"
        assert bench_loader_main([*arguments.split(), "--decode-paths"]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    for codec in ("flac", "pcm"):
        assert any(line.startswith(f"| (a) shard pipeline, {codec} |") for line in lines)
        row = next(line for line in lines if line.startswith(f"| {codec} | "))
        assert row.endswith(" GB |") and " kB | " in row
    assert any(line.startswith("| PCM WAV, numpy slice of the member's bytes") for line in lines)
