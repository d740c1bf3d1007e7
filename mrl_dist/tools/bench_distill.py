"""What `distill.cache_teacher_embeddings` saves: a distillation step with teachers run live vs
their embeddings read from a warm cache.

    synthetic fixed crops wave [B, T] (keys and starts fixed, as with fixed_crops)
      live:   teachers forward (no_grad) -> student step (forward, DistillationLoss, backward, AdamW)
      cached: TeacherEmbeddingCache.get                -> the same student step

Teachers and student have random weights (speed does not depend on their values).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import DistillLossesConfig
from ..data.audio import seconds_to_samples
from ..models import ReDimNetMRL, build_preset
from ..train.distill import (
    Teacher,
    TeacherEmbeddingCache,
    build_distillation_loss,
    cached_teacher_embeddings,
    freeze_teacher,
    teacher_embeddings,
)


@dataclass
class CacheBenchResult:
    live_crops_per_second: float
    cached_crops_per_second: float
    teacher_ms_per_batch: float

    @property
    def speedup(self) -> float:
        return self.cached_crops_per_second / self.live_crops_per_second


def measure_teacher_cache(
    teacher_presets: Sequence[str] = ("b0", "b2"),
    student_preset: str = "tiny",
    dims: Sequence[int] = (64, 128, 192),
    batch_size: int = 32,
    crop_seconds: float = 2.0,
    steps: int = 5,
) -> CacheBenchResult:
    torch.manual_seed(0)
    split = (
        [list(dims[: len(dims) // 2 or 1]), list(dims[len(dims) // 2 or 1 :])]
        if len(teacher_presets) == 2
        else [list(dims)] * len(teacher_presets)
    )
    teachers = [
        Teacher(freeze_teacher(build_preset(name)), split[i] if i < len(split) else list(dims), 1.0, name)
        for i, name in enumerate(teacher_presets)
    ]
    student = ReDimNetMRL(build_preset(student_preset).model_config, list(dims), keep_native=False).train()
    loss_fn = build_distillation_loss(student.dims, teachers, DistillLossesConfig(aam=0.0))
    optimizer = torch.optim.AdamW([*student.parameters(), *loss_fn.parameters()], lr=1e-4)
    wave = torch.randn(batch_size, seconds_to_samples(crop_seconds))
    keys = [f"spk/vid/{i:05d}" for i in range(batch_size)]
    starts, lengths = [0] * batch_size, [wave.shape[1]] * batch_size

    def student_step(targets: list[torch.Tensor]) -> None:
        loss, _ = loss_fn(student(wave), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(get_targets) -> float:
        student_step(get_targets())  # warm-up
        began = time.perf_counter()
        for _ in range(steps):
            student_step(get_targets())
        return steps * batch_size / (time.perf_counter() - began)

    began = time.perf_counter()
    for _ in range(steps):
        teacher_embeddings(teachers, wave)
    teacher_ms = 1000 * (time.perf_counter() - began) / steps
    live = timed(lambda: teacher_embeddings(teachers, wave))
    with tempfile.TemporaryDirectory() as folder:
        caches = [TeacherEmbeddingCache(folder, t.name, t.embed_dim) for t in teachers]
        cached_teacher_embeddings(teachers, caches, wave, keys, starts, lengths)  # fill: one epoch's pass
        cached = timed(lambda: cached_teacher_embeddings(teachers, caches, wave, keys, starts, lengths))
    return CacheBenchResult(live, cached, teacher_ms)
