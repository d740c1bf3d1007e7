"""Calibration per dim: the maths on hand-checkable cases (eval/calibration.py), then
launch/calibrate.py and the calibrated fields of launch/evaluate.py end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from calibration_setup import MAX_SECONDS, calibration_setup, hand_calibrated, tiny_checkpoint
from conftest import SPEAKERS

from mrl_dist.data.trials import Trial, read_trials
from mrl_dist.eval.calibrate_cli import calibrate_main
from mrl_dist.eval.calibration import (
    actual_dcf,
    cllr,
    far_threshold,
    fit_affine,
    min_cllr,
    overlap_problem,
    pav,
    pav_llr,
    rates_at_threshold,
    trial_speakers,
)
from mrl_dist.eval.cli import evaluate_main
from mrl_dist.eval.metrics import compute_min_dcf
from mrl_dist.models import ReDimNetMRL
from mrl_dist.models.checkpoints import load_any_checkpoint


# ------------------------------------------------------------------------------ the maths
def test_pav_pools_a_violating_pair_into_its_mean():
    assert pav([0, 1, 0, 1]).tolist() == [0, 0.5, 0.5, 1]


def test_pav_merges_back_until_monotone_and_honours_weights():
    assert pav([3, 2, 1]).tolist() == [2, 2, 2]
    assert pav([1, 0], weights=[3, 1]).tolist() == [0.75, 0.75]
    assert pav([0, 0.2, 0.9]).tolist() == [0, 0.2, 0.9]  # already monotone: unchanged


def test_tied_scores_get_one_pav_llr():
    llr = pav_llr([1.0, 1.0, 2.0, 2.0], [0, 1, 1, 1])
    assert llr[0] == llr[1] and llr[2] == llr[3] and llr[2] > llr[0]


def test_cllr_of_a_system_that_always_says_zero_is_one_bit():
    assert cllr(np.zeros(6), [1, 0, 1, 0, 0, 0]) == pytest.approx(1.0)


def test_cllr_of_a_confident_wrong_system_exceeds_one_bit_and_of_a_right_one_nears_zero():
    labels = [1, 1, 0, 0]
    assert cllr([20, 20, -20, -20], labels) < 1e-8
    assert cllr([-5, -5, 5, 5], labels) > 5


def test_uninformative_scores_have_min_cllr_one_bit():
    assert min_cllr(np.full(10, 0.3), [1] * 5 + [0] * 5) == pytest.approx(1.0)


def test_perfectly_separated_scores_calibrate_to_the_right_side_of_zero_and_finite():
    scores = np.r_[np.linspace(0.6, 0.9, 150), np.linspace(-0.2, 0.3, 150)]
    labels = np.r_[np.ones(150), np.zeros(150)].astype(int)
    slope, offset = fit_affine(scores, labels)
    llr = slope * scores + offset
    assert np.isfinite([slope, offset]).all() and slope > 0
    assert (llr[:150] > 0).all() and (llr[150:] < 0).all()
    assert min_cllr(scores, labels) == 0.0
    assert cllr(llr, labels) < 0.01


def test_fit_recovers_the_true_llr_whatever_the_class_balance():
    # Targets N(2, 1), non-targets N(0, 1): the true LLR is 2 s - 2; with ten non-targets per
    # target the prior weighting must still give an LLR, not a posterior log-odds.
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(2, 1, 4000), rng.normal(0, 1, 40000)]
    labels = np.r_[np.ones(4000), np.zeros(40000)].astype(int)
    slope, offset = fit_affine(0.25 * scores + 0.5, labels)  # a cosine-like scale and shift
    assert slope * 0.25 == pytest.approx(2.0, abs=0.1)
    assert offset + slope * 0.5 == pytest.approx(-2.0, abs=0.1)


def test_min_cllr_is_at_most_the_cllr_of_the_fitted_map():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(1, 1, 300), rng.normal(0, 1, 300)]
    labels = np.r_[np.ones(300), np.zeros(300)].astype(int)
    slope, offset = fit_affine(scores, labels)
    assert min_cllr(scores, labels) <= cllr(slope * scores + offset, labels) < cllr(np.zeros(600), labels)


def test_actual_dcf_on_a_hand_computed_case():
    # p = 0.01: accept when llr >= log(99) = 4.6. Targets: half missed; non-targets: a quarter accepted.
    llr = [5, 5, 0, 0, 5, -5, -5, -5]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert actual_dcf(llr, labels, 0.01) == pytest.approx((0.01 * 0.5 + 0.99 * 0.25) / 0.01)


def test_actual_dcf_of_a_well_calibrated_system_is_near_its_min_dcf():
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(3, 1, 5000), rng.normal(0, 1, 50000)]
    labels = np.r_[np.ones(5000), np.zeros(50000)].astype(int)
    llr = 3 * scores - 4.5  # the true LLR of these two Gaussians
    assert actual_dcf(llr, labels, 0.05) == pytest.approx(compute_min_dcf(scores, labels, 0.05)[0], abs=0.02)


def test_the_far_threshold_accepts_that_share_of_non_targets():
    scores = np.r_[np.arange(1000.0), np.full(10, 2000.0)]
    labels = np.r_[np.zeros(1000), np.ones(10)].astype(int)
    for rate in (0.001, 0.01, 0.05):
        far, frr = rates_at_threshold(scores, labels, far_threshold(scores, labels, rate))
        assert far == pytest.approx(rate) and frr == 0.0


def test_speakers_are_the_first_key_component_unless_the_manifest_says_otherwise():
    trials = [Trial(1, "id1/v/1.wav", "id1/v/2.wav"), Trial(0, "id1/v/1.wav", "id2/w/1.wav")]
    assert trial_speakers(trials) == {"id1", "id2"}
    assert trial_speakers(trials, ["id1", "id2", "id3"]) == {"id1", "id2"}
    kaldi = [Trial(0, "id1-v-1", "id2-w-1")]  # keys that do not start with the speaker: the whole split
    assert trial_speakers(kaldi, ["id1", "id2", "id3"]) == {"id1", "id2", "id3"}


def test_an_overlap_names_one_shared_speaker():
    calibration = {"speakers": ["id7", "id8"], "trials": {"path": "cal.txt"}}
    problem = overlap_problem(calibration, [Trial(0, "id8/v/1.wav", "id9/v/1.wav")], "--trials t.txt", "x")
    assert "id8" in problem and "cal.txt" in problem
    assert overlap_problem(calibration, [Trial(0, "id1/v/1.wav", "id9/v/1.wav")], "--trials t.txt", "x") is None


# ------------------------------------------------------------------------------ refusals (fast)
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(a tiny checkpoint, the same with a calibration whose speakers are the packed corpus's)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    plain = tiny_checkpoint(folder / "best.pt")
    return plain, hand_calibrated(plain, folder / "calibrated.pt", SPEAKERS)


def test_a_calibrated_file_still_loads_as_a_model(checkpoints):
    _, calibrated = checkpoints
    assert isinstance(ReDimNetMRL.from_checkpoint(calibrated), ReDimNetMRL)
    assert load_any_checkpoint(calibrated).kind == "mrl"


def test_too_few_trials_of_a_class_are_refused_naming_the_counts_and_the_file(checkpoints, packed, tmp_path, capsys):
    trials = read_trials(packed.with_name("train.trials.txt"))
    targets = sum(t.label for t in trials)
    argv = ["--checkpoint", checkpoints[0], "--data", packed, "--output", tmp_path / "out.pt"]
    assert calibrate_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{targets} target and {len(trials) - targets} non-target trials" in err
    assert "train.trials.txt" in err and "at least 100 of each" in err
    assert not (tmp_path / "out.pt").exists()


def test_evaluating_on_calibration_speakers_is_refused_naming_one(checkpoints, packed, capsys):
    argv = ["--checkpoint", checkpoints[1], "--data", packed, "--no-det"]
    assert evaluate_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "also in the calibration trials" in err and "e.g. id0000" in err


# ------------------------------------------------------------------------------ end to end (slow)
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return calibration_setup(tmp_path_factory)


@pytest.mark.slow
def test_calibrate_stores_every_dim_its_thresholds_and_speakers(setup):
    payload = torch.load(setup.calibrated, map_location="cpu", weights_only=True)
    calibration = payload["calibration"]
    assert list(calibration["dims"]) == ["64", "128", "192", "256", "native"]
    assert calibration["far_targets"] == [0.001, 0.01, 0.05]
    assert set(calibration["dims"]["64"]["thresholds"]) == {"0.001", "0.01", "0.05"}
    assert calibration["trials"]["num_targets"] >= 100 and calibration["trials"]["num_nontargets"] >= 100
    assert calibration["speakers"] == setup.corpus.speakers_train
    assert load_any_checkpoint(setup.calibrated).kind == "mrl"


@pytest.mark.slow
def test_calibration_lowers_cllr_below_the_raw_cosine_scores_on_its_own_trials(setup):
    for entry in torch.load(setup.calibrated, weights_only=True)["calibration"]["dims"].values():
        assert entry["min_cllr"] <= entry["cllr"] < entry["cllr_raw"]


def evaluate_output(setup, capsys, checkpoint, *extra) -> str:
    argv = ["--checkpoint", checkpoint, "--data", setup.evaluation_data, "--max-seconds", MAX_SECONDS]
    code = evaluate_main([str(a) for a in [*argv, "--no-det", *extra]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.slow
def test_evaluate_reports_the_calibrated_measures_per_dim(setup, capsys):
    report = json.loads(evaluate_output(setup, capsys, setup.calibrated, "--json"))
    dims = ["64", "128", "192", "256", "native"]
    assert list(report["cllr"]) == dims and list(report["min_cllr"]) == dims
    assert list(report["act_dcf"]) == list(report["min_dcf"]) and list(report["act_dcf"]["0.01"]) == dims
    for key in ("far_at_threshold", "frr_at_threshold"):
        assert set(report[key]["64"]) == {"0.001", "0.01", "0.05"}
        assert all(0 <= rate <= 1 for rates in report[key].values() for rate in rates.values())
    assert report["calibrated_on"]["path"].endswith("cal.trials.txt")


@pytest.mark.slow
def test_evaluate_adds_a_calibration_table_only_for_a_calibrated_checkpoint(setup, capsys):
    assert "| dim | Cllr raw | Cllr | minCllr | actDCF 0.01 | actDCF 0.05 |" in evaluate_output(
        setup, capsys, setup.calibrated
    )
    assert "Cllr" not in evaluate_output(setup, capsys, setup.checkpoint)


def test_an_export_of_a_calibrated_checkpoint_carries_its_dim_s_map_and_thresholds(tmp_path):
    from mrl_dist.export.model import build_export, describe

    calibrated = hand_calibrated(tiny_checkpoint(tmp_path / "tiny.pt"), tmp_path / "cal.pt", ["id00001"])
    module, _, _ = build_export(calibrated, dim=128)
    stored = torch.load(calibrated, weights_only=True)["calibration"]
    assert describe(module)["calibration"]["dim"] == stored["dims"]["128"]
    assert describe(build_export(tmp_path / "tiny.pt", dim=128)[0])["calibration"] is None
