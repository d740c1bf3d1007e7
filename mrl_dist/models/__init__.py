"""Models: the ReDimNet family (official-compatible) and the Matryoshka ReDimNetMRL."""

from .frontend import MelFrontend
from .inference import inference_context, inference_form, is_inference_form, unfolded_batchnorms
from .loading import (
    CheckpointError,
    load_official_checkpoint,
    load_pretrained,
    official_payload,
    read_checkpoint,
    resolve_checkpoint,
    save_official_checkpoint,
)
from .mrl import HEAD_INITS, MatryoshkaHead, ReDimNetMRL, collect_pooled, pca_rotation
from .presets import OFFICIAL_PRESETS, PRESETS, build_preset, preset_config
from .redimnet import ReDimNet, ReDimNetConfig

__all__ = [
    "CheckpointError", "HEAD_INITS", "MatryoshkaHead", "MelFrontend", "OFFICIAL_PRESETS", "PRESETS",
    "ReDimNet", "ReDimNetConfig", "ReDimNetMRL", "build_preset", "collect_pooled", "load_official_checkpoint",
    "load_pretrained", "official_payload", "pca_rotation", "preset_config", "read_checkpoint",
    "resolve_checkpoint", "save_official_checkpoint", "inference_context", "inference_form", "is_inference_form",
    "unfolded_batchnorms",
]
