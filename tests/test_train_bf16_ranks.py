"""The configurations users launch, as they launch them: 2 processes (gloo ranks standing in for
GPUs) under bf16 autocast, for every mode and start, then a resume.

Slow (about 20 s per case on 2 cores): `pytest -m "not slow"` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import build_preset, save_official_checkpoint
from mrl_dist.train import checkpointing as ckpt

from train_configs import accelerate_two_cpu_processes, launch, read_metrics, tiny_config, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16-ranks")
    shards = prepare_demo_shards(root, speakers=10, utterances=6, seed=6, shard_size_mb=1)
    torch.manual_seed(0)
    for name in ("backbone", "teacher"):
        save_official_checkpoint(build_preset("tiny").eval(), root / f"{name}.pt")
    return root, shards


def case_sections(case: str, root: Path) -> dict:
    pretrained = {"backbone": str(root / "backbone.pt"), "head_init": "pca", "pca_batches": 2}
    if case == "classifier":
        return {"training": {"mode": "classifier"}}
    if case == "mrl-frozen":
        return {"model": pretrained, "training": {"mode": "mrl", "freeze_backbone": True}}
    if case == "mrl-unfreeze-after-steps":
        return {"model": pretrained, "training": {"mode": "mrl", "freeze_backbone": True, "unfreeze_after_steps": 1}}
    if case == "mrl-unfrozen-pretrained":
        return {"model": pretrained, "training": {"mode": "mrl", "freeze_backbone": False}}
    if case == "distill":
        return {
            "model": pretrained,
            "training": {"mode": "distill", "freeze_backbone": False},
            "distill": {
                "teachers": [{"source": str(root / "teacher.pt"), "dims": [32, 64, 192]}],
                "losses": {"embedding": 1.0, "similarity": 1.0, "aam": 0.5},
            },
        }
    raise ValueError(case)


CASES = ["classifier", "mrl-frozen", "mrl-unfreeze-after-steps", "mrl-unfrozen-pretrained", "distill"]


@pytest.mark.parametrize("case", CASES)
def test_two_bf16_ranks_train_validate_checkpoint_and_resume(case, setup, tmp_path):
    root, shards = setup
    run_dir = tmp_path / case
    sections = case_sections(case, root)
    sections["training"] = {**sections["training"], "mixed_precision": "bf16"}
    config = write_config(tmp_path / "run.yaml", tiny_config(run_dir, shards, **sections))
    port = 29640 + 2 * CASES.index(case)

    first = launch(accelerate_two_cpu_processes(config, port, "bf16"), tmp_path)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    log = (run_dir / "train.log").read_text()
    assert "ranks=2" in log and "precision=bf16" in log
    assert [r["step"] for r in read_metrics(run_dir) if r["step"] > 0] == [2, 4]
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[-1].name == "step-4"
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()

    resumed = launch(
        accelerate_two_cpu_processes(config, port + 1, "bf16", ["--resume", "latest", "--set", "training.max_steps=6"]),
        tmp_path,
    )
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    log = (run_dir / "train.log").read_text()
    assert "start_step=4" in log
    assert read_metrics(run_dir)[-1]["step"] == 6
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[-1].name == "step-6"
    # Unfrozen once in the first run; the resumed run starts unfrozen and says nothing more.
    assert log.count("backbone unfrozen") == (1 if case == "mrl-unfreeze-after-steps" else 0)
