"""Models: the ReDimNet family (official-compatible) and the Matryoshka ReDimNetMRL.

* `frontend`, `layers`, `pooling`, `redimnet` - ReDimNet as the official code builds it
* `encoder`   - `SpeakerEncoder`, the wrapper every family shares (wave -> pooled -> embedding)
* `presets`   - the b0-b6 / M configurations; `loading` - official files, names, downloads
* `heads`, `rotation_head`, `mrl` - the Matryoshka heads and ReDimNetMRL
* `redimnet2`, `frontend_tf` - ReDimNet2 as its official code builds it, its TF-style front-end
* `ssrfnet`, `ptm`, `svmixer` - SSRFNet: a pretrained speech model fused into ReDimNet
* `inference` - the faster inference form (equal outputs); `ensemble` - teacher routing

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "MelFrontend": "frontend",
    "inference_context": "inference",
    "inference_form": "inference",
    "is_inference_form": "inference",
    "unfolded_batchnorms": "inference",
    "CheckpointError": "loading",
    "load_official_checkpoint": "loading",
    "load_pretrained": "loading",
    "load_model_source": "loading",
    "names_a_file": "loading",
    "official_payload": "loading",
    "read_checkpoint": "loading",
    "resolve_checkpoint": "loading",
    "save_official_checkpoint": "loading",
    "MatryoshkaHead": "heads",
    "NativeHead": "heads",
    "ReDimNetMRL": "mrl",
    "collect_pooled": "mrl",
    "pca_rotation": "mrl",
    "OFFICIAL_PRESETS": "presets",
    "PRESETS": "presets",
    "build_preset": "presets",
    "preset_config": "presets",
    "ReDimNet": "redimnet",
    "ReDimNet2": "redimnet2",
    "ReDimNet2Config": "redimnet2",
    "SSRFNet": "ssrfnet",
    "SSRFNetConfig": "ssrfnet",
    "build_model": "families",
    "model_family": "families",
    "ReDimNetConfig": "redimnet",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
