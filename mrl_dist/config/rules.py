"""Value rules of the run configuration: ranges, cross-field consistency. `validate` raises a
`ConfigError` naming the key; the rules on Matryoshka dims are mrl_dist/dims.py's."""

from __future__ import annotations

import re
from typing import Any

from ..dims import dim_weights_problem, dims_problem, teacher_dims_problem, weight_problem
from .convert import ConfigError
from .schema import Config

_POSITIVE = (
    "model.pca_batches",
    "data.crop_seconds",
    "data.feature_crops_per_utterance",
    "data.crops_per_speaker",
    "training.batch_size",
    "training.grad_accum",
    "training.max_steps",
    "training.steps_per_epoch",
    "training.grad_clip",
    "training.max_bad_steps",
    "training.optimizer.lr",
    "training.optimizer.backbone_lr_ratio",
    "training.schedule.gamma",
    "loss.scale",
    "loss.subcenters",
    "validation.every_steps",
    "validation.max_seconds",
    "validation.batch_size",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "logging.every_steps",
    "training.collective_timeout_minutes",
    "validation.timeout_minutes",
    "loss.class_init_batches",
    "loss.sampled_classes",
    "model.fusion.inject_stages",
    "model.fusion.group_size",
    "model.fusion.proj_kernel",
)
_NON_NEGATIVE = (
    "data.num_workers",
    "data.shuffle_buffer",
    "training.unfreeze_after_steps",
    "training.optimizer.weight_decay",
    "training.schedule.warmup_steps",
    "loss.margin",
    "distill.losses.embedding",
    "distill.losses.similarity",
    "distill.losses.aam",
    "loss.margin_warmup_start",
    "loss.margin_warmup_steps",
    "model.fusion.distill_weight",
)
_UNIT_INTERVAL = (
    "data.augment.reverb_prob",
    "data.augment.noise_prob",
    "training.optimizer.momentum",
    "training.schedule.min_lr_ratio",
)
_BEST_METRIC = re.compile(r"mean_eer|eer@(\d+)")


def _get(cfg: Config, key: str) -> Any:
    """The value at a dotted key; None inside a section that is null (model.fusion)."""
    value = cfg
    for part in key.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def _check(problem: str | None, key: str) -> None:
    if problem:
        raise ConfigError(key, problem)


def validate(cfg: Config) -> None:
    """Check values and cross-field consistency; raises ConfigError naming the key."""
    for keys, ok, rule in (
        (_POSITIVE, lambda v: v > 0, "must be > 0"),
        (_NON_NEGATIVE, lambda v: v >= 0, "must be >= 0"),
        (_UNIT_INTERVAL, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ):
        for key in keys:
            value = _get(cfg, key)
            if value is not None and not ok(value):
                raise ConfigError(key, f"{rule}, got {value!r}")

    dims = cfg.model.mrl_dims
    _check(dims_problem(dims), "model.mrl_dims")
    if cfg.loss.dim_weights is not None:
        _check(dim_weights_problem(cfg.loss.dim_weights, dims), "loss.dim_weights")
    augment = cfg.data.augment
    for name in ("noise", "speech", "music"):
        snr = getattr(augment.noise_snr, name)
        if len(snr) != 2 or snr[0] > snr[1]:
            raise ConfigError(f"data.augment.noise_snr.{name}", f"must be [low, high] dB, low <= high; got {snr}")
        count = getattr(augment.noise_count, name)
        if len(count) != 2 or count[0] < 1 or count[0] > count[1]:
            raise ConfigError(
                f"data.augment.noise_count.{name}", f"must be [low, high] clips, 1 <= low <= high; got {count}"
            )
    for prob, folder in (("noise_prob", "noise_dir"), ("reverb_prob", "rir_dir")):
        if getattr(augment, prob) > 0 and getattr(augment, folder) is None:
            raise ConfigError(
                f"data.augment.{prob}",
                f"is > 0 but data.augment.{folder} is null; set the folder or the probability to 0",
            )

    fusion = cfg.model.fusion
    if fusion is not None and fusion.proj_kernel is not None and fusion.proj_kernel % 2 == 0:
        raise ConfigError("model.fusion.proj_kernel", f"must be odd (same padding), got {fusion.proj_kernel}")

    training = cfg.training
    if cfg.data.features is not None and (
        training.mode != "mrl" or not training.freeze_backbone or training.unfreeze_after_steps is not None
    ):
        raise ConfigError(
            "data.features",
            "cached trunk features need training.mode: mrl with a trunk frozen for "
            "the whole run (freeze_backbone: true, unfreeze_after_steps: null)",
        )
    if training.unfreeze_after_steps is not None and not training.freeze_backbone:
        raise ConfigError(
            "training.unfreeze_after_steps", "is set but training.freeze_backbone is false; nothing to unfreeze"
        )
    _check_adapters(cfg)

    sampled = cfg.loss.sampled_classes
    if sampled is not None and sampled < training.batch_size:
        raise ConfigError(
            "loss.sampled_classes",
            f"is {sampled}, fewer than training.batch_size {training.batch_size}: every crop's class must be "
            "among the sampled ones; raise it (or null: every class)",
        )
    if cfg.loss.head_anchor < 0:
        raise ConfigError("loss.head_anchor", f"must be >= 0, got {cfg.loss.head_anchor!r}")
    if cfg.loss.head_anchor > 0 and training.mode == "classifier":
        raise ConfigError("loss.head_anchor", "pulls a Matryoshka head; training.mode classifier has none")
    if cfg.model.head_from is not None:
        if training.mode == "classifier":
            raise ConfigError("model.head_from", "starts a Matryoshka head; training.mode classifier has none")
        if cfg.model.head_type != "linear":
            raise ConfigError(
                "model.head_from", "loads a linear head (checkpoints hold heads as linear); set model.head_type: linear"
            )
    _check_training_mix(cfg)
    set_names = _check_validation_sets(cfg)
    best = cfg.checkpoint.best_metric
    set_name, _, metric = best.rpartition("/")
    if set_name and set_name not in set_names:
        raise ConfigError("checkpoint.best_metric", f"names validation set {set_name!r}; the sets are {set_names}")
    match = _BEST_METRIC.fullmatch(metric)
    if match is None:
        raise ConfigError(
            "checkpoint.best_metric", f"must be mean_eer or eer@<dim>, optionally after `<set>/`; got {best!r}"
        )
    if match.group(1) is not None and int(match.group(1)) not in dims:
        raise ConfigError("checkpoint.best_metric", f"dim {match.group(1)} is not in model.mrl_dims {dims}")

    for i, teacher in enumerate(cfg.distill.teachers):
        key = f"distill.teachers[{i}]"
        _check(teacher_dims_problem(teacher.dims, dims), f"{key}.dims")
        _check(weight_problem(teacher.weight), f"{key}.weight")
    if training.mode == "distill" and not cfg.distill.teachers:
        raise ConfigError("training.mode", "is 'distill' but distill.teachers is empty")


def _check_training_mix(cfg: Config) -> None:
    """data.train as a list: at least one corpus, each weight > 0, names unique (where given)."""
    if isinstance(cfg.data.train, str):
        return
    if not cfg.data.train:
        raise ConfigError("data.train", "is an empty list; name at least one {manifest, weight}")
    names: dict[str, int] = {}
    for i, corpus in enumerate(cfg.data.train):
        if not corpus.weight > 0:
            raise ConfigError(f"data.train[{i}].weight", f"must be > 0, got {corpus.weight!r}")
        if corpus.name is not None:
            if corpus.name in names:
                raise ConfigError(f"data.train[{i}].name", f"{corpus.name!r} is data.train[{names[corpus.name]}]'s too")
            names[corpus.name] = i


def _check_validation_sets(cfg: Config) -> list[str]:
    """validation.sets: names unique and usable in best_metric; returns the set names."""
    names: list[str] = []
    for i, entry in enumerate(cfg.validation.sets):
        if not entry.name or "/" in entry.name:
            raise ConfigError(f"validation.sets[{i}].name", f"must be non-empty without '/', got {entry.name!r}")
        if entry.name in names:
            raise ConfigError(f"validation.sets[{i}].name", f"{entry.name!r} is used by another set")
        names.append(entry.name)
    return names or ["val"]


def _check_adapters(cfg: Config) -> None:
    """model.adapters: sane values, and a run they mean something in: mode mrl with the trunk
    frozen throughout, trained from audio (cached features are the base trunk's, which the
    adapters change)."""
    adapters, training = cfg.model.adapters, cfg.training
    if adapters is None:
        return
    if adapters.rank < 1:
        raise ConfigError("model.adapters.rank", f"must be >= 1, got {adapters.rank}")
    if not adapters.alpha > 0:
        raise ConfigError("model.adapters.alpha", f"must be > 0, got {adapters.alpha}")
    if not 0 <= adapters.dropout < 1:
        raise ConfigError("model.adapters.dropout", f"must be in [0, 1), got {adapters.dropout}")
    if not adapters.target_modules:
        raise ConfigError("model.adapters.target_modules", "is empty; name module types or name patterns")
    if training.mode != "mrl":
        raise ConfigError("model.adapters", f"train in training.mode: mrl, not {training.mode!r}")
    if not training.freeze_backbone or training.unfreeze_after_steps is not None:
        raise ConfigError(
            "model.adapters",
            "adapt a trunk that stays frozen (training.freeze_backbone: true, unfreeze_after_steps: null); "
            "to fine-tune the whole trunk, set model.adapters: null",
        )
    if cfg.data.features is not None:
        raise ConfigError(
            "data.features",
            "cached pooled features are the base trunk's, and adapters change its output; "
            "set data.features: null (train from audio) or model.adapters: null",
        )
    if adapters.batchnorm == "train" and training.freeze_bn_stats:
        raise ConfigError(
            "model.adapters.batchnorm",
            "is 'train' but training.freeze_bn_stats is true; choose one BatchNorm policy",
        )
