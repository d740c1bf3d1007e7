"""ReDimNet2 in the trainer: classifier mode trains one from scratch and writes official-format
files, a ReDimNet2 file is an MRL trunk, and ReDimNet2 teachers distil (2 ranks, bf16: slow)."""

from __future__ import annotations

import pytest
import torch

from mrl_dist.config import config_from_dict
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import ReDimNetMRL, build_preset, load_pretrained, read_checkpoint, save_official_checkpoint
from mrl_dist.models.ensemble import EnsembleRouter
from mrl_dist.models.loading import official_payload
from mrl_dist.models.redimnet2 import ReDimNet2
from mrl_dist.train import train

from train_configs import accelerate_two_cpu_processes, launch, read_metrics, tiny_config, write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("redimnet2-train")
    shards = prepare_demo_shards(root, speakers=10, utterances=6, seed=7, shard_size_mb=1)
    torch.manual_seed(0)
    for name in ("trunk", "teacher-small", "teacher-large"):
        save_official_checkpoint(build_preset("redimnet2-tiny").eval(), root / f"{name}.pt")
    return root, shards


def test_classifier_mode_trains_a_redimnet2_and_writes_official_files(setup, tmp_path):
    root, shards = setup
    run_dir = tmp_path / "classifier"
    cfg = config_from_dict(tiny_config(run_dir, shards, model={"backbone": "redimnet2-tiny"}))
    assert train(cfg)["status"] == "finished"
    best = read_checkpoint(run_dir / "best.pt")
    fresh = official_payload(build_preset("redimnet2-tiny"))
    assert set(best) == {"model_config", "state_dict"}
    assert set(best["state_dict"]) == set(fresh["state_dict"])  # the official keys, nothing else
    model = load_pretrained(run_dir / "last.pt")
    assert isinstance(model, ReDimNet2)
    assert set(read_metrics(run_dir)[-1]["eer"]) == {"native"}


@pytest.mark.slow
def test_a_redimnet2_file_is_a_frozen_mrl_trunk(setup, tmp_path):
    root, shards = setup
    run_dir = tmp_path / "mrl"
    cfg = config_from_dict(
        tiny_config(
            run_dir,
            shards,
            model={"backbone": str(root / "trunk.pt"), "head_init": "pca", "pca_batches": 2},
            training={"mode": "mrl", "freeze_backbone": True},
        )
    )
    assert train(cfg)["status"] == "finished"
    model = ReDimNetMRL.from_checkpoint(run_dir / "best.pt")
    assert type(model.backbone).__name__ == "ReDimNet2Backbone"
    trunk = load_pretrained(root / "trunk.pt")
    for key, value in trunk.backbone.state_dict().items():  # frozen: the trunk did not move
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_redimnet2_teachers_route_an_ensemble(setup):
    root, _ = setup
    from mrl_dist.config import TeacherConfig

    router = EnsembleRouter.from_config(
        [
            TeacherConfig(source=str(root / "teacher-small.pt"), dims=[64]),
            TeacherConfig(source=str(root / "teacher-large.pt"), dims=[128, 192]),
        ]
    )
    with torch.no_grad():
        every = router.forward_all(torch.randn(2, 16000))
    assert {d: e.shape[1] for d, e in every.items()} == {64: 64, 128: 128, 192: 192}


@pytest.mark.slow
@pytest.mark.parametrize("student", ["tiny", "redimnet2-tiny"])
def test_two_bf16_ranks_distil_from_redimnet2_teachers(student, setup, tmp_path):
    root, shards = setup
    run_dir = tmp_path / student
    config = write_config(
        tmp_path / "distill.yaml",
        tiny_config(
            run_dir,
            shards,
            model={"backbone": student},
            training={"mode": "distill", "freeze_backbone": False, "mixed_precision": "bf16"},
            distill={
                "teachers": [
                    {"source": str(root / "teacher-small.pt"), "dims": [32, 64]},
                    {"source": str(root / "teacher-large.pt"), "dims": [192], "weight": 2.0},
                ],
                "losses": {"embedding": 1.0, "similarity": 1.0, "aam": 0.5},
            },
        ),
    )
    port = 29700 + 2 * ["tiny", "redimnet2-tiny"].index(student)
    process = launch(accelerate_two_cpu_processes(config, port, "bf16"), tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    log = (run_dir / "train.log").read_text()
    assert "ranks=2" in log and "precision=bf16" in log and "mode=distill" in log
    assert set(read_metrics(run_dir)[-1]["eer"]) == {"32", "64", "192"}
    assert type(ReDimNetMRL.from_checkpoint(run_dir / "best.pt").backbone).__name__ == (
        "ReDimNet2Backbone" if student.startswith("redimnet2") else "ReDimNetBackbone"
    )
