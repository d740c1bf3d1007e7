"""Collectives of the training loop, each with a timeout that fits what it waits for.

Two kinds of waiting, two timeouts:

    per-step   the all-reduce that decides skip / stop every step, the logging reductions:
               every rank is at the same point within seconds, so a rank that is minutes late
               is hung. The default process group's timeout, `training.collective_timeout_minutes`.
    for rank 0 rank 0 alone validates (or fits the PCA head) while the others wait: minutes on
               VoxCeleb1-O with a large model. A second, gloo process group with
               `validation.timeout_minutes` serves these waits, so the long limit never
               covers the per-step collectives.

A collective that fails or times out raises `CollectiveError` naming this rank, the world size
and what it was doing, instead of the backend's bare timeout message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    pass


class Collectives:
    """The loop's cross-rank operations; every one is a no-op (or local) with a single process."""

    def __init__(
        self, rank: int, world_size: int, device: torch.device, step_timeout: timedelta, main_wait_timeout: timedelta
    ):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.step_timeout, self.main_wait_timeout = step_timeout, main_wait_timeout
        self._main_wait_group = None
        if self.distributed:
            # Every rank must create the group, in the same order, right after start-up.
            self._main_wait_group = dist.new_group(backend="gloo", timeout=main_wait_timeout)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @contextlib.contextmanager
    def _named(self, what: str, timeout: timedelta, key: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistError) as err:
            if isinstance(err, CollectiveError):
                raise
            seconds = timeout.total_seconds()
            limit = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
            raise CollectiveError(
                f"rank {self.rank} of {self.world_size}: {what} failed or timed out (limit {limit}, {key}): "
                f"another rank is hung, crashed or was killed; see its log. "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from err

    def sum(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """All-reduce (sum) of `values` on this rank's device, per-step timeout."""
        if not self.distributed:
            return values
        values = values.clone()
        with self._named(what, self.step_timeout, "training.collective_timeout_minutes"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def wait_for_main(self, what: str) -> None:
        """Barrier after work that rank 0 does alone (validation, the PCA head); long timeout."""
        if not self.distributed:
            return
        with self._named(what, self.main_wait_timeout, "validation.timeout_minutes"):
            dist.barrier(group=self._main_wait_group)

    def broadcast_from_main(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Overwrite `tensors` on every rank with rank 0's, in place (any device); long timeout,
        since the other ranks arrive here while rank 0 is still computing them."""
        if not self.distributed:
            return
        with self._named(what, self.main_wait_timeout, "validation.timeout_minutes"), torch.no_grad():
            for tensor in tensors:
                staged = tensor.detach().to("cpu", copy=True).contiguous()
                dist.broadcast(staged, src=0, group=self._main_wait_group)
                tensor.copy_(staged.to(tensor.device))
