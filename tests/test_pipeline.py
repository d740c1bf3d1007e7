"""mrl_dist.data.pipeline: endless seeded training crops and whole-utterance evaluation batches."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mrl_dist.data.audio import read_flac_crop, seconds_to_samples
from mrl_dist.data.crops import crop_rng, fixed_crop_start, random_crop_start
from mrl_dist.data.manifest import ManifestError, read_manifest
from mrl_dist.data.pipeline import make_eval_loader, make_train_loader
from mrl_dist.data.trials import read_trials, trial_keys


def train_loader(source, **overrides):
    options = dict(
        batch_size=4, crop_seconds=1.0, num_workers=0, seed=7, rank=0, world_size=1, shuffle_buffer=8, steps_per_epoch=4
    )
    return make_train_loader(source, **{**options, **overrides})


def keys_and_waves(loader) -> list[tuple[list[str], np.ndarray]]:
    return [(batch["key"], batch["wave"].numpy()) for batch in loader]


def packed_audio(manifest_path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """key -> (whole wave [T] float32, json meta), read with plain tarfile."""
    samples: dict[str, dict] = {}
    for url in read_manifest(manifest_path).urls:
        with tarfile.open(url) as tar:
            for member in tar:
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return {
        key: (sf.read(io.BytesIO(s["flac"]), dtype="float32")[0], json.loads(s["json"])) for key, s in samples.items()
    }


def largest_shard(manifest_path: Path) -> str:
    return max(read_manifest(manifest_path).shards, key=lambda shard: shard.samples).url


def rewrite_shard(source: str, target: Path, damage) -> str:
    """Copies a shard, passing each (name, bytes) through `damage` (None drops the member)."""
    with tarfile.open(source) as tar_in, tarfile.open(target, "w") as tar_out:
        for member in tar_in:
            data = damage(member.name, tar_in.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                tar_out.addfile(member, io.BytesIO(data))
    return str(target)


def test_train_batches_hold_wave_label_and_key(packed):
    batch = next(iter(train_loader(packed)))
    assert batch["wave"].shape == (4, 16000) and batch["wave"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert len(batch["key"]) == 4 and all(isinstance(k, str) for k in batch["key"])
    speakers = read_manifest(packed).speakers
    assert batch["label"].tolist() == [speakers[k.split("/")[0]] for k in batch["key"]]
    assert batch["skipped"] == 0


def test_every_rank_gets_the_same_number_of_batches_per_epoch(packed):
    # 19 utterances, batch 2, 3 ranks: 19 // 6 = 3 steps on every rank, with any worker count.
    for rank in range(3):
        for workers in (0, 2):
            loader = train_loader(
                packed, batch_size=2, rank=rank, world_size=3, num_workers=workers, steps_per_epoch=None
            )
            assert len(loader) == 3
            assert len(list(loader)) == 3


def test_two_ranks_never_yield_the_same_sequence(packed):
    first, second = (keys_and_waves(train_loader(packed, rank=r, world_size=2)) for r in (0, 1))
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(first, second))


def test_two_workers_of_one_rank_yield_different_sequences(packed):
    batches = keys_and_waves(train_loader(packed, num_workers=2))
    worker0, worker1 = batches[0::2], batches[1::2]  # the DataLoader alternates workers
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(worker0, worker1))


def test_same_seed_rank_and_worker_count_reproduce_the_sequence(packed):
    run = [keys_and_waves(train_loader(packed, num_workers=2)) for _ in range(2)]
    assert [k for k, _ in run[0]] == [k for k, _ in run[1]]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(*run))


def test_each_pass_over_the_loader_is_a_new_epoch(packed):
    loader = train_loader(packed)
    epoch0, epoch1 = keys_and_waves(loader), keys_and_waves(loader)
    assert loader.epoch == 2
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(epoch0, epoch1))
    loader.set_epoch(1)
    assert [k for k, _ in keys_and_waves(loader)] == [k for k, _ in epoch1]


def test_crops_are_exact_slices_of_the_utterance(packed):
    audio = packed_audio(packed)
    for keys, waves in keys_and_waves(train_loader(packed, crop_seconds=0.5)):
        for key, crop in zip(keys, waves):
            whole = audio[key][0]
            starts = np.flatnonzero(whole[: len(whole) - len(crop) + 1] == crop[0])
            assert any(np.array_equal(whole[s : s + len(crop)], crop) for s in starts), key


def test_short_utterances_are_repeated_to_the_crop_length(packed):
    audio = packed_audio(packed)
    for keys, waves in keys_and_waves(train_loader(packed, crop_seconds=4.0)):
        for key, crop in zip(keys, waves):
            whole = audio[key][0]  # every test utterance is shorter than 4 s
            assert len(crop) == 64000
            np.testing.assert_array_equal(crop, np.resize(whole, 64000))


def test_crop_decoding_reads_only_the_crop_frames(packed, monkeypatch):
    flac = io.BytesIO()
    sf.write(flac, np.zeros(8 * 16000, dtype=np.int16), 16000, format="FLAC")
    requested = []

    class CountingSoundFile(sf.SoundFile):
        def read(self, frames=-1, *args, **kwargs):
            requested.append(frames)
            return super().read(frames, *args, **kwargs)

    monkeypatch.setattr(sf, "SoundFile", CountingSoundFile)
    crop = read_flac_crop(flac.getvalue(), None, 32000, rng=np.random.default_rng(0))
    assert len(crop) == 32000 and requested == [32000]


def test_pipe_commands_and_brace_patterns_are_sources(packed):
    urls = read_manifest(packed).urls
    folder = Path(urls[0]).parent
    pattern = f"{folder}/train-{{000000..{len(urls) - 1:06d}}}.tar"
    assert len(list(train_loader(pattern))) == 4
    assert len(list(train_loader([f"pipe:cat {url}" for url in urls]))) == 4


def test_undecodable_members_are_skipped_and_counted(packed, tmp_path, caplog):
    flacs = []

    def break_every_other_flac(name, data):
        if not name.endswith(".flac"):
            return data
        flacs.append(name)
        return b"not flac" if len(flacs) % 2 else data

    url = rewrite_shard(largest_shard(packed), tmp_path / "garbage.tar", break_every_other_flac)
    broken = set(flacs[0::2])
    loader = train_loader([url], steps_per_epoch=3, batch_size=2)
    batches = list(loader)
    assert len(batches) == 3
    assert not {key + ".flac" for b in batches for key in b["key"]} & broken
    assert loader.skipped == sum(b["skipped"] for b in batches) > 0
    assert "undecodable in shard" in caplog.text and "garbage.tar" in caplog.text


def test_truncated_shards_are_skipped_and_counted(packed, tmp_path, caplog):
    url = largest_shard(packed)
    with tarfile.open(url) as tar:
        third_member = tar.getmembers()[2]  # the second sample's FLAC
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(url).read_bytes()[: third_member.offset_data + 100])
    loader = train_loader([str(truncated)], steps_per_epoch=2, batch_size=2)
    batches = list(loader)
    assert len(batches) == 2 and loader.skipped > 0
    assert "truncated-shard in shard" in caplog.text and "truncated.tar" in caplog.text


def test_shards_without_any_usable_sample_raise_instead_of_spinning(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\0" * 100)
    with pytest.raises(RuntimeError, match="shards in a row gave no usable sample"):
        list(train_loader([str(broken)]))


def test_eval_covers_exactly_the_trial_utterances(packed, corpus):
    wanted = trial_keys(read_trials(corpus.trials))
    loader = make_eval_loader(packed, batch_size=3)  # the manifest's trial list
    keys = [key for batch in loader for key in batch["key"]]
    assert sorted(keys) == wanted
    assert loader.missing == [] and loader.skipped == 0


def test_eval_batches_are_sorted_by_length_and_padded(packed, corpus):
    audio = packed_audio(packed)
    batches = list(make_eval_loader(packed, corpus.trials, batch_size=3, num_workers=0))
    lengths = [length for batch in batches for length in batch["lengths"].tolist()]
    assert lengths == sorted(lengths, reverse=True)
    for batch in batches:
        assert batch["wave"].shape == (len(batch["key"]), max(batch["lengths"]))
        for row, (key, length) in enumerate(zip(batch["key"], batch["lengths"].tolist())):
            np.testing.assert_array_equal(batch["wave"][row, :length].numpy(), audio[key][0])
            assert not batch["wave"][row, length:].any()


def test_eval_cap_keeps_the_first_max_seconds(packed):
    audio = packed_audio(packed)
    keys = sorted(audio)
    for batch in make_eval_loader(packed, keys, max_seconds=1.2, batch_size=4, num_workers=2):
        for row, key in enumerate(batch["key"]):
            expected = audio[key][0][:19200]
            assert batch["lengths"][row] == len(expected)
            np.testing.assert_array_equal(batch["wave"][row, : len(expected)].numpy(), expected)


def test_eval_raises_naming_trial_utterances_missing_from_the_shards(packed):
    loader = make_eval_loader(packed, ["id00001/vidA/00001", "id00042/gone/00001"], batch_size=2)
    with pytest.raises(RuntimeError, match="id00042/gone/00001"):
        list(loader)


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="absent.manifest.json not found"):
        read_manifest(tmp_path / "absent.manifest.json")
    broken = tmp_path / "broken.manifest.json"
    broken.write_text("{not json")
    with pytest.raises(ManifestError, match="broken.manifest.json is not readable JSON"):
        read_manifest(broken)
    other = tmp_path / "other.manifest.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ManifestError, match="other.manifest.json: 'format'"):
        make_train_loader(other, batch_size=2, crop_seconds=1.0, num_workers=0, seed=0, rank=0, world_size=1)


def test_sources_without_a_manifest_need_steps_per_epoch(packed):
    with pytest.raises(ValueError, match="steps_per_epoch is required"):
        train_loader(read_manifest(packed).urls, steps_per_epoch=None)


def test_fixed_crops_cut_every_key_at_the_same_place_in_every_epoch(packed):
    def crops(epoch: int, seed: int) -> dict:
        loader = make_train_loader(
            packed,
            batch_size=4,
            crop_seconds=0.5,
            num_workers=0,
            seed=seed,
            rank=0,
            world_size=1,
            epoch=epoch,
            steps_per_epoch=6,
            fixed_crops=True,
        )
        return {
            key: (int(start), wave)
            for batch in loader
            for key, start, wave in zip(batch["key"], batch["start"], batch["wave"])
        }

    first, second = crops(epoch=0, seed=0), crops(epoch=3, seed=7)
    shared = set(first) & set(second)
    assert shared
    for key in shared:
        assert first[key][0] == second[key][0] >= 0
        assert torch.equal(first[key][1], second[key][1])


def test_random_crops_report_no_start(packed):
    loader = make_train_loader(
        packed, batch_size=4, crop_seconds=0.5, num_workers=0, seed=0, rank=0, world_size=1, steps_per_epoch=1
    )
    assert (next(iter(loader))["start"] == -1).all()


def test_crop_starts_keep_the_numbers_that_caches_on_disk_hold():
    # Cached teacher embeddings and feature caches store these starts: a changed rule breaks them.
    key = "id10001/1zcIwhmdeo4/00001"
    assert fixed_crop_start(key, 80000, 32000) == 3655
    assert [random_crop_start(crop_rng(7, key, k), 80000, 32000) for k in range(3)] == [44805, 31601, 8946]


def test_seconds_to_samples_rounds_to_the_nearest_sample():
    assert seconds_to_samples(2.0) == 32000
    assert seconds_to_samples(31999.6 / 16000) == 32000  # truncating would lose a sample
