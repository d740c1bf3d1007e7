"""The main picture of an MRL evaluation: EER and minDCF against the prefix dimension.

Two panels side by side (EER %, minDCF), the dims on a log2 x-axis with each evaluated dim as
a tick, one line per checkpoint and score kind, and reference lines:

* ``"native"``: the model's own embedding (the pretrained embedding layer an MRL checkpoint
  kept, or a plain checkpoint's only row), a horizontal line in the checkpoint's colour;
* ``"pca@<dim>"``: the PCA truncation of the native embedding (the head at `head_init: pca`,
  before training), a thin dotted line in the checkpoint's colour, when a report carries it;
* other kinds (``"asnorm@<dim>"``, ``"ensemble@<dim>"``) are lines of their own style.

The rows come from `verification_report` (``report["eer"][name]``,
``report["min_dcf"][p_target][name]``), named as `launch/evaluate.py` names them. A row name
that is none of these (no dim to place it at) is listed in `unplaced_rows` and not drawn.
matplotlib (``mrl-dist[plot]``) is imported only when a plot is drawn; no pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

NATIVE = "native"
REFERENCE_KIND = "pca"
_KIND_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))  # raw, then other kinds in order
_KIND_MARKERS = ("o", "s", "^", "D")


def split_row(name: str) -> tuple[str, int | None] | None:
    """``"64"`` -> ``("", 64)``; ``"native"`` -> ``("", None)``; ``"asnorm@64"`` ->
    ``("asnorm", 64)``; ``"asnorm@native"`` -> ``("asnorm", None)``; anything else -> None."""
    kind, _, row = name.rpartition("@")
    if row.isdigit():
        return kind, int(row)
    if row == NATIVE:
        return kind, None
    return None


def unplaced_rows(report: Mapping) -> list[str]:
    """Row names of `report` the dims plot cannot place (neither a dim nor native)."""
    return [name for name in report["eer"] if split_row(name) is None]


def _series(report: Mapping, metric: str, p_target: str) -> dict[str, tuple[dict[int, float], float | None]]:
    """kind -> ({dim: value}, native value or None) of one metric: "eer" (in %) or "min_dcf"."""
    values = report["eer"] if metric == "eer" else report["min_dcf"][p_target]
    scale = 100.0 if metric == "eer" else 1.0
    series: dict[str, tuple[dict[int, float], float | None]] = {}
    for name, value in values.items():
        parsed = split_row(name)
        if parsed is None:
            continue
        kind, dim = parsed
        by_dim, native = series.get(kind, ({}, None))
        if dim is None:
            native = scale * float(value)
        else:
            by_dim[dim] = scale * float(value)
        series[kind] = (by_dim, native)
    return series


def dims_figure(reports: Mapping[str, Mapping], title: str = "", p_target: str | None = None):
    """The Figure `plot_dims` writes.

    Args:
        reports: checkpoint label -> its `verification_report` (several: one colour each).
        title: figure title.
        p_target: which minDCF (a key of ``report["min_dcf"]``; default the first).
    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no report has a per-dim row (nothing to put on the x-axis).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullLocator
    except ImportError as err:
        raise ImportError("plot_dims needs matplotlib: pip install 'mrl-dist[plot]'") from err
    if not reports:
        raise ValueError("plot_dims: no reports given; pass checkpoint label -> verification_report")
    first = next(iter(reports.values()))
    p_target = p_target or next(iter(first["min_dcf"]))
    rows = [parsed for report in reports.values() for parsed in map(split_row, report["eer"]) if parsed]
    dims = sorted({dim for _, dim in rows if dim is not None})
    if not dims:
        raise ValueError(
            f"plot_dims: no per-dim rows in {list(reports)} (only {sorted(first['eer'])}); "
            "a plain checkpoint has only its native embedding"
        )
    kinds = [""] + sorted({kind for kind, _ in rows} - {"", REFERENCE_KIND})

    figure = Figure(figsize=(11.5, 5.2), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2)
    for axes, metric, label in (
        (panels[0], "eer", "EER (%)"),
        (panels[1], "min_dcf", f"minDCF (p_target {p_target})"),
    ):
        for index, (checkpoint, report) in enumerate(reports.items()):
            colour = f"C{index % 10}"
            prefix = f"{checkpoint} " if len(reports) > 1 else ""
            for kind, (by_dim, native) in _series(report, metric, p_target).items():
                _draw_kind(axes, kind, kinds, by_dim, native, colour, prefix)
        axes.set_xscale("log", base=2)
        axes.set_xticks(dims, [str(dim) for dim in dims])
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xlim(dims[0] / 1.2, dims[-1] * 1.2)
        axes.set_xlabel("embedding dimension (prefix)")
        axes.set_ylabel(label)
        axes.grid(True, color="0.9")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize="small")
    figure.suptitle(title or "EER and minDCF against the embedding dimension")
    return figure


def _draw_kind(axes, kind: str, kinds: list[str], by_dim: dict, native: float | None, colour: str, prefix: str) -> None:
    """One score kind of one checkpoint: its line over the dims, its native level."""
    style: str | tuple
    if kind == REFERENCE_KIND:
        style, marker, width, name = ":", "x", 1.0, "PCA truncation"
    else:
        position = kinds.index(kind)
        style, marker, width = _KIND_STYLES[position % 4], _KIND_MARKERS[position % 4], 1.8
        name = "MRL" if kind == "" else kind
    if by_dim:
        dims = sorted(by_dim)
        axes.plot(
            dims,
            [by_dim[d] for d in dims],
            color=colour,
            linestyle=style,
            marker=marker,
            linewidth=width,
            label=f"{prefix}{name}".strip(),
        )
    if native is not None:
        native_name = NATIVE if kind in ("", REFERENCE_KIND) else f"{kind} {NATIVE}"
        axes.axhline(native, color=colour, linestyle=style, linewidth=0.9, alpha=0.7, label=f"{prefix}{native_name}")


def plot_dims(reports: Mapping[str, Mapping], path: str | Path, title: str = "", p_target: str | None = None) -> Path:
    """Write `dims_figure(reports, title, p_target)` as a PNG at `path` (parents created)."""
    figure = dims_figure(reports, title, p_target)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
