"""The rotation head: a Matryoshka head that can only re-order the native embedding, plus extra dims.

    pooled [B, P] -> fixed BatchNorm -> fixed native Linear (P -> E) -> e [B, E]   (the native embedding)
    z[:, :E] = e @ Q,   Q = Q0 @ matrix_exp(S - S^T)   (orthogonal: trained through S, zero at start)
    z[:, E:] = Linear(P -> max_dim - E)(normalised pooled)    (dims beyond the native ones)

Why: a free Linear head trained with AAM on the speakers the frozen backbone was trained on
learns what separates *those* speakers and loses accuracy on unseen ones (measured in
docs/benchmarks.md, "MRL head recipes"). Here every prefix up to E is a projection of the native
embedding onto a trained subspace: the E-D prefix scores exactly like the native embedding
whatever the training does, and training can only move information between prefixes, i.e.
into the short ones. Q0 is the PCA rotation (`head_init: pca`) or the identity (`pretrained`).

The dims beyond E start at zero and stay there unless `train_extra` (`model.train_extra_dims`):
trained with AAM on the backbone's own training speakers they learned information about *those*
speakers and added noise on unseen ones where the backbone fits its speakers closely (demo
corpus, 256-D: 5.47 % -> 6.63 %), and helped where it does not (a 168-speaker corpus: 2.50 % ->
2.05 %); docs/benchmarks.md. At zero, the max_dim prefix scores exactly like the native one.

For inference and checkpoints the head is materialised as the plain `MatryoshkaHead`
(BatchNorm + Linear) it equals (`materialise`), so files written from it load anywhere a linear
head does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import MatryoshkaHead


class RotationHead(nn.Module):
    """`pooled [B, P]` -> `[B, max_dim]`; prefixes up to the native dim E are rotations of native."""

    # Buffers: the fixed native BatchNorm's statistics and affine, the native Linear, Q0.
    bn_running_mean: torch.Tensor
    bn_running_var: torch.Tensor
    bn_weight: torch.Tensor
    bn_bias: torch.Tensor
    base_weight: torch.Tensor
    base_bias: torch.Tensor
    rotation0: torch.Tensor

    def __init__(
        self,
        bn: nn.BatchNorm1d,
        weight: torch.Tensor,
        bias: torch.Tensor,
        dims: Sequence[int],
        rotation: torch.Tensor | None = None,
        extra_std: float = 0.0,
        generator: torch.Generator | None = None,
        train_extra: bool = False,
    ):
        """`bn`: the native input BatchNorm (its eval-mode statistics are used, fixed); `weight [E, P]`,
        `bias [E]`: the native Linear with any output BatchNorm folded in; `rotation [E, E]`: Q0
        (None: identity); `extra_std`: initial std of the weights of the dims beyond E, trained
        when `train_extra` (else they are zero and fixed)."""
        super().__init__()
        self.dims = [int(d) for d in dims]
        embed_dim, in_dim = weight.shape
        for name in ("running_mean", "running_var", "weight", "bias"):
            self.register_buffer(f"bn_{name}", getattr(bn, name).detach().clone().float())
        self.bn_eps = float(bn.eps)
        self.register_buffer("base_weight", weight.detach().clone().float())
        self.register_buffer("base_bias", bias.detach().clone().float())
        eye = torch.eye(embed_dim)
        self.register_buffer("rotation0", (rotation if rotation is not None else eye).detach().clone().float())
        self.skew = nn.Parameter(torch.zeros(embed_dim, embed_dim))
        extra = self.dims[-1] - embed_dim
        self.extra = nn.Linear(in_dim, extra) if extra > 0 else None
        if self.extra is not None:
            with torch.no_grad():
                std = extra_std if train_extra else 0.0
                self.extra.weight.copy_(torch.randn(extra, in_dim, generator=generator) * std)
                self.extra.bias.zero_()
            self.extra.requires_grad_(train_extra)

    @property
    def embed_dim(self) -> int:
        return self.base_weight.shape[0]

    def rotation(self) -> torch.Tensor:
        """Q [E, E], orthogonal (float32, outside autocast)."""
        with torch.autocast(device_type=self.skew.device.type, enabled=False):
            return self.rotation0 @ torch.matrix_exp(self.skew - self.skew.T)

    def normalise(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            pooled,
            self.bn_running_mean,
            self.bn_running_var,
            self.bn_weight,
            self.bn_bias,
            training=False,
            eps=self.bn_eps,
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        normalised = self.normalise(pooled)
        native = normalised @ self.base_weight.T.to(normalised.dtype) + self.base_bias.to(normalised.dtype)
        rotated = native @ self.rotation().to(native.dtype)
        rotated = rotated[:, : self.dims[-1]]
        if self.extra is None:
            return rotated
        return torch.cat([rotated, self.extra(normalised).to(rotated.dtype)], dim=1)

    @torch.no_grad()
    def materialise(self) -> MatryoshkaHead:
        """The equal `MatryoshkaHead` (BatchNorm1d + Linear) with this head's current weights."""

        head = MatryoshkaHead(self.base_weight.shape[1], self.dims)
        running_mean, running_var = head.bn.running_mean, head.bn.running_var
        if running_mean is None or running_var is None:  # a BatchNorm1d tracks them unless told not to
            raise RuntimeError("MatryoshkaHead's BatchNorm keeps no running statistics to copy into")
        running_mean.copy_(self.bn_running_mean)
        running_var.copy_(self.bn_running_var)
        head.bn.weight.copy_(self.bn_weight)
        head.bn.bias.copy_(self.bn_bias)
        head.bn.eps = self.bn_eps
        rotation = self.rotation().double()
        weight = (rotation.T @ self.base_weight.double())[: self.dims[-1]]
        bias = (rotation.T @ self.base_bias.double())[: self.dims[-1]]
        if self.extra is not None:
            weight = torch.cat([weight, self.extra.weight.double()])
            bias = torch.cat([bias, self.extra.bias.double()])
        head.linear.weight.copy_(weight.float())
        head.linear.bias.copy_(bias.float())
        return head.to(self.skew.device).eval()
