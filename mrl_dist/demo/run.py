"""The README's main job on CPU: synthetic speakers -> shards -> backbone -> MRL head -> EER table.

Official ReDimNet weights cannot be downloaded here, so the demo first trains its own `tiny`
backbone (classifier mode, AAM on the native 192-D embedding), then treats it exactly as a
pretrained one: frozen, with a PCA-initialised Matryoshka head trained on top. The final
table compares, per dimension d, on the held-out speakers' trials:

    native[:d]   the first d coordinates of the native embedding (naive truncation)
    PCA[:d]      the native embedding rotated onto its principal axes, then truncated
                 (the MRL head at initialisation, before any MRL training)
    MRL          the trained Matryoshka head
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..data.packing import pack_split
from ..data.pipeline import make_eval_loader
from ..eval.extract import evaluate_model
from ..models import ReDimNetMRL, load_pretrained
from ..train.loop import train
from .corpus import make_demo_corpus

DEMO_DIMS = [32, 64, 128, 192, 256]


def demo_config(run_dir: Path, shards: Path, mode: str, steps: int, backbone: str) -> dict[str, Any]:
    """The run config of one demo stage; the mrl stage is configs/cpu-demo.yaml's recipe (annotated
    there; tests/test_configs_shipped.py keeps the two equal)."""
    classifier = mode == "classifier"
    config: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {
            "backbone": backbone,
            "pretrained": None,
            "mrl_dims": DEMO_DIMS,
            "head_init": "pca",
            "head_type": "linear",
            "pca_batches": 8,
        },
        "data": {
            "train": str(shards / "train.manifest.json"),
            "val": str(shards / "val.manifest.json"),
            "crop_seconds": 2.0,
            "num_workers": 1,
            "shuffle_buffer": 200,
        },
        "training": {
            "mode": mode,
            "freeze_backbone": True,
            "batch_size": 32,
            "max_steps": steps,
            "steps_per_epoch": 50,
            "mixed_precision": "no",
            "grad_clip": 5.0,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 1e-4},
            "schedule": {"warmup_steps": max(1, steps // 10), "decay": "cosine"},
        },
        "loss": {"margin": 0.2, "scale": 30.0},
        "validation": {"every_steps": steps, "batch_size": 16},
        "checkpoint": {"every_steps": steps, "keep_last": 1, "best_metric": "mean_eer"},
        "logging": {"every_steps": 10, "tensorboard": False},
    }
    if not classifier:
        # The frozen trunk runs once over 4 crops of every utterance; the head trains on the
        # cached features from class weights at the speaker means, validated from cached
        # pooled features of the val utterances (step 0 included: the untrained PCA head).
        config["data"].update(features="auto", feature_crops_per_utterance=4, crops_per_speaker=1)
        config["training"].update(
            batch_size=128,
            steps_per_epoch=100,
            optimizer={"name": "adamw", "lr": 0.002, "weight_decay": 1e-4},
            schedule={"warmup_steps": 30, "decay": "cosine"},
        )
        config["loss"].update(class_init="mean")
        config["validation"]["every_steps"] = max(1, steps // 6)
    return config


def prepare_demo_shards(
    root: Path, speakers: int, utterances: int, seed: int, shard_size_mb: float = 8, codec: str = "flac"
) -> Path:
    """Synthetic corpus (train and test speakers) packed into `root/shards` (another `codec` than
    FLAC: `root/shards-CODEC`); reused if present."""
    shards = root / ("shards" if codec == "flac" else f"shards-{codec}")
    if (shards / "train.manifest.json").is_file() and (shards / "val.manifest.json").is_file():
        return shards
    corpus = make_demo_corpus(root / "audio", speakers=speakers, utterances=utterances, seed=seed)
    for folder, split, trials in ((corpus.train_dir, "train", None), (corpus.test_dir, "val", corpus.trials)):
        pack_split(
            [folder], shards, split, trials=trials, workers=1, shard_size_mb=shard_size_mb, progress=False, codec=codec
        )
    return shards


def comparison_table(shards: Path, backbone: Path, mrl_run: Path) -> str:
    """Markdown table of EER per dim: naive truncation, PCA truncation, trained MRL head.

    PCA[:d] and MRL come from the MRL run's own validations (metrics.jsonl): step 0 is its
    PCA-initialised head, and best.pt is the validation with the lowest mean EER.
    """
    records = [json.loads(line) for line in (mrl_run / "metrics.jsonl").read_text().splitlines()]
    if records[0]["step"] != 0:
        raise RuntimeError(f"{mrl_run / 'metrics.jsonl'}: no step-0 validation of the initial head")
    best = min(records, key=lambda r: sum(v for k, v in r["eer"].items() if k.isdigit()))
    trials = shards / "val.trials.txt"
    naive = ReDimNetMRL.from_redimnet(load_pretrained(backbone), DEMO_DIMS, head_init="pretrained").eval()
    naive_report, _, _ = evaluate_model(
        naive, make_eval_loader(shards / "val.manifest.json", trials, batch_size=16), trials
    )
    eers = {"native[:d]": naive_report["eer"], "PCA[:d]": records[0]["eer"], "MRL": best["eer"]}
    lines = ["| dim | " + " | ".join(f"{name} EER %" for name in eers) + " |", "|---:|" + "---:|" * len(eers)]
    for dim in DEMO_DIMS:
        # Beyond the native 192 dims, truncations of the native embedding do not exist.
        cells = [eers[name].get(str(dim)) if (name == "MRL" or dim <= 192) else None for name in eers]
        lines.append(f"| {dim} | " + " | ".join(f"{100 * v:.2f}" if v is not None else "-" for v in cells) + " |")
    lines.append(f"\nnative 192-D embedding of the backbone: {100 * naive_report['eer']['native']:.2f}% EER")
    lines.append(
        f"MRL = best.pt, the validation with the lowest mean EER: step {best['step']} "
        f"(step 0 is the untrained PCA head)"
    )
    return "\n".join(lines)


def run_demo(
    output: str | Path = "runs/demo",
    speakers: int = 40,
    utterances: int = 20,
    seed: int = 0,
    classifier_steps: int = 150,
    mrl_steps: int = 1500,
) -> str:
    started = time.perf_counter()
    root = Path(output)
    print(f"[1/4] synthetic corpus ({speakers} speakers x {utterances} utterances) and shards under {root}")
    shards = prepare_demo_shards(root, speakers, utterances, seed)
    print(f"[2/4] training a tiny ReDimNet backbone for {classifier_steps} steps (classifier mode)")
    backbone_run = root / "classifier"
    train(config_from_dict(demo_config(backbone_run, shards, "classifier", classifier_steps, "tiny")))
    print(f"[3/4] training the MRL head on the frozen backbone for {mrl_steps} steps")
    mrl_run = root / "mrl"
    train(config_from_dict(demo_config(mrl_run, shards, "mrl", mrl_steps, str(backbone_run / "best.pt"))))
    print("[4/4] EER on the held-out speakers' trials")
    table = comparison_table(shards, backbone_run / "best.pt", mrl_run)
    print("\n" + table + "\n")
    print(f"done in {time.perf_counter() - started:.0f} s; run folders: {backbone_run} and {mrl_run}")
    return table
