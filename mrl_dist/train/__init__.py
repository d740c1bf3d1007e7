"""Training: the loop, its one step, the modes (mrl, classifier, distill), checkpoints, the
launcher, distillation teachers and the pooled-feature cache builder.

* `loop`  - the Trainer (`train(cfg)`); `step` - one optimizer step (the benchmarks run it too)
* `modes` - what each mode builds, trains and exports; `distill` - teachers and their loss
* `setup`, `collectives`, `ds_config`, `checkpointing`, `tracking`, `schedule`, `class_init`
* `feature_cache` - caching the frozen trunk's pooled features; `launcher`, `cli` - commands

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "Trainer": "loop",
    "train": "loop",
    "TrainingStep": "step",
    "SingleDevice": "step",
    "Mode": "modes",
    "TrainModule": "modes",
    "make_mode": "modes",
    "build_feature_cache": "feature_cache",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
