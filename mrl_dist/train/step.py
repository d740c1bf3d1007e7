"""One optimizer step: the one definition that training, the benchmarks and the memory estimate run.

    grad_accum micro-batches, each:  batch -> device -> mode.loss_inputs (distill: teachers)
                                     -> TrainModule forward (autocast) -> backward
    then:  clip the gradient norm -> the ranks agree (skip, stop, go on) -> optimizer + scheduler

The engine is the run's `Accelerator` in training (DDP, DeepSpeed, mixed precision) or
`SingleDevice` in the benchmarks: the same four calls, without Accelerate's process-wide state,
so that one process can build many configurations one after another.

`training.compile`: `compile_forward` compiles the TrainModule's forward (trunk, head, loss) in
place, before the engine prepares it; the step itself is unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from ..config import TrainingConfig
from ..precision import autocast
from .modes import Mode

Stats = dict[str, torch.Tensor]


class Engine(Protocol):
    """What the step needs of an `accelerate.Accelerator`."""

    def accumulate(self, module: nn.Module) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor | None: ...


class SingleDevice:
    """The Accelerator's part in a step, on one device and one process: no gradient sync, the
    loss divided by `grad_accum`, and `prepare` runs the module's forward under autocast, as
    `Accelerator.prepare` does."""

    def __init__(self, device: str | torch.device = "cpu", mixed_precision: str = "no", grad_accum: int = 1):
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        self.grad_accum = grad_accum

    def prepare(self, module: nn.Module) -> nn.Module:
        forward = module.forward

        def forward_under_autocast(*args, **kwargs):
            with autocast(self.device, self.mixed_precision):
                return forward(*args, **kwargs)

        module.forward = forward_under_autocast
        return module

    def accumulate(self, module: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def compile_forward(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """training.compile: `module`'s forward (the TrainModule: trunk, head, loss) through
    `torch.compile` with static shapes (crops have a fixed length), in place, and `module`.

    In place (`nn.Module.compile`), before `accelerator.prepare` wraps it in DDP: the module keeps
    its class and state-dict names (checkpoints, `unwrap_model`, the DDP rebuild after unfreezing
    are unchanged), the forward that prepare wraps in autocast is traced with it, and its first
    call, inside DDP's forward, is split at DDP's gradient buckets (dynamo's DDP optimizer) so
    all-reduces still overlap the backward. Accelerate's own `--dynamo_backend` would compile the
    DDP wrapper instead; keep it `no` (configs/accelerate/, launch/slurm/ do).

    The first step compiles (minutes on a CPU); a change of what the graph depends on
    (the train/eval flags, which parameters require grad) compiles once more.
    """
    module.compile(dynamic=False, backend=backend)
    return module


def flatten_stats(parts: dict) -> Stats:
    """Loss statistics for logging: `{"accuracy": {64: t}}` -> `{"accuracy@64": t}`; flat keys stay."""
    flat = {}
    for key, value in parts.items():
        if isinstance(value, dict):
            flat.update({f"{key}@{dim}": v for dim, v in value.items()})
        else:
            flat[key] = value
    return flat


def finite_here(finite: torch.Tensor) -> bool:
    """The agreement of a single process: apply the step when its loss and gradient are finite."""
    return bool(finite)


class TrainingStep:
    """`step(module, batches) -> (applied, stats)`: one optimizer step over `grad_accum`
    micro-batches of `batches` (dicts with "wave" or "pooled", "label", and what the mode reads).

    `agree(finite) -> bool` decides whether the step is applied: `finite` is this rank's bool
    device tensor (loss and gradient finite); the trainer all-reduces it with the stop flag so
    every rank decides alike. A step that is not applied zeroes the gradient and still moves
    the schedule. Stats are averaged over the micro-batches and stay on the device.
    """

    def __init__(
        self,
        engine: Engine,
        optimizer: torch.optim.Optimizer,
        scheduler,
        mode: Mode,
        training: TrainingConfig,
        device: torch.device,
    ):
        self.engine = engine
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.mode = mode
        self.training = training
        self.device = device

    def micro_batch(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, Stats]:
        """Forward and backward of one micro-batch; returns the detached loss and its stats."""
        inputs = (batch["wave"] if "wave" in batch else batch["pooled"]).to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        extra = self.mode.loss_inputs(batch, inputs)
        # accumulate: no gradient sync before the last micro-batch; the loss is divided by
        # grad_accum (DeepSpeed: by its engine, which also steps at the boundary).
        with self.engine.accumulate(module):
            loss, parts = module(inputs, label, **extra)
            self.engine.backward(loss)
        loss = loss.detach()
        return loss, {"loss": loss, **flatten_stats(parts)}

    def __call__(
        self, module: nn.Module, batches: Iterator[dict], agree: Callable[[torch.Tensor], bool] = finite_here
    ) -> tuple[bool, Stats]:
        finite, stats = self.accumulate_gradients(module, batches)
        return self.apply(module, finite, stats, agree), stats

    def accumulate_gradients(self, module: nn.Module, batches: Iterator[dict]) -> tuple[torch.Tensor, Stats]:
        """Forward and backward of `grad_accum` micro-batches: (finite, stats averaged over them).
        Finiteness stays a device tensor until `apply`'s `agree`: one GPU sync per step."""
        grad_accum = self.training.grad_accum
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        stats: Stats = {}
        for _ in range(grad_accum):
            loss, parts = self.micro_batch(module, next(batches))
            finite &= torch.isfinite(loss)
            for key, value in parts.items():
                stats[key] = stats.get(key, 0) + value / grad_accum
        return finite, stats

    def apply(
        self, module: nn.Module, finite: torch.Tensor, stats: Stats, agree: Callable[[torch.Tensor], bool] = finite_here
    ) -> bool:
        """Clip, agree, then the optimizer and scheduler step (adds "grad_norm" to `stats`).
        Returns whether the update was applied."""
        tcfg = self.training
        max_norm = tcfg.grad_clip if tcfg.grad_clip is not None else math.inf
        grad_norm = self.engine.clip_grad_norm_(module.parameters(), max_norm)
        # fp16's scaler skips overflowing steps itself; elsewhere an inf gradient is a bad step.
        if tcfg.mixed_precision != "fp16" and grad_norm is not None:
            finite = finite & torch.isfinite(torch.as_tensor(grad_norm, device=self.device))
        if not agree(finite):  # under DeepSpeed the engine has applied it already: counted, not skipped
            self.optimizer.zero_grad(set_to_none=True)
            self._schedule()
            return False
        self.optimizer.step()
        self._schedule()
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:  # DeepSpeed clips inside its engine and reports no norm
            stats["grad_norm"] = torch.as_tensor(grad_norm).detach()
        return not getattr(self.optimizer, "step_was_skipped", False)

    def _schedule(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
