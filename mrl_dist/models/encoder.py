"""`SpeakerEncoder`: what the ReDimNet, ReDimNet2 and SSRFNet wrappers share.

    wave [B, T] -> backbone.features(spec, wave) -> pool -> pooled [B, P]
                -> embedding layer: bn -> linear (-> bn2) -> embedding [B, embed_dim]

A family's wrapper builds `config` (its dataclass), `spec` (front-end), `backbone` (which
implements the trunk contract `features(spec, wave)` -> the pooling's input) and the pooling,
then calls `build_embedding_layer`; everything else here is common.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .pooling import PoolingLayer


def embedding_layer(bn: nn.Module, linear: nn.Linear, bn2: nn.Module | None, pooled: torch.Tensor) -> torch.Tensor:
    """The pretrained embedding layer, `pooled [B, P]` -> `[B, E]`: BatchNorm -> Linear (->
    BatchNorm with `emb_bn`). Shared by every family's wrapper and the MRL model's native head."""
    out = linear(bn(pooled))
    return bn2(out) if bn2 is not None else out


class Trunk(nn.Module):
    """Base of every family's `backbone`: what `SpeakerEncoder` and `ReDimNetMRL` call on it."""

    def features(self, spec: nn.Module, wave: torch.Tensor) -> torch.Tensor:
        """The trunk contract: `wave [B, T]` -> the pooling's input `[B, D, T']` (`spec`: the front-end)."""
        raise NotImplementedError

    def part_names(self) -> list[str]:
        """Every part with weights, in order: what can be frozen or unfrozen by name."""
        raise NotImplementedError

    # Only for backbones run on the mel alone (ReDimNet, ReDimNet2): the steps around them (`extract`).
    def pad_wave(self, wave: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool_input(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SpeakerEncoder(nn.Module):
    """Base of the official-compatible wrappers: `forward(wave)` -> the embedding."""

    config: Any
    spec: nn.Module
    backbone: Trunk
    pool: nn.Module
    pool_out_dim: int
    bn: nn.BatchNorm1d
    linear: nn.Linear
    bn2: nn.Module | None  # a BatchNorm1d; the inference form folds it into `linear` (nn.Identity)
    cls_head: nn.Module | None
    #: Why `classify` has nothing to run when `cls_head` is None (the family's own reason).
    no_head_reason = "model_config.num_classes is null"

    def build_embedding_layer(self, pool: PoolingLayer, embed_dim: int, emb_bn: bool) -> None:
        """Set `pool`, `pool_out_dim`, `bn`, `linear` and `bn2` (None without `emb_bn`), in the
        official order (the state-dict keys are `bn.*`, `linear.*`, `bn2.*`)."""
        self.pool = pool
        self.pool_out_dim = pool.out_dim
        self.bn = nn.BatchNorm1d(self.pool_out_dim)
        self.linear = nn.Linear(self.pool_out_dim, embed_dim)
        self.bn2 = nn.BatchNorm1d(embed_dim) if emb_bn else None

    @property
    def model_config(self) -> dict[str, Any]:
        """The keyword arguments that build this model again (`type(model)(**model_config)`)."""
        return self.config.to_dict()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def pooled(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> pooled statistics `[B, pool_out_dim]`."""
        return self.pool(self.backbone.features(self.spec, wave))

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The embedding layer alone: `[B, pool_out_dim]` -> `[B, embed_dim]`."""
        return embedding_layer(self.bn, self.linear, self.bn2, pooled)

    def forward(self, wave: torch.Tensor):
        """The embedding `[B, embed_dim]`; with the official `return_all_outputs`, (embedding,
        every stage's output)."""
        if getattr(self.config, "return_all_outputs", False):
            stages = self.extract(wave, keep_stage_outputs=True)
            return stages["embedding"], stages["stage_outputs"]
        return self.embed_pooled(self.pooled(wave))

    def classify(self, wave: torch.Tensor) -> torch.Tensor:
        if self.cls_head is None:
            raise RuntimeError(f"this {type(self).__name__} has no classification head ({self.no_head_reason})")
        return self.cls_head(self.embed_pooled(self.pooled(wave)))

    def extract(self, wave: torch.Tensor, keep_stage_outputs: bool = False) -> dict[str, Any]:
        """Every intermediate: `mel [B, F, T]`, `backbone` (the backbone's own output), `pooled`,
        `embedding` (and `stage_outputs` with `keep_stage_outputs`). For backbones run on the
        mel alone (`backbone(mel [B, 1, F, T], return_all_outputs=True)`)."""
        mel = self.spec(self.backbone.pad_wave(wave))
        features, stage_outputs = self.backbone(mel.unsqueeze(1), return_all_outputs=True)
        pooled = self.pool(self.backbone.pool_input(features))
        result = {"mel": mel, "backbone": features, "pooled": pooled, "embedding": self.embed_pooled(pooled)}
        if keep_stage_outputs:
            result["stage_outputs"] = stage_outputs
        return result
