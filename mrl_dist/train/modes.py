"""Training modes: what is trained, with which loss, and what is exported.

Each mode builds a `TrainModule` on the backbone the trainer loaded (`build`: `build_model`, then
`build_loss`), the one `nn.Module` that DDP wraps: the model *and* the loss's class weights (they
must be gradient-synchronised like any other parameter). Frozen parts have `requires_grad=False`,
so DDP never synchronises them. How a Matryoshka head starts (pretrained, PCA or random; linear or
rotation; fitted on rank 0 and broadcast, or filled by a checkpoint) is decided once, by
`plan_head`, into the `HeadPlan` that the mode and the trainer both follow.

    mrl         ReDimNetMRL (pretrained trunk, Matryoshka head) + Matryoshka AAM on its prefixes
    classifier  a plain ReDimNet + AAM on its native embedding; exports official-format files
    distill     a ReDimNetMRL student + DistillationLoss against frozen ReDimNet teachers, which
                live outside the TrainModule: never in DDP, the optimizer or a checkpoint
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data.mix import first_manifest
from ..losses import MatryoshkaAAMLoss
from ..models import ReDimNetMRL, save_official_checkpoint
from ..models.adapter_files import adapter_path_for, save_adapter
from ..models.adapters import apply_adapters, has_adapters, is_adapter_parameter, named_trunk_batchnorms
from ..models.encoder import SpeakerEncoder
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


def anchor_buffer(parameter: str) -> str:
    """The TrainModule buffer holding a head parameter's initial value (loss.head_anchor)."""
    return "head_anchor_" + parameter.replace(".", "_")


def trunk_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers of the trunk (front-end, backbone, pooling) of a ReDimNet or ReDimNetMRL."""
    return list(named_trunk_batchnorms(model).values())


def as_mrl_model(model: nn.Module) -> ReDimNetMRL:
    """`model` as the ReDimNetMRL that the mrl and distill modes train (a Matryoshka head)."""
    if not isinstance(model, ReDimNetMRL):
        raise TypeError(f"expected a ReDimNetMRL (training.mode mrl or distill), got a {type(model).__name__}")
    return model


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

    model: ReDimNetMRL | SpeakerEncoder  # a ReDimNetMRL in mrl and distill modes, the backbone in classifier
    loss: nn.Module

    def __init__(
        self,
        model: ReDimNetMRL | SpeakerEncoder,
        loss: nn.Module,
        freeze_bn_stats: bool = False,
        from_features: bool = False,
    ):
        """`from_features` (data.features): inputs are the frozen trunk's cached pooled features
        [B, P], not waves, and only the model's head runs."""
        super().__init__()
        self.model = model
        self.loss = loss
        self.freeze_bn_stats = freeze_bn_stats
        self.from_features = from_features
        self.anchor_strength, self.anchor_names = 0.0, list[str]()  # loss.head_anchor: anchor_head

    def forward(self, inputs: torch.Tensor, label: torch.Tensor, **loss_inputs):
        """`inputs`: wave [B, T] float32 16 kHz, or pooled features [B, P] with `from_features`;
        `loss_inputs`: what the mode adds for its loss (distill: `teacher_embeddings`). A model
        with losses of its own (`aux_losses`: SSRFNet's layer-prediction distillation) adds them."""
        aux: dict[str, torch.Tensor] = {}
        if self.from_features:
            embedding = self.mrl_model.head(inputs)
        elif (aux_losses := getattr(self.model, "aux_losses", None)) is not None:
            embedding, aux = aux_losses(inputs)
        else:
            embedding = self.model(inputs)
        loss, stats = self.loss(embedding, labels=label, **loss_inputs)
        anchor = self.anchor_penalty()
        if anchor is not None:
            aux["head_anchor"] = anchor
        for name, value in aux.items():
            loss = loss + value
            stats[name] = value.detach()
        return loss, stats

    def anchor_head(self, strength: float) -> None:
        """loss.head_anchor: from now on the loss adds `strength x |W - W0|^2 / |W0|^2` over the
        Matryoshka head's parameters, W0 their values now. W0 are buffers of this module, so a
        checkpoint keeps them and a resumed run pulls towards the same start."""
        head = self.mrl_model.head
        self.anchor_strength = strength
        self.anchor_names = [name for name, p in head.named_parameters() if p.requires_grad]
        for name in self.anchor_names:
            self.register_buffer(anchor_buffer(name), head.get_parameter(name).detach().clone())

    def anchor_penalty(self) -> torch.Tensor | None:
        """The head_anchor term of the loss, or None without one."""
        if not self.anchor_names:
            return None
        head = self.mrl_model.head
        starts = [self.get_buffer(anchor_buffer(name)) for name in self.anchor_names]
        drift = torch.stack([((head.get_parameter(n) - w0) ** 2).sum() for n, w0 in zip(self.anchor_names, starts)])
        size = torch.stack([(w0**2).sum() for w0 in starts])
        return self.anchor_strength * drift.sum() / size.sum().clamp_min(1e-12)

    def train(self, mode: bool = True) -> TrainModule:
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for layer in trunk_batchnorms(self.model):
                layer.eval()
        return self

    @property
    def mrl_model(self) -> ReDimNetMRL:
        """The model as the ReDimNetMRL it is in the modes with a Matryoshka head (TypeError otherwise)."""
        return as_mrl_model(self.model)

    @property
    def aam_loss(self) -> MatryoshkaAAMLoss | None:
        """The AAM part of the loss (the whole loss in mrl and classifier modes), if any."""
        return self.loss if isinstance(self.loss, MatryoshkaAAMLoss) else getattr(self.loss, "aam_loss", None)

    def set_margin(self, margin: float) -> None:
        """The AAM margin of this step (loss.margin_warmup_steps); a no-op without an AAM loss."""
        if self.aam_loss is not None:
            self.aam_loss.margin = margin


def load_backbone(cfg: Config) -> SpeakerEncoder:
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
        sampled_classes=cfg.loss.sampled_classes,
    )


@dataclass(frozen=True)
class HeadPlan:
    """How the Matryoshka head starts, decided once from the config by `plan_head`; the mode
    builds it so and the trainer provides what it needs (pooled features, rank 0's broadcast)."""

    head_init: str  # "pretrained", "pca" or "random": model.head_init, random on a random backbone
    head_type: str  # "linear" or "rotation": model.head_type, linear without a pretrained embedding
    keep_native: bool  # the pretrained embedding layer stays as `native` (a random one means nothing)
    fitted_on_main: bool  # rank 0 fits the PCA head on pooled features; every rank receives it
    weights_arrive_later: bool  # this rank builds the structure only: a checkpoint or rank 0 fills it

    @property
    def needs_pooled_features(self) -> bool:
        """Whether this rank fits the head on pooled features [N, P] of training batches."""
        return self.head_init == "pca" and not self.weights_arrive_later


def plan_head(cfg: Config, resuming: bool = False, is_main: bool = True) -> HeadPlan:
    """The one decision of how the head starts (`resuming`: its weights come from the checkpoint)."""
    pretrained = backbone_is_pretrained(cfg)
    head_init = cfg.model.head_init
    if head_init != "random" and not pretrained:
        log.warning("model.head_init=%s on a randomly initialised backbone: using 'random'", head_init)
        head_init = "random"
    head_type = cfg.model.head_type
    if head_type == "rotation" and head_init == "random":
        log.warning(
            "model.head_type=rotation needs a pretrained embedding (head_init pca or pretrained, a "
            "pretrained backbone): using a linear head"
        )
        head_type = "linear"
    # A head from another run (model.head_from) replaces whatever head_init would fit.
    fitted_on_main = head_init == "pca" and not resuming and cfg.model.head_from is None
    return HeadPlan(
        head_init,
        head_type,
        keep_native=pretrained,
        fitted_on_main=fitted_on_main,
        weights_arrive_later=resuming or (fitted_on_main and not is_main),
    )


def build_mrl_model(
    cfg: Config, plan: HeadPlan, backbone: SpeakerEncoder, pooled_features: torch.Tensor | None = None
) -> ReDimNetMRL:
    """ReDimNetMRL on `backbone`, its head started as `plan` says (`pooled_features [N, P]`: what a
    PCA head is fitted on, where `plan.needs_pooled_features`), frozen as the config says."""
    if pooled_features is not None:
        log.info("PCA head from %d pooled vectors", len(pooled_features))
    model = ReDimNetMRL.from_redimnet(
        backbone,
        dims=cfg.model.mrl_dims,
        head_init=plan.head_init,
        pooled_features=pooled_features,
        seed=cfg.seed,
        keep_native=plan.keep_native,
        head_type=plan.head_type,
        train_extra_dims=cfg.model.train_extra_dims,
        weights_arrive_later=plan.weights_arrive_later or cfg.model.head_from is not None,
    )
    if cfg.model.head_from is not None and not plan.weights_arrive_later:  # a fresh start: its head
        model.load_head_from(cfg.model.head_from)
        log.info("Matryoshka head from %s", cfg.model.head_from)
    if cfg.training.freeze_backbone:
        model.freeze_backbone()
    elif model.native is not None:
        # The native layer is a fixed reference for validation, never trained: trainable but
        # unused parameters would also stall DDP's gradient reduction.
        model.freeze("native")
    if cfg.model.adapters is not None:  # after freezing: the factors train, the trunk they wrap does not
        layers = apply_adapters(model, cfg.model.adapters, seed=cfg.seed)
        factors = sum(p.numel() for n, p in model.named_parameters() if is_adapter_parameter(n))
        log.info("LoRA adapters on %d layers of the frozen trunk: %d parameters", len(layers), factors)
    return model


class Mode:
    """What a training mode builds and exports. Subclasses fill in the model-specific parts."""

    name = ""
    needs_labels = True
    fixed_crops = False

    def __init__(self, cfg: Config, resuming: bool = False, is_main: bool = True):
        """`resuming`: the weights will come from a checkpoint; `is_main`: this is rank 0."""
        self.cfg = cfg
        self.head_plan: HeadPlan | None = None  # how a Matryoshka head starts (modes with one)

    def build(
        self,
        backbone: SpeakerEncoder,
        num_classes: int,
        pooled_features: torch.Tensor | None = None,
        from_features: bool = False,
    ) -> TrainModule:
        """The TrainModule on `backbone` (`load_backbone`) for `num_classes` training speakers (from
        the train manifest). `pooled_features [N, P]`: where `head_plan.needs_pooled_features`;
        `from_features`: the module's inputs are cached pooled features (data.features)."""
        model = self.build_model(backbone, pooled_features)
        loss = self.build_loss(model, num_classes)
        return TrainModule(model, loss, self.cfg.training.freeze_bn_stats, from_features)

    def build_model(
        self, backbone: SpeakerEncoder, pooled_features: torch.Tensor | None
    ) -> ReDimNetMRL | SpeakerEncoder:
        """The model that trains, made from `backbone` (taken over, not copied)."""
        raise NotImplementedError

    def build_loss(self, model: ReDimNetMRL | SpeakerEncoder, num_classes: int) -> nn.Module:
        """`(embedding, labels, **loss_inputs) -> (loss, stats)` for `model`'s embeddings."""
        raise NotImplementedError

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
    head_plan: HeadPlan  # planned in __init__: this mode always has a Matryoshka head

    def __init__(self, cfg: Config, resuming: bool = False, is_main: bool = True):
        super().__init__(cfg, resuming, is_main)
        self.head_plan = plan_head(cfg, resuming, is_main)
        if cfg.model.adapters is not None and not backbone_is_pretrained(cfg):
            raise ConfigError(
                "model.adapters",
                f"adapt a pretrained trunk; model.backbone {cfg.model.backbone!r} with model.pretrained: null is "
                "randomly initialised (name a checkpoint file, or set model.pretrained)",
            )

    def build_model(self, backbone: SpeakerEncoder, pooled_features: torch.Tensor | None) -> ReDimNetMRL:
        return build_mrl_model(self.cfg, self.head_plan, backbone, pooled_features)

    def build_loss(self, model: ReDimNetMRL | SpeakerEncoder, num_classes: int) -> nn.Module:
        return make_loss(self.cfg, as_mrl_model(model).dims, num_classes)

    def trunk_parameters(self, module: TrainModule) -> set[int]:
        # Adapter factors are new weights (B starts at zero): they train at the head's rate.
        return {
            id(p)
            for name, p in module.model.named_parameters()
            if not name.startswith("head.") and not is_adapter_parameter(name)
        }

    def export(self, module: TrainModule, path: Path) -> None:
        """`path`: the MRL checkpoint (adapters merged into the trunk); the adapter alone goes
        beside it (`best.pt` -> `adapter.pt`, `last.pt` -> `last.adapter.pt`)."""
        model = module.mrl_model
        model.save_checkpoint(path)
        if has_adapters(model):
            save_adapter(adapter_path_for(path), model)

    def unfreeze_if_due(self, module: TrainModule, step: int) -> bool:
        after = self.cfg.training.unfreeze_after_steps
        model = module.mrl_model
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

    def build_model(self, backbone: SpeakerEncoder, pooled_features: torch.Tensor | None) -> SpeakerEncoder:
        attach_ptm_teacher = getattr(backbone, "attach_ptm_teacher", None)
        if attach_ptm_teacher is not None:  # SSRFNet: its PTM teacher, found or refused before step 1
            attach_ptm_teacher()
        return backbone

    def build_loss(self, model: ReDimNetMRL | SpeakerEncoder, num_classes: int) -> nn.Module:
        return make_loss(self.cfg, [model.embed_dim], num_classes)

    def trunk_parameters(self, module: TrainModule) -> set[int]:
        return {id(p) for p in module.model.parameters()} if backbone_is_pretrained(self.cfg) else set()

    def export(self, module: TrainModule, path: Path) -> None:
        model = module.model
        if not isinstance(model, SpeakerEncoder):
            raise TypeError(f"classifier mode exports a plain backbone (SpeakerEncoder), got a {type(model).__name__}")
        save_official_checkpoint(model, path)


class DistillMode(MRLMode):
    """Student = ReDimNetMRL as in mrl mode (freezing and unfreezing included)."""

    name = "distill"

    def __init__(self, cfg: Config, resuming: bool = False, is_main: bool = True):
        super().__init__(cfg, resuming, is_main)
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

    def build_model(self, backbone: SpeakerEncoder, pooled_features: torch.Tensor | None) -> ReDimNetMRL:
        student = super().build_model(backbone, pooled_features)
        self.teachers = load_teachers(self.cfg.distill.teachers)
        return student

    def build_loss(self, model: ReDimNetMRL | SpeakerEncoder, num_classes: int) -> nn.Module:
        # The TrainModule holds student, adapters and AAM weights; the teachers stay outside.
        weights = self.cfg.distill.losses
        dims = as_mrl_model(model).dims
        aam = make_loss(self.cfg, dims, num_classes) if weights.aam > 0 else None  # mrl mode's loss
        return build_distillation_loss(dims, self.teachers, weights, aam)

    def place_on_device(self, device: torch.device, autocast_dtype: torch.dtype | None, rank: int) -> None:
        for teacher in self.teachers:
            teacher.model.to(device)
        self.autocast_dtype = autocast_dtype
        if self.fixed_crops:
            self.caches = open_teacher_caches(
                self.teachers, teacher_cache_dir(first_manifest(self.cfg.data.train)), f"rank{rank}"
            )

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


def make_mode(cfg: Config, resuming: bool = False, is_main: bool = True) -> Mode:
    """The mode of `training.mode`; `resuming`: weights come from a checkpoint; `is_main`: rank 0."""
    if cfg.training.mode not in MODES:
        raise ValueError(f"training.mode: {cfg.training.mode!r} is not available here; modes: {sorted(MODES)}")
    return MODES[cfg.training.mode](cfg, resuming, is_main)


def describe_parameters(module: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}
