"""The plots `launch/evaluate.py` writes: the DET curves and, beside them, EER / minDCF against
the dimension (`<stem>.dims.png`).

The DET plot draws, by default, a few chosen dims per checkpoint (`chosen_dims`: the smallest,
the middle and the largest, plus native) and one panel per checkpoint when several are
compared, so two checkpoints with AS-norm give two panels of eight curves instead of one panel
of 28; `--det-all-dims` draws every dim. The dims plot shows every dim of every checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .det_plot import plot_det
from .dims_plot import plot_dims, split_row, unplaced_rows
from .metrics import det_curve


def dims_target(det_path: Path) -> Path:
    """`best.det.png` -> `best.dims.png`; any other `NAME.png` -> `NAME.dims.png`, beside it."""
    stem = det_path.name.removesuffix(".png").removesuffix(".det")
    return det_path.with_name(f"{stem}.dims.png")


def chosen_dims(dims: Sequence[int]) -> set[int]:
    """The smallest, the middle and the largest of `dims` (fewer when there are fewer)."""
    ordered = sorted(set(dims))
    return {ordered[0], ordered[len(ordered) // 2], ordered[-1]} if ordered else set()


def det_panels(names: Sequence[str], checkpoint_labels: Sequence[str], all_dims: bool = False) -> dict[str, list[str]]:
    """Panel title -> the score names drawn in it: one panel per checkpoint (names
    `"<label>:<row>"`) when there are several, else one (`""`); in each, native rows, rows that
    name no dim, and the `chosen_dims` of that checkpoint (every dim with `all_dims`)."""
    several = len(checkpoint_labels) > 1
    panels = {}
    for label in checkpoint_labels if several else [""]:
        prefix = f"{label}:" if several else ""
        mine = [name for name in names if name.startswith(prefix)]
        rows = {name: split_row(name.removeprefix(prefix)) for name in mine}
        keep = chosen_dims([parsed[1] for parsed in rows.values() if parsed and parsed[1] is not None])
        panels[label] = [
            name
            for name, parsed in rows.items()
            if all_dims or parsed is None or parsed[1] is None or parsed[1] in keep
        ]
    return panels


def write_evaluation_plots(
    args: argparse.Namespace,
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    results: Sequence[Mapping],
    checkpoint_labels: Sequence[str],
    det_path: Path,
    title: str,
) -> Path | None:
    """Both plots as `args` asks (`--no-det`, `--no-dims-plot`, `--det-all-dims`); returns the
    DET plot's path (None when not drawn). Where the dims plot went, or why it was not drawn
    (matplotlib missing, no per-dim rows), goes to stderr."""
    written = None
    if not args.no_det:
        panels = det_panels(list(scores), checkpoint_labels, all_dims=getattr(args, "det_all_dims", False))
        curves = {name: det_curve(scores[name], labels)[:2] for names in panels.values() for name in names}
        try:
            written = plot_det(curves, det_path, title=title, panels=panels)
        except ImportError as error:
            print(f"evaluate: {error}; skipped the DET plot (the table is complete)", file=sys.stderr)
    if getattr(args, "no_dims_plot", False):
        return written
    reports = dict(zip(checkpoint_labels, results))
    try:
        dims_path = plot_dims(reports, dims_target(det_path), title=title)
    except (ImportError, ValueError) as error:
        print(f"evaluate: {error}; skipped the EER-vs-dim plot", file=sys.stderr)
        return written
    unplaced = sorted({name for report in results for name in unplaced_rows(report)})
    note = f" (rows without a dim, not drawn: {unplaced})" if unplaced else ""
    print(f"evaluate: EER and minDCF against the dim written to {dims_path}{note}", file=sys.stderr)
    return written
