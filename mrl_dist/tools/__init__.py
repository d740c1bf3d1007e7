"""Benchmarks, memory estimates and the GPU check: they sit beside the trainer and run its own
step (train/step.py), so they measure what training does.

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "measure_throughput": "bench",
    "build_training_step": "bench",
    "measure_step_memory": "memory",
    "estimate_gpu_peak": "memory",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
