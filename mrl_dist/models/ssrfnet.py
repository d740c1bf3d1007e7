"""SSRFNet: a pretrained speech model's hidden states fused into ReDimNet stage by stage.

    wave -> SV-Mixer student (or, `student: none`, the frozen PTM) -> states [B, L+1, T50, D]
         -> drop state 0; N windows of K layers centred at round(linspace(K//2, L-K+K//2, N)),
            each merged by a per-channel softmax over its K layers -> G_i [B, D, T50]
         -> PFM_i: Conv1d(D -> C*F, proj_kernel, same) + channels-first LayerNorm -> P_i [B, C*F, T50]
    wave -> log-mel (mel_bins) -> stem -> S [B, C*F, T]
         time_align "stride2_stem" (the paper's): Conv1d(mel_bins -> C*F, k5, stride 2) +
              InstanceNorm, T = T50; the shorter of the two is kept (WavLM gives one frame more
              for lengths that are not multiples of 320 samples)
         time_align "interpolate" (our extension): ReDimNet's own 2D stem at 100 Hz (F = mel_bins),
              P_i linearly interpolated to its frames, so an official ReDimNet's stem, stages
              and pooling load (`load_redimnet_weights`) and only the PFMs and mixes start fresh
    ReDimNet stages; P_i joins the mix in front of stage i (i < inject_stages): stage inputs
    [S, P1], [S, P1, F1, P2], ...; the final mix takes all -> ASTP -> BN -> Linear -> embedding.

Training (classifier mode) adds the layer-prediction distillation of the PTM into the student
(`aux_losses`, svmixer.py). The PTM teacher is never part of the state dict: it is rebuilt from
`fusion.ptm` when training attaches it (`attach_ptm_teacher`), so checkpoints hold the student,
fusion and backend only. With `student: none` the frozen PTM is a registered part of the model.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import SpeakerEncoder, Trunk
from .frontend import MelFrontend
from .layers import ChannelsFirstLayerNorm, ToSequence, WeightedLayerSum
from .model_config import ModelConfigMixin
from .pooling import make_pooling
from .ptm import FrozenPTM, TrainablePTM, load_wavlm
from .redimnet import BLOCK_1D_TYPES, BLOCK_2D_TYPES, redimnet_stage
from .svmixer import LayerPredictionLoss, SVMixer

TIME_ALIGNMENTS = ("stride2_stem", "interpolate")
STUDENTS = ("svmixer", "none")


def _m_stages() -> list:
    return [
        [1, 2, 1, [[3, 3]], 16],
        [2, 2, 1, [[3, 3]], 16],
        [1, 3, 1, [[3, 3]], 8],
        [2, 4, 1, [[3, 3]], 8],
        [1, 4, 1, [[3, 3]], 8],
        [2, 4, 1, [[3, 3]], 4],
    ]


def _default_fusion() -> dict:
    return {
        "ptm": {"source": "microsoft/wavlm-large", "config": None, "seed": 0, "freeze": True},
        "student": "svmixer",
        "svmixer": {"num_layers": 12, "seq_len": 149, "group_dim": 128, "conv_dim": 512, "dropout": 0.1},
        "inject_stages": 4,
        "group_size": 4,
        "proj_kernel": 5,
        "time_align": "stride2_stem",
        "distill_layers": [8, 16, 24],
        "cos_lambda": 1.0,
        "distill_weight": 1.0,
    }


@dataclass
class SSRFNetConfig(ModelConfigMixin):
    """`model_config` of an SSRFNet (the public code's backend: ReDimNetWrap with F=64, C=16).
    Its `family` field marks the format (`model_family`)."""

    family: str = "ssrfnet"
    F: int = 64
    C: int = 16
    mel_bins: int = 80
    hop_length: int = 160
    block_1d_type: str = "conv+att"
    block_2d_type: str = "convnext_like"
    group_divisor: int | None = 4
    stages_setup: list = field(default_factory=_m_stages)
    embed_dim: int = 192
    pooling_func: str = "ASTP"
    global_context_att: bool = True
    spec_params: dict = field(default_factory=dict)
    fusion: dict = field(default_factory=_default_fusion)

    def complete(self) -> None:
        """The fusion block merged over its defaults (nested keys checked by name)."""
        fusion = _default_fusion()
        for key, value in self.fusion.items():
            if key not in fusion:
                raise ValueError(f"SSRFNet model_config: fusion.{key}: unknown key; known: {sorted(fusion)}")
            fusion[key] = {**fusion[key], **value} if isinstance(fusion[key], dict) and value is not None else value
        self.fusion = fusion

    def validate(self) -> None:
        bad = self.unsupported
        fusion = self.fusion
        if self.block_1d_type not in BLOCK_1D_TYPES:
            raise bad("block_1d_type", self.block_1d_type, f"one of {BLOCK_1D_TYPES}")
        if self.block_2d_type not in BLOCK_2D_TYPES:
            raise bad("block_2d_type", self.block_2d_type, f"one of {BLOCK_2D_TYPES}")
        if fusion["time_align"] not in TIME_ALIGNMENTS:
            raise bad("fusion.time_align", fusion["time_align"], f"one of {TIME_ALIGNMENTS}")
        if fusion["time_align"] == "interpolate" and self.F != self.mel_bins:
            raise bad("F", self.F, f"with time_align 'interpolate' the 2D stem needs F = mel_bins ({self.mel_bins})")
        if fusion["student"] not in STUDENTS:
            raise bad("fusion.student", fusion["student"], f"one of {STUDENTS}")
        if fusion["student"] == "svmixer" and not fusion["ptm"]["freeze"]:
            raise bad("fusion.ptm.freeze", False, "a PTM that teaches an SV-Mixer student stays frozen")
        if not 1 <= fusion["inject_stages"] <= len(self.stages_setup):
            raise bad("fusion.inject_stages", fusion["inject_stages"], f"1..{len(self.stages_setup)} stages")
        for key in ("group_size", "proj_kernel"):
            if fusion[key] < 1:
                raise bad(f"fusion.{key}", fusion[key], ">= 1")
        if fusion["proj_kernel"] % 2 == 0:
            raise bad("fusion.proj_kernel", fusion["proj_kernel"], "odd, for 'same' padding")


def window_centres(num_layers: int, window: int, count: int) -> list[int]:
    """Centres of `count` windows of `window` layers over `num_layers`: 12, 4, 4 -> [2, 5, 7, 10]."""
    if window > num_layers:
        raise ValueError(f"fusion.group_size={window} is larger than the {num_layers} layers to merge")
    start, end = window // 2, num_layers - window + window // 2
    return [int(c) for c in torch.linspace(start, end, count, dtype=torch.float64).round().tolist()]


class LayerGroupMerge(nn.Module):
    """`states [B, L+1, T, D]` -> N tensors `[B, D, T]`: per-channel softmax mixes of K-layer windows."""

    def __init__(self, num_layers: int, group_size: int, count: int, dim: int):
        super().__init__()
        self.starts = [c - group_size // 2 for c in window_centres(num_layers, group_size, count)]
        self.group_size = group_size
        self.mixes = nn.ModuleList(WeightedLayerSum(group_size, dim) for _ in self.starts)

    def forward(self, states: torch.Tensor) -> list[torch.Tensor]:
        layers = states[:, 1:].transpose(2, 3)  # drop the embedding state; [B, L, D, T]
        return [
            mix(list(layers[:, start : start + self.group_size].unbind(1)))
            for mix, start in zip(self.mixes, self.starts)
        ]


class ProjectionFusion(nn.Module):
    """PFM: `G [B, D, T]` -> `P [B, C*F, T]` (Conv1d, same padding, then channels-first LayerNorm)."""

    def __init__(self, dim: int, width: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, width, kernel, padding=kernel // 2)
        self.norm = ChannelsFirstLayerNorm(width)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(merged))


class FusedReDimNetBackbone(nn.Module):
    """`mel [B, mel_bins, T]` and the projections `P_i` -> features `[B, C*F, T']` (module docstring)."""

    def __init__(self, cfg: SSRFNetConfig):
        super().__init__()
        width = cfg.C * cfg.F
        self.time_align = cfg.fusion["time_align"]
        self.inject = cfg.fusion["inject_stages"]
        if self.time_align == "stride2_stem":
            self.stem = nn.Sequential(nn.Conv1d(cfg.mel_bins, width, kernel_size=5, stride=2), nn.InstanceNorm1d(width))
        else:  # ReDimNet's stem, so official weights load
            self.stem = nn.Sequential(
                nn.Conv2d(1, cfg.C, kernel_size=3, padding="same"), ChannelsFirstLayerNorm(cfg.C), ToSequence()
            )
        channels, freqs, inputs = cfg.C, cfg.F, 1
        self.num_stages = len(cfg.stages_setup)
        for index, row in enumerate(cfg.stages_setup):
            inputs += 1 if index < self.inject else 0  # P_i joins this stage's mix
            stage, channels, freqs = redimnet_stage(cfg, row, inputs, channels, freqs)
            setattr(self, f"stage{index}", stage)
            inputs += 1
        self.fin_wght1d = WeightedLayerSum(inputs, width)

    def stage_names(self) -> list[str]:
        return [f"stage{i}" for i in range(self.num_stages)]

    def forward(self, mel: torch.Tensor, projections: list[torch.Tensor]) -> torch.Tensor:
        x = self.stem(mel) if self.time_align == "stride2_stem" else self.stem(mel.unsqueeze(1))
        if self.time_align == "stride2_stem":
            frames = min(x.shape[-1], *(p.shape[-1] for p in projections))
            x, projections = x[..., :frames], [p[..., :frames] for p in projections]
        else:
            projections = [F.interpolate(p, size=x.shape[-1], mode="linear", align_corners=False) for p in projections]
        outputs = [x]
        for index in range(self.num_stages):
            if index < self.inject:
                outputs.append(projections[index])
            outputs.append(getattr(self, f"stage{index}")(outputs))
        return self.fin_wght1d(outputs)


class SSRFNetTrunk(Trunk):
    """Everything from the wave to the pooling's input: hidden-state source, merge, PFMs, backend.
    `features(spec, wave)` is the trunk contract ReDimNetMRL relies on for every family."""

    # The source of the hidden states: one of the two (`fusion.student`).
    student: SVMixer | None
    ptm: FrozenPTM | None

    def __init__(self, cfg: SSRFNetConfig):
        super().__init__()
        fusion = cfg.fusion
        ptm_cfg = fusion["ptm"]
        self._teacher: list[FrozenPTM] = []  # outside the state dict (attach_ptm_teacher)
        if fusion["student"] == "svmixer":
            mixer = fusion["svmixer"]
            dim = int(mixer.get("hidden_size") or self._ptm_dim(ptm_cfg))
            self.student = SVMixer(
                hidden_size=dim,
                num_layers=mixer["num_layers"],
                seq_len=mixer["seq_len"],
                group_dim=mixer["group_dim"],
                conv_dims=(mixer["conv_dim"],) * 7,
                dropout=mixer["dropout"],
            )
            num_layers, self.ptm = mixer["num_layers"], None
        else:
            wavlm = load_wavlm(ptm_cfg["source"], ptm_cfg["config"], ptm_cfg["seed"])
            self.ptm = FrozenPTM(wavlm) if ptm_cfg["freeze"] else TrainablePTM(wavlm)
            self.student, dim, num_layers = None, self.ptm.hidden_size, self.ptm.num_layers
        self.merge = LayerGroupMerge(num_layers, fusion["group_size"], fusion["inject_stages"], dim)
        self.pfm = nn.ModuleList(
            ProjectionFusion(dim, cfg.C * cfg.F, fusion["proj_kernel"]) for _ in range(fusion["inject_stages"])
        )
        self.backend = FusedReDimNetBackbone(cfg)

    @staticmethod
    def _ptm_dim(ptm_cfg: dict) -> int:
        if ptm_cfg.get("config"):
            return int(ptm_cfg["config"].get("hidden_size", 768))
        return 1024 if "large" in str(ptm_cfg.get("source", "")) else 768

    def part_names(self) -> list[str]:
        """Freezable parts: the hidden-state source, merge, PFMs, then the backend stem, stages, mix."""
        return [
            "student" if self.student is not None else "ptm",
            "merge",
            "pfm",
            "backend.stem",
            *self.stage_names(),
            "backend.fin_wght1d",
        ]

    def stage_names(self) -> list[str]:
        return [f"backend.{name}" for name in self.backend.stage_names()]

    def states(self, wave: torch.Tensor) -> torch.Tensor:
        if self.student is not None:
            return self.student(wave)
        if self.ptm is None:  # __init__ builds one of the two
            raise RuntimeError("SSRFNetTrunk has neither a student nor a PTM to compute hidden states")
        return self.ptm(wave)

    def features(self, spec: nn.Module, wave: torch.Tensor) -> torch.Tensor:
        return self.features_and_states(spec, wave)[0]

    def features_and_states(self, spec: nn.Module, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the pooling's input, the hidden states [L, B, T', D] it was fused from)."""
        states = self.states(wave)
        projections = [pfm(g) for pfm, g in zip(self.pfm, self.merge(states))]
        return self.backend(spec(wave), projections), states

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for teacher in self._teacher:  # device and dtype moves reach the teacher too
            teacher._apply(fn, recurse)
        return self


class SSRFNet(SpeakerEncoder):
    """`wave [B, T]` -> `embedding [B, embed_dim]`; `SSRFNet(**model_config)` (the rest of the
    wrapper is `SpeakerEncoder`'s)."""

    no_head_reason = "SSRFNet builds none"
    backbone: SSRFNetTrunk
    layer_prediction: LayerPredictionLoss | None

    def __init__(self, **model_config: Any):
        super().__init__()
        cfg = SSRFNetConfig.from_dict(model_config)
        self.config = cfg
        self.spec = MelFrontend(n_mels=cfg.mel_bins, hop_length=cfg.hop_length, **cfg.spec_params)
        self.backbone = SSRFNetTrunk(cfg)
        self.build_embedding_layer(
            make_pooling(cfg.pooling_func, cfg.C * cfg.F, cfg.global_context_att), cfg.embed_dim, emb_bn=False
        )
        self.cls_head = None
        fusion = cfg.fusion
        student = self.backbone.student  # the SV-Mixer when fusion.student is "svmixer", else None
        self.layer_prediction = None
        if student is not None and fusion["distill_weight"] > 0:
            teacher_dim = SSRFNetTrunk._ptm_dim(fusion["ptm"])
            self.layer_prediction = LayerPredictionLoss(
                student.projection.out_features,
                teacher_dim,
                fusion["distill_layers"],
                fusion["cos_lambda"],
            )

    def attach_ptm_teacher(self) -> None:
        """Build the frozen PTM the student is distilled from (training only; never saved). Fails
        with `PTMError` naming the model and folders when it cannot be found."""
        if self.layer_prediction is not None and not self.backbone._teacher:
            ptm = self.config.fusion["ptm"]
            device = next(self.parameters()).device
            self.backbone._teacher.append(FrozenPTM(load_wavlm(ptm["source"], ptm["config"], ptm["seed"])).to(device))

    def aux_losses(self, wave: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(embedding, {"layer_prediction": weighted loss}) for a training step: the student's
        states feed the backend and are distilled from the attached PTM teacher's."""
        trunk = self.backbone
        if self.layer_prediction is None or not self.training:
            return self(wave), {}
        if not trunk._teacher:
            raise RuntimeError("SSRFNet: call attach_ptm_teacher() before training with layer-prediction distillation")
        features, states = trunk.features_and_states(self.spec, wave)
        embedding = self.embed_pooled(self.pool(features))
        loss = self.layer_prediction(states, trunk._teacher[0](wave))
        return embedding, {"layer_prediction": self.config.fusion["distill_weight"] * loss}

    def extract(self, wave: torch.Tensor, keep_stage_outputs: bool = False) -> dict[str, Any]:
        """`mel`, `backbone` (the fused features), `pooled`, `embedding` (no stage outputs)."""
        if keep_stage_outputs:
            raise ValueError(
                "SSRFNet.extract: stage outputs are not kept (the fused backbone returns its features only)"
            )
        mel = self.spec(wave)
        features = self.backbone.features(self.spec, wave)
        pooled = self.pool(features)
        return {"mel": mel, "backbone": features, "pooled": pooled, "embedding": self.embed_pooled(pooled)}


# ---------------------------------------------------------------------------- config and weights


def fusion_overrides(fusion_cfg: Any) -> dict | None:
    """`model.fusion` (the run config's `FusionConfig`, keys left null) -> overrides of a preset's
    fusion block; None when nothing is set."""
    if fusion_cfg is None:
        return None
    values = {k: v for k, v in asdict(fusion_cfg).items() if v is not None and k != "ptm"}
    ptm = {k: v for k, v in asdict(fusion_cfg.ptm).items() if v is not None} if fusion_cfg.ptm else {}
    if ptm:
        values["ptm"] = ptm
    return values or None


def apply_fusion_overrides(model_config: dict, overrides: dict) -> dict:
    """An SSRFNet `model_config` with `overrides` merged into its fusion block (validated on build)."""
    if model_config.get("family") != "ssrfnet":
        raise ValueError("model.fusion: set only for SSRFNet backbones (ssrfnet, ssrfnet-tiny)")
    config = copy.deepcopy(model_config)
    fusion = config.setdefault("fusion", {})
    for key, value in overrides.items():
        if key == "backend_checkpoint":
            continue
        if key == "ptm":
            fusion["ptm"] = {**fusion.get("ptm", {}), **value}
            if "source" in value:  # a named PTM replaces an inline config
                fusion["ptm"]["config"] = None
        else:
            fusion[key] = value
    return config


def load_redimnet_weights(model: SSRFNet, official: dict, path: str) -> list[str]:
    """Start SSRFNet's backend from an official ReDimNet file's state dict (`official`, local key
    names; `time_align: interpolate`, the same F, C and stages): its front-end, stem, stage
    blocks, final mix, pooling and embedding layer load; what has no counterpart or another
    shape (the stage mixes, which take the PFM inputs too; the PFMs; the student) starts fresh.
    Returns the SSRFNet keys that started fresh. `path` names the file in errors."""
    if model.config.fusion["time_align"] != "interpolate":
        raise ValueError("model.fusion.backend_checkpoint: needs time_align 'interpolate' (ReDimNet's own stem)")
    mapped = {
        (f"backbone.backend.{k[len('backbone.') :]}" if k.startswith("backbone.") else k): v
        for k, v in official.items()
    }
    own = model.state_dict()
    loaded = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.backend.stage") for k in loaded):
        raise ValueError(
            f"model.fusion.backend_checkpoint: {path} shares no stage weights with this SSRFNet "
            "(F, C and stages_setup must equal the file's)"
        )
    model.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))
