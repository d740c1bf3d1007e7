"""Evaluation: embeddings of trial utterances, cosine scores, EER / minDCF, DET plots.

* `metrics`  - EER, minDCF, DET points, per-dim reports (numpy only)
* `extract`  - embeddings for every MRL dim from one backbone pass, trial scoring
* `det_plot` - DET curves to PNG (matplotlib, optional: imported when a plot is drawn)
* `dims_plot` - EER / minDCF against the dim to PNG; `plots` - the plots evaluate writes
* `embed`, `score_norm` - embedding audio files, AS-norm; `cli` - `launch/evaluate.py`

Evaluating needs torch, so the names below are imported with the package.
"""

from .det_plot import plot_det
from .dims_plot import plot_dims
from .extract import MissingEmbeddingError, evaluate_model, extract_embeddings, length_groups, score_trials
from .metrics import compute_eer, compute_min_dcf, det_curve, format_table, select_metric, verification_report

__all__ = [
    "MissingEmbeddingError",
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "evaluate_model",
    "extract_embeddings",
    "format_table",
    "length_groups",
    "plot_det",
    "plot_dims",
    "score_trials",
    "select_metric",
    "verification_report",
]
