"""Low-rank adapters (LoRA) on a frozen trunk: small trained factors beside the adapted layers,
folded into their weights for export.

    adapted layer:  y = base(x) + (alpha / rank) * B(A(dropout(x)))
        Linear  x [..., I]       A [r, I]           B [O, r]
        Conv1d  x [B, I, T]      A [r, I, k]        B [O, r]   A runs with the base's kernel, stride,
        Conv2d  x [B, I, F, T]   A [r, I, kf, kt]   B [O, r]   padding and dilation; B is pointwise
    merged:  W' = W + (alpha / rank) * B @ A (tap by tap): the same function, equal within rounding

B starts at zero, so an adapted model starts equal to its base. The base layer stays where it
was, inside the wrapper (`base`), frozen; only `lora_A` and `lora_B` train.

What is adapted (`AdapterConfig`): the layers of the chosen trunk parts (`stages`: the backbone's
parts, `stem`, `stage0`, ..., and the pooling, `pool`; null: all) that `target_modules` names, by
type (`conv1d`, `conv2d`, `linear`: exactly these classes, not subclasses such as the
`out_proj` of `nn.MultiheadAttention`, whose weight is read without calling it) or by a glob
pattern over the module name. Grouped convolutions (`groups > 1`, ReDimNet's depthwise
convolutions) are skipped: their weight is `[O, I / groups, k]`, a low-rank factorisation would
have to be done per group, and a depthwise convolution has only C x k weights, too few for a
low-rank update to save anything. A name pattern or stage that adapts nothing is an error that
lists the candidates.

BatchNorm statistics (`batchnorm`): `frozen` (default) keeps the base's running statistics, so the
model starts equal to its base, the adapter file holds factors only, and a domain's small batches
(tens of crops on a CPU) cannot shift the normalisation of every layer the factors were fitted
against. `train` re-estimates them on the new domain's batches (the trunk's BatchNorms run in
training mode during steps; affine weights stay frozen): the adapter file then carries them too.

The adapter's record on the model (`adapter_record`) holds its config, the base trunk's
fingerprint (`data.features.trunk_fingerprint`, taken when the adapters are applied) and whether
they have been merged. Files: `adapter_files.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdapterConfig

ADAPTED_TYPES: dict[str, type[nn.Module]] = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "linear": nn.Linear}
RECORD_ATTRIBUTE = "adapter_record"  # where the record lives on the adapted model
FACTOR_NAMES = ("lora_A", "lora_B")


class AdapterError(ValueError):
    """Adapters that cannot be applied, merged, saved or loaded as asked (the message says why)."""


@dataclass
class AdapterRecord:
    """What was applied to a model: `config` (an `AdapterConfig` as a dict), the adapted `layers`
    (module names), the base trunk's `fingerprint`, and whether the factors are `merged` into
    the weights, with the `digest` of what was merged (`state_digest`). `replaced_buffers`: the
    base's BatchNorm statistics an adapter file replaced (restored by `remove_adapters`)."""

    config: dict[str, Any]
    layers: list[str]
    fingerprint: str
    merged: bool = False
    digest: str | None = None
    replaced_buffers: dict[str, torch.Tensor] = field(default_factory=dict)


class LoRALayer(nn.Module):
    """A frozen `base` layer plus `(alpha / rank) * B A` (see the module docstring)."""

    base: nn.Conv1d | nn.Conv2d | nn.Linear

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, generator: torch.Generator):
        super().__init__()
        if not isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise TypeError(f"LoRA adapts Conv1d, Conv2d and Linear layers, not {type(base).__name__}")
        self.base = base
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scaling = alpha / rank
        weight = base.weight
        outputs, inputs_per_output = weight.shape[0], weight[0].numel()  # inputs x kernel taps
        a = torch.empty(rank, *weight.shape[1:], dtype=torch.float32)
        # nn.Linear's own initialisation (uniform, fan-in scaled), from a seeded generator: every rank alike.
        bound = 1.0 / math.sqrt(inputs_per_output)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(outputs, rank, device=weight.device, dtype=weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        return out + self.scaling * self.update(x)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """`B A x`, the unscaled low-rank branch."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """`(alpha / rank) * B @ A` in the base weight's shape, float64."""
        a = self.lora_A.detach().double().flatten(1)  # [r, I x taps]
        delta = self.lora_B.detach().double() @ a  # [O, I x taps]
        return self.scaling * delta.view(self.base.weight.shape)

    def merged(self) -> nn.Module:
        """A copy of `base` whose weight holds the update: the plain layer equal to this one."""
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.weight.copy_((layer.weight.double() + self.delta_weight()).to(layer.weight.dtype))
        return layer

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}"


class LoRALinear(LoRALayer):
    base: nn.Linear

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoRAConv1d(LoRALayer):
    base: nn.Conv1d

    def update(self, x: torch.Tensor) -> torch.Tensor:
        # The base's own padding mode, stride and dilation for A; B mixes the r channels pointwise.
        hidden = self.base._conv_forward(x, self.lora_A, None)
        return F.conv1d(hidden, self.lora_B.unsqueeze(-1))


class LoRAConv2d(LoRALayer):
    base: nn.Conv2d

    def update(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.base._conv_forward(x, self.lora_A, None)
        return F.conv2d(hidden, self.lora_B[:, :, None, None])


_WRAPPERS: dict[type[nn.Module], type[LoRALayer]] = {
    nn.Linear: LoRALinear,
    nn.Conv1d: LoRAConv1d,
    nn.Conv2d: LoRAConv2d,
}


# ---------------------------------------------------------------------------- which layers
def trunk_parts(model: nn.Module) -> dict[str, str]:
    """The adaptable parts of a ReDimNetMRL or SpeakerEncoder: `{part: module name}`, e.g.
    `{"stem": "backbone.stem", ..., "mfa": "backbone.mfa", "pool": "pool"}`."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "part_names") or not hasattr(model, "pool"):
        raise AdapterError(f"adapters go on a trunk (spec, backbone, pool); a {type(model).__name__} has none")
    parts = {name: f"backbone.{name}" for name in backbone.part_names()}
    parts["pool"] = "pool"
    return parts


def _adaptable(module: nn.Module) -> bool:
    return type(module) in _WRAPPERS and getattr(module, "groups", 1) == 1


def _as_pattern(name: str) -> str:
    """`backbone.stage3.9.tcm.0.pwconv1` -> `backbone.stage*.*.tcm.*.pwconv1`: candidates, in short."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", re.sub(r"^backbone\.stage\d+", "backbone.stage*", name))


def select_layers(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Names of the layers `cfg` adapts in `model`, in module order. An unknown stage, or a
    target that adapts nothing, is an AdapterError listing the candidates."""
    parts = trunk_parts(model)
    stages = list(parts) if cfg.stages is None else cfg.stages
    roots = []
    for stage in stages:
        part = stage.removeprefix("backbone.")
        if part not in parts:
            raise AdapterError(f"model.adapters.stages: {stage!r} is not a trunk part; parts: {', '.join(parts)}")
        roots.append(parts[part])
    found = [(n, m) for root in roots for n, m in model.get_submodule(root).named_modules(prefix=root)]
    layers = {name: module for name, module in found if _adaptable(module)}
    grouped = [name for name, module in found if type(module) in _WRAPPERS and not _adaptable(module)]
    if not cfg.target_modules:
        raise AdapterError("model.adapters.target_modules is empty; name module types or name patterns")
    chosen: set[str] = set()
    for target in cfg.target_modules:
        kind = ADAPTED_TYPES.get(target.lower())
        hits = {n for n, m in layers.items() if (type(m) is kind if kind else fnmatch.fnmatchcase(n, target))}
        if not hits:
            only_grouped = kind is None and any(fnmatch.fnmatchcase(n, target) for n in grouped)
            why = "it matches only grouped (depthwise) convolutions, which are not adapted; " if only_grouped else ""
            raise AdapterError(
                f"model.adapters.target_modules: {target!r} names no adaptable layer in stages {stages}; {why}"
                f"candidates: the types {', '.join(ADAPTED_TYPES)} or the names "
                f"{', '.join(sorted({_as_pattern(n) for n in layers}))}"
            )
        chosen |= hits
    for stage, root in zip(cfg.stages or [], roots):  # a part named on purpose must get something
        if not any(name == root or name.startswith(f"{root}.") for name in chosen):
            raise AdapterError(
                f"model.adapters.stages: {stage!r} has no layer that target_modules {cfg.target_modules} names"
            )
    return [name for name in layers if name in chosen]


# ---------------------------------------------------------------------------- apply, merge, remove
def adapter_record(model: nn.Module) -> AdapterRecord | None:
    record = getattr(model, RECORD_ATTRIBUTE, None)
    return record if isinstance(record, AdapterRecord) else None


def has_adapters(model: nn.Module) -> bool:
    """Whether `model` carries adapters that are not merged (its trunk's output is not the base's)."""
    record = adapter_record(model)
    return record is not None and not record.merged


def apply_adapters(model: nn.Module, cfg: AdapterConfig, *, seed: int = 0, fingerprint: str | None = None) -> list[str]:
    """Wrap the layers `cfg` selects (`select_layers`) in LoRA layers, in place; returns their
    names. The wrapped layers' own parameters keep their `requires_grad` (freeze the trunk
    first); the factors train. `fingerprint`: the base trunk's, if known (else computed)."""
    if cfg.type != "lora":
        raise AdapterError(f"model.adapters.type: {cfg.type!r} is not available; types: lora")
    if adapter_record(model) is not None:
        raise AdapterError("this model already has adapters (merged or not); apply them to its base")
    names = select_layers(model, cfg)
    base_fingerprint = fingerprint if fingerprint is not None else trunk_fingerprint_of(model)
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        layer = model.get_submodule(name)
        wrapper = _WRAPPERS[type(layer)](layer, cfg.rank, cfg.alpha, cfg.dropout, generator)
        _set_submodule(model, name, wrapper)
    setattr(model, RECORD_ATTRIBUTE, AdapterRecord(dataclasses.asdict(cfg), names, base_fingerprint))
    set_adapter_training(model, model.training)
    return names


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight, in place (each wrapper becomes the plain layer
    it equals); returns `model`. Refused when they are merged already, or there are none."""
    record = adapter_record(model)
    if record is not None and record.merged:
        raise AdapterError(
            "the adapters are already merged into this model's weights; merging again would add them twice"
        )
    wrappers = _wrappers(model)
    if record is None or not wrappers:
        raise AdapterError("this model has no adapters to merge")
    record.digest = state_digest(adapter_state_dict(model))
    for name, wrapper in wrappers:
        _set_submodule(model, name, wrapper.merged())
    record.merged = True
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Take unmerged adapters off `model`, in place: the base layers (and the BatchNorm statistics
    an adapter file replaced) return; `model` is its base again, ready for another adapter."""
    record = adapter_record(model)
    if record is None or record.merged:
        raise AdapterError("this model has no unmerged adapters to remove")
    for name, wrapper in _wrappers(model):
        _set_submodule(model, name, wrapper.base)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in record.replaced_buffers.items():
            state[key].copy_(value)
    delattr(model, RECORD_ATTRIBUTE)
    return model


def set_adapter_training(model: nn.Module, mode: bool) -> None:
    """The train/eval policy of adapters (`ReDimNetMRL.train` calls it after pinning frozen parts
    to eval): the LoRA layers follow `mode` (their dropout), and with `batchnorm: train` so do the
    trunk's BatchNorms (their statistics update). No-op without unmerged adapters."""
    record = adapter_record(model)
    if record is None or record.merged:
        return
    for _, wrapper in _wrappers(model):
        wrapper.training = mode
    if record.config.get("batchnorm") == "train":
        for layer in named_trunk_batchnorms(model).values():
            layer.train(mode)


def named_trunk_batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of the trunk (front-end, backbone, pooling), by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if name.split(".")[0] in ("spec", "backbone", "pool") and isinstance(module, nn.modules.batchnorm._BatchNorm)
    }


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name (`...red_dim_conv.0.lora_A`) is an adapter factor."""
    return name.rsplit(".", 1)[-1] in FACTOR_NAMES


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone, detached on the CPU: every factor, and with `batchnorm: train` the trunk's
    BatchNorm statistics (running mean, var, batch count) it trained, by state-dict key."""
    record = adapter_record(model)
    if record is None or record.merged:
        raise AdapterError("this model has no unmerged adapters to save")
    state = model.state_dict()
    keys = [key for key in state if is_adapter_parameter(key)]
    if record.config.get("batchnorm") == "train":
        keys += [
            f"{name}.{buffer}"
            for name, layer in named_trunk_batchnorms(model).items()
            for buffer, _ in layer.named_buffers()
        ]
    return {key: state[key].detach().cpu().clone() for key in keys}


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the adapter state's keys and values: ties an adapter file to the checkpoint it
    was merged into."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def merged_provenance(model: nn.Module) -> dict[str, Any]:
    """The `adapter` entry of a checkpoint of `model` with its adapters merged: what they were."""
    record = adapter_record(model)
    if record is None:
        raise AdapterError("this model has no adapters")
    digest = record.digest if record.merged else state_digest(adapter_state_dict(model))
    return {
        "adapter_config": dict(record.config),
        "base_fingerprint": record.fingerprint,
        "layers": list(record.layers),
        "digest": digest,
        "merged": True,
    }


def mark_merged(model: nn.Module, provenance: Mapping[str, Any]) -> None:
    """A model loaded from a checkpoint with an `adapter` entry: its adapters are in its weights
    (so `merge_adapters` refuses to add them twice)."""
    record = AdapterRecord(
        dict(provenance["adapter_config"]),
        list(provenance["layers"]),
        provenance["base_fingerprint"],
        merged=True,
        digest=provenance.get("digest"),
    )
    setattr(model, RECORD_ATTRIBUTE, record)


def trunk_fingerprint_of(model: nn.Module) -> str:
    """The base trunk's fingerprint, as the pooled-feature cache takes it (one definition,
    `data.features.trunk_fingerprint`; imported here, not at the top: models do not import the
    data package when they load)."""
    from ..data.features import trunk_fingerprint

    if _wrappers(model):
        raise AdapterError("the fingerprint of a base trunk is taken before adapters are applied")
    return trunk_fingerprint(model, cast(dict[str, Any], model.model_config))


def _wrappers(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALayer)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module
