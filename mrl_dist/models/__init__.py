"""Models: the ReDimNet family (official-compatible) and the Matryoshka ReDimNetMRL.

* `frontend`, `layers`, `pooling`, `redimnet` - ReDimNet as the official code builds it
* `encoder`   - `SpeakerEncoder`, the wrapper every family shares (wave -> pooled -> embedding)
* `presets`   - the b0-b6 / M configurations; `loading` - official files, names, downloads
* `heads`, `rotation_head`, `mrl` - the Matryoshka heads and ReDimNetMRL
* `redimnet2`, `frontend_tf` - ReDimNet2 as its official code builds it, its TF-style front-end
* `ssrfnet`, `ptm`, `svmixer` - SSRFNet: a pretrained speech model fused into ReDimNet
* `inference` - the faster inference form (equal outputs); `ensemble` - teacher routing

Every module needs torch, so the names below are imported with the package. Optional extras
(transformers for SSRFNet's speech model) are imported inside the functions that use them.
"""

from .checkpoints import LoadedCheckpoint, load_any_checkpoint
from .families import build_model, model_family
from .frontend import MelFrontend
from .heads import MatryoshkaHead, NativeHead
from .inference import inference_context, inference_form, is_inference_form, unfolded_batchnorms
from .loading import (
    CheckpointError,
    load_model_source,
    load_official_checkpoint,
    load_pretrained,
    names_a_file,
    official_payload,
    read_checkpoint,
    resolve_checkpoint,
    save_official_checkpoint,
)
from .mrl import ReDimNetMRL, collect_pooled, pca_rotation
from .presets import OFFICIAL_PRESETS, PRESETS, build_preset, preset_config
from .redimnet import ReDimNet, ReDimNetConfig
from .redimnet2 import ReDimNet2, ReDimNet2Config
from .ssrfnet import SSRFNet, SSRFNetConfig

__all__ = [
    "OFFICIAL_PRESETS",
    "PRESETS",
    "CheckpointError",
    "LoadedCheckpoint",
    "MatryoshkaHead",
    "MelFrontend",
    "NativeHead",
    "ReDimNet",
    "ReDimNet2",
    "ReDimNet2Config",
    "ReDimNetConfig",
    "ReDimNetMRL",
    "SSRFNet",
    "SSRFNetConfig",
    "build_model",
    "build_preset",
    "collect_pooled",
    "inference_context",
    "inference_form",
    "is_inference_form",
    "load_any_checkpoint",
    "load_model_source",
    "load_official_checkpoint",
    "load_pretrained",
    "model_family",
    "names_a_file",
    "official_payload",
    "pca_rotation",
    "preset_config",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_official_checkpoint",
    "unfolded_batchnorms",
]
