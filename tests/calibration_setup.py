"""What the calibration, verify and windows tests share, built once per test process: a synthetic
corpus whose train speakers form a calibration split (balanced trials, >= 100 of each class) and
whose test speakers form an evaluation split, both packed; a tiny MRL checkpoint; and that
checkpoint calibrated by launch/calibrate.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrl_dist.data import packing
from mrl_dist.data.trials import balanced_trials, write_trials
from mrl_dist.demo.corpus import DemoCorpus, make_demo_corpus
from mrl_dist.eval.calibrate_cli import calibrate_main
from mrl_dist.eval.calibration import CALIBRATION_FORMAT, FAR_TARGETS, fit_calibration
from mrl_dist.models import ReDimNetMRL, build_preset

#: Every utterance is embedded from its first second: the tests check behaviour, not accuracy.
MAX_SECONDS = "0.5"


@dataclass(frozen=True)
class CalibrationSetup:
    corpus: DemoCorpus
    calibration_data: Path  # cal.manifest.json: the train speakers, with cal.trials.txt
    evaluation_data: Path  # val.manifest.json: the test speakers, with the corpus trials
    checkpoint: Path  # a tiny ReDimNetMRL, dims 64..256 + native
    calibrated: Path  # the checkpoint plus its calibration


_BUILT: dict[str, CalibrationSetup] = {}


def tiny_checkpoint(path: Path) -> Path:
    """A tiny ReDimNetMRL (dims 64, 128, 192, 256 and native; seeded) saved at `path`."""
    torch.manual_seed(0)
    ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained").save_checkpoint(path)
    return path


def hand_calibrated(checkpoint: Path, output: Path, speakers: list[str]) -> Path:
    """`checkpoint` plus a calibration fitted on synthetic scores (targets N(0.6, 0.1), non-targets
    N(0.1, 0.1)) as if from trials of `speakers`: the stored form, without embedding any audio."""
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.6, 0.1, 200), rng.normal(0.1, 0.1, 2000)]
    labels = np.r_[np.ones(200), np.zeros(2000)].astype(int)
    names = ["64", "128", "192", "256", "native"]
    calibration = {
        "format": CALIBRATION_FORMAT,
        "dims": fit_calibration({name: scores for name in names}, labels),
        "far_targets": list(FAR_TARGETS),
        "trials": {"path": "synthetic", "num_trials": 2200, "num_targets": 200, "num_nontargets": 2000},
        "speakers": sorted(speakers),
        "extraction": {"max_seconds": None, "crop_tolerance": 0.0},
    }
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({**payload, "calibration": calibration}, output)
    return output


def calibration_setup(tmp_path_factory) -> CalibrationSetup:
    """The shared set-up (made on the first call; about 5 s on 2 cores)."""
    if "setup" in _BUILT:
        return _BUILT["setup"]
    root = tmp_path_factory.mktemp("calibration")
    # 8 train speakers x 6 utterances: 8 * C(6, 2) = 120 target trials, as many non-targets.
    corpus = make_demo_corpus(root / "corpus", speakers=16, utterances=6, seed=3, test_fraction=0.5)
    utterances: dict[str, list[str]] = {}
    for path in sorted(corpus.train_dir.rglob("*.wav")):
        relative = path.relative_to(corpus.train_dir).as_posix()
        utterances.setdefault(relative.split("/", 1)[0], []).append(relative)
    cal_trials = write_trials(root / "cal-trials.txt", balanced_trials(utterances, seed=0))
    shards = root / "shards"
    packing.pack_split([corpus.train_dir], shards, "cal", trials=cal_trials, workers=1, progress=False)
    packing.pack_split([corpus.test_dir], shards, "val", trials=corpus.trials, workers=1, progress=False)
    checkpoint = tiny_checkpoint(root / "run" / "best.pt")
    calibrated = root / "run" / "calibrated.pt"
    argv = ["--checkpoint", checkpoint, "--data", shards / "cal.manifest.json", "--output", calibrated]
    code = calibrate_main([str(a) for a in [*argv, "--max-seconds", MAX_SECONDS]])
    assert code == 0
    _BUILT["setup"] = CalibrationSetup(
        corpus, shards / "cal.manifest.json", shards / "val.manifest.json", checkpoint, calibrated
    )
    return _BUILT["setup"]
