"""The pooled-feature cache: built once from the audio, exact, resumable, and the head trains from
it as from the audio (launch/cache_features.py, data.features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl_dist.config import ConfigError, config_from_dict
from mrl_dist.data.audio import read_flac_crop
from mrl_dist.data.features import FEATURES_MANIFEST, FeatureCacheError, open_feature_cache, read_feature_file
from mrl_dist.data.mix import resolve_source
from mrl_dist.data.shard_reader import SkipCounter, iter_tar_samples
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import build_preset, load_pretrained, save_official_checkpoint
from mrl_dist.train.feature_cache import build_feature_cache
from mrl_dist.train.loop import Trainer, train

from train_configs import REPO, accelerate_two_cpu_processes, launch, read_metrics, tiny_config, write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    shards = prepare_demo_shards(root, speakers=10, utterances=6, seed=7, shard_size_mb=0.3)
    torch.manual_seed(0)
    save_official_checkpoint(build_preset("tiny").eval(), root / "backbone.pt")
    torch.manual_seed(1)
    save_official_checkpoint(build_preset("tiny").eval(), root / "other-backbone.pt")
    return root, shards


def mrl_config(root: Path, shards: Path, run_dir: Path, backbone: str = "backbone.pt", **sections) -> dict:
    base = {
        "model": {"backbone": str(root / backbone), "head_init": "pca", "pca_batches": 2},
        "training": {"mode": "mrl", "freeze_backbone": True, "max_steps": 6, "steps_per_epoch": 3},
        "validation": {"every_steps": 3},
        "checkpoint": {"every_steps": 3},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return tiny_config(run_dir, shards, **base)


@pytest.fixture(scope="module")
def cache(setup, tmp_path_factory):
    root, shards = setup
    output = tmp_path_factory.mktemp("cache") / "tiny"
    cfg = config_from_dict(mrl_config(root, shards, root / "unused"))
    build_feature_cache(cfg, output, crops_per_utterance=2, batch_size=8, progress=False)
    return output


def test_the_cache_holds_k_crops_of_every_training_utterance_with_their_metadata(setup, cache):
    _, shards = setup
    source = resolve_source(shards / "train.manifest.json")
    opened = open_feature_cache(cache)
    assert opened.total_crops == 2 * source.total_samples
    assert opened.manifest["crops_per_utterance"] == 2 and opened.num_speakers == source.num_speakers
    first = read_feature_file(opened.files[0])
    assert first["pooled"].dtype == torch.float16 and first["pooled"].shape[1] == opened.manifest["pooled_dim"]
    assert sorted(set(first["augment_ids"].tolist())) == [0, 1]
    assert len(first["keys"]) == len(first["labels"]) == len(first["starts"])


def test_cached_features_equal_the_trunk_on_the_same_crop(setup, cache):
    root, shards = setup
    opened = open_feature_cache(cache)
    payload = read_feature_file(opened.files[0])
    trunk = load_pretrained(root / "backbone.pt").eval()
    audio = {s["key"]: s["flac"] for s in iter_tar_samples([payload["shard"]], SkipCounter())}
    for row in (0, 3):
        key, start = payload["keys"][row], int(payload["starts"][row])
        wave = torch.from_numpy(read_flac_crop(audio[key], start, 16000))[None]
        with torch.no_grad():
            expected = trunk.pooled(wave)[0]
        assert torch.allclose(payload["pooled"][row].float(), expected, rtol=2e-3, atol=2e-3)


def test_a_resumed_build_keeps_the_files_already_written(setup, cache, tmp_path):
    root, shards = setup
    copy = tmp_path / "copy"
    copy.mkdir()
    files = open_feature_cache(cache).files
    for path in files[1:]:
        (copy / path.name).write_bytes(path.read_bytes())
    stamps = {p.name: (copy / p.name).stat().st_mtime_ns for p in files[1:]}
    cfg = config_from_dict(mrl_config(root, shards, root / "unused"))
    build_feature_cache(cfg, copy, crops_per_utterance=2, batch_size=8, progress=False)
    assert {name: (copy / name).stat().st_mtime_ns for name in stamps} == stamps
    rebuilt = read_feature_file(copy / files[0].name)
    assert torch.equal(rebuilt["pooled"], read_feature_file(files[0])["pooled"])
    assert json.loads((copy / FEATURES_MANIFEST).read_text()) == json.loads((cache / FEATURES_MANIFEST).read_text())


def test_a_torn_feature_file_is_an_error_naming_it_and_the_rebuild(tmp_path):
    (tmp_path / "train-000000.features.pt").write_bytes(b"not a torch file")
    with pytest.raises(FeatureCacheError, match=r"train-000000.features.pt: unreadable.*cache_features.py"):
        read_feature_file(tmp_path / "train-000000.features.pt")


def test_a_folder_built_for_other_settings_is_refused(setup, cache):
    root, shards = setup
    cfg = config_from_dict(mrl_config(root, shards, root / "unused"))
    with pytest.raises(ConfigError, match="crops_per_utterance"):
        build_feature_cache(cfg, cache, crops_per_utterance=3, progress=False)


def test_the_head_trains_from_the_cache_and_validates(setup, cache, tmp_path):
    root, shards = setup
    run = tmp_path / "cached"
    result = train(config_from_dict(mrl_config(root, shards, run, data={"features": str(cache)})))
    assert result["status"] == "finished"
    assert [r["step"] for r in read_metrics(run)] == [0, 3, 6]
    assert (run / "best.pt").is_file()


def test_a_cache_from_another_trunk_or_crop_length_is_refused(setup, cache, tmp_path):
    root, shards = setup
    with pytest.raises(FeatureCacheError, match="another trunk"):
        Trainer(
            config_from_dict(
                mrl_config(root, shards, tmp_path / "a", backbone="other-backbone.pt", data={"features": str(cache)})
            )
        )
    with pytest.raises(FeatureCacheError, match="1.5"):
        Trainer(
            config_from_dict(
                mrl_config(root, shards, tmp_path / "b", data={"features": str(cache), "crop_seconds": 1.5})
            )
        )


def test_cached_features_need_a_trunk_frozen_for_the_whole_run(setup, cache, tmp_path):
    root, shards = setup
    for training in ({"freeze_backbone": False}, {"unfreeze_after_steps": 2}, {"mode": "classifier"}):
        with pytest.raises(ConfigError, match="data.features"):
            config_from_dict(mrl_config(root, shards, tmp_path, data={"features": str(cache)}, training=training))


class RecomputeLoader:
    """The cache's own batches (same crops, same order), but as waves decoded from the audio:
    what a recompute run with the same crops sees."""

    def __init__(self, features_loader, shards: Path):
        self.inner, self.num_classes, self.skipped = features_loader, features_loader.num_classes, 0
        urls = resolve_source(shards / "train.manifest.json").urls
        self.audio = {s["key"]: s["flac"] for s in iter_tar_samples(urls, SkipCounter())}

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        for batch in self.inner:
            waves = [
                read_flac_crop(self.audio[key], int(start), 16000) for key, start in zip(batch["key"], batch["start"])
            ]
            yield {
                "wave": torch.from_numpy(np.stack(waves)),
                "label": batch["label"],
                "key": batch["key"],
                "skipped": 0,
            }


@pytest.mark.slow
def test_a_cached_run_scores_like_a_recompute_run_with_the_same_crops(setup, cache, tmp_path):
    root, shards = setup
    sections = {
        "model": {"head_init": "pretrained"},
        "training": {"max_steps": 12, "steps_per_epoch": 6},
        "validation": {"every_steps": 12},
    }
    cached = Trainer(
        config_from_dict(mrl_config(root, shards, tmp_path / "cached", data={"features": str(cache)}, **sections))
    )
    recompute = Trainer(config_from_dict(mrl_config(root, shards, tmp_path / "recompute", **sections)))
    recompute.train_loader = RecomputeLoader(cached._train_loader(epoch=0), shards)
    cached.fit()
    recompute.fit()
    trials = len((shards / "val.trials.txt").read_text().splitlines())
    resolution = 2.0 / trials  # balanced trials: 1 / (trials of each kind)
    last_cached, last_recompute = read_metrics(tmp_path / "cached")[-1], read_metrics(tmp_path / "recompute")[-1]
    for dim in ("32", "64", "192"):
        assert abs(last_cached["eer"][dim] - last_recompute["eer"][dim]) <= resolution


@pytest.mark.slow
def test_two_ranks_share_the_shards_and_write_what_one_rank_writes(setup, cache, tmp_path):
    root, shards = setup
    config = write_config(tmp_path / "cfg.yaml", mrl_config(root, shards, tmp_path / "unused"))
    command = accelerate_two_cpu_processes(config, 29671)
    command[command.index(str(REPO / "launch" / "train.py"))] = str(REPO / "launch" / "cache_features.py")
    command += ["--output", str(tmp_path / "two"), "--crops-per-utterance", "2", "--batch-size", "8", "--no-progress"]
    process = launch(command, tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    one, two = open_feature_cache(cache), open_feature_cache(tmp_path / "two")
    assert [p.name for p in one.files] == [p.name for p in two.files]
    for a, b in zip(one.files, two.files):
        assert torch.allclose(read_feature_file(a)["pooled"].float(), read_feature_file(b)["pooled"].float(), atol=1e-3)


def test_features_auto_builds_the_run_s_own_cache_first_and_reuses_it_on_resume(setup, tmp_path):
    root, shards = setup
    run = tmp_path / "auto"
    sections = {
        "data": {"features": "auto", "feature_crops_per_utterance": 2, "crops_per_speaker": 2},
        "training": {"max_steps": 3, "steps_per_epoch": 3},
    }
    train(config_from_dict(mrl_config(root, shards, run, **sections)))
    cache = open_feature_cache(run / "features")
    stamp = (run / "features" / FEATURES_MANIFEST).stat().st_mtime_ns
    assert cache.manifest["crops_per_utterance"] == 2
    sections["training"]["max_steps"] = 6
    train(config_from_dict(mrl_config(root, shards, run, **sections)), resume="latest")
    assert (run / "features" / FEATURES_MANIFEST).stat().st_mtime_ns == stamp
    assert read_metrics(run)[-1]["step"] == 6


def test_speaker_balanced_batches_hold_crops_per_speaker_crops_of_each_speaker(cache):
    from mrl_dist.data.feature_loader import FeatureLoader

    loader = FeatureLoader(
        open_feature_cache(cache), batch_size=8, steps_per_epoch=5, seed=0, rank=0, world_size=1, crops_per_speaker=2
    )
    for batch in loader:
        labels = batch["label"].tolist()
        assert len(labels) == 8 and all(labels.count(label) == 2 for label in labels)
    with pytest.raises(ValueError, match="does not divide"):
        FeatureLoader(
            open_feature_cache(cache),
            batch_size=8,
            steps_per_epoch=1,
            seed=0,
            rank=0,
            world_size=1,
            crops_per_speaker=3,
        )
