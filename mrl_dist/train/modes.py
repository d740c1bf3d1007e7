"""Training modes: what is trained, with which loss, and what is exported.

Each mode builds a `TrainModule`, the one `nn.Module` that DDP wraps: the model *and* the
loss's class weights (they must be gradient-synchronised like any other parameter). Frozen
parts have `requires_grad=False`, so DDP never synchronises them.

    mrl         ReDimNetMRL (pretrained trunk, Matryoshka head) + Matryoshka AAM on its prefixes
    classifier  a plain ReDimNet + AAM on its native embedding; exports official-format files
    distill     a ReDimNetMRL student + DistillationLoss against frozen ReDimNet teachers, which
                live outside the TrainModule: never in DDP, the optimizer or a checkpoint
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..losses import MatryoshkaAAMLoss
from ..models import ReDimNet, ReDimNetMRL, save_official_checkpoint
from ..models.loading import load_model_source, names_a_file
from ..models.ssrfnet import fusion_overrides
from .distill import (
    Teacher,
    TeacherEmbeddingCache,
    build_distillation_loss,
    cached_teacher_embeddings,
    load_teachers,
    open_teacher_caches,
    teacher_cache_dir,
    teacher_embeddings,
)

log = logging.getLogger(__name__)


def trunk_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers of the trunk (front-end, backbone, pooling) of a ReDimNet or ReDimNetMRL."""
    parts = [getattr(model, name, None) for name in ("spec", "backbone", "pool")]
    return [
        m
        for part in parts
        if part is not None
        for m in part.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


class TrainModule(nn.Module):
    """`(wave [B, T], label [B]) -> (loss, stats)`: the model plus its loss, as DDP sees them.

    Train/eval policy, the same in every mode (`.train()` applies it; the trainer calls it once
    the module is built and again after unfreezing):
      - frozen parts stay in eval mode (ReDimNetMRL pins them): no BatchNorm statistics update,
        no dropout;
      - trainable parts are in train mode during steps; validation switches everything to eval
        and back (eval.extract);
      - `freeze_bn_stats` (training.freeze_bn_stats) also keeps the trunk's BatchNorm layers in
        eval mode while the trunk trains: fixed running statistics, affine parameters trained.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, freeze_bn_stats: bool = False):
        super().__init__()
        self.model = model
        self.loss = loss
        self.freeze_bn_stats = freeze_bn_stats
        # data.features: inputs are the frozen trunk's cached pooled features [B, P], not waves.
        self.from_features = False

    def forward(self, inputs: torch.Tensor, label: torch.Tensor, **loss_inputs):
        """`inputs`: wave [B, T] float32 16 kHz, or pooled features [B, P] with `from_features`;
        `loss_inputs`: what the mode adds for its loss (distill: `teacher_embeddings`). A model
        with losses of its own (`aux_losses`: SSRFNet's layer-prediction distillation) adds them."""
        aux: dict[str, torch.Tensor] = {}
        if self.from_features:
            embedding = self.model.head(inputs)
        elif hasattr(self.model, "aux_losses"):
            embedding, aux = self.model.aux_losses(inputs)
        else:
            embedding = self.model(inputs)
        loss, stats = self.loss(embedding, labels=label, **loss_inputs)
        for name, value in aux.items():
            loss = loss + value
            stats[name] = value.detach()
        return loss, stats

    def train(self, mode: bool = True) -> TrainModule:
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for layer in trunk_batchnorms(self.model):
                layer.eval()
        return self

    @property
    def aam_loss(self) -> MatryoshkaAAMLoss | None:
        """The AAM part of the loss (the whole loss in mrl and classifier modes), if any."""
        return self.loss if isinstance(self.loss, MatryoshkaAAMLoss) else getattr(self.loss, "aam_loss", None)

    def set_margin(self, margin: float) -> None:
        """The AAM margin of this step (loss.margin_warmup_steps); a no-op without an AAM loss."""
        if self.aam_loss is not None:
            self.aam_loss.margin = margin


def load_backbone(cfg: Config) -> ReDimNet:
    """The ReDimNet named by `model.backbone`: a checkpoint path, a pretrained preset, or random."""
    pretrained = cfg.model.pretrained
    try:
        return load_model_source(
            cfg.model.backbone,
            None if pretrained is None else (pretrained.train_type, pretrained.dataset),
            fusion=fusion_overrides(cfg.model.fusion),
        )
    except FileNotFoundError as err:
        raise FileNotFoundError(f"model.backbone: {err}") from None


def backbone_is_pretrained(cfg: Config) -> bool:
    return names_a_file(cfg.model.backbone) or cfg.model.pretrained is not None


def make_loss(cfg: Config, dims: list[int], num_classes: int) -> MatryoshkaAAMLoss:
    weights = cfg.loss.dim_weights if dims == cfg.model.mrl_dims else None
    return MatryoshkaAAMLoss(
        dims,
        num_classes,
        margin=cfg.loss.margin,
        scale=cfg.loss.scale,
        subcenters=cfg.loss.subcenters,
        dim_weights=weights,
        tied=cfg.loss.tied,
    )


def resolved_head_type(cfg: Config) -> str:
    """model.head_type, except that a head without a pretrained embedding to rotate is linear."""
    if cfg.model.head_type == "rotation" and (cfg.model.head_init == "random" or not backbone_is_pretrained(cfg)):
        log.warning(
            "model.head_type=rotation needs a pretrained embedding (head_init pca or pretrained, a "
            "pretrained backbone): using a linear head"
        )
        return "linear"
    return cfg.model.head_type


PooledFeatures = Callable[[ReDimNet], "torch.Tensor | None"]


def build_mrl_model(cfg: Config, pca_features: PooledFeatures | None, resuming: bool) -> ReDimNetMRL:
    """ReDimNetMRL on the configured backbone.

    `pca_features(redimnet)` gives the pooled features `[N, P]` the PCA head is fitted on, or
    None on a rank that does not fit it (the trainer fits it on rank 0, on the accelerator, and
    broadcasts the head; such a rank starts from the pretrained head as a placeholder). Skipped
    when resuming, since the head's weights then come from the checkpoint.
    """
    redimnet = load_backbone(cfg)
    head_init = cfg.model.head_init
    if head_init != "random" and not backbone_is_pretrained(cfg):
        log.warning("model.head_init=%s on a randomly initialised backbone: using 'random'", head_init)
        head_init = "random"
    # The head's weights come later when resuming (the checkpoint) or, for PCA, on every rank
    # but rank 0 (its broadcast): build the structure and record the configured init.
    pooled, weights_arrive_later = None, resuming
    if head_init == "pca" and not resuming:
        if pca_features is None:
            raise ValueError("model.head_init: pca needs training batches for its pooled features")
        pooled = pca_features(redimnet)
        weights_arrive_later = pooled is None
        if pooled is not None:
            log.info("PCA head from %d pooled vectors", len(pooled))
    # A random backbone's "native" embedding means nothing: keep it only when pretrained.
    model = ReDimNetMRL.from_redimnet(
        redimnet,
        dims=cfg.model.mrl_dims,
        head_init=head_init,
        pooled_features=pooled,
        seed=cfg.seed,
        keep_native=backbone_is_pretrained(cfg),
        head_type=resolved_head_type(cfg),
        train_extra_dims=cfg.model.train_extra_dims,
        weights_arrive_later=weights_arrive_later,
    )
    if cfg.training.freeze_backbone:
        model.freeze_backbone()
    elif model.native is not None:
        # The native layer is a fixed reference for validation, never trained: trainable but
        # unused parameters would also stall DDP's gradient reduction.
        model.freeze("native")
    return model


class Mode:
    """What a training mode builds and exports. Subclasses fill in the model-specific parts."""

    name = ""
    needs_labels = True
    fixed_crops = False

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build(self, num_classes: int, pca_features: PooledFeatures | None, resuming: bool) -> TrainModule:
        """The TrainModule for `num_classes` training speakers (from the train manifest)."""
        raise NotImplementedError

    def head_fitted_on_main(self, module: TrainModule, resuming: bool) -> nn.Module | None:
        """The part `build` fitted from data on rank 0 only (the PCA head), to broadcast; None if none."""
        return None

    def trunk_parameters(self, module: TrainModule) -> set[int]:
        """ids of pretrained-trunk parameters (trained at `backbone_lr_ratio` x lr)."""
        return set()

    def export(self, module: TrainModule, path: Path) -> None:
        raise NotImplementedError

    def eval_model(self, module: TrainModule) -> nn.Module:
        return module.model

    def unfreeze_if_due(self, module: TrainModule, step: int) -> bool:
        """Called before each step: unfreezes the trunk when `training.unfreeze_after_steps` is
        reached. True exactly once, on the call that changed the trainable set."""
        return False

    def place_on_device(self, device: torch.device, autocast_dtype: torch.dtype | None, rank: int) -> None:
        """Called once the module is on its device (distill: moves the teachers there)."""

    def loss_inputs(self, batch: dict, wave: torch.Tensor) -> dict:
        """Keyword inputs of the TrainModule beyond (wave, label)."""
        return {}

    def save_caches(self) -> None:
        """Persist what the mode keeps beside the run (distill: the teacher-embedding cache)."""


class MRLMode(Mode):
    name = "mrl"

    def build(self, num_classes: int, pca_features: PooledFeatures | None, resuming: bool) -> TrainModule:
        model = build_mrl_model(self.cfg, pca_features, resuming)
        return TrainModule(
            model, make_loss(self.cfg, model.dims, num_classes), freeze_bn_stats=self.cfg.training.freeze_bn_stats
        )

    def head_fitted_on_main(self, module: TrainModule, resuming: bool) -> nn.Module | None:
        # build_mrl_model fits the PCA head on rank 0 exactly then.
        fitted = self.cfg.model.head_init == "pca" and not resuming and backbone_is_pretrained(self.cfg)
        return module.model.head if fitted else None

    def trunk_parameters(self, module: TrainModule) -> set[int]:
        return {id(p) for name, p in module.model.named_parameters() if not name.startswith("head.")}

    def export(self, module: TrainModule, path: Path) -> None:
        module.model.save_checkpoint(path)

    def unfreeze_if_due(self, module: TrainModule, step: int) -> bool:
        after = self.cfg.training.unfreeze_after_steps
        model: ReDimNetMRL = module.model
        # `trunk_frozen` ignores the native layer, which stays frozen for good (a reference).
        if after is None or step < after or not model.trunk_frozen:
            return False
        model.unfreeze("all")
        if model.native is not None:
            model.freeze("native")
        module.train(module.training)  # re-apply the train/eval policy to the unfrozen parts
        return True


class ClassifierMode(Mode):
    name = "classifier"

    def build(self, num_classes: int, pca_features: PooledFeatures | None, resuming: bool) -> TrainModule:
        model = load_backbone(self.cfg)
        if hasattr(model, "attach_ptm_teacher"):  # SSRFNet: its PTM teacher, found or refused before step 1
            model.attach_ptm_teacher()
        return TrainModule(
            model,
            make_loss(self.cfg, [model.embed_dim], num_classes),
            freeze_bn_stats=self.cfg.training.freeze_bn_stats,
        )

    def trunk_parameters(self, module: TrainModule) -> set[int]:
        return {id(p) for p in module.model.parameters()} if backbone_is_pretrained(self.cfg) else set()

    def export(self, module: TrainModule, path: Path) -> None:
        save_official_checkpoint(module.model, path)


class DistillMode(MRLMode):
    """Student = ReDimNetMRL as in mrl mode (freezing and unfreezing included)."""

    name = "distill"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.needs_labels = cfg.distill.losses.aam > 0
        self.fixed_crops = cfg.distill.cache_teacher_embeddings
        self.teachers: list[Teacher] = []
        self.caches: list[TeacherEmbeddingCache] | None = None
        self.autocast_dtype: torch.dtype | None = None
        if self.fixed_crops and cfg.data.augment.active:
            raise ValueError(
                "distill.cache_teacher_embeddings: cached teacher embeddings are of the clean fixed "
                "crop; turn data.augment off (noise_prob, reverb_prob 0, speed_perturb false) or "
                "the cache off"
            )

    def build(self, num_classes: int, pca_features: PooledFeatures | None, resuming: bool) -> TrainModule:
        student = build_mrl_model(self.cfg, pca_features, resuming)
        self.teachers = load_teachers(self.cfg.distill.teachers)
        weights = self.cfg.distill.losses
        aam = make_loss(self.cfg, student.dims, num_classes) if weights.aam > 0 else None
        # The TrainModule holds student, adapters and AAM weights; the teachers stay outside.
        return TrainModule(
            student,
            build_distillation_loss(student.dims, self.teachers, weights, aam),
            freeze_bn_stats=self.cfg.training.freeze_bn_stats,
        )

    def place_on_device(self, device: torch.device, autocast_dtype: torch.dtype | None, rank: int) -> None:
        for teacher in self.teachers:
            teacher.model.to(device)
        self.autocast_dtype = autocast_dtype
        if self.fixed_crops:
            self.caches = open_teacher_caches(self.teachers, teacher_cache_dir(self.cfg.data.train), f"rank{rank}")

    def loss_inputs(self, batch: dict, wave: torch.Tensor) -> dict:
        if self.caches is None:
            return {"teacher_embeddings": teacher_embeddings(self.teachers, wave, self.autocast_dtype)}
        lengths = [wave.shape[1]] * wave.shape[0]
        return {
            "teacher_embeddings": cached_teacher_embeddings(
                self.teachers, self.caches, wave, batch["key"], batch["start"], lengths, self.autocast_dtype
            )
        }

    def save_caches(self) -> None:
        for cache in self.caches or []:
            cache.flush()


MODES: dict[str, type[Mode]] = {"mrl": MRLMode, "classifier": ClassifierMode, "distill": DistillMode}


def make_mode(cfg: Config) -> Mode:
    if cfg.training.mode not in MODES:
        raise ValueError(f"training.mode: {cfg.training.mode!r} is not available here; modes: {sorted(MODES)}")
    return MODES[cfg.training.mode](cfg)


def describe_parameters(module: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}
