"""Temporal pooling: frame features `[B, D, T]` -> one utterance vector."""

from __future__ import annotations

import torch
from torch import nn


def _std(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    return torch.sqrt(torch.var(x, dim=dim, keepdim=keepdim) + 1e-7)


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling (ECAPA-TDNN): `x [B, D, T]` -> `[B, 2*D]` (mean ++ std).

    With `global_context_att`, the attention also sees the utterance-level mean and std of
    every channel, so frames are weighted relative to the whole utterance.
    """

    def __init__(self, in_dim: int, bottleneck_dim: int = 128, global_context_att: bool = False):
        super().__init__()
        self.in_dim = in_dim
        self.global_context_att = global_context_att
        attention_in = in_dim * 3 if global_context_att else in_dim
        self.linear1 = nn.Conv1d(attention_in, bottleneck_dim, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck_dim, in_dim, kernel_size=1)

    @property
    def out_dim(self) -> int:
        return 2 * self.in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
        if self.global_context_att:
            context = [x.mean(dim=-1, keepdim=True).expand_as(x), _std(x, -1, keepdim=True).expand_as(x)]
            attention_in = torch.cat([x, *context], dim=1)
        else:
            attention_in = x
        # tanh, not ReLU, in the bottleneck: ReLU attention is known to converge poorly here.
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(attention_in))), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        var = torch.sum(alpha * x.square(), dim=2) - mean.square()
        return torch.cat([mean, torch.sqrt(var.clamp(min=1e-7))], dim=1)


class StatsPooling(nn.Module):
    """Plain statistics pooling: `[B, D, T]` -> `[B, 2*D]` (mean ++ std)."""

    def __init__(self, in_dim: int, **_unused):
        super().__init__()
        self.in_dim = in_dim

    @property
    def out_dim(self) -> int:
        return 2 * self.in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, -2)
        return torch.cat([x.mean(dim=-1), _std(x, -1)], dim=1)


class AveragePooling(nn.Module):
    """Temporal average: `[B, D, T]` -> `[B, D]`."""

    def __init__(self, in_dim: int, **_unused):
        super().__init__()
        self.in_dim = in_dim

    @property
    def out_dim(self) -> int:
        return self.in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, -2).mean(dim=-1)


# Official `pooling_func` names.
POOLING_LAYERS = {"ASTP": AttentiveStatsPooling, "TSTP": StatsPooling, "TAP": AveragePooling}
PoolingLayer = AttentiveStatsPooling | StatsPooling | AveragePooling


def make_pooling(name: str, in_dim: int, global_context_att: bool) -> PoolingLayer:
    if name not in POOLING_LAYERS:
        raise ValueError(f"pooling_func: unsupported value {name!r}; supported: {sorted(POOLING_LAYERS)}")
    if name == "ASTP":
        return AttentiveStatsPooling(in_dim, global_context_att=global_context_att)
    return POOLING_LAYERS[name](in_dim)
