"""Validation during training: EER and minDCF per embedding dim on each validation set's trials
(`validation.sets`, or `data.val` alone; rank 0 runs it).

While the trunk is frozen, its pooled features of the val utterances cannot change: the first
validation computes them (the trunk's inference form, one pass) and keeps them in memory, and
every later one runs only the head over them (seconds instead of a full pass). They are forgotten
when the trunk unfreezes (`forget_pooled`). The pooled-feature cache of the training data
(data/features.py) is the on-disk counterpart for training crops; these are a few thousand
whole utterances, recomputed by each run in one pass, so they stay in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ValidationSetConfig
from ..data.manifest import read_manifest
from ..data.pipeline import make_eval_loader
from ..eval.extract import POOLED, embed_pooled_features, evaluate_embeddings, extract_embeddings
from ..models import inference_form


@dataclass(frozen=True)
class ValidationSet:
    """A named set of validation trials: its shards (a manifest) and trial list."""

    name: str
    manifest: str
    trials: Path


def validation_sets(cfg: Config) -> list[ValidationSet]:
    """`validation.sets`, or `data.val` alone named "val"; each with its trial list resolved
    (FileNotFoundError naming the key when a set has none)."""
    entries = cfg.validation.sets or [ValidationSetConfig(name="val", manifest=cfg.data.val)]
    sets = []
    for index, entry in enumerate(entries):
        where = f"validation.sets[{index}]" if cfg.validation.sets else "data.val"
        trials = Path(entry.trials) if entry.trials else read_manifest(entry.manifest).trials_path
        if trials is None:
            raise FileNotFoundError(
                f"{where}: {entry.manifest} names no trials file; pack it with --trials or set {where}.trials"
                if cfg.validation.sets
                else f"data.val: {entry.manifest} has no trials file; pack it with --trials"
            )
        sets.append(ValidationSet(entry.name, entry.manifest, trials))
    return sets


class Validator:
    """`reports(model)`: {set name: evaluation report (eer, min_dcf, threshold per dim)} of
    `model`, an eval-form model of the mode (ReDimNetMRL or ReDimNet) already on `device`, on
    each validation set."""

    def __init__(self, cfg: Config, device: torch.device, autocast_dtype: torch.dtype | None):
        self.cfg, self.device, self.autocast_dtype = cfg, device, autocast_dtype
        self.sets = validation_sets(cfg)
        # {set name: {utterance key: {"pooled": [P]}}}, kept while the trunk is frozen
        self.pooled: dict[str, dict] = {}

    def reports(self, model) -> dict[str, dict[str, Any]]:
        reports = {}
        for entry in self.sets:
            report, _, _ = evaluate_embeddings(model, self.embeddings(model, entry), entry.trials)
            reports[entry.name] = report
        return reports

    def embeddings(self, model, entry: ValidationSet) -> dict:
        """`{utterance key: {kind: [D]}}` of the set's trial utterances (as `extract_embeddings` gives them)."""
        frozen_trunk = getattr(model, "trunk_frozen", False) and hasattr(model, "head")
        if frozen_trunk and entry.name in self.pooled:
            return embed_pooled_features(model, self.pooled[entry.name], device=self.device)
        vcfg = self.cfg.validation
        loader = make_eval_loader(
            entry.manifest,
            entry.trials,
            max_seconds=vcfg.max_seconds,
            batch_size=vcfg.batch_size,
            num_workers=min(2, self.cfg.data.num_workers),
        )
        if not frozen_trunk:
            return extract_embeddings(model, loader, device=self.device, autocast_dtype=self.autocast_dtype)
        self.pooled[entry.name] = extract_embeddings(
            inference_form(model), loader, device=self.device, heads=[POOLED], autocast_dtype=self.autocast_dtype
        )
        return embed_pooled_features(model, self.pooled[entry.name], device=self.device)

    def forget_pooled(self) -> None:
        """The trunk trains from now on: its pooled features are computed anew each time."""
        self.pooled = {}
