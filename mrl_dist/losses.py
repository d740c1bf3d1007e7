"""Speaker-classification losses: AAM-softmax (ArcFace) and its Matryoshka form over prefixes.

Additive angular margin: for the true class, the logit s*cos(theta) becomes s*cos(theta + m),
pulling each embedding towards its class centre by an angle m beyond what plain softmax asks.
The Matryoshka loss applies it to every prefix `emb[:, :d]` at once, so each prefix must
separate speakers on its own.

With many speakers (VoxBlink2 + VoxCeleb2: ~117k classes) the logits [B, classes] per prefix
dominate the head's step; `sampled_classes` computes them over the batch's classes plus random
others instead (partial-FC style, `sample_classes`; docs/configs.md, "Many speakers").
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


def additive_angular_margin(cosine: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """cos(theta + m) for `cosine` = cos(theta), safe near theta = 0 and theta = pi.

    Past theta = pi - m, cos(theta + m) would rise again and reward moving away from the class
    centre; there the CosFace-style `cos(theta) - m * sin(m)` keeps the target monotone
    (the usual ArcFace treatment). `margin`: a float, or a 0-d tensor (what a compiled step
    reads, so that a changing margin is data rather than a new graph).
    """
    cosine = cosine.clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)
    sine = torch.sqrt((1.0 - cosine.square()).clamp(min=_COS_EPS))
    cos_m: float | torch.Tensor
    sin_m: float | torch.Tensor
    if isinstance(margin, torch.Tensor):
        cos_m, sin_m = margin.cos(), margin.sin()
    else:
        cos_m, sin_m = math.cos(margin), math.sin(margin)
    with_margin = cosine * cos_m - sine * sin_m
    # theta > pi - m  <=>  cos(theta) < cos(pi - m) = -cos(m)
    return torch.where(cosine > -cos_m, with_margin, cosine - margin * sin_m)


def aam_logits(
    embeddings: torch.Tensor,
    class_weights: torch.Tensor,
    labels: torch.Tensor,
    margin: float | torch.Tensor,
    scale: float,
    subcenters: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled AAM logits `[B, num_classes]` and plain cosines (for accuracy).

    `embeddings [B, D]`, `class_weights [num_classes * subcenters, D]` (any norm: both sides are
    L2-normalised here), `labels [B]` int64 in [0, num_classes). With sub-centres, each class
    scores its best one. `margin`: a float (0: none) or a 0-d tensor (always applied).

    Always float32, autocast or not: under bf16 autocast `F.linear` would run in bf16 whatever
    its inputs, and the `1 - 1e-6` clamp of the margin arithmetic rounds to 1.0 there.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        cosine = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(class_weights.float(), dim=1))
        if subcenters > 1:
            cosine = cosine.view(cosine.shape[0], -1, subcenters).amax(dim=2)
        target = F.one_hot(labels, cosine.shape[1]).bool()
        if isinstance(margin, torch.Tensor) or margin:
            logits = torch.where(target, additive_angular_margin(cosine, margin), cosine)
        else:
            logits = cosine
        return scale * logits, cosine


def sample_classes(labels: torch.Tensor, num_classes: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class columns of one sampled-softmax step: every class of `labels [B]` plus others
    drawn uniformly without replacement, `count` in all (`count` >= the batch's distinct classes).

    Returns `(classes [count], targets [B])`, int64, with `classes[targets] == labels`: the
    labels as positions among the sampled columns. Shapes depend on `count` alone, never on the
    labels' values, so a compiled step keeps static shapes. Draws from the global torch RNG of
    `labels`' device (per rank in training: each rank draws its own negatives).
    """
    # Random priorities in [0, 1), the batch's classes above them all: the top `count` are those
    # classes plus a uniform sample of the rest.
    priority = torch.rand(num_classes, device=labels.device)
    priority[labels] = 2.0
    classes = priority.topk(count, sorted=False).indices
    position = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    position[classes] = torch.arange(count, device=labels.device)
    return classes, position[labels]


def class_rows(classes: torch.Tensor, subcenters: int) -> torch.Tensor:
    """Rows of a `[num_classes * subcenters, D]` class matrix holding `classes [K]`: `[K * subcenters]`,
    each class's sub-centres together (the layout `aam_logits` groups)."""
    if subcenters == 1:
        return classes
    offsets = torch.arange(subcenters, device=classes.device)
    return (classes[:, None] * subcenters + offsets).reshape(-1)


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

    `margin` is a float attribute: the trainer's margin warm-up (`loss.margin_warmup_steps`)
    sets it before each step; the forward reads its copy `margin_value`, a 0-d buffer, so that a
    compiled step (training.compile) sees a new value as data and does not recompile.

    Tied (default): one class matrix `[num_classes * subcenters, max_dim]`; dim d uses its first
    d columns, re-normalised, mirroring how the embedding itself is truncated. Untied: one matrix
    per dim.

    `sampled_classes` K (< num_classes): each forward scores the batch's classes plus random
    others, K columns in all (`sample_classes`), instead of every class; the target's margin and
    the loss are computed over those columns alone. None, or K >= num_classes: every class.
    """

    dim_weights: torch.Tensor  # buffer [num_dims]
    margin_value: torch.Tensor  # buffer []: `margin` as the forward reads it

    def __init__(
        self,
        dims: Sequence[int],
        num_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        subcenters: int = 1,
        dim_weights: Sequence[float] | None = None,
        tied: bool = True,
        sampled_classes: int | None = None,
    ):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if dim_weights is None:
            dim_weights = [1.0] * len(self.dims)
        require(dim_weights_problem(dim_weights, self.dims), "loss.dim_weights")
        self.register_buffer("dim_weights", torch.tensor([float(w) for w in dim_weights]), persistent=False)
        self.register_buffer("margin_value", torch.tensor(float(margin)), persistent=False)
        self.margin, self.scale, self.subcenters, self.tied = margin, scale, subcenters, tied
        self.num_classes = num_classes
        if sampled_classes is not None and sampled_classes < 1:
            raise ValueError(f"loss.sampled_classes: must be >= 1 (or null), got {sampled_classes}")
        self.sampled_classes = sampled_classes if sampled_classes and sampled_classes < num_classes else None
        rows = num_classes * subcenters
        if tied:
            self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, self.dims[-1])))
        else:
            self.weights = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, d))) for d in self.dims
            )

    @property
    def margin(self) -> float:
        return self._margin

    @margin.setter
    def margin(self, value: float) -> None:
        self._margin = float(value)
        self.margin_value.fill_(self._margin)

    def class_weights(self, index: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The class matrix of dim `self.dims[index]`: `[num_classes * subcenters, dim]`, or only
        `rows` of it (`class_rows`)."""
        dim = self.dims[index]
        matrix = self.weight if self.tied else self.weights[index]
        if rows is not None:
            matrix = matrix.index_select(0, rows)
        return matrix[:, :dim]

    def forward(
        self, embeddings: torch.Tensor | dict[int, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, dict[int, torch.Tensor]]]:
        """`embeddings [B, max_dim]` (or `{dim: [B, dim]}`), `labels [B]` -> (loss, stats).

        `stats = {"loss": {dim: value}, "accuracy": {dim: fraction}}` as detached 0-d tensors:
        reading them (`.item()`) is left to logging steps, so training steps never wait on the GPU.
        With `sampled_classes`, the accuracy is over the sampled columns (an easier task than all
        classes).
        """
        rows, targets = None, labels
        if self.sampled_classes is not None:  # the same columns for every dim of this batch
            classes, targets = sample_classes(labels, self.num_classes, self.sampled_classes)
            rows = class_rows(classes, self.subcenters)
        losses, accuracies = [], {}
        for index, dim in enumerate(self.dims):
            prefix = embeddings[dim] if isinstance(embeddings, dict) else embeddings[:, :dim]
            logits, cosine = aam_logits(
                prefix, self.class_weights(index, rows), targets, self.margin_value, self.scale, self.subcenters
            )
            with torch.autocast(device_type=logits.device.type, enabled=False):
                losses.append(F.cross_entropy(logits, targets))
            accuracies[dim] = (cosine.detach().argmax(dim=1) == targets).float().mean()
        stacked = torch.stack(losses)
        total = (stacked * self.dim_weights).sum() / self.dim_weights.sum()
        stats = {"loss": dict(zip(self.dims, stacked.detach())), "accuracy": accuracies}
        return total, stats
