"""Learning-rate schedule: linear warm-up, then cosine or exponential decay to a floor."""

from __future__ import annotations

import math

from ..config import LossConfig, ScheduleConfig


def lr_multiplier(step: int, schedule: ScheduleConfig, max_steps: int) -> float:
    """Factor applied to the peak learning rate at optimizer step `step` (0-based)."""
    if schedule.warmup_steps > 0 and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    floor = schedule.min_lr_ratio
    if schedule.decay == "none":
        return 1.0
    decay_steps = max(1, max_steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / decay_steps)
    if schedule.decay == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # exponential: gamma per step, or by default the rate that reaches the floor at max_steps
    gamma = schedule.gamma if schedule.gamma is not None else floor ** (1.0 / decay_steps)
    return max(floor, gamma ** (step - schedule.warmup_steps))


def margin_at(step: int, loss: LossConfig) -> float:
    """AAM margin at optimizer step `step`: 0 before `margin_warmup_start`, then a linear rise
    to `loss.margin` over `margin_warmup_steps` (the usual warm-up when training from scratch:
    a full margin on random embeddings slows the start). No warm-up: `loss.margin` throughout."""
    if loss.margin_warmup_steps <= 0:
        return loss.margin
    progress = (step - loss.margin_warmup_start + 1) / loss.margin_warmup_steps
    return loss.margin * min(1.0, max(0.0, progress))
