"""Specification of the verification metrics (mrl_dist.eval.metrics) and DET plots."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mrl_dist.eval.metrics import (
    compute_eer,
    compute_min_dcf,
    cosine_scores,
    det_curve,
    eer_from_curve,
    format_table,
    select_metric,
    verification_report,
)

# --- brute-force references: one full pass over the trials per candidate threshold ---


def _reference_points(scores, labels):
    """(far, frr, threshold) lists over every distinct score plus a reject-all threshold."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    candidates = sorted(set(scores.tolist())) + [float(np.nextafter(scores.max(), np.inf))]
    points = []
    for t in candidates:
        frr = sum(1 for s, y in zip(scores, labels) if y and s < t) / labels.sum()
        far = sum(1 for s, y in zip(scores, labels) if not y and s >= t) / (~labels).sum()
        points.append((far, frr, t))
    return points


def _reference_eer(scores, labels):
    points = _reference_points(scores, labels)
    for k in range(1, len(points)):
        (far0, frr0, t0), (far1, frr1, t1) = points[k - 1], points[k]
        if frr1 >= far1:  # first point past the crossing; interpolate from the previous one
            alpha = (far0 - frr0) / ((far0 - frr0) - (far1 - frr1))
            return frr0 + alpha * (frr1 - frr0), t0 + alpha * (t1 - t0)
    raise AssertionError("FAR and FRR never crossed")


def _reference_min_dcf(scores, labels, p_target):
    costs = [
        (frr * p_target + far * (1 - p_target)) / min(p_target, 1 - p_target)
        for far, frr, _ in _reference_points(scores, labels)
    ]
    return min(costs)


def _random_trials(size, seed, quantise):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.normal(size=size) + 1.5 * labels
    if quantise:
        scores = np.round(scores, 1)  # many ties
    return scores, labels


# --- EER ---


@pytest.mark.parametrize("size", [2, 3, 10, 57, 400])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantise", [False, True])
def test_eer_matches_brute_force_reference(size, seed, quantise):
    scores, labels = _random_trials(size, seed, quantise)
    eer, threshold = compute_eer(scores, labels)
    ref_eer, ref_threshold = _reference_eer(scores, labels)
    assert eer == pytest.approx(ref_eer, abs=1e-12)
    assert threshold == pytest.approx(ref_threshold, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_min_dcf_matches_brute_force_reference(seed):
    scores, labels = _random_trials(300, seed, quantise=True)
    for p_target in (0.01, 0.05, 0.5):
        assert compute_min_dcf(scores, labels, p_target)[0] == pytest.approx(
            _reference_min_dcf(scores, labels, p_target), abs=1e-12
        )


def test_all_scores_equal_gives_eer_one_half():
    eer, threshold = compute_eer([0.3] * 6, [0, 1, 0, 1, 1, 0])
    assert eer == pytest.approx(0.5)
    assert threshold == pytest.approx(0.3)


def test_perfectly_separated_scores_give_eer_zero():
    eer, threshold = compute_eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert eer == 0.0
    assert 0.2 < threshold <= 0.8  # accepting score >= threshold separates the classes


def test_hand_computed_four_trial_case():
    # thresholds 0.1 / 0.35 / 0.4 / 0.8 / reject-all give (FAR, FRR) =
    # (1, 0) (.5, 0) (.5, .5) (0, .5) (0, 1): they meet at threshold 0.4.
    eer, threshold = compute_eer([0.1, 0.35, 0.4, 0.8], [0, 1, 0, 1])
    assert eer == pytest.approx(0.5)
    assert threshold == pytest.approx(0.4)


def test_eer_interpolates_between_adjacent_operating_points():
    # (FAR, FRR) at 0.2 is (.5, 0), at 0.3 is (.5, 1): gap +.5 -> -.5, crossing halfway.
    eer, threshold = compute_eer([0.1, 0.2, 0.3], [0, 1, 0])
    assert eer == pytest.approx(0.5)
    assert threshold == pytest.approx(0.25)


def test_tied_scores_move_together_so_trial_order_does_not_matter():
    scores = np.array([0.5, 0.5, 0.5, 0.5, 0.1, 0.9])
    labels = np.array([1, 0, 1, 0, 0, 1])
    expected = compute_eer(scores, labels)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(scores))
        assert compute_eer(scores[order], labels[order]) == pytest.approx(expected)


def test_eer_on_a_million_gaussian_trials_matches_theory():
    # Targets N(2, 1), non-targets N(0, 1): the EER threshold is 1 and EER = Phi(-1).
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1_000_000)
    scores = rng.normal(size=labels.size) + 2.0 * labels
    eer, threshold = compute_eer(scores, labels)
    assert eer == pytest.approx(0.158655, abs=0.003)
    assert threshold == pytest.approx(1.0, abs=0.02)


def test_labels_may_be_bool_or_float():
    scores = [0.1, 0.35, 0.4, 0.8]
    assert compute_eer(scores, [False, True, False, True]) == compute_eer(scores, [0.0, 1.0, 0.0, 1.0])


# --- minDCF ---


def test_min_dcf_hand_case_at_equal_priors():
    # Normalised DCF at p_target 0.5 is FAR + FRR: 1, .5, 1, .5, 1 over the five points.
    min_dcf, threshold = compute_min_dcf([0.1, 0.35, 0.4, 0.8], [0, 1, 0, 1], p_target=0.5)
    assert min_dcf == pytest.approx(0.5)
    assert threshold == pytest.approx(0.35)


def test_min_dcf_hand_case_at_low_target_prior():
    # p_target 0.01: DCF = FRR + 99 FAR -> 99, 49.5, 50, 0.5, 1; best at threshold 0.8.
    min_dcf, threshold = compute_min_dcf([0.1, 0.35, 0.4, 0.8], [0, 1, 0, 1], p_target=0.01)
    assert min_dcf == pytest.approx(0.5)
    assert threshold == pytest.approx(0.8)


def test_min_dcf_never_exceeds_one():
    # A useless system is never worse than the best trivial decision (accept or reject all).
    assert compute_min_dcf([0.9, 0.1], [0, 1])[0] == pytest.approx(1.0)


def test_min_dcf_rejects_p_target_outside_unit_interval():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [0, 1], p_target=1.0)


# --- DET curve ---


def test_det_curve_runs_from_accept_all_to_reject_all():
    far, frr, thresholds = det_curve([0.1, 0.35, 0.4, 0.8, 0.4], [0, 1, 0, 1, 1])
    assert (far[0], frr[0]) == (1.0, 0.0)
    assert (far[-1], frr[-1]) == (0.0, 1.0)
    assert len(far) == 5  # four distinct scores + reject-all
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)


def test_eer_from_curve_agrees_with_compute_eer():
    scores, labels = _random_trials(200, 3, quantise=False)
    far, frr, _ = det_curve(scores, labels)
    assert eer_from_curve(far, frr) == pytest.approx(compute_eer(scores, labels)[0])


# --- input errors ---


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([], [], "empty"),
        ([0.1, 0.2], [0, 1, 1], "2 scores but 3 labels"),
        ([0.1, 0.2, 0.3], [0, 1, 2], r"labels must be 0 \(non-target\) or 1 \(target\); found 2 at index 2"),
        ([0.1, 0.2], [1, 1], r"only targets \(1\)"),
        ([0.1, 0.2], [0, 0], r"only non-targets \(0\)"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "1 NaN .* first at index 1"),
        ([0.1, float("inf")], [0, 1], "0 NaN and 1 inf"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
    ],
    ids=["empty", "length-mismatch", "bad-label", "only-targets", "only-nontargets", "nan", "inf", "2-d"],
)
def test_bad_input_raises_value_error_saying_what_is_wrong(scores, labels, message):
    for metric in (compute_eer, compute_min_dcf, det_curve):
        with pytest.raises(ValueError, match=message):
            metric(scores, labels)


# --- reports ---


def _two_dim_report():
    labels = np.array([0, 1, 0, 1])
    return verification_report({"64": np.array([0.1, 0.35, 0.4, 0.8]), 128: np.array([0.1, 0.2, 0.8, 0.9])}, labels)


def test_verification_report_is_keyed_metric_then_dim():
    report = _two_dim_report()
    assert set(report) == {"eer", "min_dcf", "threshold", "num_trials", "num_targets"}
    assert report["eer"] == {"64": pytest.approx(0.5), "128": pytest.approx(0.5)}
    assert set(report["min_dcf"]) == {"0.01", "0.05"}
    assert report["min_dcf"]["0.01"]["64"] == pytest.approx(0.5)
    assert report["threshold"]["64"] == pytest.approx(0.4)
    assert (report["num_trials"], report["num_targets"]) == (4, 2)


def test_verification_report_error_names_the_score_set():
    with pytest.raises(ValueError, match=r"scores\['native'\]: .*NaN"):
        verification_report({"64": [0.1, 0.2], "native": [0.1, float("nan")]}, [0, 1])


def test_format_table_has_one_markdown_row_per_dim():
    table = format_table(_two_dim_report()).splitlines()
    assert table[0] == "| dim | EER % | minDCF 0.01 | minDCF 0.05 | threshold |"
    assert table[1].startswith("|---|")
    assert table[2].startswith("| 64 | 50.000 | 0.5000 |")
    assert len(table) == 4


def test_select_metric_reads_mean_eer_over_numeric_dims_and_eer_at_dim():
    report = {"eer": {"64": 0.02, "128": 0.01, "native": 0.5}}
    assert select_metric(report, "mean_eer") == pytest.approx(0.015)
    assert select_metric(report, "eer@128") == 0.01
    with pytest.raises(KeyError, match="eer@96"):
        select_metric(report, "eer@96")


# --- cosine scores ---


def test_cosine_scores_numpy():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [1.0, -1.0, 0.0])  # zero vector scores 0, not NaN


def test_cosine_scores_torch_stays_torch():
    torch = pytest.importorskip("torch")
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    scores = cosine_scores(a, b)
    assert isinstance(scores, torch.Tensor) and scores.shape == (5,)
    torch.testing.assert_close(scores, torch.nn.functional.cosine_similarity(a, b, dim=1))


def test_cosine_scores_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        cosine_scores(np.zeros((2, 3)), np.zeros((2, 4)))


# --- DET plot ---


def test_plot_det_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from mrl_dist.eval.det_plot import plot_det

    curves = {}
    for name, separation in (("64", 2.0), ("256", 3.0)):
        scores, labels = _random_trials(2000, 0, quantise=False)
        far, frr, _ = det_curve(scores + (separation - 1.5) * labels, labels)
        curves[name] = (far, frr)
    path = plot_det(curves, tmp_path / "plots" / "det.png", title="VoxCeleb1-O")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_det_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    from mrl_dist.eval.det_plot import plot_det

    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'mrl-dist\[plot\]'"):
        plot_det({"64": (np.array([1.0, 0.0]), np.array([0.0, 1.0]))}, tmp_path / "det.png")
