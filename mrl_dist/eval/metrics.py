"""Speaker-verification metrics: EER, minDCF, DET curves and per-dimension reports.

Convention used throughout: a trial is *accepted* when ``score >= threshold``.
``labels`` hold 1 for target trials (same speaker) and 0 for non-target trials.

* FRR (miss rate)        = targets with ``score < threshold``      / #targets
* FAR (false-alarm rate) = non-targets with ``score >= threshold``  / #non-targets

Every function works from one sort of the scores (O(n log n)); equal scores are
grouped so tied trials always change side together, which is what makes
"all scores equal" come out as EER 0.5 rather than depending on sort order.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np

#: Prior target probabilities reported by :func:`verification_report`
#: (0.01: VoxSRC challenge; 0.05: the other value commonly quoted for VoxCeleb1-O).
REPORT_P_TARGETS: tuple[float, ...] = (0.01, 0.05)


def _p_key(p_target: float) -> str:
    """``0.01 -> "0.01"``: the string key used for minDCF entries in a report."""
    return f"{p_target:g}"


def check_trials(scores, labels, what: str = "trials") -> tuple[np.ndarray, np.ndarray]:
    """Validate one set of trials and return ``(scores float64 [N], labels bool [N])``.

    Raises ValueError naming ``what`` and the problem: empty input, mismatched
    lengths, non-1-D arrays, labels outside {0, 1}, a single class, NaN/inf scores.
    """
    scores_arr = np.asarray(scores, dtype=np.float64)
    labels_arr = np.asarray(labels)
    if scores_arr.ndim != 1 or labels_arr.ndim != 1:
        raise ValueError(
            f"{what}: scores and labels must be 1-D arrays of trials; "
            f"got shapes {scores_arr.shape} and {labels_arr.shape}"
        )
    if scores_arr.size == 0:
        raise ValueError(f"{what}: no trials (empty scores); EER needs at least one target and one non-target")
    if scores_arr.size != labels_arr.size:
        raise ValueError(f"{what}: {scores_arr.size} scores but {labels_arr.size} labels; they must pair up one-to-one")
    if labels_arr.dtype != np.bool_:
        bad = ~np.isin(labels_arr, (0, 1))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{what}: labels must be 0 (non-target) or 1 (target); "
                f"found {labels_arr[first].item()!r} at index {first} ({int(bad.sum())} invalid label(s))"
            )
    labels_bool = labels_arr.astype(bool)
    n_target = int(labels_bool.sum())
    if n_target == 0 or n_target == labels_bool.size:
        only = "targets (1)" if n_target else "non-targets (0)"
        raise ValueError(f"{what}: labels contain only {only}; EER/minDCF need both target and non-target trials")
    finite = np.isfinite(scores_arr)
    if not finite.all():
        n_nan = int(np.isnan(scores_arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{what}: scores must be finite; found {n_nan} NaN and {n_inf} inf value(s), "
            f"first at index {first} (check the embeddings for NaN)"
        )
    return scores_arr, labels_bool


def _operating_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR, FRR and threshold at every distinct operating point, thresholds ascending.

    Point k uses threshold = the k-th distinct score; one extra final point uses a
    threshold just above the largest score (reject everything: FAR 0, FRR 1).
    So FAR runs 1 -> 0 and FRR runs 0 -> 1, each monotone. Inputs already checked.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # First index of each group of equal scores: the whole group sits on the
    # accept side of a threshold equal to its score, so groups move together.
    group_start = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    targets_below = np.r_[0, np.cumsum(sorted_labels)][group_start]
    nontargets_below = group_start - targets_below
    n_target = int(sorted_labels.sum())
    n_nontarget = sorted_labels.size - n_target

    frr = np.r_[targets_below / n_target, 1.0]
    far = np.r_[(n_nontarget - nontargets_below) / n_nontarget, 0.0]
    # nextafter keeps the reject-all threshold finite, so interpolation stays finite.
    thresholds = np.r_[sorted_scores[group_start], np.nextafter(sorted_scores[-1], np.inf)]
    return far, frr, thresholds


def _eer_crossing(far: np.ndarray, frr: np.ndarray) -> tuple[int, float]:
    """Where FAR and FRR cross: ``(i, alpha)`` with the crossing at ``point[i-1] + alpha * (point[i] - point[i-1])``.

    ``far - frr`` starts at +1 and ends at -1 and is non-increasing, so the first
    index where it is <= 0 exists and is >= 1.
    """
    gap = far - frr
    crossed = gap <= 0
    if gap[0] <= 0 or not crossed.any():
        raise ValueError("FAR and FRR do not cross: pass a full curve from det_curve (FAR 1 -> 0, FRR 0 -> 1)")
    i = int(np.argmax(crossed))
    alpha = gap[i - 1] / (gap[i - 1] - gap[i])
    return i, float(alpha)


def eer_from_curve(far: np.ndarray, frr: np.ndarray) -> float:
    """EER of a DET curve from :func:`det_curve` (FAR descending, FRR ascending)."""
    far = np.asarray(far, dtype=np.float64)
    frr = np.asarray(frr, dtype=np.float64)
    i, alpha = _eer_crossing(far, frr)
    return float(frr[i - 1] + alpha * (frr[i] - frr[i - 1]))


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DET/ROC operating points of a trial list.

    Args:
        scores: [N] float, higher = more likely the same speaker.
        labels: [N] in {0, 1}, 1 = target trial.
    Returns:
        ``(far [K+1], frr [K+1], thresholds [K+1])`` for the K distinct scores plus
        a reject-all point; thresholds ascending, FAR non-increasing, FRR non-decreasing.
    """
    return _operating_points(*check_trials(scores, labels))


def compute_eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs.

    FAR and FRR are evaluated at every distinct score; the EER is read at their
    crossing, interpolating linearly between the two operating points either
    side of it (FAR and FRR are interpolated with the same weight, so they are
    equal there). The threshold is interpolated with that weight too.

    Args:
        scores: [N] float; labels: [N] in {0, 1}.
    Returns:
        ``(eer, threshold)``: eer a fraction in [0, 1] (not %), threshold in score units.
    """
    far, frr, thresholds = det_curve(scores, labels)
    i, alpha = _eer_crossing(far, frr)
    eer = frr[i - 1] + alpha * (frr[i] - frr[i - 1])
    threshold = thresholds[i - 1] + alpha * (thresholds[i] - thresholds[i - 1])
    return float(eer), float(threshold)


def compute_min_dcf(
    scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalised detection cost (NIST SRE / VoxSRC definition).

    ``DCF(t) = c_miss * FRR(t) * p_target + c_fa * FAR(t) * (1 - p_target)``, divided
    by the cost of the best trivial system ``min(c_miss * p_target, c_fa * (1 - p_target))``
    and minimised over all operating points (accept-all and reject-all included,
    so the result is at most 1).

    Returns:
        ``(min_dcf, threshold)``: the threshold of the minimising operating point.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1); got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive; got c_miss={c_miss}, c_fa={c_fa}")
    far, frr, thresholds = det_curve(scores, labels)
    dcf = c_miss * frr * p_target + c_fa * far * (1.0 - p_target)
    dcf /= min(c_miss * p_target, c_fa * (1.0 - p_target))
    best = int(np.argmin(dcf))
    return float(dcf[best]), float(thresholds[best])


def verification_report(scores_by_name: Mapping[str, np.ndarray], labels) -> dict:
    """EER, minDCF and EER threshold for several score sets over the same trials.

    Args:
        scores_by_name: name -> scores [N], e.g. ``{"64": ..., "128": ..., "native": ...}``
            (one per embedding dimension). Names are stringified; order is kept.
        labels: [N] in {0, 1}, shared by all score sets.
    Returns:
        A JSON-ready dict keyed metric-first, so a metric reads as ``report["eer"]["128"]``::

            {"eer":       {name: float},                # fraction in [0, 1]
             "min_dcf":   {"0.01": {name: float},       # keys: REPORT_P_TARGETS as "%g"
                           "0.05": {name: float}},
             "threshold": {name: float},                # score at the EER
             "num_trials": int, "num_targets": int}
    """
    if not scores_by_name:
        raise ValueError("verification_report: scores_by_name is empty; pass at least one name -> scores")
    report: dict = {"eer": {}, "min_dcf": {_p_key(p): {} for p in REPORT_P_TARGETS}, "threshold": {}}
    for name, scores in scores_by_name.items():
        name = str(name)
        scores_arr, labels_bool = check_trials(scores, labels, what=f"scores[{name!r}]")
        eer, threshold = compute_eer(scores_arr, labels_bool)
        report["eer"][name] = eer
        report["threshold"][name] = threshold
        for p in REPORT_P_TARGETS:
            report["min_dcf"][_p_key(p)][name] = compute_min_dcf(scores_arr, labels_bool, p_target=p)[0]
    report["num_trials"] = int(labels_bool.size)
    report["num_targets"] = int(labels_bool.sum())
    return report


def select_metric(report: Mapping, metric: str) -> float:
    """Read the checkpoint-selection metric (``checkpoint.best_metric``) from a report.

    ``"eer@<name>"`` is ``report["eer"][name]``; ``"mean_eer"`` averages the EER over
    the entries named by an integer dimension (``"native"`` etc. excluded), or over
    all entries if none is numeric.
    """
    eers = report["eer"]
    if metric == "mean_eer":
        dims = [name for name in eers if name.isdigit()] or list(eers)
        return float(np.mean([eers[name] for name in dims]))
    if metric.startswith("eer@"):
        name = metric[len("eer@") :]
        if name not in eers:
            raise KeyError(f"metric {metric!r}: no EER for {name!r} in report; have {sorted(eers)}")
        return float(eers[name])
    raise ValueError(f"unknown metric {metric!r}; expected 'mean_eer' or 'eer@<dim>'")


def format_table(report: Mapping) -> str:
    """Markdown table of a :func:`verification_report`, one row per name.

    Columns: name, EER %, one minDCF column per p_target, EER threshold.
    """
    p_keys = list(report["min_dcf"])
    header = ["dim", "EER %"] + [f"minDCF {p}" for p in p_keys] + ["threshold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, eer in report["eer"].items():
        cells = [name, f"{100 * eer:.3f}"]
        cells += [f"{report['min_dcf'][p][name]:.4f}" for p in p_keys]
        cells.append(f"{report['threshold'][name]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cosine_scores(emb_a, emb_b):
    """Row-wise cosine similarity of paired embeddings.

    Args:
        emb_a, emb_b: [N, D] float, both numpy arrays or both torch tensors.
    Returns:
        [N] scores in [-1, 1], of the same kind as the inputs (torch stays on its device).
    """
    torch = sys.modules.get("torch")  # only check tensors if torch is already in use
    is_tensor = torch is not None and isinstance(emb_a, torch.Tensor)
    if torch is not None and is_tensor != isinstance(emb_b, torch.Tensor):
        raise TypeError("cosine_scores: emb_a and emb_b must both be numpy arrays or both torch tensors")
    if not is_tensor:
        emb_a, emb_b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if emb_a.ndim != 2 or tuple(emb_a.shape) != tuple(emb_b.shape):
        raise ValueError(
            "cosine_scores: expected two [N, D] arrays of equal shape; "
            f"got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    eps = 1e-12  # a zero embedding scores 0 instead of NaN
    if is_tensor:
        norms = emb_a.norm(dim=1).clamp_min(eps) * emb_b.norm(dim=1).clamp_min(eps)
        return (emb_a * emb_b).sum(dim=1) / norms
    norms = np.maximum(np.linalg.norm(emb_a, axis=1), eps) * np.maximum(np.linalg.norm(emb_b, axis=1), eps)
    return (emb_a * emb_b).sum(axis=1) / norms


__all__ = [
    "REPORT_P_TARGETS",
    "check_trials",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "eer_from_curve",
    "format_table",
    "select_metric",
    "verification_report",
]
