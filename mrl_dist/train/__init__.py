"""Training: the loop, its one step, the modes (mrl, classifier, distill), checkpoints, the
launcher, distillation teachers and the pooled-feature cache builder.

* `loop`  - the Trainer (`train(cfg)`); `step` - one optimizer step (the benchmarks run it too)
* `modes` - what each mode builds, trains and exports; `distill` - teachers and their loss
* `setup`, `collectives`, `ds_config`, `checkpointing`, `tracking`, `schedule`, `class_init`
* `feature_cache` - caching the frozen trunk's pooled features; `launcher`, `cli` - commands

Training needs torch and accelerate, so the names below are imported with the package; optional
extras (wandb, tensorboard) are imported inside the functions that use them.
"""

from .feature_cache import build_feature_cache
from .loop import Trainer, train
from .modes import Mode, TrainModule, make_mode
from .step import SingleDevice, TrainingStep

__all__ = [
    "Mode",
    "SingleDevice",
    "Trainer",
    "TrainModule",
    "TrainingStep",
    "build_feature_cache",
    "make_mode",
    "train",
]
