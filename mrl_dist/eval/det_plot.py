"""DET curve plots: miss rate against false-alarm rate on normal-deviate axes.

matplotlib is an optional extra (``mrl-dist[plot]``), imported only when a plot
is drawn. The figure is rendered through the Agg canvas directly rather than
``pyplot``, so plotting never changes the process-wide backend (safe on headless
training nodes and inside notebooks alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np

from mrl_dist.eval.metrics import eer_from_curve

#: Tick positions as probabilities; only those inside the axis range are drawn.
DET_TICKS: tuple[float, ...] = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
_UPPER_LIMIT = 0.5
# Plotting 10^6 operating points adds nothing visible; thin to this many per curve.
_MAX_POINTS = 5000


def _probit(p: np.ndarray) -> np.ndarray:
    """Normal deviate of probabilities ``p`` (values must lie in (0, 1))."""
    inv_cdf = NormalDist().inv_cdf
    return np.array([inv_cdf(float(v)) for v in p])


def _lower_limit(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Smallest tick at or below the smallest non-zero rate, but not below DET_TICKS[0] nor above 0.1 %."""
    rates = [np.asarray(r, dtype=np.float64) for far, frr in curves.values() for r in (far, frr)]
    positive = np.concatenate([r[r > 0] for r in rates])
    smallest = min(float(positive.min()) if positive.size else 1.0, 0.001)
    return max([t for t in DET_TICKS if t <= smallest], default=DET_TICKS[0])


def _thin(far: np.ndarray, frr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most _MAX_POINTS evenly spaced points, always including both ends."""
    if far.size <= _MAX_POINTS:
        return far, frr
    keep = np.unique(np.linspace(0, far.size - 1, _MAX_POINTS).round().astype(int))
    return far[keep], frr[keep]


def plot_det(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "DET curve",
) -> Path:
    """Write a PNG with one DET curve per name.

    Args:
        curves: name -> ``(far [K], frr [K])`` as returned (first two items) by
            :func:`mrl_dist.eval.metrics.det_curve`; the legend shows each curve's EER.
        path: output PNG; parent folders are created.
        title: figure title.
    Returns:
        The path written.
    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``curves`` is empty or a curve's arrays differ in length.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plot_det needs matplotlib: pip install 'mrl-dist[plot]'") from err
    if not curves:
        raise ValueError("plot_det: no curves given; pass name -> (far, frr)")
    for name, (far, frr) in curves.items():
        if np.shape(far) != np.shape(frr) or np.ndim(far) != 1 or np.size(far) < 2:
            raise ValueError(
                f"plot_det: curve {name!r} needs 1-D far and frr of equal length >= 2; "
                f"got shapes {np.shape(far)} and {np.shape(frr)}"
            )

    lower = _lower_limit(curves)
    # Rates of exactly 0 or 1 have infinite deviates; clip just outside the axes so
    # those segments run off the plot instead of vanishing.
    clip_low, clip_high = lower / 2, 1 - 1e-9
    figure = Figure(figsize=(6, 6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, (far, frr) in curves.items():
        far, frr = np.asarray(far, dtype=np.float64), np.asarray(frr, dtype=np.float64)
        eer = eer_from_curve(far, frr)
        far, frr = _thin(far, frr)
        x = _probit(np.clip(far, clip_low, clip_high))
        y = _probit(np.clip(frr, clip_low, clip_high))
        axes.plot(x, y, linewidth=1.5, label=f"{name} (EER {100 * eer:.2f}%)")

    limits = _probit(np.array([lower, _UPPER_LIMIT]))
    axes.plot(limits, limits, color="0.6", linestyle="--", linewidth=0.8)  # FAR = FRR: curves cross it at the EER
    ticks = [t for t in DET_TICKS if lower <= t <= _UPPER_LIMIT]
    tick_positions = _probit(np.array(ticks))
    tick_labels = [f"{100 * t:g}" for t in ticks]
    for set_ticks, set_labels, set_limits in (
        (axes.set_xticks, axes.set_xticklabels, axes.set_xlim),
        (axes.set_yticks, axes.set_yticklabels, axes.set_ylim),
    ):
        set_ticks(tick_positions)
        set_labels(tick_labels)
        set_limits(*limits)
    axes.set_xlabel("False acceptance rate (%)")
    axes.set_ylabel("False rejection rate (%)")
    axes.set_title(title)
    axes.grid(True, color="0.9")
    axes.legend(loc="upper right")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
