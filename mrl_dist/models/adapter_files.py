"""Adapter files: the adapter alone, beside the merged checkpoint a run exports.

    RUN/best.pt     the MRL checkpoint with the adapters merged into the trunk (loads like any
                    other: `ReDimNetMRL.from_checkpoint`, launch/evaluate.py, export); its
                    `adapter` entry says what was merged (config, base fingerprint, digest)
    RUN/adapter.pt  the adapter of best.pt alone (`last.pt`'s: `last.adapter.pt`):
                    {"format", "adapter_config", "base_fingerprint", "base_model_config",
                     "layers", "digest", "adapter_state"}

The adapter file holds the trunk's factors (and, with `batchnorm: train`, its BatchNorm
statistics), not the Matryoshka head trained with them: a head `BatchNorm(P) + Linear(P -> 256)`
is 40% of a b0 trunk's weights (46% of `tiny`'s), 7-9 times what the default rank-8 factors
weigh. The head is in best.pt; `load_adapted_model(base, adapter, head=best.pt)` rebuilds the
unmerged form of best.pt from the base, the adapter and that head (equal to best.pt within rounding),
and a deployment holding one base trunk switches domains with `remove_adapters` + `load_adapter`
(each domain keeps its head). An adapter is refused on any trunk but its base: the two
fingerprints (`data.features.trunk_fingerprint`) must be equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..config import AdapterConfig
from .adapters import (
    AdapterError,
    adapter_record,
    adapter_state_dict,
    apply_adapters,
    has_adapters,
    is_adapter_parameter,
    state_digest,
    trunk_fingerprint_of,
)
from .heads import MatryoshkaHead
from .loading import CheckpointError, atomic_save, official_model_from_payload, official_to_local, read_checkpoint
from .mrl import MRL_CHECKPOINT_KEYS, ReDimNetMRL

ADAPTER_FORMAT = "mrl-dist-adapter/1"
ADAPTER_FILE = "adapter.pt"  # beside best.pt
ADAPTER_KEYS = ("format", "adapter_config", "base_fingerprint", "base_model_config", "layers", "adapter_state")


def adapter_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where the adapter of an exported checkpoint goes: `RUN/best.pt` -> `RUN/adapter.pt`,
    any other `RUN/NAME.pt` -> `RUN/NAME.adapter.pt`."""
    path = Path(checkpoint)
    return path.with_name(ADAPTER_FILE if path.name == "best.pt" else f"{path.stem}.{ADAPTER_FILE}")


def save_adapter(path: str | os.PathLike, model: nn.Module, base_fingerprint: str | None = None) -> Path:
    """Write `model`'s unmerged adapter alone (atomically); `base_fingerprint`: the base trunk's,
    by default the one taken when the adapters were applied. Returns the path."""
    record = adapter_record(model)
    if record is None or not has_adapters(model):
        raise AdapterError(f"{path}: nothing to save: this model has no unmerged adapters")
    state = adapter_state_dict(model)
    payload = {
        "format": ADAPTER_FORMAT,
        "adapter_config": dict(record.config),
        "base_fingerprint": base_fingerprint or record.fingerprint,
        "base_model_config": cast(dict[str, Any], model.model_config),
        "layers": list(record.layers),
        "digest": state_digest(state),
        "adapter_state": state,
    }
    return atomic_save(payload, path)


def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """An adapter file's payload (`weights_only`), checked to be one."""
    try:
        payload = read_checkpoint(path, required=ADAPTER_KEYS)
    except CheckpointError as err:
        raise AdapterError(f"not an adapter file (`RUN/adapter.pt`): {err}") from None
    if payload["format"] != ADAPTER_FORMAT:
        raise AdapterError(f"{path}: adapter format {payload['format']!r}; this version reads {ADAPTER_FORMAT!r}")
    return payload


def load_adapter(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Apply the adapter file at `path`, unmerged, onto `model` (a ReDimNetMRL or SpeakerEncoder
    without adapters), in place; returns `model`. Refused unless `model`'s trunk is the adapter's
    base (both fingerprints named). The model's head is left as it is."""
    payload = read_adapter(path)
    if adapter_record(model) is not None:
        raise AdapterError(f"{path}: this model has adapters already; `remove_adapters` first (merged ones stay)")
    fingerprint = trunk_fingerprint_of(model)
    if fingerprint != payload["base_fingerprint"]:
        raise AdapterError(
            f"{path}: adapter of another base trunk: it was trained on the trunk with fingerprint "
            f"{payload['base_fingerprint']}, this model's trunk has fingerprint {fingerprint}; load it onto "
            "the backbone its run named (`model.backbone`)"
        )
    try:
        cfg = AdapterConfig(**payload["adapter_config"])
    except TypeError as err:
        raise AdapterError(f"{path}: adapter_config: {err}") from None
    layers = apply_adapters(model, cfg, fingerprint=fingerprint)
    if layers != list(payload["layers"]):
        raise AdapterError(f"{path}: its layers {payload['layers'][:3]}... are not the ones its config selects here")
    state = model.state_dict()
    unknown = sorted(set(payload["adapter_state"]) - set(state))
    if unknown:
        raise AdapterError(f"{path}: adapter_state holds keys this model lacks: {unknown[:5]}")
    record = adapter_record(model)
    assert record is not None  # apply_adapters set it
    with torch.no_grad():
        for key, value in payload["adapter_state"].items():
            if not is_adapter_parameter(key):  # BatchNorm statistics: keep the base's to restore
                record.replaced_buffers[key] = state[key].detach().clone()
            state[key].copy_(value)
    return model


def load_adapted_model(
    base: str | os.PathLike, adapter: str | os.PathLike, head: str | os.PathLike | None = None
) -> ReDimNetMRL:
    """The eval model of `base` with `adapter` applied, unmerged (`ReDimNetMRL.from_checkpoint(base,
    adapter=..., head=...)`).

    `base`: the adapter's base, an MRL checkpoint or the official-format backbone the run named
    (`model.backbone`); `head`: an MRL checkpoint whose Matryoshka head (and dims) to use, the
    adapter run's `best.pt`, which also ties the pair (its adapter digest must be the file's).
    An official base brings no head, so it needs `head`."""
    payload = read_checkpoint(base)
    head_payload = read_checkpoint(head, required=MRL_CHECKPOINT_KEYS) if head is not None else None
    if "mrl_config" in payload:
        model = ReDimNetMRL.from_payload(payload, base)
    elif head_payload is None:
        raise AdapterError(
            f"{base} is an official-format backbone, with no Matryoshka head: pass head=<the adapter run's best.pt>"
        )
    else:
        mrl = head_payload["mrl_config"]
        model = ReDimNetMRL.from_redimnet(
            official_model_from_payload(payload, base),
            dims=mrl["dims"],
            head_init=mrl.get("head_init", "random"),
            keep_native=mrl.get("keep_native", True),
            weights_arrive_later=True,
        )
    load_adapter(adapter, model)
    if head is not None and head_payload is not None:
        _take_head(model, head_payload, head, read_adapter(adapter)["digest"])
    return model.eval()


def _take_head(model: ReDimNetMRL, payload: Mapping[str, Any], source: str | os.PathLike, digest: str) -> None:
    """`model.head` becomes the head of the MRL checkpoint `payload` (read from `source`)."""
    trained_with = payload.get("adapter", {}).get("digest")
    if trained_with is not None and trained_with != digest:
        raise AdapterError(
            f"head {source}: its head was trained with another adapter (digest {trained_with}) than the one "
            f"loaded (digest {digest}); use the best.pt and adapter.pt of one run"
        )
    if payload["model_config"] != model.model_config:
        raise AdapterError(f"head {source}: its trunk's model_config is not the base's; its head would not fit")
    state = {
        k.removeprefix("head."): v for k, v in official_to_local(payload["state_dict"]).items() if k.startswith("head.")
    }
    dims = list(payload["mrl_config"]["dims"])
    if dims != model.dims:
        model.head = MatryoshkaHead(state["linear.weight"].shape[1], dims)  # checkpoints hold linear heads
    model.head.load_state_dict(state)
    model.head_init = payload["mrl_config"].get("head_init", model.head_init)
