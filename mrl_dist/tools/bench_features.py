"""Head training from cached trunk features vs recomputing the frozen trunk, and the cache's cost.

Per preset (random weights; speed does not depend on them), on the CPU:
  recompute  crops/s of the trainer's frozen-trunk MRL step from waves (train/step.py via tools/bench.py:
             trunk under no_grad, head + Matryoshka AAM over 5,994 classes, backward, AdamW)
  cached     crops/s of the same step from pooled features (what `data.features` trains on)
  build      crops/s of the trunk's inference form (what `launch/cache_features.py` runs), and
             the cache's time and size per 1,000 utterances at K crops each (float16 features)

Used by `launch/bench_features.py`.
"""

from __future__ import annotations

import time

import torch

from ..data.audio import seconds_to_samples
from ..models import build_preset, inference_form
from .bench import VOXCELEB2_SPEAKERS, bench_config, build_training_step


def cached_step_rate(preset: str, batch_size: int, steps: int) -> tuple[float, int]:
    """Crops/s of the frozen-trunk MRL step on pooled features [B, P]; returns (rate, P)."""
    cfg = bench_config(preset, "mrl-frozen", batch_size)
    step = build_training_step(cfg, from_features=True)
    pooled_dim = build_preset(preset).pool_out_dim
    batch = {
        "pooled": torch.randn(batch_size, pooled_dim),
        "label": torch.randint(0, VOXCELEB2_SPEAKERS, (batch_size,)),
    }
    for _ in range(3):
        step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return steps * batch_size / (time.perf_counter() - start), pooled_dim


def build_rate(preset: str, batch_size: int, crop_seconds: float, repeats: int) -> float:
    """Crops/s of the trunk's inference form over `crop_seconds` crops (the cache's build step)."""
    trunk = inference_form(build_preset(preset).eval())
    wave = 0.1 * torch.randn(batch_size, seconds_to_samples(crop_seconds))
    with torch.inference_mode():
        trunk.pooled(wave)
        start = time.perf_counter()
        for _ in range(repeats):
            trunk.pooled(wave)
    return repeats * batch_size / (time.perf_counter() - start)
