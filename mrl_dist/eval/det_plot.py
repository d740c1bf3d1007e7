"""DET curve plots: miss rate against false-alarm rate on normal-deviate axes.

matplotlib is an optional extra (``mrl-dist[plot]``), imported only when a plot
is drawn. The figure is rendered through the Agg canvas directly rather than
``pyplot``, so plotting never changes the process-wide backend (safe on headless
training nodes and inside notebooks alike).

Readable with many curves: curves may be split into panels (one per checkpoint), each
legend sits to the right of its panel, outside the axes, and a curve's colour follows its
dim and its line style its score kind, so "64" and "asnorm@64" share a colour (solid and
dashed) in every panel. Names follow evaluate's rows: ``"<dim>"``, ``"native"``, and
``"<kind>@<dim>"`` (``asnorm@64``), optionally behind ``"<panel>:"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


_LINE_STYLES = ("-", "--", "-.", ":")  # by score kind: raw, then asnorm / ensemble / ... in order of appearance


def _split_name(name: str) -> tuple[str, str, str]:
    """``"runA:asnorm@64"`` -> ``("runA", "asnorm", "64")``; missing parts are ``""``."""
    panel, _, row = name.rpartition(":")
    kind, _, dim = row.rpartition("@")
    return panel, kind, dim


def _dim_order(dim: str) -> tuple[int, str]:
    """Numeric dims ascending, then named rows ("native")."""
    return (int(dim), "") if dim.isdigit() else (1 << 30, dim)


def _curve_order(name: str) -> tuple[tuple[int, str], str]:
    """Legend order: by dim, the raw row before its AS-norm (or other) rows."""
    _, kind, dim = _split_name(name)
    return _dim_order(dim), kind


def plot_det(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "DET curve",
    panels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write a PNG with one DET curve per name (see `det_figure`).

    Args:
        curves: name -> ``(far [K], frr [K])`` as returned (first two items) by
            :func:`mrl_dist.eval.metrics.det_curve`; the legend shows each curve's EER.
        path: output PNG; parent folders are created.
        title: figure title.
        panels: panel title -> the names drawn in it (default: one panel of every curve).
    Returns:
        The path written.
    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``curves`` is empty, a curve's arrays differ in length, or a panel
            names a curve that is not in ``curves``.
    """
    figure = det_figure(curves, title, panels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def det_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str = "DET curve",
    panels: Mapping[str, Sequence[str]] | None = None,
):
    """The matplotlib Figure `plot_det` writes: a row of square DET panels, each with its
    legend outside the axes on its right."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plot_det needs matplotlib: pip install 'mrl-dist[plot]'") from err
    if not curves:
        raise ValueError("plot_det: no curves given; pass name -> (far, frr)")
    panels = dict(panels) if panels else {"": list(curves)}
    unknown = [name for names in panels.values() for name in names if name not in curves]
    if unknown:
        raise ValueError(f"plot_det: panels name curves that were not given: {unknown[:5]}")
    for name, (far, frr) in curves.items():
        if np.shape(far) != np.shape(frr) or np.ndim(far) != 1 or np.size(far) < 2:
            raise ValueError(
                f"plot_det: curve {name!r} needs 1-D far and frr of equal length >= 2; "
                f"got shapes {np.shape(far)} and {np.shape(frr)}"
            )

    lower = _lower_limit({name: curves[name] for names in panels.values() for name in names})
    drawn = [_split_name(name) for names in panels.values() for name in names]
    dims = sorted({dim for _, _, dim in drawn}, key=_dim_order)
    kinds = list(dict.fromkeys(kind for _, kind, _ in sorted(drawn, key=lambda part: part[1] != "")))
    colours = {dim: f"C{index % 10}" for index, dim in enumerate(dims)}
    styles = {kind: _LINE_STYLES[index % len(_LINE_STYLES)] for index, kind in enumerate(kinds)}
    figure = Figure(figsize=(7.8 * len(panels), 5.6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (panel, names) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for name in sorted(names, key=_curve_order):
            _, kind, dim = _split_name(name)
            far, frr = curves[name]
            _draw_curve(axes, far, frr, lower, colours[dim], styles[kind], name.removeprefix(f"{panel}:"))
        _finish_axes(axes, lower, panel if len(panels) > 1 else title)
    if len(panels) > 1:
        figure.suptitle(title)
    return figure


def _draw_curve(axes, far, frr, lower: float, colour: str, style: str, label: str) -> None:
    far, frr = np.asarray(far, dtype=np.float64), np.asarray(frr, dtype=np.float64)
    eer = eer_from_curve(far, frr)
    far, frr = _thin(far, frr)
    # Rates of exactly 0 or 1 have infinite deviates; clip just outside the axes so
    # those segments run off the plot instead of vanishing.
    clip_low, clip_high = lower / 2, 1 - 1e-9
    x = _probit(np.clip(far, clip_low, clip_high))
    y = _probit(np.clip(frr, clip_low, clip_high))
    axes.plot(x, y, linewidth=1.5, color=colour, linestyle=style, label=f"{label} (EER {100 * eer:.2f}%)")


def _finish_axes(axes, lower: float, title: str) -> None:
    """Probability ticks, the FAR = FRR diagonal, labels, and the legend outside on the right."""
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
    axes.set_aspect("equal")
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
