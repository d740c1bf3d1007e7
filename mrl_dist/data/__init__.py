"""Data: packing VoxCeleb into tar shards, and streaming training/evaluation batches from them.

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py), so
that packing shards (numpy, soundfile, PyAV) never pulls in torch, which only the loaders need.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "make_train_loader": "pipeline",
    "make_eval_loader": "pipeline",
    "resolve_source": "pipeline",
    "TrainLoader": "pipeline",
    "EvalLoader": "pipeline",
    "augment_from_dict": "augment",
    "NoiseCategory": "augment",
    "noise_categories": "augment",
    "num_classes": "augment",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "read_manifest": "manifest",
    "decode_file": "audio",
    "SAMPLE_RATE": "audio",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
