"""Adapting a pretrained model to a new domain: which part to train (`launch/bench_adapt.py`).

Every variant is a real training run of a recipe config (default configs/adapt-cpu.yaml) with a
few keys changed, on the same data, seed, batch and steps:

    head       the Matryoshka head alone on the frozen trunk (from cached trunk features)
    lora-r4    LoRA adapters of rank 4 on the trunk + the head
    lora-r16   rank 16 + the head
    full       the whole trunk + the head, the trunk at lr x 0.1 with BatchNorm statistics frozen

Each is scored on the validation speakers at its LAST step: with the validation speakers being
the ones reported, picking `best.pt` on them would flatter every variant. The step-0 validation
of the first run gives the two references that need no training: the native embedding
("native", its own size) and the PCA-truncated native embedding (the head at its start).
Also reported: trainable parameters (train.log), the adapter file's size, wall time.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import apply_overrides, config_from_dict
from ..data.manifest import read_manifest
from ..data.trials import read_trials
from ..train.loop import train

# name -> (what it trains, --set style overrides of the recipe)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "head": ("head only (cached trunk features)", ["model.adapters=null", "data.features=auto"]),
    "lora-r4": ("LoRA r=4 + head", ["model.adapters={type: lora, rank: 4, alpha: 8.0}"]),
    "lora-r8": ("LoRA r=8 + head", ["model.adapters={type: lora, rank: 8, alpha: 16.0}"]),
    "lora-r16": ("LoRA r=16 + head", ["model.adapters={type: lora, rank: 16, alpha: 32.0}"]),
    "full": (
        "full fine-tuning (trunk lr x0.1, BatchNorm frozen)",
        [
            "model.adapters=null",
            "training.freeze_backbone=false",
            "training.freeze_bn_stats=true",
            "training.optimizer.backbone_lr_ratio=0.1",
        ],
    ),
}


@dataclass
class VariantResult:
    name: str
    description: str
    eer: dict[str, float]  # the last validation's EER per dim (and native)
    start_eer: dict[str, float]  # its step-0 validation (native and the PCA head)
    trainable: int
    adapter_bytes: int | None
    seconds: float


def trainable_parameters(run_dir: Path) -> int:
    """`trainable=N` of the run's first train.log header line."""
    for line in (run_dir / "train.log").read_text().splitlines():
        for field in line.split():
            if field.startswith("trainable="):
                return int(field.split("=", 1)[1])
    raise RuntimeError(f"{run_dir / 'train.log'}: no 'trainable=' field")


def run_variant(recipe: dict[str, Any], name: str, output: Path, overrides: list[str]) -> VariantResult:
    """Train variant `name` of `recipe` (a config mapping) into `output/name`, from scratch."""
    description, changes = VARIANTS[name]
    run_dir = output / name
    config = apply_overrides(copy.deepcopy(recipe), [*changes, *overrides, f"run_dir={run_dir}"])
    if (run_dir / "metrics.jsonl").is_file():
        raise FileExistsError(f"{run_dir} holds a finished or partial run; choose another --output or delete it")
    config["validation"] = {**config.get("validation", {}), "at_start": True}
    started = time.perf_counter()
    train(config_from_dict(config))
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    adapter = run_dir / "adapter.pt"
    return VariantResult(
        name,
        description,
        eer=records[-1]["eer"],
        start_eer=records[0]["eer"],
        trainable=trainable_parameters(run_dir),
        adapter_bytes=adapter.stat().st_size if adapter.is_file() else None,
        seconds=seconds,
    )


def resolution(trials_path: Path) -> str:
    """EER resolution: one trial of each kind, in EER points."""
    trials = read_trials(trials_path)
    targets = sum(1 for trial in trials if trial.label == 1)
    others = len(trials) - targets
    return (
        f"{targets:,} target / {others:,} non-target trials: 1 trial = {100 / targets:.3f} / {100 / others:.3f} points"
    )


def results_table(results: list[VariantResult]) -> str:
    """Markdown: one row per variant and the two references, a column per dim (EER %)."""
    first = results[0]
    dims = sorted((d for d in first.eer if d.isdigit()), key=int)
    header = ["what trains", *(f"{d}-D" for d in dims), "trainable params", "adapter file", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    native = first.start_eer.get("native")
    if native is not None:
        lines.append(f"| native embedding (its own size) | {100 * native:.2f} (all dims) |" + " |" * (len(header) - 2))
    lines.append(
        "| PCA head at step 0 (no training) | "
        + " | ".join(f"{100 * first.start_eer[d]:.2f}" for d in dims)
        + " | 0 | | |"
    )
    for result in results:
        size = f"{result.adapter_bytes / 1024:.0f} KB" if result.adapter_bytes else ""
        cells = [f"{100 * result.eer[d]:.2f}" for d in dims]
        lines.append(
            f"| {result.description} | "
            + " | ".join(cells)
            + f" | {result.trainable:,} | {size} | {result.seconds:.0f} |"
        )
    return "\n".join(lines)


def bench_adapt(
    recipe_path: Path, output: Path, variants: list[str], overrides: list[str]
) -> tuple[list[VariantResult], str]:
    """Run `variants` of the recipe; returns the results and the Markdown report."""
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    recipe = yaml.safe_load(recipe_path.read_text())
    output.mkdir(parents=True, exist_ok=True)
    results = [run_variant(recipe, name, output, overrides) for name in variants]
    cfg = config_from_dict(apply_overrides(copy.deepcopy(recipe), overrides))
    val = read_manifest(cfg.data.val)
    train_manifest = read_manifest(cfg.data.train) if isinstance(cfg.data.train, str) else None
    lines = [
        f"recipe {recipe_path} with {' '.join(overrides) or 'no overrides'}",
        f"backbone {cfg.model.backbone}; train {cfg.data.train}"
        + (
            f" ({train_manifest.num_speakers} speakers, {train_manifest.total_samples} utterances)"
            if train_manifest
            else ""
        ),
        f"scored on {cfg.data.val} ({val.num_speakers} speakers): "
        + (resolution(val.trials_path) if val.trials_path else "no trials"),
        f"{cfg.training.max_steps} steps of batch {cfg.training.batch_size}; EER % at the last step",
        "",
        results_table(results),
    ]
    report = "\n".join(lines)
    (output / "report.md").write_text(report + "\n")
    return results, report
