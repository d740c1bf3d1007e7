"""AAM class weights that start at the speakers' mean embeddings (`loss.class_init: mean`).

With random class weights, the first steps of head training pull every embedding towards a
random direction per speaker, undoing the pretrained (or PCA) head before the weights have
found the speakers: on the demo corpus that alone took the 16-D EER from 3.7 % to 5.4 % and the
192-D one from 3.4 % to 4.6 % (docs/benchmarks.md, "MRL head recipes"). Starting each class
weight at its speaker's mean unit-length embedding under the initial head puts the loss near a
minimum the pretrained embedding already offers, so training refines instead of re-learning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..config import Config
from ..losses import MatryoshkaAAMLoss
from .modes import backbone_is_pretrained

log = logging.getLogger(__name__)


@torch.no_grad()
def class_mean_embeddings(
    embed: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean unit-length embedding per class: `embed(inputs [B, ...]) -> [B, D]` over
    `(inputs, labels [B])` batches (label -1: unlabelled, ignored). Returns (means [C, D] float32
    on the CPU, counts [C] int64); a class without samples has a zero row and count 0."""
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for inputs, labels in batches:
        embeddings = F.normalize(embed(inputs.to(device)).float(), dim=1).cpu()
        keep = (labels >= 0) & (labels < num_classes)
        if sums is None:
            sums = torch.zeros(num_classes, embeddings.shape[1])
        sums.index_add_(0, labels[keep], embeddings[keep])
        counts += torch.bincount(labels[keep], minlength=num_classes)
    if sums is None:
        raise ValueError("class_init: no batches to compute the class means from")
    return sums / counts.clamp(min=1)[:, None], counts


@torch.no_grad()
def set_class_weights(loss: MatryoshkaAAMLoss, means: torch.Tensor, counts: torch.Tensor) -> int:
    """Overwrite the class weights of every class with samples by its mean (each sub-centre the
    same; AAM normalises rows, so the scale does not matter); returns how many were set."""
    present = counts > 0
    classes = loss.num_classes
    matrices = [loss.weight] if loss.tied else list(loss.weights)
    for matrix in matrices:
        dim = matrix.shape[1]
        view = matrix.view(classes, loss.subcenters, dim)
        view[present] = means[present, None, :dim].to(matrix.dtype).to(matrix.device)
    return int(present.sum())


def class_means_wanted(cfg: Config, aam: MatryoshkaAAMLoss | None, model: torch.nn.Module, resuming: bool) -> bool:
    """`loss.class_init: mean` applies: a fresh start of a pretrained model (a Matryoshka head, or
    in classifier mode the backbone's own embedding) with an AAM loss."""
    return cfg.loss.class_init == "mean" and not resuming and backbone_is_pretrained(cfg) and aam is not None


def start_at_class_means(
    aam: MatryoshkaAAMLoss,
    model: torch.nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> str:
    """Set `aam`'s class weights to the speakers' mean embeddings `embed(inputs)` over `batches`,
    with `model` (which `embed` runs) in eval mode meanwhile; returns a line for train.log."""
    was_training = model.training
    model.eval()
    means, counts = class_mean_embeddings(embed, batches, aam.num_classes, device)
    model.train(was_training)
    found = set_class_weights(aam, means, counts)
    return (
        f"class weights: speaker means of {int(counts.sum())} crops for {found} of "
        f"{aam.num_classes} classes (the rest random)"
    )
