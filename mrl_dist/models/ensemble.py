"""EnsembleRouter: the no-training baseline a distilled Matryoshka student has to beat.

Each requested embedding size is served by the teacher assigned to it, truncated to that
size: `router(wave, 64)` is `small_teacher(wave)[:, :64]`, `router(wave, 192)` is
`large_teacher(wave)[:, :192]`. It answers "what do the existing models give at each size
for free?", at the cost of running (and storing) several networks instead of one.

The interface mirrors `ReDimNetMRL` (`forward(wave, dim)`, `forward_all`, `dims`, `max_dim`)
so evaluation code scores either one unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl_dist.config import TeacherConfig

from .encoder import SpeakerEncoder
from .loading import load_pretrained


class EnsembleRouter(nn.Module):
    """Routes each dim to one teacher and prefix-truncates that teacher's embedding."""

    def __init__(self, assignments: Sequence[tuple[SpeakerEncoder, Sequence[int]]]):
        """`assignments`: `(teacher, dims)` pairs; `teacher(wave [B, T]) -> [B, teacher.embed_dim]`.

        Every dim has exactly one teacher and must not exceed that teacher's `embed_dim`.
        """
        super().__init__()
        if not assignments:
            raise ValueError("EnsembleRouter needs at least one (teacher, dims) assignment")
        self.teachers = nn.ModuleList(teacher for teacher, _ in assignments)
        self._route: dict[int, int] = {}  # dim -> index into self.teachers
        for index, (teacher, dims) in enumerate(assignments):
            for dim in (int(d) for d in dims):
                if dim <= 0:
                    raise ValueError(f"teacher {index}: dim {dim} must be positive")
                if dim > teacher.embed_dim:
                    raise ValueError(
                        f"teacher {index}: dim {dim} exceeds its embed_dim {teacher.embed_dim}; "
                        "a prefix cannot be longer than the embedding"
                    )
                if dim in self._route:
                    raise ValueError(
                        f"dim {dim} is assigned to teachers {self._route[dim]} and {index}; "
                        "a router needs exactly one teacher per dim"
                    )
                self._route[dim] = index
        if not self._route:
            raise ValueError("EnsembleRouter: no teacher was assigned any dim")

    @classmethod
    def from_config(cls, teachers: Sequence[TeacherConfig]) -> EnsembleRouter:
        """Load each `distill.teachers` entry with `load_pretrained` and route its `dims` to it (eval mode)."""
        assignments = [
            (load_pretrained(cfg.source, train_type=cfg.train_type, dataset=cfg.dataset), cfg.dims) for cfg in teachers
        ]
        return cls(assignments).eval()

    @property
    def dims(self) -> list[int]:
        return sorted(self._route)

    @property
    def max_dim(self) -> int:
        return self.dims[-1]

    def teacher_for(self, dim: int) -> nn.Module:
        """The teacher that serves `dim`; ValueError naming it when none does."""
        if dim not in self._route:
            raise ValueError(f"no teacher covers dim {dim}; routed dims: {self.dims}")
        return self.teachers[self._route[dim]]

    def forward(self, wave: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """`wave [B, T]` float32 16 kHz -> `[B, dim]` (default: the largest routed dim)."""
        dim = self.max_dim if dim is None else int(dim)
        return self.teacher_for(dim)(wave)[:, :dim]

    def forward_all(self, wave: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every routed dim, running each teacher once: `{dim: [B, dim]}`, dims ascending."""
        full = {index: teacher(wave) for index, teacher in enumerate(self.teachers) if index in self._route.values()}
        return {dim: full[self._route[dim]][:, :dim] for dim in self.dims}
