"""The two plain heads on pooled features `[B, P]`: the pretrained embedding layer (`NativeHead`)
and the Matryoshka head (`MatryoshkaHead`, BatchNorm + Linear), whose output prefixes are the
embeddings. The rotation head (rotation_head.py) materialises as a `MatryoshkaHead`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..dims import dims_problem, require
from .encoder import SpeakerEncoder, embedding_layer


def validate_dims(dims: Sequence[int]) -> list[int]:
    dims = [int(d) for d in dims]
    require(dims_problem(dims), "mrl dims")
    return dims


class NativeHead(nn.Module):
    """The pretrained embedding layer: BatchNorm -> Linear (-> BatchNorm when `emb_bn`)."""

    def __init__(self, redimnet: SpeakerEncoder):
        super().__init__()
        self.bn, self.linear, self.bn2 = redimnet.bn, redimnet.linear, redimnet.bn2

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return embedding_layer(self.bn, self.linear, self.bn2, pooled)

    def folded_linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [E, P], b [E]) of the Linear with the eval-mode `bn2` folded in (float64)."""
        weight = self.linear.weight.detach().double()
        bias = self.linear.bias.detach().double()
        bn2 = self.bn2
        if bn2 is not None:
            if not isinstance(bn2, nn.BatchNorm1d) or bn2.running_mean is None or bn2.running_var is None:
                raise ValueError(f"cannot fold bn2 ({bn2}): expected a BatchNorm1d with running statistics")
            scale = bn2.weight.detach().double() / torch.sqrt(bn2.running_var.double() + bn2.eps)
            weight = weight * scale[:, None]
            bias = (bias - bn2.running_mean.double()) * scale + bn2.bias.detach().double()
        return weight, bias


class MatryoshkaHead(nn.Module):
    """`pooled [B, P]` -> `[B, max_dim]`; every prefix of the output is an embedding."""

    def __init__(self, in_dim: int, dims: Sequence[int]):
        super().__init__()
        self.dims = validate_dims(dims)
        self.bn = nn.BatchNorm1d(in_dim)
        self.linear = nn.Linear(in_dim, self.dims[-1])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(pooled))
