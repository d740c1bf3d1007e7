"""Validation during training: EER and minDCF per embedding dim on the val trials (rank 0 runs it).

While the trunk is frozen, its pooled features of the val utterances cannot change: the first
validation computes them (the trunk's inference form, one pass) and keeps them in memory, and
every later one runs only the head over them (seconds instead of a full pass). They are forgotten
when the trunk unfreezes (`forget_pooled`). The pooled-feature cache of the training data
(data/features.py) is the on-disk counterpart for training crops; these are a few thousand
whole utterances, recomputed by each run in one pass, so they stay in memory.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..data.manifest import read_manifest
from ..data.pipeline import make_eval_loader
from ..eval.extract import POOLED, embed_pooled_features, evaluate_embeddings, extract_embeddings
from ..models import inference_form


class Validator:
    """`report(model)`: the evaluation report (eer, min_dcf, threshold per dim) of `model`, an
    eval-form model of the mode (ReDimNetMRL or ReDimNet) already on `device`."""

    def __init__(self, cfg: Config, device: torch.device, autocast_dtype: torch.dtype | None):
        self.cfg, self.device, self.autocast_dtype = cfg, device, autocast_dtype
        self.pooled: dict | None = None  # {utterance key: {"pooled": [P]}} while the trunk is frozen

    def report(self, model) -> dict[str, Any]:
        val = self.cfg.data.val
        trials = read_manifest(val).trials_path
        if trials is None:
            raise FileNotFoundError(f"data.val: {val} has no trials file; pack it with --trials")
        report, _, _ = evaluate_embeddings(model, self.embeddings(model), trials)
        return report

    def embeddings(self, model) -> dict:
        """`{utterance key: {kind: [D]}}` of the val utterances (as `extract_embeddings` gives them)."""
        frozen_trunk = getattr(model, "trunk_frozen", False) and hasattr(model, "head")
        if frozen_trunk and self.pooled is not None:
            return embed_pooled_features(model, self.pooled, device=self.device)
        vcfg = self.cfg.validation
        loader = make_eval_loader(
            self.cfg.data.val,
            None,
            max_seconds=vcfg.max_seconds,
            batch_size=vcfg.batch_size,
            num_workers=min(2, self.cfg.data.num_workers),
        )
        if not frozen_trunk:
            return extract_embeddings(model, loader, device=self.device, autocast_dtype=self.autocast_dtype)
        self.pooled = extract_embeddings(
            inference_form(model), loader, device=self.device, heads=[POOLED], autocast_dtype=self.autocast_dtype
        )
        return embed_pooled_features(model, self.pooled, device=self.device)

    def forget_pooled(self) -> None:
        """The trunk trains from now on: its pooled features are computed anew each time."""
        self.pooled = None
