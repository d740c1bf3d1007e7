"""What the trainer is built from: the Accelerator and the collectives, the optimizer and its
schedule, the stop flag, and the DDP wrapper rebuilt after unfreezing. Kept apart from the loop (loop.py) so that file reads as the loop."""

from __future__ import annotations

import signal
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, DynamoBackend, InitProcessGroupKwargs

from ..config import Config, ConfigError
from . import ds_config
from .collectives import Collectives
from .modes import TrainModule
from .schedule import lr_multiplier


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (preemption) into a stop every rank takes at the same step.

    The handler only sets `received`, on the rank it reached, at any moment. The loop stops on
    `agreed`, which changes only in `agree`, inside the per-step all-reduce that every rank joins:
    had the loop read the handler's flag, a signal landing on one rank after that all-reduce
    would make it stop and save while the others went on to the next step's collectives, and
    the job would hang until it was killed, losing the checkpoint."""

    def __init__(self):
        self.received = False
        self.agreed = False
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = True
        self.signal_name = signal.Signals(signum).name

    def agree(self, ranks_received: float) -> None:
        """Record the all-reduced count of ranks whose handler has run."""
        self.agreed = ranks_received > 0


class BadStepError(RuntimeError):
    pass


def make_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator; under DeepSpeed its config is filled from the run config."""
    precision = cfg.training.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("training.mixed_precision: fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    accelerator = Accelerator(
        mixed_precision=precision,
        # Micro-batches go through `accelerator.accumulate`, which also tells DeepSpeed where
        # the accumulation boundary is.
        gradient_accumulation_steps=cfg.training.grad_accum,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, not steps x ranks
        kwargs_handlers=[
            # The default group serves the per-step collectives: a hung rank is found in minutes.
            # Waiting for rank 0's validation uses a group of its own (collectives.py).
            InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.training.collective_timeout_minutes)),
            DistributedDataParallelKwargs(find_unused_parameters=False),
        ],
    )
    launcher_backend = accelerator.state.dynamo_plugin.backend
    if cfg.training.compile and launcher_backend != DynamoBackend.NO:
        raise ConfigError(
            "training.compile",
            f"is true and the launcher compiles too (--dynamo_backend {launcher_backend.value.lower()}); "
            "keep one: launch with --dynamo_backend no (training.compile compiles the module itself)",
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config.check_deepspeed_supported(cfg)
        ds_config.apply_to_accelerator(accelerator, cfg)
    return accelerator


def make_collectives(cfg: Config, accelerator: Accelerator) -> Collectives:
    """This rank's collectives, with the per-step and the waiting-for-rank-0 timeouts of the config."""
    return Collectives(
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        step_timeout=timedelta(minutes=cfg.training.collective_timeout_minutes),
        main_wait_timeout=timedelta(minutes=cfg.validation.timeout_minutes),
    )


def make_optimizer(cfg: Config, module: TrainModule, trunk_ids: set[int]) -> torch.optim.Optimizer:
    """Every parameter is registered, frozen ones too (they get no gradient, so no update):
    unfreezing later then needs no new optimizer. The pretrained trunk trains at a lower rate."""
    opt = cfg.training.optimizer
    head = [p for p in module.parameters() if id(p) not in trunk_ids]
    trunk = [p for p in module.parameters() if id(p) in trunk_ids]
    groups = [{"params": head, "lr": opt.lr}]
    if trunk:
        groups.append({"params": trunk, "lr": opt.lr * opt.backbone_lr_ratio})
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, lr=opt.lr, weight_decay=opt.weight_decay)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """training.schedule over training.max_steps optimizer steps (schedule.py)."""
    tcfg = cfg.training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, tcfg.schedule, tcfg.max_steps))


def rewrap_ddp(accelerator: Accelerator, wrapped: torch.nn.Module) -> torch.nn.Module:
    """DDP only synchronises the parameters that required grad when it was built: after
    unfreezing, a new DDP wrapper around the same module. Nothing else changes: the module's
    autocast forward (from `prepare`), the optimizer (every parameter is in it from the start, so
    its state for the head carries on) and the scheduler. One process: returned as it is."""
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return wrapped
    kwargs = accelerator.ddp_handler.to_kwargs() if accelerator.ddp_handler is not None else {}
    new = torch.nn.parallel.DistributedDataParallel(
        wrapped.module, device_ids=wrapped.device_ids, output_device=wrapped.output_device, **kwargs
    )
    if accelerator.ddp_handler is not None:
        accelerator.ddp_handler.register_comm_hook(new)
    # Accelerate's own list (save_state, load_state) holds the wrapper or the bare module:
    # swap the wrapper where it is there.
    accelerator._models = [new if entry is wrapped else entry for entry in accelerator._models]
    return new
