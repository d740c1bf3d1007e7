"""ReDimNet2 (Yakovlev et al., Interspeech 2026), compatible with the official checkpoints.

`ReDimNet2(**model_config)` takes the keyword arguments of the official `ReDimNet2Wrap`, builds
the same modules under the same state-dict keys, and computes the same outputs. What differs
from ReDimNet (redimnet.py) is how a stage treats time:

    stem        Conv2d 3x3 + LayerNorm -> 1D view [B, C*F, T]   (+ GroupNorm with agg_gnorm)
    stage i     softmax mix of every earlier 1D output -> 2D view [B, c, f, T]
                -> strided Conv2d, kernel = stride = (freq stride, cumulative time stride):
                   the stage runs at T / time_stride frames (ReDimNet2 pools over time here)
                -> 2D blocks -> [1x1 conv + BN back to c channels when conv_exp != 1] -> 1D view
                -> [1D time-context block] -> nearest upsampling back to T (+ GroupNorm)
                dual_agg: the 1D block's input and output both join the mix (two outputs)
    fin_wght1d  mix of every output -> [2D view] -> head (1x1 conv to out_channels, optional)
    wrapper     [right padding] -> front-end (mel "pt" or TF-style "tf") -> backbone -> flatten
                [B, c, f, T] channel-major to [B, c*f, T] -> [drop before_pool_offset frames]
                -> attentive statistics pooling -> BatchNorm -> Linear (-> BatchNorm)

The input is first cut to a whole number of `time_stride` frames. Files are recognised as this
family by their `model_config` (see `model_family`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import SpeakerEncoder, Trunk
from .frontend import MelFrontend
from .frontend_tf import TFMelFrontend
from .layers import ChannelsFirstLayerNorm, ToImage, ToSequence, WeightedLayerSum
from .model_config import ModelConfigMixin
from .pooling import make_pooling
from .redimnet import BLOCK_1D_TYPES, BLOCK_2D_TYPES, ConvBlock2d, TimeContextBlock

# Keys only ReDimNet2's model_config has: a file carrying any of them is of this family.
REDIMNET2_ONLY_KEYS = frozenset(
    {
        "causal",
        "spec_in_channels",
        "compress_tconvs",
        "return_2d_output",
        "use_freq_pos_enc",
        "fm_weigthing_type",
        "dual_agg",
        "agg_gnorm",
        "att_dos",
        "pad_right_samples",
        "before_pool_offset",
    }
)


def _default_stages() -> list:
    return [
        [[1, 1], 2, 4, [[3, 3]], 24],
        [[2, 1], 3, 3, [[3, 3]], 24],
        [[1, 2], 4, 2, [[3, 3]], 24],
        [[2, 1], 5, 1, [[3, 3]], 24],
        [[1, 2], 4, 1, [[3, 3]], 24],
        [[2, 1], 3, 1, [[3, 3]], 24],
    ]


@dataclass
class ReDimNet2Config(ModelConfigMixin):
    """The official `ReDimNet2Wrap` keyword arguments and defaults (the wrapper's B3 layout).

    `stages_setup` rows: `[[freq_stride, time_stride], num_blocks, conv_exp, kernel_sizes,
    att_block_reduction]`; conv_exp may be fractional (B6: 0.75, 0.5); kernel sizes are those of
    the 2D blocks (always 3x3 in the official configurations).
    """

    family = "ReDimNet2"
    F: int = 72
    C: int = 24
    causal: str | bool | None = "none"
    spec_in_channels: int = 1
    out_channels: int | None = None
    block_1d_type: str = "conv+att"
    block_2d_type: str = "basic_resnet"
    compress_tconvs: bool = True
    return_2d_output: bool = False
    use_freq_pos_enc: bool = False
    fm_weigthing_type: str = "NC"
    stages_setup: list = field(default_factory=_default_stages)
    group_divisor: int | None = 1
    dual_agg: bool = False
    agg_gnorm: bool | int | None = False
    att_dos: dict | None = None
    embed_dim: int = 192
    num_classes: int | None = None  # accepted, as by the official wrapper, which builds no classifier
    feat_agg_dropout: float = 0.0  # accepted and unused, as in the official wrapper
    head_activation: str | None = None  # accepted and unused, as in the official wrapper
    hop_length: int = 160
    pooling_func: str = "ASTP"
    pad_right_samples: int | None = None
    before_pool_offset: int | None = None
    feat_type: str = "pt"
    global_context_att: bool = True
    emb_bn: bool = False
    spec_params: dict = field(default_factory=lambda: {"do_spec_aug": False, "do_preemph": True, "norm_signal": True})
    return_all_outputs: bool = False

    @property
    def gnorm_groups(self) -> int:
        """GroupNorm groups of the aggregated 1D outputs (agg_gnorm: true = C groups); 0: none."""
        if self.agg_gnorm is True:
            return self.C
        return int(self.agg_gnorm) if self.agg_gnorm else 0

    def validate(self) -> None:
        bad = self.unsupported
        if self.causal not in ("none", False, None):
            raise bad("causal", self.causal, "only 'none': the official blocks have no causal variants")
        if self.spec_in_channels != 1:
            raise bad("spec_in_channels", self.spec_in_channels, "1: the mel front-ends give one channel")
        if self.feat_type not in ("pt", "pt_mel", "tf", "tf_mel"):
            raise bad("feat_type", self.feat_type, "'pt' (torch mel) or 'tf' (TF-style mel)")
        if self.block_1d_type not in BLOCK_1D_TYPES:
            raise bad("block_1d_type", self.block_1d_type, f"one of {BLOCK_1D_TYPES}")
        if self.block_2d_type not in BLOCK_2D_TYPES:
            raise bad("block_2d_type", self.block_2d_type, f"one of {BLOCK_2D_TYPES}")
        if self.fm_weigthing_type not in ("NC", "N"):
            raise bad("fm_weigthing_type", self.fm_weigthing_type, "'NC' or 'N'")
        if self.att_dos:
            raise bad("att_dos", self.att_dos, "null or {}: attention dropouts are not implemented")
        if self.gnorm_groups and (self.C * self.F) % self.gnorm_groups:
            raise bad("agg_gnorm", self.agg_gnorm, f"groups must divide C*F={self.C * self.F}")
        freqs = self.F
        for index, row in enumerate(self.stages_setup):
            key = f"stages_setup[{index}]"
            if len(row) != 5 or not isinstance(row[0], list) or len(row[0]) != 2:
                raise bad(key, row, "[[freq_stride, time_stride], num_blocks, conv_exp, kernel_sizes, att_red]")
            freq_stride, time_stride = row[0]
            if freq_stride < 1 or time_stride < 1 or freqs % freq_stride:
                raise bad(f"{key} stride", row[0], f"positive strides, the frequency one dividing {freqs} bins")
            freqs //= freq_stride


class FrequencyEncoding(nn.Module):
    """`use_freq_pos_enc`: adds a learned embedding of each frequency bin to `x [B, c, f, T]`."""

    def __init__(self, channels: int, bins: int):
        super().__init__()
        self.freq_embedder = nn.Embedding(bins, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins = torch.arange(x.shape[2], device=x.device)
        return x + self.freq_embedder(bins).T[None, :, :, None]


class ReDimNet2Backbone(Trunk):
    """`mel [B, 1, F, T]` -> `[B, out_channels or c, f, T']` (return_2d_output) or `[B, D, T']`,
    T' = T cut to a multiple of `time_stride` (see the module docstring)."""

    def __init__(self, cfg: ReDimNet2Config):
        super().__init__()
        width = cfg.C * cfg.F
        groups = cfg.gnorm_groups
        self.pad_right_samples, self.before_pool_offset = cfg.pad_right_samples, cfg.before_pool_offset

        def mix(num_inputs: int) -> WeightedLayerSum:
            return WeightedLayerSum(
                num_inputs, width if cfg.fm_weigthing_type == "NC" else 1, requires_grad=num_inputs > 1
            )

        def upsample(stride: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Upsample(scale_factor=stride, mode="nearest")]
            return nn.Sequential(*layers, *([nn.GroupNorm(groups, width)] if groups else []))

        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.C, kernel_size=3, padding="same"), ChannelsFirstLayerNorm(cfg.C), ToSequence()
        )
        self.stem_gnorm = nn.GroupNorm(groups, width) if groups else None
        channels, freqs, time_stride, inputs = cfg.C, cfg.F, 1, 1
        self.dual: list[bool] = []
        for index, ((freq_stride, stage_stride), num_blocks, expansion, _kernels, reduction) in enumerate(
            cfg.stages_setup
        ):
            time_stride *= stage_stride
            expanded = int(freq_stride * channels * expansion)
            layers: list[nn.Module] = [mix(inputs), ToImage(freqs, channels)]
            if cfg.use_freq_pos_enc:
                layers.append(FrequencyEncoding(channels, freqs))
            layers.append(
                nn.Conv2d(
                    channels,
                    expanded,
                    kernel_size=(freq_stride, time_stride),
                    stride=(freq_stride, time_stride),
                    groups=math.gcd(channels, expanded) if cfg.compress_tconvs else 1,
                )
            )
            channels, freqs = channels * freq_stride, freqs // freq_stride
            layers += [
                ConvBlock2d(cfg.block_2d_type, int(channels * expansion), freqs, cfg.group_divisor)
                for _ in range(num_blocks)
            ]
            if expansion != 1:
                layers.append(
                    nn.Sequential(nn.Conv2d(int(channels * expansion), channels, 1), nn.BatchNorm2d(channels, eps=1e-6))
                )
            layers.append(ToSequence())
            block_1d = TimeContextBlock(width, width // reduction, cfg.block_1d_type) if reduction is not None else None
            dual = cfg.dual_agg and block_1d is not None
            if dual:  # the 1D block's input and output both join the mix
                setattr(self, f"stage{index}_pre", nn.Sequential(*layers))
                setattr(self, f"stage{index}_1d", block_1d)
                setattr(self, f"stage{index}_up_2d", upsample(time_stride))
                setattr(self, f"stage{index}_up_1d", upsample(time_stride))
            else:
                layers += [block_1d] if block_1d is not None else []
                setattr(self, f"stage{index}", nn.Sequential(*layers, *upsample(time_stride)))
            self.dual.append(dual)
            inputs += 2 if dual else 1
        self.num_stages = len(cfg.stages_setup)
        self.time_stride = time_stride  # the largest cumulative time stride: the last one
        self.freq_stride = cfg.F // freqs
        self.fin_wght1d = mix(inputs)
        self.fin_to2d = ToImage(freqs, channels) if cfg.return_2d_output else nn.Identity()
        self.head: nn.Module
        if cfg.out_channels is None:
            self.head = nn.Identity()
        elif cfg.return_2d_output:
            self.head = nn.Conv2d(channels, cfg.out_channels, 1)
        else:
            self.head = nn.Conv1d(width, cfg.out_channels, 1)

    def stage_names(self) -> list[str]:
        """The stages as freezable parts: `stage{i}`, or for a dual stage its four modules."""
        names = []
        for index, dual in enumerate(self.dual):
            names += (
                [f"stage{index}{part}" for part in ("_pre", "_1d", "_up_2d", "_up_1d")] if dual else [f"stage{index}"]
            )
        return names

    def part_names(self) -> list[str]:
        """Every part with weights, in order: what can be frozen or unfrozen by name."""
        return [
            "stem",
            *(["stem_gnorm"] if self.stem_gnorm is not None else []),
            *self.stage_names(),
            "fin_wght1d",
            "head",
        ]

    def run_stage(self, index: int, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.dual[index]:
            return [getattr(self, f"stage{index}")(outputs)]
        before = getattr(self, f"stage{index}_pre")(outputs)
        after = getattr(self, f"stage{index}_1d")(before)
        return [getattr(self, f"stage{index}_up_2d")(before), getattr(self, f"stage{index}_up_1d")(after)]

    def forward(self, mel: torch.Tensor, return_all_outputs: bool = False):
        frames = mel.shape[-1] // self.time_stride * self.time_stride
        x = self.stem(mel[..., :frames])
        outputs = [self.stem_gnorm(x) if self.stem_gnorm is not None else x]
        for index in range(self.num_stages):
            outputs += self.run_stage(index, outputs)
        fused = self.fin_wght1d(outputs)
        outputs.append(fused)
        features = self.head(self.fin_to2d(fused))
        return (features, outputs) if return_all_outputs else features

    def features(self, spec: nn.Module, wave: torch.Tensor) -> torch.Tensor:
        """The trunk contract of every family: `wave [B, T]` -> the pooling's input `[B, D, T']`."""
        return self.pool_input(self(spec(self.pad_wave(wave)).unsqueeze(1)))

    # What the official wrapper does around the backbone lives here, so that every model built
    # from the trunk's parts (ReDimNetMRL, the inference form) does the same.
    def pad_wave(self, wave: torch.Tensor) -> torch.Tensor:
        return F.pad(wave, (0, self.pad_right_samples)) if self.pad_right_samples else wave

    def pool_input(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone output -> `[B, D, T]` for the pooling: 4-D outputs flattened channel-major."""
        if features.ndim == 4:
            features = features.reshape(features.shape[0], -1, features.shape[-1])
        return features[:, :, self.before_pool_offset :] if self.before_pool_offset else features


class ReDimNet2(SpeakerEncoder):
    """Front-end + backbone + pooling + embedding layer: `wave [B, T]` -> `embedding [B, embed_dim]`
    (the rest of the wrapper is `SpeakerEncoder`'s)."""

    no_head_reason = "the official wrapper builds none"

    def __init__(self, **model_config: Any):
        super().__init__()
        cfg = ReDimNet2Config.from_dict(model_config)
        self.config = cfg
        frontend = MelFrontend if cfg.feat_type in ("pt", "pt_mel") else TFMelFrontend
        self.spec = frontend(n_mels=cfg.F, hop_length=cfg.hop_length, **cfg.spec_params)
        self.backbone = ReDimNet2Backbone(cfg)
        if cfg.out_channels is None:
            pool_in = cfg.C * cfg.F
        else:
            pool_in = cfg.out_channels * (cfg.F // self.backbone.freq_stride if cfg.return_2d_output else 1)
        self.build_embedding_layer(
            make_pooling(cfg.pooling_func, pool_in, cfg.global_context_att), cfg.embed_dim, cfg.emb_bn
        )
        self.cls_head = None  # the official wrapper builds none, whatever num_classes says
