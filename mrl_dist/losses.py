"""Speaker-classification losses: AAM-softmax (ArcFace) and its Matryoshka form over prefixes.

Additive angular margin: for the true class, the logit s*cos(theta) becomes s*cos(theta + m),
pulling each embedding towards its class centre by an angle m beyond what plain softmax asks.
The Matryoshka loss applies it to every prefix `emb[:, :d]` at once, so each prefix must
separate speakers on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dims import dim_weights_problem, require

# Cosines are kept this far from +-1: d/dx sqrt(1 - x^2) is infinite at the ends.
_COS_EPS = 1e-6


def additive_angular_margin(cosine: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(theta + m) for `cosine` = cos(theta), safe near theta = 0 and theta = pi.

    Past theta = pi - m, cos(theta + m) would rise again and reward moving away from the class
    centre; there the CosFace-style `cos(theta) - m * sin(m)` keeps the target monotone
    (the usual ArcFace treatment).
    """
    cosine = cosine.clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)
    sine = torch.sqrt((1.0 - cosine.square()).clamp(min=_COS_EPS))
    with_margin = cosine * math.cos(margin) - sine * math.sin(margin)
    threshold = math.cos(math.pi - margin)
    return torch.where(cosine > threshold, with_margin, cosine - margin * math.sin(margin))


def aam_logits(
    embeddings: torch.Tensor,
    class_weights: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    scale: float,
    subcenters: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled AAM logits `[B, num_classes]` and plain cosines (for accuracy).

    `embeddings [B, D]`, `class_weights [num_classes * subcenters, D]` (any norm: both sides are
    L2-normalised here), `labels [B]` int64. With sub-centres, each class scores its best one.

    Always float32, autocast or not: under bf16 autocast `F.linear` would run in bf16 whatever
    its inputs, and the `1 - 1e-6` clamp of the margin arithmetic rounds to 1.0 there.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        cosine = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(class_weights.float(), dim=1))
        if subcenters > 1:
            cosine = cosine.view(cosine.shape[0], -1, subcenters).amax(dim=2)
        target = F.one_hot(labels, cosine.shape[1]).bool()
        logits = torch.where(target, additive_angular_margin(cosine, margin), cosine) if margin else cosine
        return scale * logits, cosine


class AAMSoftmax(nn.Module):
    """AAM-softmax loss for `embeddings [B, D]` and `labels [B]`; returns the mean loss."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0, subcenters: int = 1):
        super().__init__()
        self.margin, self.scale, self.subcenters = margin, scale, subcenters
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embed_dim))
        nn.init.xavier_normal_(self.weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, _ = aam_logits(embeddings, self.weight, labels, self.margin, self.scale, self.subcenters)
        return F.cross_entropy(logits, labels)


class MatryoshkaAAMLoss(nn.Module):
    """AAM-softmax on every prefix `emb[:, :d]`, weighted: sum_d w_d * L_d / sum_d w_d.

    `margin` is a plain attribute: the trainer's margin warm-up (`loss.margin_warmup_steps`)
    sets it before each step.

    Tied (default): one class matrix `[num_classes * subcenters, max_dim]`; dim d uses its first
    d columns, re-normalised, mirroring how the embedding itself is truncated. Untied: one matrix
    per dim.
    """

    dim_weights: torch.Tensor  # buffer [num_dims]

    def __init__(
        self,
        dims: Sequence[int],
        num_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        subcenters: int = 1,
        dim_weights: Sequence[float] | None = None,
        tied: bool = True,
    ):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if dim_weights is None:
            dim_weights = [1.0] * len(self.dims)
        require(dim_weights_problem(dim_weights, self.dims), "loss.dim_weights")
        self.register_buffer("dim_weights", torch.tensor([float(w) for w in dim_weights]), persistent=False)
        self.margin, self.scale, self.subcenters, self.tied = margin, scale, subcenters, tied
        self.num_classes = num_classes
        rows = num_classes * subcenters
        if tied:
            self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, self.dims[-1])))
        else:
            self.weights = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, d))) for d in self.dims
            )

    def class_weights(self, index: int) -> torch.Tensor:
        dim = self.dims[index]
        return self.weight[:, :dim] if self.tied else self.weights[index]

    def forward(
        self, embeddings: torch.Tensor | dict[int, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, dict[int, torch.Tensor]]]:
        """`embeddings [B, max_dim]` (or `{dim: [B, dim]}`), `labels [B]` -> (loss, stats).

        `stats = {"loss": {dim: value}, "accuracy": {dim: fraction}}` as detached 0-d tensors:
        reading them (`.item()`) is left to logging steps, so training steps never wait on the GPU.
        """
        losses, accuracies = [], {}
        for index, dim in enumerate(self.dims):
            prefix = embeddings[dim] if isinstance(embeddings, dict) else embeddings[:, :dim]
            logits, cosine = aam_logits(
                prefix, self.class_weights(index), labels, self.margin, self.scale, self.subcenters
            )
            with torch.autocast(device_type=logits.device.type, enabled=False):
                losses.append(F.cross_entropy(logits, labels))
            accuracies[dim] = (cosine.detach().argmax(dim=1) == labels).float().mean()
        stacked = torch.stack(losses)
        total = (stacked * self.dim_weights).sum() / self.dim_weights.sum()
        stats = {"loss": dict(zip(self.dims, stacked.detach())), "accuracy": accuracies}
        return total, stats
