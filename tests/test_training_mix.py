"""Several corpora in one run (data.train as a list) and several named validation sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrl_dist.config import ConfigError, config_from_dict, validate
from mrl_dist.data.feature_loader import FeatureLoader
from mrl_dist.data.features import open_feature_cache, read_feature_file
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.mix import resolve_training_mix
from mrl_dist.data.pipeline import make_train_loader
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.train.feature_cache import build_feature_cache
from mrl_dist.train.loop import train

from train_configs import read_metrics, tiny_config


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic corpora whose speakers have the same names (id00000, ...): folders holding
    `train.manifest.json` and `val.manifest.json` each."""
    root = tmp_path_factory.mktemp("mix")
    one = prepare_demo_shards(root / "one", speakers=8, utterances=4, seed=11, shard_size_mb=0.1)
    two = prepare_demo_shards(root / "two", speakers=6, utterances=4, seed=12, shard_size_mb=0.1)
    return one, two


def mix(two_corpora, weights=(1.0, 1.0), names=("one", "two")) -> list[dict]:
    return [
        {"manifest": str(folder / "train.manifest.json"), "weight": weight, "name": name}
        for folder, weight, name in zip(two_corpora, weights, names)
    ]


def loader(source, steps: int, **options):
    return make_train_loader(
        source,
        batch_size=8,
        crop_seconds=0.5,
        num_workers=0,
        seed=0,
        rank=0,
        world_size=1,
        shuffle_buffer=8,
        steps_per_epoch=steps,
        **options,
    )


# ---------------------------------------------------------------------------- config


def test_data_train_takes_a_path_or_a_list_of_weighted_manifests():
    plain = config_from_dict({"data": {"train": "a.manifest.json"}})
    assert plain.data.train == "a.manifest.json"
    mixed = config_from_dict({"data": {"train": [{"manifest": "a.manifest.json", "weight": 2}, {"manifest": "b"}]}})
    assert [(c.manifest, c.weight, c.name) for c in mixed.data.train] == [
        ("a.manifest.json", 2.0, None),
        ("b", 1.0, None),
    ]


@pytest.mark.parametrize(
    "train, key",
    [
        ([{"manifest": "a.manifest.json", "weight": 0}], "data.train[0].weight"),
        ([{"manifest": "a.manifest.json"}, {"manifest": "b.manifest.json", "weight": -1}], "data.train[1].weight"),
        (
            [{"manifest": "a.manifest.json", "name": "x"}, {"manifest": "b.manifest.json", "name": "x"}],
            "data.train[1].name",
        ),
        ([], "data.train"),
        (7, "data.train"),
    ],
)
def test_a_bad_mix_is_a_config_error_naming_the_entry(train, key):
    with pytest.raises(ConfigError) as raised:
        validate(config_from_dict({"data": {"train": train}}))
    assert raised.value.key == key


def test_best_metric_may_name_a_validation_set():
    sets = [{"name": "vox1-o", "manifest": "v.manifest.json"}, {"name": "own", "manifest": "o.manifest.json"}]
    validate(config_from_dict({"validation": {"sets": sets}, "checkpoint": {"best_metric": "own/eer@64"}}))
    with pytest.raises(ConfigError, match="names validation set 'nope'; the sets are \\['vox1-o', 'own'\\]"):
        validate(config_from_dict({"validation": {"sets": sets}, "checkpoint": {"best_metric": "nope/mean_eer"}}))


# ---------------------------------------------------------------------------- resolving a mix


def test_each_corpus_keeps_its_speakers_apart_and_the_classes_add_up(two_corpora):
    one, two = (read_manifest(folder / "train.manifest.json") for folder in two_corpora)
    assert set(one.speakers) & set(two.speakers)  # the same speaker names in both corpora
    resolved = resolve_training_mix(mix(two_corpora))
    assert [(p.name, p.label_offset, p.key_prefix) for p in resolved.parts] == [
        ("one", 0, "one/"),
        ("two", one.num_speakers, "two/"),
    ]
    assert resolved.num_speakers == one.num_speakers + two.num_speakers
    assert resolved.total_samples == one.total_samples + two.total_samples


def test_two_corpora_with_the_same_manifest_name_need_names(two_corpora):
    unnamed = [{"manifest": str(folder / "train.manifest.json")} for folder in two_corpora]
    with pytest.raises(ConfigError, match=r"data.train\[1\].name: 'train' is data.train\[0\]'s name too"):
        resolve_training_mix(unnamed)


def test_an_empty_corpus_in_a_mix_is_an_error_naming_it(two_corpora, tmp_path):
    manifest = json.loads((two_corpora[1] / "train.manifest.json").read_text())
    empty = tmp_path / "empty.manifest.json"
    empty.write_text(json.dumps({**manifest, "shards": [], "total_samples": 0}))
    with pytest.raises(ConfigError, match=rf"data.train\[1\].manifest: {empty} holds no samples"):
        resolve_training_mix([mix(two_corpora)[0], {"manifest": str(empty)}])


def test_a_mix_entry_must_be_a_manifest(two_corpora):
    with pytest.raises(ConfigError, match=r"data.train\[1\].manifest: must be a `NAME.manifest.json`"):
        resolve_training_mix([mix(two_corpora)[0], {"manifest": "shards/train-{000000..000003}.tar"}])


# ---------------------------------------------------------------------------- loading


def test_a_rank_draws_the_corpora_in_proportion_to_their_weights(two_corpora):
    offset = read_manifest(two_corpora[0] / "train.manifest.json").num_speakers
    batches = list(loader(mix(two_corpora, weights=(3.0, 1.0)), steps=40))
    keys = [key for batch in batches for key in batch["key"]]
    labels = [label for batch in batches for label in batch["label"].tolist()]
    from_one = [key.startswith("one/") for key in keys]
    assert all(key.startswith(("one/", "two/")) for key in keys)
    assert abs(sum(from_one) / len(keys) - 0.75) < 0.07  # 320 crops: 3 standard deviations
    assert all((label < offset) == first for label, first in zip(labels, from_one))


def test_a_mix_is_read_the_same_way_every_time(two_corpora):
    first, second = (list(loader(mix(two_corpora), steps=3)) for _ in range(2))
    assert [b["key"] for b in first] == [b["key"] for b in second]


def test_a_list_of_one_corpus_reads_exactly_like_its_manifest(two_corpora):
    manifest = str(two_corpora[0] / "train.manifest.json")
    plain = list(loader(manifest, steps=3))
    listed = list(loader([{"manifest": manifest, "weight": 2.0}], steps=3))
    assert [b["key"] for b in plain] == [b["key"] for b in listed]
    assert all(b1["label"].equal(b2["label"]) for b1, b2 in zip(plain, listed))


def test_speed_perturbation_over_a_mix_triples_the_summed_classes(two_corpora):
    speakers = resolve_training_mix(mix(two_corpora)).num_speakers
    speed = loader(mix(two_corpora), steps=2, augment={"speed_perturb": True})
    assert speed.num_classes == 3 * speakers
    assert all(0 <= label < 3 * speakers for batch in speed for label in batch["label"].tolist())


# ---------------------------------------------------------------------------- feature cache


def frozen_tiny_config(run_dir: Path, two_corpora, weights=(1.0, 1.0)):
    return config_from_dict(
        tiny_config(
            run_dir,
            two_corpora[0],
            data={"train": mix(two_corpora, weights)},
            training={"mode": "mrl", "freeze_backbone": True},
            model={"backbone": "tiny", "pretrained": None, "mrl_dims": [32, 64, 192], "head_init": "random"},
        )
    )


@pytest.mark.slow
def test_the_feature_cache_of_a_mix_namespaces_its_rows_and_loads_by_weight(two_corpora, tmp_path):
    cfg = frozen_tiny_config(tmp_path / "run", two_corpora)
    build_feature_cache(cfg, tmp_path / "features", crops_per_utterance=1, progress=False)
    cache = open_feature_cache(tmp_path / "features")
    offset = read_manifest(two_corpora[0] / "train.manifest.json").num_speakers
    assert sorted(cache.corpora) == ["one", "two"]
    assert cache.num_speakers == resolve_training_mix(cfg.data.train).num_speakers
    for name, files in cache.corpora.items():
        rows = [read_feature_file(path) for path in files]
        assert all(key.startswith(f"{name}/") for part in rows for key in part["keys"])
        labels = [label for part in rows for label in part["labels"].tolist()]
        assert all((label >= offset) == (name == "two") for label in labels)
    weighted = FeatureLoader(
        cache,
        batch_size=16,
        steps_per_epoch=30,
        seed=0,
        rank=0,
        world_size=1,
        corpus_weights={"one": 1.0, "two": 3.0},
    )
    keys = [key for batch in weighted for key in batch["key"]]
    assert abs(sum(key.startswith("two/") for key in keys) / len(keys) - 0.75) < 0.06
    with pytest.raises(ValueError, match=r"holds the corpora \['one', 'two'\], but data.train mixes \['one'\]"):
        FeatureLoader(cache, batch_size=8, steps_per_epoch=1, seed=0, rank=0, world_size=1, corpus_weights={"one": 1})


# ---------------------------------------------------------------------------- a whole run


@pytest.mark.slow
def test_a_run_mixing_two_corpora_trains_and_validates_on_both_sets(two_corpora, tmp_path):
    one, two = two_corpora
    sets = [
        {"name": "one", "manifest": str(one / "val.manifest.json")},
        {"name": "two", "manifest": str(two / "val.manifest.json"), "trials": str(two / "val.trials.txt")},
    ]
    run_dir = tmp_path / "run"
    config = tiny_config(
        run_dir,
        one,
        data={"train": mix(two_corpora, weights=(1.0, 0.5))},
        validation={"sets": sets},
        checkpoint={"best_metric": "two/mean_eer"},
    )
    result = train(config_from_dict(config))
    assert result["status"] == "finished"
    records = read_metrics(run_dir)
    assert [(r["step"], r["set"]) for r in records] == [(2, "one"), (2, "two"), (4, "one"), (4, "two")]
    on_two = [r["eer"]["native"] for r in records if r["set"] == "two"]
    assert result["best_metric"] == min(on_two)  # chosen on the named set
    classes = resolve_training_mix(config["data"]["train"]).num_speakers
    assert f"classes={classes} " in (run_dir / "train.log").read_text()
