"""ReDimNet (Yakovlev et al., Interspeech 2024), compatible with the official checkpoints.

`ReDimNet(**model_config)` takes exactly the keyword arguments of the official `ReDimNetWrap`,
so `model_config` dicts from official files (and from `presets.py`) build the same network, with
the same state-dict keys. Data flow for `wave [B, T]` float32 16 kHz:

    spec      MelFrontend            -> mel      [B, F, frames]
    backbone  stem + stages + fusion -> features [B, C*F, frames]  (2D and 1D blocks alternate,
                                                                    reshaping C x F <-> C*F)
    pool      attentive stats        -> pooled   [B, 2*C*F]
    bn, linear (+ bn2)               -> embedding [B, embed_dim]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import SpeakerEncoder, Trunk
from .frontend import MelFrontend
from .layers import (
    ChannelsFirstLayerNorm,
    ConvNeXtLikeBlock,
    ConvPositionalEncoding,
    ResidualBasicBlock,
    ToImage,
    ToSequence,
    TransformerEncoderLayer,
    WeightedLayerSum,
)
from .model_config import ModelConfigMixin
from .pooling import make_pooling

BLOCK_1D_TYPES = ("att", "conv+att", "fc", "conv")
BLOCK_2D_TYPES = ("convnext_like", "convnext_like_relu", "basic_resnet", "basic_resnet_fwse")


@dataclass
class ReDimNetConfig(ModelConfigMixin):
    """The official `ReDimNetWrap` keyword arguments, with the official defaults (the M model).

    `stages_setup` rows are `[stride, num_blocks, conv_expansion, kernel_sizes, att_block_reduction]`;
    `kernel_sizes` is carried for format compatibility (the official 2D blocks are always 3x3).
    """

    family = "ReDimNet"

    F: int = 72
    C: int = 16
    block_1d_type: str = "att"
    block_2d_type: str = "convnext_like"
    stages_setup: list = field(
        default_factory=lambda: [
            [1, 2, 1, [[3, 3]], 12],
            [2, 2, 1, [[3, 3]], 12],
            [1, 3, 1, [[3, 3]], 12],
            [2, 4, 1, [[3, 3]], 8],
            [1, 4, 1, [[3, 3]], 8],
            [2, 4, 1, [[3, 3]], 4],
        ]
    )
    group_divisor: int | None = 4
    out_channels: int | None = None
    embed_dim: int = 192
    num_classes: int | None = None
    class_dropout: float = 0.0
    feat_agg_dropout: float = 0.0
    head_activation: str | None = None
    hop_length: int = 160
    pooling_func: str = "ASTP"
    feat_type: str = "pt"
    global_context_att: bool = False
    emb_bn: bool = False
    spec_params: dict = field(
        default_factory=lambda: {
            "do_spec_aug": False,
            "freq_mask_width": [0, 6],
            "time_mask_width": [0, 8],
        }
    )
    return_all_outputs: bool = False
    tf_optimized_arch: bool = False

    def validate(self) -> None:
        bad = self.unsupported
        if self.feat_type not in ("pt", "pt_mel"):
            raise bad("feat_type", self.feat_type, "only 'pt' (torch mel features) is implemented")
        if self.tf_optimized_arch:
            raise bad("tf_optimized_arch", self.tf_optimized_arch, "only the standard layout is implemented")
        if self.block_1d_type not in BLOCK_1D_TYPES:
            raise bad("block_1d_type", self.block_1d_type, f"one of {BLOCK_1D_TYPES}")
        if self.block_2d_type not in BLOCK_2D_TYPES:
            raise bad("block_2d_type", self.block_2d_type, f"one of {BLOCK_2D_TYPES}")
        if self.head_activation not in (None, "nn.Sigmoid()", "nn.Softmax(dim=-1)", "nn.Identity()"):
            raise bad("head_activation", self.head_activation, "null, 'nn.Sigmoid()' or 'nn.Softmax(dim=-1)'")
        freqs = self.F
        for index, row in enumerate(self.stages_setup):
            if len(row) != 5:
                raise bad(f"stages_setup[{index}]", row, "[stride, num_blocks, conv_exp, kernel_sizes, att_red]")
            stride = row[0]
            if stride not in (1, 2, 3) or freqs % stride != 0:
                raise bad(f"stages_setup[{index}] stride", stride, f"1, 2 or 3 dividing the {freqs} remaining bins")
            freqs //= stride


class TimeContextBlock(nn.Module):
    """1D block on `x [B, C*F, T]`: reduce width, model time context, expand back, add residual."""

    def __init__(self, width: int, hidden: int, block_type: str, pos_kernel_size: int = 59):
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(width, hidden, 1), ChannelsFirstLayerNorm(hidden))
        if block_type == "fc":
            self.tcm = nn.Sequential(
                nn.Conv1d(hidden, hidden * 2, 1),
                ChannelsFirstLayerNorm(hidden * 2),
                nn.GELU(),
                nn.Conv1d(hidden * 2, hidden, 1),
            )
        elif block_type == "conv":
            self.tcm = nn.Sequential(
                *[ConvNeXtLikeBlock(hidden, dim=1, kernel_sizes=[7, 15, 31], group_divisor=1) for _ in range(4)]
            )
        elif block_type == "att":
            self.tcm = nn.Sequential(
                ConvPositionalEncoding(hidden, pos_kernel_size, groups=hidden),
                TransformerEncoderLayer(hidden, hidden * 2, num_heads=4),
            )
        else:  # "conv+att": growing receptive fields, then attention
            self.tcm = nn.Sequential(
                *[ConvNeXtLikeBlock(hidden, dim=1, kernel_sizes=[k], group_divisor=1) for k in (7, 19, 31, 59)],
                TransformerEncoderLayer(hidden, hidden, num_heads=4),
            )
        # nn.Module: the inference form runs it as a matrix product (`_PointwiseConv1d`).
        self.exp_dim_conv: nn.Module = nn.Conv1d(hidden, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


class ConvBlock2d(nn.Module):
    """One 2D block of a stage on `x [B, C, F, T]`; nested as `conv_block` like the official key names."""

    def __init__(self, block_type: str, channels: int, freqs: int, group_divisor: int | None):
        super().__init__()
        self.conv_block: nn.Module
        if block_type.startswith("convnext_like"):
            activation = "relu" if block_type == "convnext_like_relu" else "gelu"
            self.conv_block = ConvNeXtLikeBlock(
                channels, dim=2, kernel_sizes=[(3, 3)], group_divisor=group_divisor, activation=activation
            )
        else:
            self.conv_block = ResidualBasicBlock(
                channels,
                freqs,
                se_channels=min(64, max(channels, 32)),
                group_divisor=group_divisor,
                frequency_se=block_type == "basic_resnet_fwse",
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class StageConfig(Protocol):
    """What `redimnet_stage` reads of a family's config (`ReDimNetConfig`, `SSRFNetConfig`)."""

    C: int
    F: int
    block_1d_type: str
    block_2d_type: str
    group_divisor: int | None


def redimnet_stage(
    cfg: StageConfig, row: list, num_inputs: int, channels: int, freqs: int
) -> tuple[nn.Sequential, int, int]:
    """One ReDimNet stage on the mix of `num_inputs` earlier 1D outputs `[B, C*F, T]`, and the
    (channels, freqs) after it. `row` is a `stages_setup` row. SSRFNet's fused backbone builds
    its stages here too (its mixes only take more inputs)."""
    stride, num_blocks, expansion, _kernels, att_reduction = row
    width = cfg.C * cfg.F
    layers: list[nn.Module] = [
        WeightedLayerSum(num_inputs, width if num_inputs > 1 else 1, requires_grad=num_inputs > 1),
        ToImage(freqs, channels),
        nn.Conv2d(channels, stride * channels * expansion, kernel_size=(stride, 1), stride=(stride, 1)),
    ]
    channels, freqs = channels * stride, freqs // stride
    layers += [
        ConvBlock2d(cfg.block_2d_type, channels * expansion, freqs, cfg.group_divisor) for _ in range(num_blocks)
    ]
    if expansion != 1:  # squeeze expanded channels back so C*F stays constant
        relu = "relu" in cfg.block_1d_type and "relu" in cfg.block_2d_type
        groups = channels // cfg.group_divisor if cfg.group_divisor is not None else 1
        layers.append(
            nn.Sequential(
                nn.Conv2d(channels * expansion, channels, kernel_size=3, padding="same", groups=groups),
                nn.BatchNorm2d(channels, eps=1e-6),
                nn.ReLU() if relu else nn.GELU(),
                nn.Conv2d(channels, channels, 1),
            )
        )
    layers.append(ToSequence())
    if att_reduction is not None:
        layers.append(TimeContextBlock(width, width // att_reduction, cfg.block_1d_type))
    return nn.Sequential(*layers), channels, freqs


class ReDimNetBackbone(Trunk):
    """`mel [B, 1, F, T]` -> `features [B, C*F, T]` (or `[B, out_channels, T]`).

    Every stage starts from a learned softmax mix of all earlier outputs (each `[B, C*F, T]`):
    stride in frequency trades bins for channels so the flattened width C*F never changes.
    """

    def __init__(self, cfg: ReDimNetConfig):
        super().__init__()
        channels, freqs = cfg.C, cfg.F
        width = cfg.C * cfg.F
        self.feat_agg_dropout = cfg.feat_agg_dropout
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding="same"),
            ChannelsFirstLayerNorm(channels),
            ToSequence(),
        )
        self.num_stages = len(cfg.stages_setup)
        for index, row in enumerate(cfg.stages_setup):
            stage, channels, freqs = redimnet_stage(cfg, row, index + 1, channels, freqs)
            setattr(self, f"stage{index}", stage)
        self.fin_wght1d = WeightedLayerSum(self.num_stages + 1, width, requires_grad=self.num_stages > 0)
        self.mfa: nn.Module
        if cfg.out_channels is not None:
            self.mfa = nn.Sequential(nn.Conv1d(width, cfg.out_channels, 1), nn.BatchNorm1d(cfg.out_channels))
        else:
            self.mfa = nn.Identity()

    def stage_names(self) -> list[str]:
        return [f"stage{i}" for i in range(self.num_stages)]

    def part_names(self) -> list[str]:
        """Every part with weights, in order: what can be frozen or unfrozen by name."""
        return ["stem", *self.stage_names(), "fin_wght1d", "mfa"]

    def features(self, spec: nn.Module, wave: torch.Tensor) -> torch.Tensor:
        """The trunk contract of every family: `wave [B, T]` -> the pooling's input `[B, D, T']`."""
        return self.pool_input(self(spec(self.pad_wave(wave)).unsqueeze(1)))

    # The wrapper's steps around the backbone (ReDimNet2's are not identities; see redimnet2.py).
    def pad_wave(self, wave: torch.Tensor) -> torch.Tensor:
        return wave

    def pool_input(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, mel: torch.Tensor, return_all_outputs: bool = False):
        outputs = [self.stem(mel)]
        for name in self.stage_names():
            out = getattr(self, name)(outputs)
            outputs.append(F.dropout(out, p=self.feat_agg_dropout, training=self.training))
        fused = self.fin_wght1d(outputs)
        outputs.append(fused)
        features = self.mfa(fused)
        return (features, outputs) if return_all_outputs else features


_HEAD_ACTIVATIONS: dict[str | None, Callable[[], nn.Module]] = {
    None: nn.Identity,
    "nn.Identity()": nn.Identity,
    "nn.Sigmoid()": nn.Sigmoid,
    "nn.Softmax(dim=-1)": lambda: nn.Softmax(dim=-1),
}


class ReDimNet(SpeakerEncoder):
    """Front-end + backbone + pooling + embedding layer: `wave [B, T]` -> `embedding [B, embed_dim]`.

    Built from the official keyword arguments: `ReDimNet(**checkpoint["model_config"])`.
    A checkpoint with `num_classes` also carries `cls_head`; `forward` still returns the
    embedding (use `classify` for logits). The rest of the wrapper is `SpeakerEncoder`'s.
    """

    def __init__(self, **model_config: Any):
        super().__init__()
        cfg = ReDimNetConfig.from_dict(model_config)
        self.config = cfg
        self.spec = MelFrontend(n_mels=cfg.F, hop_length=cfg.hop_length, **cfg.spec_params)
        self.backbone = ReDimNetBackbone(cfg)
        pool_in = cfg.out_channels if cfg.out_channels is not None else cfg.C * cfg.F
        self.build_embedding_layer(
            make_pooling(cfg.pooling_func, pool_in, cfg.global_context_att), cfg.embed_dim, cfg.emb_bn
        )
        if cfg.num_classes is not None:
            self.cls_head = nn.Sequential(
                nn.ReLU(),
                nn.Dropout(p=cfg.class_dropout),
                nn.Linear(cfg.embed_dim, cfg.num_classes),
                _HEAD_ACTIVATIONS[cfg.head_activation](),
            )
        else:
            self.cls_head = None
