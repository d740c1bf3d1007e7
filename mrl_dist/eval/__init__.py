"""Evaluation: embeddings of trial utterances, cosine scores, EER / minDCF, DET plots.

* `metrics`  - EER, minDCF, DET points, per-dim reports (numpy only)
* `extract`  - embeddings for every MRL dim from one backbone pass, trial scoring
* `det_plot` - DET curves to PNG (matplotlib, optional)
* `cli`      - `launch/evaluate.py`

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py),
so `mrl_dist.eval.metrics` stays free of torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "MissingEmbeddingError": "extract",
    "evaluate_model": "extract",
    "extract_embeddings": "extract",
    "length_groups": "extract",
    "score_trials": "extract",
    "compute_eer": "metrics",
    "compute_min_dcf": "metrics",
    "det_curve": "metrics",
    "format_table": "metrics",
    "select_metric": "metrics",
    "verification_report": "metrics",
    "plot_det": "det_plot",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
