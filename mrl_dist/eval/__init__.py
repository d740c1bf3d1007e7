"""Evaluation: embeddings of trial utterances, cosine scores, EER / minDCF, DET plots.

* `metrics`  - EER, minDCF, DET points, per-dim reports (numpy only)
* `extract`  - embeddings for every MRL dim from one backbone pass, trial scoring
* `det_plot` - DET curves to PNG (matplotlib, optional)
* `cli`      - `launch/evaluate.py`

Names are imported on first use, so `mrl_dist.eval.metrics` stays free of torch.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mrl_dist.eval' has no attribute {name!r}")
    return getattr(import_module(f"mrl_dist.eval.{_EXPORTS[name]}"), name)
