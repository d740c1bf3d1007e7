"""Distillation runs (`training.mode: distill`): loss falls, EER recorded, labels optional,
teachers never saved, and the teacher-embedding cache."""

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from mrl_dist.config import config_from_dict
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import ReDimNetMRL, build_preset, save_official_checkpoint
from mrl_dist.train.loop import train

from train_configs import accelerate_two_cpu_processes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo shards, two small official-format teacher files, and label-free copies of the shards."""
    root = tmp_path_factory.mktemp("distill")
    prepare_demo_shards(root, speakers=10, utterances=6, seed=5, shard_size_mb=1)
    torch.manual_seed(0)
    for name in ("small", "large"):
        save_official_checkpoint(build_preset("tiny").eval(), root / f"teacher-{name}.pt")
    unlabelled = []
    for shard in sorted((root / "shards").glob("train-*.tar")):
        target = root / "unlabelled" / shard.name
        target.parent.mkdir(exist_ok=True)
        with tarfile.open(shard) as source, tarfile.open(target, "w") as sink:
            for member in source.getmembers():
                data = source.extractfile(member).read()
                if member.name.endswith(".json"):
                    meta = json.loads(data)
                    meta.pop("label")
                    data = json.dumps(meta).encode()
                member.size = len(data)
                sink.addfile(member, io.BytesIO(data))
        unlabelled.append(target)
    # A brace pattern of shard URLs, as for audio packed by other tools: no manifest, no labels.
    pattern = f"{root / 'unlabelled'}/train-{{000000..{len(unlabelled) - 1:06d}}}.tar"
    return root, pattern


def distill_config(root: Path, run_dir: Path, train=None, aam: float = 0.5, cache: bool = False, steps: int = 12):
    return config_from_dict(
        {
            "run_dir": str(run_dir),
            "model": {"backbone": "tiny", "pretrained": None, "mrl_dims": [32, 64, 192], "head_init": "random"},
            "data": {
                "train": train or str(root / "shards" / "train.manifest.json"),
                "val": str(root / "shards" / "val.manifest.json"),
                "crop_seconds": 1.0,
                "num_workers": 0,
                "shuffle_buffer": 16,
            },
            "training": {
                "mode": "distill",
                "freeze_backbone": False,
                "batch_size": 8,
                "max_steps": steps,
                "steps_per_epoch": 4,
                "mixed_precision": "no",
                "schedule": {"warmup_steps": 1, "decay": "none"},
                "optimizer": {"lr": 0.003},
            },
            "distill": {
                "teachers": [
                    {"source": str(root / "teacher-small.pt"), "dims": [32, 64]},
                    {"source": str(root / "teacher-large.pt"), "dims": [192], "weight": 2.0},
                ],
                "losses": {"embedding": 1.0, "similarity": 1.0, "aam": aam},
                "cache_teacher_embeddings": cache,
            },
            "validation": {"every_steps": steps, "batch_size": 8, "max_seconds": 2.0},
            "checkpoint": {"every_steps": steps, "keep_last": 1},
            "logging": {"every_steps": 4, "tensorboard": False},
        }
    )


def logged(run_dir: Path, name: str) -> list[float]:
    return [
        float(part.split("=")[1])
        for line in (run_dir / "train.log").read_text().splitlines()
        for part in line.split()
        if part.startswith(name + "=")
    ]


def test_distillation_loss_falls_and_per_dim_eer_is_recorded(setup, tmp_path):
    root, _ = setup
    run_dir = tmp_path / "run"
    assert train(distill_config(root, run_dir))["status"] == "finished"
    totals = logged(run_dir, "total")
    assert len(totals) == 3 and totals[-1] < totals[0]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["eer"]) == {"32", "64", "192"}  # a random backbone has no meaningful native layer
    assert "embedding/t1_d192" in (run_dir / "train.log").read_text()


def test_saved_student_holds_no_teacher_or_adapter_weight(setup, tmp_path):
    root, _ = setup
    run_dir = tmp_path / "run"
    train(distill_config(root, run_dir, steps=4))
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run_dir / name, weights_only=True)
        keys = set(payload["state_dict"])
        assert not any(k.startswith(("teacher", "adapters", "loss.")) for k in keys)
        student = ReDimNetMRL(
            payload["model_config"], payload["mrl_config"]["dims"], keep_native=payload["mrl_config"]["keep_native"]
        )
        assert keys == set(ReDimNetMRL.checkpoint_payload(student)["state_dict"])
    training_state = torch.load(next((run_dir / "checkpoints").glob("step-*/pytorch_model.bin")), weights_only=True)
    teacher_size = sum(p.numel() for p in build_preset("tiny").parameters())
    assert not any(k.startswith("teacher") for k in training_state)
    assert sum(v.numel() for k, v in training_state.items() if k.startswith("model.")) < 2 * teacher_size


def test_label_free_shards_train_with_aam_off(setup, tmp_path):
    root, unlabelled = setup
    result = train(distill_config(root, tmp_path / "free", train=unlabelled, aam=0.0, steps=4))
    assert result["status"] == "finished"


def test_label_free_shards_with_aam_on_are_refused_clearly(setup, tmp_path):
    root, unlabelled = setup
    with pytest.raises(ValueError, match="no speaker labels.*distill.losses.aam: 0"):
        train(distill_config(root, tmp_path / "refused", train=unlabelled, aam=0.5, steps=4))


@pytest.mark.slow
def test_teacher_embedding_cache_is_written_beside_the_shards_and_reused(setup, tmp_path):
    root, _ = setup
    train(distill_config(root, tmp_path / "cached", cache=True, steps=8))
    cache_dir = root / "shards" / "teacher-cache"
    files = sorted(p.name for p in cache_dir.glob("*.pt"))
    assert files == ["teacher-large.rank0.pt", "teacher-small.rank0.pt"]
    first = torch.load(cache_dir / files[0], weights_only=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(distill_config(root, tmp_path / "cached-again", cache=True, steps=8))
    again = torch.load(cache_dir / files[0], weights_only=True)
    assert again.keys() == first.keys()


def test_cache_benchmark_runs_a_live_and_a_cached_step():
    from mrl_dist.tools.bench_distill import measure_teacher_cache

    result = measure_teacher_cache(("tiny", "tiny"), "tiny", dims=(32, 64), batch_size=2, crop_seconds=0.5, steps=1)
    assert result.live_crops_per_second > 0 and result.cached_crops_per_second > 0


@pytest.mark.slow
def test_two_cpu_processes_distil_into_an_unfrozen_pretrained_student(setup, tmp_path):
    import os

    import yaml

    root, _ = setup
    run_dir = tmp_path / "ddp"
    config = distill_config(root, run_dir, steps=4)
    from mrl_dist.config import config_to_dict

    raw = config_to_dict(config)
    raw["model"].update(backbone=str(root / "teacher-small.pt"), head_init="pretrained")
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        accelerate_two_cpu_processes(tmp_path / "ddp.yaml", port=29531),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ranks=2" in (run_dir / "train.log").read_text()
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["eer"]) == {"32", "64", "192", "native"}
