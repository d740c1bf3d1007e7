"""DeepSpeed under this trainer: the config values the run owns, and what is not supported.

`accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml` builds a DeepSpeed
config whose batch, accumulation and clipping entries are "auto". Accelerate fills "auto" from
a prepared DataLoader, and this trainer prepares none (every rank streams its own shards), so
`fill_deepspeed_config` fills them from the run config instead:

    train_micro_batch_size_per_gpu = training.batch_size
    gradient_accumulation_steps    = training.grad_accum
    gradient_clipping              = training.grad_clip (null: 0.0, DeepSpeed's "no clipping")
    train_batch_size               = batch_size x grad_accum x world size

A value the launcher config sets explicitly must agree with the run config, else the run stops
before it starts, naming both keys.

What DeepSpeed changes in the loop: `accelerator.backward` runs the engine's backward *and*
its step (clipping, optimizer, zero_grad) at the accumulation boundary, so the trainer cannot
skip a step whose gradients are not finite. In fp16 the engine's loss scaler skips overflowing
steps itself (the trainer reads `optimizer.step_was_skipped`); in bf16 and fp32 nothing skips
them: the trainer still counts non-finite losses and stops after `training.max_bad_steps`, and
says so in the log. Unfreezing mid-run (`training.unfreeze_after_steps`) would need a second
engine and is refused at start.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ..config import Config, ConfigError

AUTO = "auto"

NOT_GUARDED_NOTE = (
    "DeepSpeed: the engine applies each step inside backward; a step with non-finite "
    "gradients cannot be skipped by the trainer (fp16: the engine's loss scaler skips "
    "overflows), only counted, and training.max_bad_steps in a row stop the run"
)


def check_deepspeed_supported(cfg: Config) -> None:
    """Refuse, before anything is built, the settings this trainer cannot run under DeepSpeed."""
    if cfg.training.compile:
        raise ConfigError(
            "training.compile",
            "is not supported under DeepSpeed (its engine wraps the module; compiling inside it is untested "
            "here); set it false, or use the DDP launcher configs/accelerate/multi-gpu.yaml",
        )
    if cfg.training.unfreeze_after_steps is not None:
        raise ConfigError(
            "training.unfreeze_after_steps",
            "is not supported under DeepSpeed (unfreezing mid-run would need a second engine); "
            "train frozen, or unfrozen from the start (training.freeze_backbone: false), or use "
            "the DDP launcher configs/accelerate/multi-gpu.yaml",
        )


def fill_deepspeed_config(
    ds_config: dict[str, Any], cfg: Config, world_size: int, source: str = "the DeepSpeed config"
) -> dict[str, Any]:
    """A copy of `ds_config` with every "auto" value the run owns filled in (see module doc).

    Raises ConfigError naming the run-config key when the launcher config sets a different value.
    """
    tcfg = cfg.training
    owned = {
        "train_micro_batch_size_per_gpu": (tcfg.batch_size, "training.batch_size"),
        "gradient_accumulation_steps": (tcfg.grad_accum, "training.grad_accum"),
        "gradient_clipping": (float(tcfg.grad_clip) if tcfg.grad_clip is not None else 0.0, "training.grad_clip"),
        "train_batch_size": (
            tcfg.batch_size * tcfg.grad_accum * world_size,
            f"training.batch_size x training.grad_accum x {world_size} ranks",
        ),
    }
    filled = copy.deepcopy(ds_config)
    for name, (value, key) in owned.items():
        current = filled.get(name, AUTO)
        if current == AUTO:
            filled[name] = value
        elif not math.isclose(float(current), float(value)):
            raise ConfigError(
                key,
                f"is {value} but {source} sets {name}: {current}; make them equal, or set "
                f"{name} to 'auto' (or leave it out) so the run config decides",
            )
    return filled


def apply_to_accelerator(accelerator, cfg: Config) -> None:
    """Fill the launcher's DeepSpeed plugin config in place (before `prepare`)."""
    plugin = accelerator.state.deepspeed_plugin
    plugin.deepspeed_config = fill_deepspeed_config(
        plugin.deepspeed_config, cfg, accelerator.num_processes, source="the accelerate DeepSpeed config"
    )
