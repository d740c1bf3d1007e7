"""Data: packing VoxCeleb into tar shards, and streaming training/evaluation batches from them.

Names are imported lazily so that `launch/make_shards.py` (numpy, soundfile, PyAV) does not pull
in torch, which only the loaders need.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "make_train_loader": "pipeline", "make_eval_loader": "pipeline", "resolve_source": "pipeline",
    "TrainLoader": "pipeline", "EvalLoader": "pipeline",
    "AugmentConfig": "augment", "NoiseCategory": "augment", "num_classes": "augment",
    "Manifest": "manifest", "ManifestError": "manifest", "read_manifest": "manifest",
    "decode_file": "audio", "SAMPLE_RATE": "audio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
