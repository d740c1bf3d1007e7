"""Model configurations: the official ReDimNet family (b0-b6, M) and a `tiny` CPU model.

The official configurations are WeSpeaker's public ReDimNet presets; an official checkpoint
carries its own `model_config`, which always wins over these. Parameter counts are pinned in
tests against the official state-dict shapes.
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
    "b0": dict(F=60, C=10, block_1d_type="conv+att", block_2d_type="basic_resnet", group_divisor=1,
               stages_setup=_stages((1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10))),
    "b1": dict(F=72, C=12, block_1d_type="conv+att", block_2d_type="convnext_like", group_divisor=8,
               stages_setup=_stages((1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12),
                                    (2, 3, 1, 8))),
    "b2": dict(F=72, C=16, block_1d_type="conv+att", block_2d_type="convnext_like", group_divisor=4,
               stages_setup=_stages((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                                    (2, 4, 1, 4))),
    "b3": dict(F=72, C=16, block_1d_type="conv+att", block_2d_type="basic_resnet_fwse", group_divisor=1,
               stages_setup=_stages((1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16),
                                    (2, 8, 1, 16))),
    "b4": dict(F=72, C=32, block_1d_type="conv+att", block_2d_type="basic_resnet_fwse", group_divisor=1,
               stages_setup=_stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                    (2, 4, 1, 16))),
    "b5": dict(F=72, C=32, block_1d_type="conv+att", block_2d_type="basic_resnet_fwse", group_divisor=16,
               stages_setup=_stages((1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24),
                                    (2, 4, 1, 16))),
    "b6": dict(F=72, C=32, block_1d_type="conv+att", block_2d_type="basic_resnet", group_divisor=32,
               stages_setup=_stages((1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16),
                                    (2, 8, 1, 16))),
    "M": dict(F=72, C=16, block_1d_type="att", block_2d_type="convnext_like", group_divisor=4,
              stages_setup=_stages((1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8),
                                   (2, 4, 1, 4))),
    # CPU demos and tests: 32 mel bins, 8 channels, three stages, 0.38 M parameters, the official 192-D embedding; over
    # 50 training crops/s (2 s crops, batch 32) on 2 CPU cores, see docs/benchmarks.md.
    "tiny": dict(F=32, C=8, block_1d_type="conv+att", block_2d_type="convnext_like", group_divisor=4,
                 stages_setup=_stages((1, 1, 1, 8), (2, 1, 1, 8), (2, 1, 1, 4))),
}

OFFICIAL_PRESETS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "M")
PRESETS = OFFICIAL_PRESETS + ("tiny",)


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The `model_config` dict of a preset (official keyword arguments), with optional overrides."""
    if name not in _FAMILY:
        raise ValueError(f"unknown ReDimNet preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy({**_COMMON, **_FAMILY[name], **overrides})


def build_preset(name: str, **overrides: Any):
    """A randomly initialised ReDimNet of a preset, in training mode."""
    from .redimnet import ReDimNet

    return ReDimNet(**preset_config(name, **overrides))
