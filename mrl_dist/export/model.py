"""What an exported file computes: `wave [B, T] float32 16 kHz -> L2-normalised [B, dim]`.

    checkpoint (an MRL file {model_config, mrl_config, state_dict}, or an official file of
    ReDimNet / ReDimNet2 {model_config, state_dict}; SSRFNet is refused: UNSUPPORTED_FAMILIES)
    -> the plain eval model (never `inference_form`: export traces the reference arithmetic)
    -> `EmbeddingExport`: front-end (MelFrontend swapped for ExportableMelFrontend) -> trunk ->
       pooling -> head -> first `dim` values -> L2 normalisation

`dim` is one of the MRL head's dims for an MRL file. A plain model has one native embedding of
`embed_dim` values; any `dim <= embed_dim` keeps its first `dim` values, which were never
trained to stand alone (unlike an MRL prefix), so the full `embed_dim` is the one to ship.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import model_from_payload
from ..models.encoder import SpeakerEncoder
from ..models.frontend import MelFrontend
from ..models.heads import NativeHead
from ..models.loading import CheckpointError, model_family, read_checkpoint
from ..models.mrl import ReDimNetMRL
from .frontend import ExportableMelFrontend

# The shortest wave an export accepts, 25 ms (the dynamo export declares it as T's lower bound):
# ExportableMelFrontend's reflect padding, like torch.stft's, needs T > n_fft // 2 = 256.
MIN_SAMPLES = 400
UNSUPPORTED_FAMILIES = {
    "ssrfnet": "its trunk aligns the speech model's frames with the mel stem's, and cuts the SV-Mixer's "
    "windows, with Python arithmetic on lengths that neither exporter records (an export would "
    "be right only at the traced length); export a ReDimNet or ReDimNet2 checkpoint",
}


class ExportError(ValueError):
    """A checkpoint or option that cannot be exported as asked (the message says which and why)."""


class EmbeddingExport(nn.Module):
    """`wave [B, T] float32 16 kHz` -> `[B, dim]` L2-normalised embeddings, self-contained.

    Built from an eval model (ReDimNetMRL, ReDimNet or ReDimNet2), which it copies: the
    front-end (an exportable equal of MelFrontend where the model has one), the trunk, the
    pooling and the one head that gives `dim` (an MRL file's native head is left out)."""

    calibration: dict[str, Any] | None = None  # build_export: the checkpoint's calibration of `dim`

    def __init__(self, model: ReDimNetMRL | SpeakerEncoder, dim: int):
        super().__init__()
        self.family = model_family(model.model_config)
        if self.family in UNSUPPORTED_FAMILIES:
            raise ExportError(f"{self.family} models cannot be exported: {UNSUPPORTED_FAMILIES[self.family]}")
        self.dim = check_dim(model, dim)
        self.dims = export_dims(model)
        spec = model.spec
        self.spec = ExportableMelFrontend(spec) if isinstance(spec, MelFrontend) else copy.deepcopy(spec)
        self.backbone = copy.deepcopy(model.backbone)
        self.pool = copy.deepcopy(model.pool)
        self.head = copy.deepcopy(model.head if isinstance(model, ReDimNetMRL) else NativeHead(model))
        self.eval()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.backbone.features(self.spec, wave))
        return F.normalize(self.head(pooled)[:, : self.dim], dim=1)

    def extra_repr(self) -> str:
        return f"family={self.family!r}, dim={self.dim}"


def check_dim(model: ReDimNetMRL | SpeakerEncoder, dim: int) -> int:
    """`dim` if `model` can give it (one of an MRL model's dims; 1..embed_dim for a plain one)."""
    if isinstance(model, ReDimNetMRL):
        if dim not in model.dims:
            raise ExportError(f"--dim {dim}: not one of this MRL checkpoint's dims {model.dims}")
    elif not 0 < dim <= model.embed_dim:
        raise ExportError(
            f"--dim {dim}: outside 1..{model.embed_dim}, the native embedding's size "
            "(a plain checkpoint's --dim keeps that many leading values)"
        )
    return int(dim)


def export_dims(model: ReDimNetMRL | SpeakerEncoder) -> list[int]:
    """Every dim an export of `model` is meant for: an MRL model's dims, or a plain one's embed_dim."""
    return [int(dim) for dim in model.dims] if isinstance(model, ReDimNetMRL) else [int(model.embed_dim)]


def default_dim(model: ReDimNetMRL | SpeakerEncoder) -> int:
    """The dim an export gets without --dim: the MRL head's largest, or the native embed_dim."""
    return model.max_dim if isinstance(model, ReDimNetMRL) else model.embed_dim


def load_for_export(checkpoint: str | os.PathLike) -> tuple[ReDimNetMRL | SpeakerEncoder, str]:
    """The eval model of a checkpoint file and a one-line description of it.

    An MRL file (one with `mrl_config`) gives a ReDimNetMRL; any other official-format file the
    model of its `model_config`'s family (`model_from_payload`; the file is read once)."""
    payload = read_checkpoint(checkpoint)
    family = model_family(payload["model_config"])
    if family in UNSUPPORTED_FAMILIES:  # before building it (an SSRFNet may build a large speech model)
        raise ExportError(f"{family} models cannot be exported: {UNSUPPORTED_FAMILIES[family]}")
    loaded = model_from_payload(payload, checkpoint)
    if not isinstance(loaded.model, (ReDimNetMRL, SpeakerEncoder)):  # what model_from_payload builds
        raise ExportError(f"{checkpoint}: loaded a {type(loaded.model).__name__}, not a ReDimNetMRL or SpeakerEncoder")
    return loaded.model, loaded.description


def build_export(
    checkpoint: str | os.PathLike, dim: int | None = None
) -> tuple[EmbeddingExport, ReDimNetMRL | SpeakerEncoder, str]:
    """(`EmbeddingExport` at `dim` (default: `default_dim`), the eval model it copies, its description)."""
    try:
        model, description = load_for_export(checkpoint)
    except (CheckpointError, ValueError, TypeError) as err:
        raise ExportError(f"--checkpoint {checkpoint}: {err}") from err
    try:
        module = EmbeddingExport(model, default_dim(model) if dim is None else dim)
    except ExportError as err:
        raise ExportError(f"{err} ({checkpoint})") from err
    calibration = read_checkpoint(checkpoint).get("calibration")  # launch/calibrate.py's, if any
    if calibration is not None:  # the exported dim's map and thresholds go into the file's metadata
        module.calibration = {
            "dim": calibration["dims"].get(str(module.dim)),
            "far_targets": calibration.get("far_targets"),
        }
    return module, model, description


def reference_embedding(model: ReDimNetMRL | SpeakerEncoder, wave: torch.Tensor, dim: int) -> torch.Tensor:
    """What the training code's eval model gives for `wave` at `dim`, L2-normalised (the target
    the export is compared with, front-end and all)."""
    with torch.no_grad():
        embedding = model(wave, dim) if isinstance(model, ReDimNetMRL) else model.embed_pooled(model.pooled(wave))
    return F.normalize(embedding[:, :dim], dim=1)


def describe(module: EmbeddingExport) -> dict[str, Any]:
    """Metadata written beside an export: what goes in and what comes out."""
    return {
        "family": module.family,
        "dim": module.dim,
        "dims": module.dims,
        "input": "wave [B, T] float32 16 kHz",
        "output": f"embedding [B, {module.dim}] float32, L2-normalised",
        "min_samples": MIN_SAMPLES,
        # launch/calibrate.py's map of this dim: llr = slope * cosine + offset, and score thresholds
        # per target false-acceptance rate; null when the checkpoint was not calibrated.
        "calibration": getattr(module, "calibration", None),
    }
