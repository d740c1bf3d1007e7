"""Model configurations: the official ReDimNet family (b0-b6, M), ReDimNet2's public B3 and B6,
and a `tiny` CPU model of each family.

The ReDimNet configurations are WeSpeaker's public presets; ReDimNet2's are its official
VoxCeleb2 recipes (B3, B6). An official checkpoint carries its own `model_config`, which always
wins over these; ReDimNet2's other sizes (b0-b2, b4, b5) come from their files alone. Parameter
counts are pinned in tests against the official state-dict shapes.
"""

from __future__ import annotations

import copy
from typing import Any

_COMMON = {
    "out_channels": None,
    "embed_dim": 192,
    "num_classes": None,
    "class_dropout": 0.0,
    "feat_agg_dropout": 0.0,
    "head_activation": None,
    "hop_length": 160,
    "pooling_func": "ASTP",
    "feat_type": "pt",
    "global_context_att": True,
    "emb_bn": False,
    "spec_params": {"do_spec_aug": False, "freq_mask_width": [0, 6], "time_mask_width": [0, 8]},
    "return_all_outputs": False,
    "tf_optimized_arch": False,
}


def _stages(*rows: tuple) -> list:
    """Rows `(stride, num_blocks, conv_exp, att_reduction)`; every official 2D kernel is 3x3."""
    return [[stride, blocks, expansion, [[3, 3]], reduction] for stride, blocks, expansion, reduction in rows]


_FAMILY = {
    "b0": dict(
        F=60,
        C=10,
        block_1d_type="conv+att",
        block_2d_type="basic_resnet",
        group_divisor=1,
        stages_setup=_stages((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10)),
    ),
    "b1": dict(
        F=72,
        C=12,
        block_1d_type="conv+att",
        block_2d_type="convnext_like",
        group_divisor=8,
        stages_setup=_stages((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8)),
    ),
    "b2": dict(
        F=72,
        C=16,
        block_1d_type="conv+att",
        block_2d_type="convnext_like",
        group_divisor=4,
        stages_setup=_stages((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8), (2, 4, 1, 4)),
    ),
    "b3": dict(
        F=72,
        C=16,
        block_1d_type="conv+att",
        block_2d_type="basic_resnet_fwse",
        group_divisor=1,
        stages_setup=_stages(
            (1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16), (2, 8, 1, 16)
        ),
    ),
    "b4": dict(
        F=72,
        C=32,
        block_1d_type="conv+att",
        block_2d_type="basic_resnet_fwse",
        group_divisor=1,
        stages_setup=_stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)),
    ),
    "b5": dict(
        F=72,
        C=32,
        block_1d_type="conv+att",
        block_2d_type="basic_resnet_fwse",
        group_divisor=16,
        stages_setup=_stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)),
    ),
    "b6": dict(
        F=72,
        C=32,
        block_1d_type="conv+att",
        block_2d_type="basic_resnet",
        group_divisor=32,
        stages_setup=_stages((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16), (2, 8, 1, 16)),
    ),
    "M": dict(
        F=72,
        C=16,
        block_1d_type="att",
        block_2d_type="convnext_like",
        group_divisor=4,
        stages_setup=_stages((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8), (2, 4, 1, 4)),
    ),
    # CPU demos and tests: 32 mel bins, 8 channels, three stages, the official 192-D embedding (its
    # size and training speed: docs/benchmarks.md).
    "tiny": dict(
        F=32,
        C=8,
        block_1d_type="conv+att",
        block_2d_type="convnext_like",
        group_divisor=4,
        stages_setup=_stages((1, 1, 1, 8), (2, 1, 1, 8), (2, 1, 1, 4)),
    ),
}


def _v2_stages(*rows: tuple) -> list:
    """Rows `((freq_stride, time_stride), num_blocks, conv_exp, att_reduction)`, 3x3 2D kernels."""
    return [[list(stride), blocks, expansion, [[3, 3]], reduction] for stride, blocks, expansion, reduction in rows]


_V2_COMMON = {
    "F": 72,
    "causal": "none",
    "spec_in_channels": 1,
    "block_1d_type": "conv+att",
    "block_2d_type": "basic_resnet",
    "compress_tconvs": True,
    "return_2d_output": True,
    "fm_weigthing_type": "NC",
    "group_divisor": 1,
    "agg_gnorm": True,
    "embed_dim": 192,
    "hop_length": 160,
    "pooling_func": "ASTP",
    "feat_type": "tf",
    "global_context_att": True,
    "emb_bn": False,
    "spec_params": {"do_preemph": True, "do_spec_aug": False, "norm_signal": True},
}

_V2_FAMILY = {
    # The recipes' B3 (the wrapper's default stages) and B6 (vox2/recipes/redimnet2/b6/lm.yaml).
    "redimnet2-b3": dict(
        C=24,
        stages_setup=_v2_stages(
            ((1, 1), 2, 4, 24),
            ((2, 1), 3, 3, 24),
            ((1, 2), 4, 2, 24),
            ((2, 1), 5, 1, 24),
            ((1, 2), 4, 1, 24),
            ((2, 1), 3, 1, 24),
        ),
    ),
    "redimnet2-b6": dict(
        C=64,
        out_channels=224,
        stages_setup=_v2_stages(
            ((1, 1), 3, 3, 64),
            ((2, 1), 4, 2, 64),
            ((1, 2), 5, 2, 48),
            ((2, 1), 5, 1, 48),
            ((1, 2), 4, 0.75, 32),
            ((2, 1), 3, 0.5, 24),
        ),
    ),
    # CPU demos and tests: 32 mel bins, 8 channels, three stages, the TF-style (exportable) front-end.
    "redimnet2-tiny": dict(F=32, C=8, stages_setup=_v2_stages(((1, 1), 1, 2, 8), ((2, 1), 1, 1, 8), ((1, 2), 1, 1, 4))),
}

# SSRFNet (models/ssrfnet.py): the public code's sizes (a WavLM-Large teacher) and a CPU model
# whose PTM is a tiny random WavLM built from its config (no download).
_TINY_WAVLM = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "num_buckets": 32,
    "max_bucket_distance": 100,
}
_SSRFNET_FAMILY: dict[str, dict[str, Any]] = {
    "ssrfnet": {"family": "ssrfnet"},
    "ssrfnet-tiny": {
        "family": "ssrfnet",
        "F": 32,
        "C": 8,
        "mel_bins": 40,
        "group_divisor": 4,
        "stages_setup": [[1, 1, 1, [[3, 3]], 8], [2, 1, 1, [[3, 3]], 8], [2, 1, 1, [[3, 3]], 4]],
        "fusion": {
            "ptm": {"source": None, "config": _TINY_WAVLM, "seed": 0, "freeze": True},
            "student": "svmixer",
            "svmixer": {
                "num_layers": 4,
                "seq_len": 50,
                "group_dim": 16,
                "conv_dim": 32,
                "dropout": 0.1,
                "hidden_size": 32,
            },
            "inject_stages": 2,
            "group_size": 2,
            "distill_layers": [2, 4],
        },
    },
}

OFFICIAL_PRESETS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "M")
# ReDimNet2 names with official weights (load_pretrained resolves each; configs come from the files).
REDIMNET2_PRETRAINED = tuple(f"redimnet2-b{i}" for i in range(7))
REDIMNET2_PRESETS = tuple(_V2_FAMILY)
SSRFNET_PRESETS = tuple(_SSRFNET_FAMILY)
PRESETS = OFFICIAL_PRESETS + ("tiny",) + REDIMNET2_PRESETS + SSRFNET_PRESETS


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The `model_config` dict of a preset (official keyword arguments), with optional overrides."""
    if name in _SSRFNET_FAMILY:
        return copy.deepcopy({**_SSRFNET_FAMILY[name], **overrides})
    if name in _V2_FAMILY:
        return copy.deepcopy({**_V2_COMMON, **_V2_FAMILY[name], **overrides})
    if name not in _FAMILY:
        hint = (
            " (its configuration comes from the official file: load_pretrained)" if name in REDIMNET2_PRETRAINED else ""
        )
        raise ValueError(f"unknown preset {name!r}{hint}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy({**_COMMON, **_FAMILY[name], **overrides})


def build_preset(name: str, **overrides: Any):
    """A randomly initialised model (ReDimNet or ReDimNet2) of a preset, in training mode."""
    from .families import build_model

    return build_model(preset_config(name, **overrides))
