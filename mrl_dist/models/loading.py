"""Official-format ReDimNet and ReDimNet2 checkpoints: safe reading, key mapping, lookup, download.
(A checkpoint file of any kind, MRL or official, loads with `checkpoints.load_any_checkpoint`.)

An official file is a dict `{"model_config": {...ReDimNetWrap or ReDimNet2Wrap kwargs...},
"state_dict": {...}}`, named `{model}-{dataset}-{train_type}.pt` (e.g. `b2-vox2-ft_lm.pt`,
ReDimNet2's `b6-vb2+vox2_v0-lm.pt`); `model_family` tells the two apart by the config. Files are only ever read
with `torch.load(..., weights_only=True)`: a checkpoint is data, never code.

Module names here equal the official ones except the front-end's constant buffers, which the
official code keeps inside torchaudio modules; `OFFICIAL_TO_LOCAL` maps them both ways, so this
project reads and writes files the official code loads unchanged.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from .encoder import SpeakerEncoder
from .families import build_model, model_family
from .presets import OFFICIAL_PRESETS, PRESETS, REDIMNET2_PRETRAINED, preset_config

CHECKPOINT_URL = "https://github.com/IDRnD/ReDimNet/releases/download/latest/{file}"
REDIMNET2_CHECKPOINT_URL = "https://github.com/PalabraAI/redimnet2/releases/download/v1.0.0/{file}"
CHECKPOINT_DIR_ENV = "MRL_DIST_CHECKPOINTS"
CHECKPOINT_URL_ENV = "MRL_DIST_CHECKPOINT_URL"  # override the ReDimNet URL template (mirrors, tests)
REDIMNET2_CHECKPOINT_URL_ENV = "MRL_DIST_REDIMNET2_URL"  # the same for ReDimNet2
REDIMNET2_PREFIX = "redimnet2-"
# Default (train_type, dataset) of a name: ReDimNet's best files are fine-tuned large-margin ones,
# ReDimNet2 releases "lm" (large margin) and "ptn" (pre-training).
DEFAULT_WEIGHTS = {"redimnet": ("ft_lm", "vox2"), "redimnet2": ("lm", "vox2")}
OFFLINE_ENV = "MRL_DIST_OFFLINE"  # "1": never try a download
OFFICIAL_KEYS = ("model_config", "state_dict")  # what every checkpoint holds; an MRL file adds mrl_config

OFFICIAL_TO_LOCAL = {
    "spec.torchfbank.1.flipped_filter": "spec.preemphasis_filter",
    "spec.torchfbank.2.spectrogram.window": "spec.window",
    "spec.torchfbank.2.mel_scale.fb": "spec.mel_filterbank",
    "spec.spec_norm.": "spec.spec_norm_bn.",  # prefix: the optional BatchNorm spec_norm
    # ReDimNet2's TF-style front-end (frontend_tf.py)
    "spec.torchfbank.2.real_kernel_pt": "spec.dft_real",
    "spec.torchfbank.2.image_kernel_pt": "spec.dft_imag",
    "spec.torchfbank.2.melbanks_pt": "spec.mel_weights",
}
LOCAL_TO_OFFICIAL = {local: official for official, local in OFFICIAL_TO_LOCAL.items()}


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, or trusted."""


def _rename(state_dict: Mapping[str, torch.Tensor], table: Mapping[str, str]) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in table.items():
            if key == old or (old.endswith(".") and key.startswith(old)):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def official_to_local(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Official state-dict keys -> this project's module names."""
    return _rename(state_dict, OFFICIAL_TO_LOCAL)


def local_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """This project's module names -> official state-dict keys."""
    return _rename(state_dict, LOCAL_TO_OFFICIAL)


def official_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of `module`'s state dict under official key names, ready to save."""
    return local_to_official({k: v.detach().cpu().clone() for k, v in module.state_dict().items()})


def read_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = OFFICIAL_KEYS) -> dict:
    """Load a checkpoint dict with `weights_only=True`; refuse pickles that need code to load."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        raise CheckpointError(
            f"{path}: refused to load: it is not a plain weights file (torch.load with weights_only=True "
            f"failed, the pickle would need to run code). Re-save it as a dict of tensors and plain "
            f"values. Detail: {str(err).splitlines()[0]}"
        ) from err
    return check_payload(payload, path, required)


def check_payload(payload: Any, source: str | os.PathLike, required: tuple[str, ...] = OFFICIAL_KEYS) -> dict:
    """`payload` if it is a checkpoint dict holding every `required` key, else a CheckpointError
    naming `source` (the file it was read from) and the keys it holds."""
    if not isinstance(payload, dict) or any(key not in payload for key in required):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{os.fspath(source)}: not an official-format checkpoint: expected keys {list(required)}, found {found}"
        )
    return payload


def official_model_from_payload(payload: Mapping[str, Any], source: str | os.PathLike) -> SpeakerEncoder:
    """The model of an official-format checkpoint dict already read (`read_checkpoint`): built
    from its `model_config` (any family), its weights loaded exactly, in eval mode. `source`
    names the file in errors."""
    source = os.fspath(source)
    payload = check_payload(payload, source)
    try:
        model = build_model(payload["model_config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from err
    result = model.load_state_dict(official_to_local(payload["state_dict"]), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: state_dict does not match its model_config: missing {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


def load_official_checkpoint(path: str | os.PathLike) -> SpeakerEncoder:
    """Build the model of an official-format file (ReDimNet, ReDimNet2 or SSRFNet, from its
    `model_config`) and load its weights exactly, in eval mode."""
    return official_model_from_payload(read_checkpoint(path), path)


def official_payload(model: SpeakerEncoder) -> dict[str, Any]:
    """The official-format dict of a ReDimNet: loadable by the official `ReDimNetWrap` code."""
    return {"model_config": model.model_config, "state_dict": official_state_dict(model)}


def atomic_save(payload: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def save_official_checkpoint(model: SpeakerEncoder, path: str | os.PathLike) -> Path:
    return atomic_save(official_payload(model), path)


def checkpoint_filename(name: str, dataset: str = "vox2", train_type: str = "ft_lm") -> str:
    """`b2-vox2-ft_lm.pt`: the official file name (ReDimNet2's drop the `redimnet2-` prefix)."""
    return f"{name.removeprefix(REDIMNET2_PREFIX)}-{dataset}-{train_type}.pt"


def checkpoint_search_dirs(family: str = "redimnet") -> list[Path]:
    """Folders searched for official files, in order: $MRL_DIST_CHECKPOINTS, torch hub's cache.
    ReDimNet2 files (whose names can equal ReDimNet's) are looked for in a `redimnet2/`
    subfolder of each first, and downloaded into hub's `checkpoints/redimnet2/`."""
    dirs = [Path(p) for p in os.environ.get(CHECKPOINT_DIR_ENV, "").split(os.pathsep) if p]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if family == "redimnet2":
        return [d for folder in dirs for d in (folder / "redimnet2", folder)] + [hub / "redimnet2"]
    return dirs + [hub]


def default_weights(name: str, train_type: str | None = None, dataset: str | None = None) -> tuple[str, str]:
    """(train_type, dataset) of a pretrained name, the family's defaults filling what is None."""
    default_type, default_dataset = DEFAULT_WEIGHTS["redimnet2" if name.startswith(REDIMNET2_PREFIX) else "redimnet"]
    return train_type or default_type, dataset or default_dataset


def downloads_allowed() -> bool:
    """Whether a missing official checkpoint may be downloaded: not when $MRL_DIST_OFFLINE is 1."""
    return os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes")


def resolve_checkpoint(
    name: str, *, dataset: str | None = None, train_type: str | None = None, download: bool | None = None
) -> Path:
    """Find `{name}-{dataset}-{train_type}.pt` locally, else download it into torch hub's cache.
    `name` is a ReDimNet preset (`b2`) or a ReDimNet2 one (`redimnet2-b6`)."""
    family = "redimnet2" if name.startswith(REDIMNET2_PREFIX) else "redimnet"
    train_type, dataset = default_weights(name, train_type, dataset)
    filename = checkpoint_filename(name, dataset, train_type)
    searched = checkpoint_search_dirs(family)
    for folder in searched:
        if (folder / filename).is_file():
            return folder / filename
    if download is None:
        download = downloads_allowed()
    template = (
        os.environ.get(REDIMNET2_CHECKPOINT_URL_ENV, REDIMNET2_CHECKPOINT_URL)
        if family == "redimnet2"
        else os.environ.get(CHECKPOINT_URL_ENV, CHECKPOINT_URL)
    )
    url = template.format(file=filename)
    where = ", ".join(str(d) for d in searched)
    hint = (
        f"Put {filename} into one of those folders (or point ${CHECKPOINT_DIR_ENV} at its folder), "
        "or pass the file's path instead of a preset name."
    )
    if not download:
        raise CheckpointError(
            f"checkpoint {filename} not found; searched: {where}; download disabled (${OFFLINE_ENV}=1). {hint}"
        )
    target = searched[-1] / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # URLError, HTTPError, socket errors: all mean "could not fetch"
        raise CheckpointError(
            f"checkpoint {filename} not found; searched: {where}; download from {url} "
            f"failed ({type(err).__name__}: {err}). {hint}"
        ) from err
    return target


def names_a_file(source: str | os.PathLike) -> bool:
    """Whether a model source (`model.backbone`, `distill.teachers[i].source`) is a checkpoint
    path rather than a preset name: an existing file is; so is a missing one that looks like a
    path (a `.pt` suffix or a folder in it), which is then reported as a missing file. A folder
    that happens to carry a preset's name (say a run folder `tiny/`) does not."""
    text = os.fspath(source)
    return Path(text).is_file() or Path(text).suffix == ".pt" or os.sep in text


def load_pretrained(
    source: str | os.PathLike, *, train_type: str | None = None, dataset: str | None = None
) -> SpeakerEncoder:
    """An official model in eval mode: `model(wave [B, T] float32 16 kHz) -> [B, embed_dim]`.

    `source` is a path to an official-format file of either family (recognised from its
    `model_config`, see `model_family`), a ReDimNet name (`b0`..`b6`, `M`; default weights
    `ft_lm` on `vox2`) or a ReDimNet2 name (`redimnet2-b0`..`redimnet2-b6`; default `lm` on
    `vox2`, e.g. `train_type="lm", dataset="vb2+vox2_v0"`). A name resolves as
    `{model}-{dataset}-{train_type}.pt` in $MRL_DIST_CHECKPOINTS, then torch hub's checkpoint
    cache, then the family's official release (progress bar; never when $MRL_DIST_OFFLINE=1).
    """
    text = os.fspath(source)
    if names_a_file(text):
        return load_official_checkpoint(text)
    if text not in OFFICIAL_PRESETS and text not in REDIMNET2_PRETRAINED:
        known = f"pretrained names: {', '.join(OFFICIAL_PRESETS + REDIMNET2_PRETRAINED)}"
        raise CheckpointError(
            f"preset {text!r} has no official pretrained weights; {known}"
            if text in PRESETS
            else f"{text}: neither an existing checkpoint file nor a preset name ({known})"
        )
    path = resolve_checkpoint(text, dataset=dataset, train_type=train_type)
    model = load_official_checkpoint(path)
    wanted = "redimnet2" if text in REDIMNET2_PRETRAINED else "redimnet"
    if model_family(model.model_config) != wanted:
        raise CheckpointError(
            f"{path}: asked for {text!r} but the file holds a {model_family(model.model_config)} "
            f"model; move it out of the way or pass the intended file's path"
        )
    return model


def load_model_source(
    source: str | os.PathLike, pretrained: tuple[str | None, str | None] | None, fusion: dict | None = None
) -> SpeakerEncoder:
    """The model a config names: a checkpoint file, a preset with the official weights of
    `pretrained = (train_type, dataset)`, or (`pretrained` None) a preset with random weights.
    `fusion`: overrides of an SSRFNet preset's fusion settings (`model.fusion`)."""
    if pretrained is None and not names_a_file(source):
        if os.fspath(source) not in PRESETS:
            raise FileNotFoundError(
                f"{os.fspath(source)!r} is neither an existing checkpoint file nor a preset ({', '.join(PRESETS)})"
            )
        config = preset_config(os.fspath(source))
        if fusion:
            from .ssrfnet import apply_fusion_overrides

            config = apply_fusion_overrides(config, fusion)
        model = build_model(config)
        if fusion and fusion.get("backend_checkpoint"):
            from .ssrfnet import SSRFNet, load_redimnet_weights

            path = fusion["backend_checkpoint"]
            # apply_fusion_overrides accepted only an SSRFNet config, so build_model made an SSRFNet.
            ssrfnet = cast(SSRFNet, model)
            load_redimnet_weights(ssrfnet, official_to_local(read_checkpoint(path)["state_dict"]), path)
        return model
    if fusion:
        raise ValueError(
            "model.fusion: applies to an SSRFNet preset built from scratch (model.pretrained: null), "
            f"not to {os.fspath(source)!r}"
        )
    train_type, dataset = pretrained or (None, None)
    return load_pretrained(source, train_type=train_type, dataset=dataset)
