"""launch/verify.py: scores per dim, calibrated LLRs and decisions for pairs of audio files, the
same scores launch/evaluate.py gives on the same pairs, and the refusals that say what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from calibration_setup import MAX_SECONDS, calibration_setup, hand_calibrated, tiny_checkpoint
from conftest import SPEAKERS, tone, write_wav

from mrl_dist.data.audio import decode_file
from mrl_dist.data.trials import read_trials
from mrl_dist.eval.cli import evaluate_checkpoint, evaluate_main, parse_args
from mrl_dist.eval.verify_cli import verify_main
from mrl_dist.models import ReDimNetMRL


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(a tiny checkpoint, the same with a calibration)."""
    folder = tmp_path_factory.mktemp("verify_checkpoints")
    plain = tiny_checkpoint(folder / "best.pt")
    return plain, hand_calibrated(plain, folder / "calibrated.pt", SPEAKERS)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Three 16 kHz files of 0.7 s (a1, a2 alike, b apart; one length, so torch sets up one shape) and one of 0.3 s."""
    root = tmp_path_factory.mktemp("verify_audio")
    return {
        "a1": write_wav(root / "a1.wav", tone(0.7, 16000, 220, seed=1), 16000),
        "a2": write_wav(root / "a2.wav", tone(0.7, 16000, 225, seed=2), 16000),
        "b": write_wav(root / "b.wav", tone(0.7, 16000, 600, seed=3), 16000),
        "short": write_wav(root / "short.wav", tone(0.3, 16000, 300), 16000),
    }


def verify(capsys, *argv) -> tuple[int, str, str]:
    code = verify_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_two_files_give_a_score_an_llr_and_a_decision_per_dim(checkpoints, audio, capsys):
    code, out, err = verify(
        capsys, "--checkpoint", checkpoints[1], "--dim", 64, "--dim", 256, audio["a1"], audio["b"], "--json"
    )
    assert code == 0, err
    [result] = json_lines(out)
    assert result["enrol"] == [str(audio["a1"])] and result["test"] == str(audio["b"])
    assert list(result["score"]) == list(result["llr"]) == list(result["decision"]) == ["64", "256"]
    for dim in ("64", "256"):
        assert -1 <= result["score"][dim] <= 1
        assert result["decision"][dim] == ("same" if result["llr"][dim] >= 0 else "different")
    assert result["operating_point"] == "LLR >= 0"


def test_far_decides_at_the_stored_threshold(checkpoints, audio, capsys):
    code, out, _ = verify(capsys, "--checkpoint", checkpoints[1], "--dim", 128, "--far", 0.01, audio["a1"], audio["a2"])
    assert code == 0
    payload = torch.load(checkpoints[1], weights_only=True)
    threshold = payload["calibration"]["dims"]["128"]["thresholds"]["0.01"]
    row = next(line for line in out.splitlines() if line.startswith(f"| {audio['a1']}"))
    score, decision = float(row.split("|")[4]), row.split("|")[6].strip()
    assert decision == ("same" if score >= threshold else "different")


def test_a_far_without_a_stored_threshold_is_refused_listing_the_stored_ones(checkpoints, audio, capsys):
    code, _, err = verify(capsys, "--checkpoint", checkpoints[1], "--far", 0.02, audio["a1"], audio["b"])
    assert code == 2 and "--far 0.02" in err and "[0.001, 0.01, 0.05]" in err


def test_an_uncalibrated_checkpoint_asked_for_a_decision_says_how_to_calibrate(checkpoints, audio, capsys):
    for asked in (["--far", "0.01"], ["--llr"]):
        code, out, err = verify(capsys, "--checkpoint", checkpoints[0], *asked, audio["a1"], audio["b"])
        assert code == 2 and out == ""
        assert "has no calibration" in err and "launch/calibrate.py --checkpoint" in err


def test_an_uncalibrated_checkpoint_gives_scores_only_and_says_how_to_add_llrs(checkpoints, audio, capsys):
    code, out, err = verify(capsys, "--checkpoint", checkpoints[0], "--json", audio["a1"], audio["b"])
    assert code == 0
    [result] = json_lines(out)
    assert list(result["score"]) == ["64", "128", "192", "256"] and "llr" not in result
    assert "scores only" in err and "launch/calibrate.py" in err


def test_a_file_too_short_for_one_window_says_its_length_and_the_minimum(checkpoints, audio, capsys):
    code, _, err = verify(capsys, "--checkpoint", checkpoints[0], audio["a1"], audio["short"])
    assert code == 2
    assert f"{audio['short']}: 0.30 s long; the minimum is 0.50 s" in err


def test_an_enrolment_of_several_files_scores_their_mean_embedding(checkpoints, audio, capsys):
    code, out, _ = verify(
        capsys,
        "--checkpoint",
        checkpoints[0],
        "--dim",
        64,
        "--json",
        "--enrol",
        audio["a1"],
        audio["a2"],
        "--test",
        audio["b"],
    )
    assert code == 0
    [result] = json_lines(out)
    model = ReDimNetMRL.from_checkpoint(checkpoints[0])
    waves = torch.stack([torch.from_numpy(decode_file(audio[name]).wave) for name in ("a1", "a2", "b")])
    with torch.no_grad():  # equal lengths: one batch, no padding
        a1, a2, b = torch.nn.functional.normalize(model(waves, dim=64), dim=1).double().numpy()
    expected = (a1 + a2) @ b / np.linalg.norm(a1 + a2)
    assert result["enrol"] == [str(audio["a1"]), str(audio["a2"])]
    assert result["score"]["64"] == pytest.approx(expected, abs=1e-4)


def test_a_malformed_pairs_line_is_an_error_naming_the_file_and_line(checkpoints, audio, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"# comment\n{audio['a1']} {audio['b']}\n\n{audio['a1']}\n")
    code, _, err = verify(capsys, "--checkpoint", checkpoints[0], "--pairs", pairs)
    assert code == 2 and f"--pairs {pairs}, line 4" in err


def test_pairs_are_given_one_way_only(checkpoints, audio, capsys):
    with pytest.raises(SystemExit) as exit_info:
        verify_main(["--checkpoint", str(checkpoints[0]), str(audio["a1"]), str(audio["b"]), "--test", str(audio["b"])])
    assert exit_info.value.code == 2
    assert "one way" in capsys.readouterr().err


def test_verify_gives_evaluate_s_scores_on_the_same_pairs(checkpoints, corpus, packed, capsys):
    # The packed corpus's trials, verified from the original files: the same extraction, so the
    # same cosine per dim (to the 16-bit rounding the packer applies to resampled files).
    first = ["--max-seconds", "0.6"]  # both commands cut every file alike
    args = parse_args(
        ["--checkpoint", str(checkpoints[0]), "--data", str(packed), "--crop-tolerance", "0", "--no-det", *first]
    )
    _, evaluated, labels = evaluate_checkpoint(args, args.checkpoint[0], corpus.trials)
    code, out, err = verify(
        capsys, "--checkpoint", checkpoints[0], "--pairs", corpus.trials, "--audio-root", corpus.root, "--json", *first
    )
    assert code == 0, err
    results = json_lines(out)
    trials = read_trials(corpus.trials)
    assert [r["test"] for r in results] == [t.test for t in trials]
    assert [r["label"] for r in results] == labels.tolist()
    for dim in ("64", "128", "192", "256"):
        verified = np.array([r["score"][dim] for r in results])
        assert np.allclose(verified, evaluated[dim], atol=5e-5), (dim, np.abs(verified - evaluated[dim]).max())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return calibration_setup(tmp_path_factory)


@pytest.mark.slow
def test_verify_decisions_at_a_far_match_evaluate_s_measured_rates(setup, capsys):
    # The calibrated checkpoint on unseen speakers: the share of non-targets verify accepts at the
    # FAR 0.01 threshold is the far_at_threshold evaluate reports, and likewise for targets.
    first = ["--max-seconds", MAX_SECONDS]
    argv = ["--checkpoint", setup.calibrated, "--data", setup.evaluation_data, "--crop-tolerance", 0, "--json"]
    assert evaluate_main([str(a) for a in [*argv, "--no-det", *first]]) == 0
    report = json.loads(capsys.readouterr().out)
    code, out, err = verify(
        capsys,
        "--checkpoint",
        setup.calibrated,
        "--pairs",
        setup.corpus.trials,
        "--audio-root",
        setup.corpus.test_dir,
        "--far",
        "0.01",
        "--json",
        *first,
    )
    assert code == 0, err
    results = json_lines(out)
    for dim in ("64", "256"):
        accepted = {label: [r["decision"][dim] == "same" for r in results if r["label"] == label] for label in (0, 1)}
        assert np.mean(accepted[0]) == pytest.approx(report["far_at_threshold"][dim]["0.01"])
        assert 1 - np.mean(accepted[1]) == pytest.approx(report["frr_at_threshold"][dim]["0.01"])
