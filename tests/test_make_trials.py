"""launch/make_trials.py: a packed split -> held-out speakers with balanced trials + the rest for training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrl_dist.data.cli import make_trials_main
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.shard_reader import SkipCounter, iter_tar_samples
from mrl_dist.data.trials import read_trials, trial_keys
from mrl_dist.demo.run import prepare_demo_shards

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = 3


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """The demo corpus's `train` split: 6 speakers x 4 utterances, in several small shards."""
    shards = prepare_demo_shards(tmp_path_factory.mktemp("split"), speakers=8, utterances=4, seed=5, shard_size_mb=0.1)
    return shards / "train.manifest.json"


def make_trials(*argv) -> int:
    return make_trials_main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def val(split, tmp_path_factory) -> Path:
    """`make_trials.py --holdout-speakers 3 --output OUT/val --seed 1`; returns the prefix."""
    prefix = tmp_path_factory.mktemp("holdout") / "val"
    assert make_trials("--data", split, "--holdout-speakers", HELD_OUT, "--output", prefix, "--seed", 1) == 0
    return prefix


def samples_of(manifest_path: Path) -> list[dict]:
    """Every sample of a manifest's shards: {"key", "speaker", "label"}, read back from the tars."""
    skips = SkipCounter("test")
    samples = [
        {"key": s["key"], **{k: v for k, v in json.loads(s["json"]).items() if k in ("speaker", "label")}}
        for s in iter_tar_samples(read_manifest(manifest_path).urls, skips)
    ]
    assert skips.total == 0
    return samples


def files_of(prefix: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(prefix.parent.iterdir()) if not path.name.startswith(".")}


def test_held_out_and_rest_split_the_speakers_and_every_sample(split, val):
    source = samples_of(split)
    held, rest = samples_of(Path(f"{val}.manifest.json")), samples_of(Path(f"{val}.rest.manifest.json"))
    held_speakers, rest_speakers = {s["speaker"] for s in held}, {s["speaker"] for s in rest}
    assert len(held_speakers) == HELD_OUT and not held_speakers & rest_speakers
    assert held_speakers | rest_speakers == set(read_manifest(split).speakers)
    assert sorted(s["key"] for s in held + rest) == sorted(s["key"] for s in source)


def test_each_subset_labels_its_speakers_0_to_k_minus_1_as_its_manifest_says(val):
    for manifest_path in (Path(f"{val}.manifest.json"), Path(f"{val}.rest.manifest.json")):
        manifest = read_manifest(manifest_path)
        assert sorted(manifest.speakers.values()) == list(range(manifest.num_speakers))
        samples = samples_of(manifest_path)
        assert all(s["label"] == manifest.speakers[s["speaker"]] for s in samples)
        assert manifest.total_samples == len(samples) == sum(manifest.speaker_counts.values())
        assert sum(shard.samples for shard in manifest.shards) == len(samples)


def test_trials_are_balanced_distinct_and_over_held_out_utterances_only(val):
    manifest = read_manifest(f"{val}.manifest.json")
    assert manifest.trials_path == Path(f"{val}.trials.txt")
    trials = read_trials(manifest.trials_path)
    targets = [t for t in trials if t.label == 1]
    assert len(targets) == len(trials) - len(targets) == HELD_OUT * 6  # every pair of 4 utterances each
    assert len({frozenset((t.enroll, t.test)) for t in trials}) == len(trials)
    assert all(t.enroll != t.test for t in trials)
    assert all((t.enroll.split("/")[0] == t.test.split("/")[0]) == bool(t.label) for t in trials)
    assert set(trial_keys(trials)) == {s["key"] for s in samples_of(Path(f"{val}.manifest.json"))}


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_speakers(split, val, tmp_path):
    again = tmp_path / "same" / "val"
    assert make_trials("--data", split, "--holdout-speakers", HELD_OUT, "--output", again, "--seed", 1) == 0
    assert files_of(again) == files_of(val)
    chosen = set()
    for seed in range(2, 6):
        other = tmp_path / f"seed{seed}" / "val"
        assert make_trials("--data", split, "--holdout-speakers", HELD_OUT, "--output", other, "--seed", seed) == 0
        chosen.add(tuple(read_manifest(f"{other}.manifest.json").speakers))
    assert len(chosen) > 1


def test_target_pairs_n_draws_n_targets_and_n_non_targets(split, tmp_path):
    prefix = tmp_path / "val"
    assert make_trials("--data", split, "--holdout-speakers", 2, "--output", prefix, "--target-pairs", 5) == 0
    labels = [t.label for t in read_trials(f"{prefix}.trials.txt")]
    assert labels.count(1) == labels.count(0) == 5


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_trials.py: error: ")
    return lines[0]


def test_holding_out_every_speaker_is_refused(split, tmp_path, capsys):
    assert make_trials("--data", split, "--holdout-speakers", 6, "--output", tmp_path / "val") == 2
    assert "only 6 speakers" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_held_out_speakers_with_one_utterance_are_listed(split, capsys):
    payload = json.loads(split.read_text())
    payload["speaker_counts"] = {speaker: 1 for speaker in payload["speakers"]}
    single = split.with_name("single.manifest.json")  # beside the shards it names
    single.write_text(json.dumps(payload))
    assert make_trials("--data", single, "--holdout-speakers", 2, "--output", split.parent / "x" / "val") == 2
    line = one_error_line(capsys)
    assert "fewer than 2 utterances" in line and line.count(" (1)") == 2


def test_an_output_over_the_source_split_is_refused(split, capsys):
    assert make_trials("--data", split, "--holdout-speakers", 2, "--output", split.parent / "train") == 2
    assert "would overwrite" in one_error_line(capsys)


def test_an_unreadable_manifest_is_one_line_from_the_script(tmp_path):
    broken = tmp_path / "train.manifest.json"
    broken.write_text("not json")
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "make_trials.py"), "--data", str(broken), "--holdout-speakers", "2"]
        + ["--output", str(tmp_path / "val")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not readable JSON" in lines[0], result.stderr


def test_training_batches_of_the_rest_never_hold_a_held_out_speaker(val):
    from mrl_dist.data.pipeline import make_train_loader

    rest = read_manifest(f"{val}.rest.manifest.json")
    held = set(read_manifest(f"{val}.manifest.json").speakers)
    loader = make_train_loader(
        str(rest.path), batch_size=8, crop_seconds=0.5, num_workers=0, seed=0, rank=0, world_size=1, shuffle_buffer=8
    )
    assert loader.num_classes == rest.num_speakers
    for batch in loader:
        assert not {key.split("/")[0] for key in batch["key"]} & held
        assert all(0 <= label < rest.num_speakers for label in batch["label"].tolist())
        assert [rest.speakers[key.split("/")[0]] for key in batch["key"]] == batch["label"].tolist()


@pytest.mark.slow
def test_the_rest_trains_and_the_held_out_set_validates_it(val, tmp_path):
    from accelerate.state import AcceleratorState

    from mrl_dist.config import config_from_dict
    from mrl_dist.train.loop import train

    from train_configs import read_metrics, tiny_config

    AcceleratorState._reset_state(reset_partial_state=True)
    run_dir = tmp_path / "run"
    data = {"train": f"{val}.rest.manifest.json", "val": f"{val}.manifest.json"}
    result = train(config_from_dict(tiny_config(run_dir, val.parent, data=data)))
    assert result["status"] == "finished"
    assert [record["step"] for record in read_metrics(run_dir)] == [2, 4]


def test_the_held_out_manifest_evaluates_with_its_trials(val, tmp_path, capsys):
    import torch

    from mrl_dist.eval.cli import evaluate_main
    from mrl_dist.models import ReDimNetMRL, build_preset

    torch.manual_seed(0)
    checkpoint = tmp_path / "best.pt"
    ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained").save_checkpoint(checkpoint)
    argv = ["--checkpoint", checkpoint, "--data", f"{val}.manifest.json", "--max-seconds", 1, "--no-det", "--json"]
    assert evaluate_main([str(arg) for arg in argv]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_trials"] == 2 * HELD_OUT * 6 and result["num_targets"] == HELD_OUT * 6
    assert result["trials"].endswith("val.trials.txt")
