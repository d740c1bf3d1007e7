"""Calibration: cosine scores -> log-likelihood ratios (LLRs) per prefix dim, score thresholds for
target false-acceptance rates, and the measures that say how well scores serve a decision.

    fit_affine(scores, labels)          -> (slope, offset): LLR = slope * score + offset
    cllr(llr, labels)                   -> bits: 1 for an LLR that is always 0, 0 for a perfect one
    min_cllr(scores, labels)            -> the Cllr of the best monotone map of the scores (PAV)
    actual_dcf(llr, labels, p_target)   -> normalised DCF of the Bayes decision llr >= log((1-p)/p)
    far_threshold(scores, labels, rate) -> the score whose non-target acceptance is `rate`

The affine map is a logistic regression in which targets and non-targets each weigh one half (an
effective prior of 0.5), so its output is an LLR, independent of the calibration set's class
balance. A stored calibration (`fit_calibration`, kept in a checkpoint under "calibration") holds
per score name ("64", ..., "native") the map, the thresholds for `FAR_TARGETS`, and the speakers
whose trials it was fitted on: evaluating on any of them would measure the calibration on its
own training data, so `shared_speakers` lets evaluation refuse that.

LLRs are in nats, Cllr in bits. numpy only; deterministic (Newton's method from zero).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mrl_dist.data.manifest import MANIFEST_SUFFIX, read_manifest
from mrl_dist.data.trials import Trial, utterance_key
from mrl_dist.eval.metrics import REPORT_P_TARGETS, check_trials
from mrl_dist.eval.score_norm import speaker_of

CALIBRATION_KEY = "calibration"  # where a checkpoint payload keeps it
CALIBRATION_FORMAT = "mrl-dist-calibration/1"
#: Target false-acceptance rates whose score thresholds a calibration stores.
FAR_TARGETS: tuple[float, ...] = (0.001, 0.01, 0.05)
#: Fewer target or non-target trials than this give a map and thresholds too noisy to trust.
MIN_TRIALS_PER_CLASS = 100
# A tiny ridge on the (standardised) slope keeps the fit finite when the calibration scores are
# perfectly separated; elsewhere it moves the slope by far less than its sampling noise.
_SLOPE_RIDGE = 1e-6


def rate_key(rate: float) -> str:
    """``0.01 -> "0.01"``: how rates and priors key a report or a calibration."""
    return f"{rate:g}"


# ------------------------------------------------------------------------------ the maths
def _weights(labels: np.ndarray) -> np.ndarray:
    """[N]: each class sums to 1/2 (effective prior 0.5)."""
    n_target = labels.sum()
    return np.where(labels, 0.5 / n_target, 0.5 / (labels.size - n_target))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # never overflows


def fit_affine(scores, labels, max_iterations: int = 100) -> tuple[float, float]:
    """Prior-weighted logistic regression of the labels on the scores.

    Minimises ``sum_i w_i * log(1 + exp(-y_i * (slope * s_i + offset)))`` (``y = +1`` target, ``-1``
    non-target; each class's weights sum to 1/2) by Newton's method with backtracking.

    Args:
        scores: [N] float; labels: [N] in {0, 1}, both classes present.
    Returns:
        ``(slope, offset)``: ``slope * score + offset`` is the LLR in nats.
    """
    scores, labels = check_trials(scores, labels, "calibration trials")
    mean, spread = float(scores.mean()), float(scores.std())
    spread = spread if spread > 0 else 1.0  # all scores equal: slope stays 0
    design = np.stack([(scores - mean) / spread, np.ones_like(scores)], axis=1)  # [N, 2]
    weights, sign = _weights(labels), np.where(labels, 1.0, -1.0)
    ridge = np.array([_SLOPE_RIDGE, 0.0])

    def loss(theta: np.ndarray) -> float:
        return float(weights @ np.logaddexp(0.0, -sign * (design @ theta)) + ridge @ theta**2)

    theta = np.zeros(2)
    for _ in range(max_iterations):
        posterior = _sigmoid(design @ theta)
        gradient = design.T @ (weights * (posterior - labels)) + 2 * ridge * theta
        curvature = weights * posterior * (1 - posterior)
        hessian = design.T @ (design * curvature[:, None]) + np.diag(2 * ridge + 1e-12)
        step = np.linalg.solve(hessian, gradient)
        size, start = 1.0, loss(theta)
        while loss(theta - size * step) > start - 1e-4 * size * (gradient @ step) and size > 1e-8:
            size /= 2
        theta = theta - size * step
        if np.abs(size * step).max() < 1e-10:
            break
    slope = theta[0] / spread
    return float(slope), float(theta[1] - slope * mean)


def _cllr(llr: np.ndarray, labels: np.ndarray) -> float:
    """Cllr in bits of LLRs that may be +-inf (PAV's are, where a class is absent)."""
    miss = np.logaddexp(0.0, -llr[labels]).mean()
    false_alarm = np.logaddexp(0.0, llr[~labels]).mean()
    return float((miss + false_alarm) / (2 * np.log(2)))


def cllr(llr, labels) -> float:
    """Log-likelihood-ratio cost in bits: ``(mean_t log2(1 + e^-llr) + mean_n log2(1 + e^llr)) / 2``.

    1 for an LLR that is always 0 (no information), 0 for a perfect, infinitely confident one;
    above 1 for a misleading one. Args: llr [N] (nats), labels [N] in {0, 1}."""
    llr, labels = check_trials(llr, labels, "cllr")
    return _cllr(llr, labels)


def pav(values, weights=None) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing [N] sequence closest to `values` [N] in
    (weighted) least squares. Each violating neighbour pair of blocks is merged into its
    weighted mean until no block exceeds the next."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist()):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mean, total, size = means.pop(), totals.pop(), sizes.pop()
            merged = totals[-1] + total
            means[-1] = (means[-1] * totals[-1] + mean * total) / merged
            totals[-1], sizes[-1] = merged, sizes[-1] + size
    return np.repeat(np.array(means), sizes)


def pav_llr(scores, labels) -> np.ndarray:
    """[N] LLRs of the best monotone map of `scores`: PAV of the labels over the sorted scores
    (tied scores pooled first, so they share an LLR), the posterior's log-odds minus the trial
    list's own prior log-odds. +-inf where a block holds one class only."""
    scores, labels = check_trials(scores, labels, "min_cllr")
    unique, group = np.unique(scores, return_inverse=True)  # unique is sorted ascending
    counts = np.bincount(group, minlength=unique.size).astype(np.float64)
    targets = np.bincount(group, weights=labels.astype(np.float64), minlength=unique.size)
    posterior = pav(targets / counts, counts)[group]
    prior_log_odds = np.log(labels.sum() / (labels.size - labels.sum()))
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log1p(-posterior) - prior_log_odds


def min_cllr(scores, labels) -> float:
    """Cllr (bits) after the optimal monotone calibration of `scores`: the part of Cllr no
    calibration can remove (discrimination); ``cllr - min_cllr`` is the calibration loss."""
    return _cllr(pav_llr(scores, labels), np.asarray(labels).astype(bool))


def actual_dcf(llr, labels, p_target: float) -> float:
    """Normalised DCF (c_miss = c_fa = 1) of accepting when ``llr >= log((1 - p) / p)``, the Bayes
    decision for prior `p_target`: ``(p * P_miss + (1 - p) * P_fa) / min(p, 1 - p)``; compare with
    `compute_min_dcf` at the same prior (equal when the calibration is perfect for this set)."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1); got {p_target}")
    llr, labels = check_trials(llr, labels, "actual_dcf")
    accept = llr >= np.log((1 - p_target) / p_target)
    p_miss, p_fa = float(np.mean(~accept[labels])), float(np.mean(accept[~labels]))
    return (p_target * p_miss + (1 - p_target) * p_fa) / min(p_target, 1 - p_target)


def far_threshold(scores, labels, rate: float) -> float:
    """The score threshold (accept when ``score >= t``) whose false-acceptance rate on these
    trials is `rate`: the ``1 - rate`` quantile of the non-target scores, interpolated linearly.
    With fewer than about ``10 / rate`` non-targets it rests on a handful of scores."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"target false-acceptance rate must be in (0, 1); got {rate}")
    scores, labels = check_trials(scores, labels, "far_threshold")
    return float(np.quantile(scores[~labels], 1.0 - rate))


def rates_at_threshold(scores, labels, threshold: float) -> tuple[float, float]:
    """``(FAR, FRR)`` measured at `threshold` (accept when ``score >= threshold``)."""
    scores, labels = check_trials(scores, labels, "rates_at_threshold")
    accept = scores >= threshold
    return float(np.mean(accept[~labels])), float(np.mean(~accept[labels]))


# ------------------------------------------------------------------------------ stored calibrations
def fit_calibration(
    scores_by_name: Mapping[str, np.ndarray], labels, far_targets: Sequence[float] = FAR_TARGETS
) -> dict[str, dict[str, Any]]:
    """Per score name: ``{"slope", "offset", "thresholds": {"0.01": score, ...}, "cllr", "cllr_raw",
    "min_cllr"}`` (Cllrs measured on these same calibration trials; `cllr_raw` reads the raw score
    as an LLR). Plain floats, so the dict survives ``torch.load(weights_only=True)``."""
    fitted: dict[str, dict[str, Any]] = {}
    for name, scores in scores_by_name.items():
        slope, offset = fit_affine(scores, labels)
        scores = np.asarray(scores, dtype=np.float64)
        fitted[str(name)] = {
            "slope": slope,
            "offset": offset,
            "thresholds": {rate_key(rate): far_threshold(scores, labels, rate) for rate in far_targets},
            "cllr": cllr(slope * scores + offset, labels),
            "cllr_raw": cllr(scores, labels),
            "min_cllr": min_cllr(scores, labels),
        }
    return fitted


def apply_calibration(entry: Mapping[str, Any], scores) -> np.ndarray:
    """[N] LLRs (nats) of [N] raw scores under one name's stored map."""
    return float(entry["slope"]) * np.asarray(scores, dtype=np.float64) + float(entry["offset"])


def check_calibration(calibration: Any, source: str) -> dict[str, Any]:
    """`calibration` if it is a stored calibration this code reads, else ValueError naming `source`."""
    if not isinstance(calibration, dict) or calibration.get("format") != CALIBRATION_FORMAT:
        found = calibration.get("format") if isinstance(calibration, dict) else type(calibration).__name__
        raise ValueError(
            f"{source}: '{CALIBRATION_KEY}' is not a {CALIBRATION_FORMAT} calibration (found {found!r}); "
            "calibrate it again with launch/calibrate.py"
        )
    return calibration


def calibrated_metrics(scores_by_name: Mapping[str, np.ndarray], labels, calibration: Mapping[str, Any]) -> dict:
    """What a stored calibration does on other trials, per name it calibrates, metric first as
    `verification_report`::

        {"cllr": {name: bits}, "cllr_raw": {name: bits}, "min_cllr": {name: bits},
         "act_dcf": {"0.01": {name: float}, "0.05": ...},            # the REPORT_P_TARGETS
         "far_at_threshold": {name: {"0.001": rate, "0.01": ..., "0.05": ...}},
         "frr_at_threshold": {name: {...}},                            # at each stored threshold
         "calibrated_on": the calibration's "trials" (path, sha256, counts)}
    """
    dims = calibration["dims"]
    names = [str(name) for name in scores_by_name if str(name) in dims]
    report: dict = {
        "cllr": {},
        "cllr_raw": {},
        "min_cllr": {},
        "act_dcf": {rate_key(p): {} for p in REPORT_P_TARGETS},
        "far_at_threshold": {},
        "frr_at_threshold": {},
        "calibrated_on": dict(calibration.get("trials", {})),
    }
    for name in names:
        scores, labels_bool = check_trials(scores_by_name[name], labels, f"scores[{name!r}]")
        llr = apply_calibration(dims[name], scores)
        report["cllr"][name] = cllr(llr, labels_bool)
        report["cllr_raw"][name] = cllr(scores, labels_bool)
        report["min_cllr"][name] = min_cllr(scores, labels_bool)
        for p in REPORT_P_TARGETS:
            report["act_dcf"][rate_key(p)][name] = actual_dcf(llr, labels_bool, p)
        rates = {rate: rates_at_threshold(scores, labels_bool, t) for rate, t in dims[name]["thresholds"].items()}
        report["far_at_threshold"][name] = {rate: far for rate, (far, _) in rates.items()}
        report["frr_at_threshold"][name] = {rate: frr for rate, (_, frr) in rates.items()}
    return report


def calibration_table(report: Mapping) -> str:
    """Markdown: a row per calibrated name; Cllr (raw score -> calibrated), minCllr, actual DCF per
    prior, and "FAR % / FRR %" measured at each stored threshold."""
    p_keys, rates = list(report["act_dcf"]), list(next(iter(report["far_at_threshold"].values()), {}))
    header = ["dim", "Cllr raw", "Cllr", "minCllr", *[f"actDCF {p}" for p in p_keys]]
    header += [f"FAR/FRR % at FAR {rate}" for rate in rates]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in report["cllr"]:
        cells = [name, *(f"{report[key][name]:.4f}" for key in ("cllr_raw", "cllr", "min_cllr"))]
        cells += [f"{report['act_dcf'][p][name]:.4f}" for p in p_keys]
        far, frr = report["far_at_threshold"][name], report["frr_at_threshold"][name]
        cells += [f"{100 * far[rate]:.2f} / {100 * frr[rate]:.2f}" for rate in rates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ whose trials
def trial_speakers(trials: Iterable[Trial], manifest_speakers: Collection[str] | None = None) -> set[str]:
    """The speakers of a trial list's utterances: a key's first path component (VoxCeleb keys are
    `speaker/video/utt`, as every folder layout packs them). When the split's manifest lists its
    speakers and some first component is none of them (keys that do not start with the speaker,
    e.g. Kaldi utterance ids), every speaker of the manifest is taken instead."""
    found = {speaker_of(utterance_key(path)) for trial in trials for path in (trial.enroll, trial.test)}
    if manifest_speakers is not None and not found <= set(manifest_speakers):
        return set(manifest_speakers)
    return found


def manifest_speakers(data: str) -> list[str] | None:
    """The speakers `data` lists when it is a `NAME.manifest.json` (path or URL), else None."""
    return list(read_manifest(data).speakers) if str(data).endswith(MANIFEST_SUFFIX) else None


def shared_speakers(calibration: Mapping[str, Any], speakers: Collection[str]) -> list[str]:
    """The speakers a calibration was fitted on that are also in `speakers`, sorted."""
    return sorted(set(calibration.get("speakers", [])) & set(speakers))


def overlap_problem(calibration: Mapping[str, Any], trials: Sequence[Trial], trials_what: str, data: str) -> str | None:
    """Why evaluating on `trials` (of the shards `data`) would measure a calibration on its own
    speakers, naming one they share; None when they share none."""
    shared = shared_speakers(calibration, trial_speakers(trials, manifest_speakers(data)))
    if not shared:
        return None
    fitted_on = calibration.get("trials", {}).get("path", "?")
    return (
        f"{trials_what}: {len(shared)} speaker(s) of these trials are also in the calibration trials "
        f"{fitted_on}, e.g. {shared[0]}; evaluate on speakers the calibration never saw, or calibrate on a "
        "disjoint speaker set (launch/make_trials.py --holdout-speakers, then launch/calibrate.py)"
    )


def extraction_note(calibration: Mapping[str, Any], max_seconds: float | None) -> str | None:
    """A warning when scores are measured on other stretches of audio than the calibration's
    (``--max-seconds``): shorter audio gives lower target scores, so its thresholds and LLRs shift."""
    fitted = calibration.get("extraction", {}).get("max_seconds")
    if fitted == max_seconds:
        return None

    def seconds(value: float | None) -> str:
        return "whole utterances" if value is None else f"the first {value:g} s"

    return (
        f"calibrated on {seconds(fitted)} of each utterance but scoring {seconds(max_seconds)}: "
        "its LLRs and thresholds may not hold (pass the same --max-seconds to both)"
    )


__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_KEY",
    "FAR_TARGETS",
    "MIN_TRIALS_PER_CLASS",
    "actual_dcf",
    "apply_calibration",
    "calibrated_metrics",
    "calibration_table",
    "check_calibration",
    "cllr",
    "extraction_note",
    "far_threshold",
    "fit_affine",
    "fit_calibration",
    "manifest_speakers",
    "min_cllr",
    "overlap_problem",
    "pav",
    "pav_llr",
    "rate_key",
    "rates_at_threshold",
    "shared_speakers",
    "trial_speakers",
]
