"""Typed run configuration: YAML -> nested dataclasses, with ``--set key=value`` overrides.

The dataclasses below are the schema. One generic converter, driven by their type
hints, turns a YAML mapping into a :class:`Config`; every unknown key, wrong type or
invalid value is a :class:`ConfigError` naming the file (or override) and the dotted
key, e.g. ``configs/a100.yaml: training.batch_sise: unknown key (did you mean
training.batch_size?)``. Keys left out take the defaults written here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

import yaml

HeadInit = Literal["pretrained", "pca", "random"]
HeadType = Literal["rotation", "linear"]
ClassInit = Literal["mean", "random"]
ModeName = Literal["mrl", "classifier", "distill"]  # the classes are in train/modes.py
MixedPrecision = Literal["no", "fp16", "bf16"]
OptimizerName = Literal["adamw", "sgd"]
Decay = Literal["cosine", "exponential", "none"]


@dataclass
class PretrainedConfig:
    """Which official ReDimNet weights to start from."""
    train_type: str = "ft_lm"
    dataset: str = "vox2"

@dataclass
class ModelConfig:
    backbone: str = "b2"  # preset name (b0..b6, ...) or path to an official-format checkpoint
    pretrained: PretrainedConfig | None = field(default_factory=PretrainedConfig)  # null: random init
    mrl_dims: list[int] = field(default_factory=lambda: [64, 128, 192, 256])  # nested prefix sizes
    head_init: HeadInit = "pretrained"
    pca_batches: int = 8  # batches of pooled features used by head_init: pca
    # linear: a BatchNorm + Linear trained freely (with loss.class_init: mean it beat its start and
    # the native embedding at every dim on three corpora, docs/benchmarks.md); rotation: prefixes
    # up to the native dim are the native embedding under a trained rotation, so the native-size
    # prefix scores exactly like native whatever training does (models/rotation_head.py).
    head_type: HeadType = "linear"
    # rotation head: train the dims beyond the native ones (else zero: the largest prefix scores
    # like the native embedding). Off by default: trained on the backbone's own speakers they add
    # noise on unseen ones (docs/benchmarks.md); worth trying on speakers the backbone never saw.
    train_extra_dims: bool = False

@dataclass
class NoiseSnrConfig:
    """[low, high] SNR range in dB per MUSAN category."""
    noise: list[float] = field(default_factory=lambda: [0.0, 15.0])
    speech: list[float] = field(default_factory=lambda: [13.0, 20.0])
    music: list[float] = field(default_factory=lambda: [5.0, 15.0])

@dataclass
class AugmentConfig:
    noise_dir: str | None = None
    noise_snr: NoiseSnrConfig = field(default_factory=NoiseSnrConfig)
    rir_dir: str | None = None
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    speed_perturb: bool = False

    @property
    def active(self) -> bool:
        """Whether any stage changes the waveform (noise, reverberation, speed)."""
        return self.noise_prob > 0 or self.reverb_prob > 0 or self.speed_perturb

@dataclass
class DataConfig:
    train: str = "shards/train.manifest.json"
    val: str = "shards/val.manifest.json"  # manifest of the validation shards and their trials file
    crop_seconds: float = 2.0
    num_workers: int = 8
    shuffle_buffer: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # A folder written by launch/cache_features.py: the head trains from the trunk's cached pooled
    # features (no audio, no trunk). "auto": the run builds that cache itself first, in
    # RUN/features (resumable), from feature_crops_per_utterance crops of every training utterance.
    # Frozen-trunk mrl runs only; null: train from data.train's audio.
    features: str | None = None
    feature_crops_per_utterance: int = 4  # K seeded crops per utterance when features is "auto"
    # Batches from cached features hold this many crops of each speaker (batch_size / this
    # speakers): same-speaker pairs in every batch. 1: crops drawn without regard to speaker.
    crops_per_speaker: int = 1

@dataclass
class OptimizerConfig:
    name: OptimizerName = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.0001
    momentum: float = 0.9  # sgd only
    backbone_lr_ratio: float = 0.1  # a pretrained trunk, once unfrozen, trains at lr x this

@dataclass
class ScheduleConfig:
    warmup_steps: int = 1000
    decay: Decay = "cosine"
    min_lr_ratio: float = 0.01  # floor of lr / peak lr
    gamma: float | None = None  # exponential decay factor; null: reach min_lr_ratio at max_steps

@dataclass
class TrainingConfig:
    mode: ModeName = "mrl"
    freeze_backbone: bool = True
    unfreeze_after_steps: int | None = None  # null: stay frozen for the whole run
    batch_size: int = 128  # per device
    grad_accum: int = 1
    max_steps: int = 60000
    steps_per_epoch: int = 2000
    mixed_precision: MixedPrecision = "bf16"
    grad_clip: float | None = 5.0  # max grad norm; null: no clipping
    max_bad_steps: int = 20  # NaN/inf steps in a row before stopping
    # Keep the running statistics of the trunk's BatchNorm layers (front-end, backbone, pooling)
    # fixed while the trunk trains: the usual choice when fine-tuning a pretrained backbone on
    # small per-device batches. The head's BatchNorm still updates. See docs/configs.md.
    freeze_bn_stats: bool = False
    # How long a per-step collective (the all-reduce every step) may wait for the slowest rank
    # before the run fails with an error naming the rank and what it was doing.
    collective_timeout_minutes: float = 10.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

@dataclass
class LossConfig:
    margin: float = 0.2
    scale: float = 30.0
    subcenters: int = 1
    dim_weights: list[float] | None = None  # one per model.mrl_dims; null: equal weights
    tied: bool = True  # one classifier weight matrix whose prefixes serve every dim
    # Class weights at the start: "mean" = each speaker's mean embedding under the initial head
    # (pretrained starts; the head starts where the loss is already low instead of being pulled
    # towards random directions), "random" = Xavier. Means come from every cached crop
    # (data.features) or from `class_init_batches` batches of the audio stream.
    class_init: ClassInit = "mean"
    class_init_batches: int = 64
    # Margin warm-up for training from scratch: 0 until margin_warmup_start, then linear up to
    # `margin` over margin_warmup_steps optimizer steps. 0 steps: the full margin from step 0.
    margin_warmup_start: int = 0
    margin_warmup_steps: int = 0

@dataclass
class ValidationConfig:
    every_steps: int = 2000
    max_seconds: float | None = None  # crop validation utterances to this; null: full length
    batch_size: int = 16
    # Validate the initial model too (pretrained starts only): best.pt then never ends up
    # worse than the pretrained / PCA-initialised embedding it started from.
    at_start: bool = True
    # How long the other ranks wait for rank 0 to validate (or to initialise the PCA head).
    timeout_minutes: float = 180.0

@dataclass
class CheckpointConfig:
    every_steps: int = 2000
    keep_last: int = 3
    best_metric: str = "mean_eer"  # mean_eer | eer@<dim>, lower is better

@dataclass
class LoggingConfig:
    every_steps: int = 50
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "mrl-dist"

@dataclass
class TeacherConfig:
    source: str  # preset name or checkpoint path
    dims: list[int]  # student dims (from model.mrl_dims) this teacher supervises
    train_type: str = "ft_lm"
    dataset: str = "vox2"
    weight: float = 1.0

@dataclass
class DistillLossesConfig:
    embedding: float = 1.0
    similarity: float = 1.0
    aam: float = 0.5

@dataclass
class DistillConfig:
    teachers: list[TeacherConfig] = field(default_factory=list)
    losses: DistillLossesConfig = field(default_factory=DistillLossesConfig)
    cache_teacher_embeddings: bool = False

@dataclass
class Config:
    run_dir: str = "runs/a100-b2-mrl"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; a
    learning rate silently loaded as the string '1e-4' is a classic mistake)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


class ConfigError(ValueError):
    """A config problem at dotted ``key``; ``source`` is the file or ``--set`` override."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message, self.source = key, message, source
        super().__init__(f"{source}: {key}: {message}" if source else f"{key}: {message}")

    def located(self, source: str) -> ConfigError:
        return ConfigError(self.key, self.message, source)


# --- generic conversion, driven by the dataclass type hints ---

def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _optional_inner(tp: Any) -> Any | None:
    """``X | None -> X``; None for a type that is not optional."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is Literal:
        return "one of " + " | ".join(typing.get_args(tp))
    return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__


def _unknown_key(key: str, valid: Sequence[str], prefix: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {_join(prefix, close[0])}?" if close else f"valid keys here: {', '.join(valid)}"
    return ConfigError(key, f"unknown key ({hint})")


def _convert(tp: Any, value: Any, key: str) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _convert(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise ConfigError(key, f"must be {_type_name(tp)}, got {value!r}")
    if typing.get_origin(tp) is list and isinstance(value, list):
        item_type = typing.get_args(tp)[0]
        return [_convert(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
    # bool is a subclass of int, but `batch_size: true` is a mistake, not 1.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``data`` found at dotted ``prefix``."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<top level>", f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise _unknown_key(_join(prefix, str(name)), list(fields), prefix)
    values = {}
    for name, spec in fields.items():
        key = _join(prefix, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "missing required key")
    return cls(**values)


# --- value validation ---

_POSITIVE = (
    "model.pca_batches", "data.crop_seconds", "data.feature_crops_per_utterance", "data.crops_per_speaker", "training.batch_size", "training.grad_accum",
    "training.max_steps", "training.steps_per_epoch", "training.grad_clip", "training.max_bad_steps",
    "training.optimizer.lr", "training.optimizer.backbone_lr_ratio", "training.schedule.gamma", "loss.scale", "loss.subcenters",
    "validation.every_steps", "validation.max_seconds", "validation.batch_size",
    "checkpoint.every_steps", "checkpoint.keep_last", "logging.every_steps",
    "training.collective_timeout_minutes", "validation.timeout_minutes", "loss.class_init_batches",
)
_NON_NEGATIVE = (
    "data.num_workers", "data.shuffle_buffer", "training.unfreeze_after_steps",
    "training.optimizer.weight_decay", "training.schedule.warmup_steps", "loss.margin",
    "distill.losses.embedding", "distill.losses.similarity", "distill.losses.aam",
    "loss.margin_warmup_start", "loss.margin_warmup_steps",
)
_UNIT_INTERVAL = (
    "data.augment.reverb_prob", "data.augment.noise_prob", "training.optimizer.momentum",
    "training.schedule.min_lr_ratio",
)
_BEST_METRIC = re.compile(r"mean_eer|eer@(\d+)")


def _get(cfg: Config, key: str) -> Any:
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_dims(dims: list[int], key: str) -> None:
    if not dims:
        raise ConfigError(key, "must list at least one dimension")
    if any(d <= 0 for d in dims) or any(a >= b for a, b in zip(dims, dims[1:])):
        raise ConfigError(key, f"must be strictly increasing positive ints, got {dims}")


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
    _check_dims(dims, "model.mrl_dims")
    weights = cfg.loss.dim_weights
    if weights is not None:
        if len(weights) != len(dims):
            raise ConfigError(
                "loss.dim_weights", f"has {len(weights)} weights but model.mrl_dims has {len(dims)} dims {dims}"
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("loss.dim_weights", f"must be >= 0 with a positive sum, got {weights}")
    augment = cfg.data.augment
    for name in ("noise", "speech", "music"):
        snr = getattr(augment.noise_snr, name)
        if len(snr) != 2 or snr[0] > snr[1]:
            raise ConfigError(f"data.augment.noise_snr.{name}", f"must be [low, high] dB, low <= high; got {snr}")
    for prob, folder in (("noise_prob", "noise_dir"), ("reverb_prob", "rir_dir")):
        if getattr(augment, prob) > 0 and getattr(augment, folder) is None:
            raise ConfigError(
                f"data.augment.{prob}", f"is > 0 but data.augment.{folder} is null; set the folder or the probability to 0"
            )

    training = cfg.training
    if cfg.data.features is not None and (training.mode != "mrl" or not training.freeze_backbone
                                          or training.unfreeze_after_steps is not None):
        raise ConfigError("data.features", "cached trunk features need training.mode: mrl with a trunk frozen for "
                                           "the whole run (freeze_backbone: true, unfreeze_after_steps: null)")
    if training.unfreeze_after_steps is not None and not training.freeze_backbone:
        raise ConfigError(
            "training.unfreeze_after_steps", "is set but training.freeze_backbone is false; nothing to unfreeze"
        )

    match = _BEST_METRIC.fullmatch(cfg.checkpoint.best_metric)
    if match is None:
        raise ConfigError("checkpoint.best_metric", f"must be mean_eer or eer@<dim>; got {cfg.checkpoint.best_metric!r}")
    if match.group(1) is not None and int(match.group(1)) not in dims:
        raise ConfigError("checkpoint.best_metric", f"dim {match.group(1)} is not in model.mrl_dims {dims}")

    for i, teacher in enumerate(cfg.distill.teachers):
        key = f"distill.teachers[{i}]"
        _check_dims(teacher.dims, f"{key}.dims")
        missing = [d for d in teacher.dims if d not in dims]
        if missing:
            raise ConfigError(f"{key}.dims", f"{missing} not in model.mrl_dims {dims}")
        if teacher.weight < 0:
            raise ConfigError(f"{key}.weight", f"must be >= 0, got {teacher.weight}")
    if training.mode == "distill" and not cfg.distill.teachers:
        raise ConfigError("training.mode", "is 'distill' but distill.teachers is empty")


# --- public API ---

def config_from_dict(data: dict, source: str | None = None) -> Config:
    """Build and validate a Config from a plain mapping; errors name ``source``."""
    try:
        cfg = _build(Config, {} if data is None else data, "")
        validate(cfg)
    except ConfigError as err:
        raise err.located(source) if source else err from None
    return cfg


def _check_override_key(parts: list[str], source: str) -> None:
    """Walk the schema along ``parts``; ConfigError if a part is not a field there."""
    cls: Any = Config
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if cls is None:
            raise ConfigError(".".join(parts), f"{prefix} is a value, not a section", source)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown_key(_join(prefix, part), names, prefix).located(source)
        hint = typing.get_type_hints(cls)[part]
        hint = _optional_inner(hint) or hint
        cls = hint if dataclasses.is_dataclass(hint) else None


def apply_overrides(cfg_dict: dict | None, overrides: Sequence[str]) -> dict:
    """Return a copy of ``cfg_dict`` with ``key=value`` overrides applied, in order.

    Values are parsed as YAML (``64``, ``[32,64]``, ``null``, ``true``, ``{a: 1}``).
    A section set as a whole replaces that section (keys it leaves out take defaults).
    Keys are checked against the schema: an unknown key is a ConfigError.
    """
    result = copy.deepcopy(cfg_dict) if cfg_dict else {}
    for item in overrides:
        source = f"--set {item}"
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ConfigError(item, "expected key=value, e.g. training.batch_size=64", source)
        if not text:
            raise ConfigError(key, "empty value; write key=null for null or key='' for an empty string", source)
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            raise ConfigError(key, f"value is not valid YAML: {err}", source) from None
        parts = key.split(".")
        _check_override_key(parts, source)
        node = result
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent or null section: start from its defaults
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(".".join(parts[: depth + 1]), f"expected a mapping, got {node[part]!r}", source)
            node = node[part]
        node[parts[-1]] = value
    return result


def _override_source(key: str, path: str, overrides: Sequence[str]) -> str:
    """Where ``key`` got its value: the file plus the override that set it or its section."""
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key in (item, set_key) or key.startswith((set_key + ".", set_key + "[")):
            return f"{path} --set {item}"
    return path


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, convert and validate it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError("<yaml>", f"not valid YAML: {err}", path) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("<top level>", f"expected a mapping of sections, got {type(data).__name__}", path)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        raise err.located(_override_source(err.key, path, overrides)) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict/list form of ``cfg`` (YAML and JSON ready)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config; ``load_config(path)`` gives back an equal Config."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=None)
