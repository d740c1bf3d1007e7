"""The training loop's contract: run folder, metrics.jsonl, checkpoints, resume, signals, 2 ranks,
and the one plan of how the Matryoshka head starts.

Runs are tiny (tiny preset, batch 8, 1 s crops, a handful of steps) on a small demo corpus.
"""

import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from mrl_dist.config import config_from_dict, load_config
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import ReDimNetMRL, load_pretrained
from mrl_dist.train import checkpointing as ckpt
from mrl_dist.train.loop import BadStepError, Trainer, train
from mrl_dist.train.modes import HeadPlan, TrainModule, plan_head
from mrl_dist.train.schedule import lr_multiplier

from train_configs import accelerate_two_cpu_processes, launch, read_metrics, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    return prepare_demo_shards(
        tmp_path_factory.mktemp("train-demo"), speakers=12, utterances=6, seed=3, shard_size_mb=1
    )


@pytest.fixture(scope="module")
def classifier_run(demo_shards, tmp_path_factory):
    """A finished 4-step classifier run: its best.pt is an official-format backbone."""
    AcceleratorState._reset_state(reset_partial_state=True)
    run_dir = tmp_path_factory.mktemp("runs") / "classifier"
    result = train(config_from_dict(tiny_config(run_dir, demo_shards)))
    assert result["status"] == "finished"
    return run_dir


def test_run_folder_holds_config_log_metrics_and_checkpoints(classifier_run):
    assert load_config(classifier_run / "config.yaml").training.mode == "classifier"
    records = read_metrics(classifier_run)
    assert [r["step"] for r in records] == [2, 4]
    record = records[-1]
    assert set(record) == {"step", "epoch", "set", "eer", "min_dcf", "threshold"} and record["set"] == "val"
    assert set(record["eer"]) == {"native"} and 0.0 <= record["eer"]["native"] <= 1.0
    assert set(record["min_dcf"]) == {"0.01", "0.05"}
    assert [p.name for p in ckpt.list_checkpoints(classifier_run / "checkpoints")] == ["step-4"]  # keep_last 1
    assert not list((classifier_run / "checkpoints").glob(".*"))  # no temporary folder left
    log = (classifier_run / "train.log").read_text()
    assert "step 4 loss=" in log and "crops_per_s=" in log


def test_classifier_exports_official_format_checkpoints(classifier_run):
    for name in ("best.pt", "last.pt"):
        payload = torch.load(classifier_run / name, weights_only=True)
        assert set(payload) == {"model_config", "state_dict"}
        assert not load_pretrained(classifier_run / name).training


def test_mrl_run_trains_only_the_head_of_a_frozen_backbone(classifier_run, demo_shards, tmp_path):
    config = tiny_config(
        tmp_path / "mrl",
        demo_shards,
        model={"backbone": str(classifier_run / "best.pt"), "head_init": "pca", "pca_batches": 2},
        training={"mode": "mrl", "freeze_backbone": True},
    )
    assert train(config_from_dict(config))["status"] == "finished"
    best = ReDimNetMRL.from_checkpoint(tmp_path / "mrl" / "best.pt")
    assert best.dims == [32, 64, 192]
    backbone = load_pretrained(classifier_run / "best.pt").state_dict()
    trained = best.state_dict()
    assert all(torch.equal(backbone[k], trained[k]) for k in backbone if k.startswith(("backbone.", "pool.")))
    assert set(read_metrics(tmp_path / "mrl")[-1]["eer"]) == {"32", "64", "192", "native"}


def test_resume_continues_at_the_same_step_and_schedule(demo_shards, tmp_path):
    run_dir = tmp_path / "resume"
    train(config_from_dict(tiny_config(run_dir, demo_shards, training={"max_steps": 2})))
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = Trainer(config_from_dict(tiny_config(run_dir, demo_shards)), resume="latest")
    assert trainer.state["step"] == 2
    assert trainer.scheduler.scheduler.last_epoch == 2
    assert trainer.raw_optimizer.state  # AdamW moments came back
    assert trainer.fit()["step"] == 4
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4]


def test_resume_latest_without_checkpoints_starts_fresh(demo_shards, tmp_path):
    trainer = Trainer(config_from_dict(tiny_config(tmp_path / "fresh", demo_shards)), resume="latest")
    assert trainer.state["step"] == 0


def test_repeated_non_finite_losses_stop_the_run(demo_shards, tmp_path, monkeypatch):
    def nan_loss(self, wave, label):
        loss = sum(p.sum() for p in self.loss.parameters()) * float("nan")
        return loss, {"accuracy": {}}

    monkeypatch.setattr(TrainModule, "forward", nan_loss)
    config = tiny_config(tmp_path / "nan", demo_shards, training={"max_bad_steps": 2, "max_steps": 10})
    with pytest.raises(BadStepError, match="2 steps in a row"):
        train(config_from_dict(config))


def _plan(resuming=False, is_main=True, **model) -> HeadPlan:
    return plan_head(config_from_dict({"model": model, "training": {"mode": "mrl"}}), resuming, is_main)


def test_the_head_plan_fits_pca_on_rank_0_alone_and_not_when_resuming():
    backbone = {"backbone": "b0", "head_init": "pca", "head_type": "rotation"}  # pretrained weights (not loaded)
    main, other, resumed = _plan(**backbone), _plan(is_main=False, **backbone), _plan(resuming=True, **backbone)
    assert (main.head_init, main.head_type, main.keep_native) == ("pca", "rotation", True)
    assert main.fitted_on_main and main.needs_pooled_features and not main.weights_arrive_later
    assert other.fitted_on_main and not other.needs_pooled_features and other.weights_arrive_later
    assert not resumed.fitted_on_main and not resumed.needs_pooled_features and resumed.weights_arrive_later


def test_the_head_plan_of_a_random_backbone_is_a_random_linear_head_without_native():
    plan = _plan(backbone="tiny", pretrained=None, head_init="pca", head_type="rotation")
    assert plan == HeadPlan("random", "linear", keep_native=False, fitted_on_main=False, weights_arrive_later=False)


def test_lr_warms_up_then_decays_to_the_floor():
    schedule = config_from_dict(
        {"training": {"schedule": {"warmup_steps": 10, "decay": "cosine", "min_lr_ratio": 0.1}}}
    ).training.schedule
    values = [lr_multiplier(step, schedule, max_steps=110) for step in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(values[10:], values[11:]))
    assert values[110] == pytest.approx(0.1)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_zero_and_resumes(demo_shards, tmp_path):
    run_dir = tmp_path / "preempted"
    config = write_config(
        tmp_path / "run.yaml",
        tiny_config(
            run_dir,
            demo_shards,
            training={"max_steps": 1000},
            validation={"every_steps": 1000},
            checkpoint={"every_steps": 1000, "keep_last": 2},
        ),
    )
    process = launch([sys.executable, str(REPO / "launch" / "train.py"), "--config", str(config)], tmp_path)
    log = run_dir / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "step 2 loss=" in log.read_text()):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1 and (run_dir / "last.pt").is_file()
    stopped_at = ckpt.read_trainer_state(saved[0])["step"]
    assert stopped_at >= 2 and "stop requested by signal" in log.read_text()

    resumed = launch(
        [
            sys.executable,
            str(REPO / "launch" / "train.py"),
            "--config",
            str(config),
            "--resume",
            "latest",
            "--set",
            f"training.max_steps={stopped_at + 2}",
        ],
        tmp_path,
    )
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"start_step={stopped_at}" in log.read_text()
    assert read_metrics(run_dir)[-1]["step"] == stopped_at + 2


def test_a_signal_after_the_step_s_all_reduce_stops_at_the_next_step_not_this_one(demo_shards, tmp_path):
    """Every rank stops at the step whose all-reduce carried the signal. One that arrives on a
    rank just after that all-reduce must wait for the next: had that rank stopped at once, the
    others would have gone on into the next step's collectives and the job hung (a flake of the
    SLURM requeue test, run with 2 nodes)."""
    config = tiny_config(
        tmp_path / "run",
        demo_shards,
        training={"max_steps": 6},
        validation={"every_steps": 1000},
        checkpoint={"every_steps": 1000},
    )
    trainer = Trainer(config_from_dict(config))
    agree = trainer._agree

    def agree_then_signal(finite):
        decision = agree(finite)
        if trainer.state["step"] == 2:  # inside step 3, just after its all-reduce
            signal.raise_signal(signal.SIGUSR1)
        return decision

    trainer._agree = agree_then_signal
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        result = trainer.fit()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result["status"] == "stopped" and result["step"] == 4
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 4: stop requested by signal" in log and "step 3: stop" not in log


@pytest.mark.slow
def test_two_cpu_processes_with_gloo_train_validate_and_checkpoint(demo_shards, tmp_path):
    run_dir = tmp_path / "ddp"
    config = write_config(tmp_path / "ddp.yaml", tiny_config(run_dir, demo_shards))
    process = launch(accelerate_two_cpu_processes(config, port=29517), tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "ranks=2" in (run_dir / "train.log").read_text()
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4]  # rank 0 alone writes
    final = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    assert {p.name for p in final.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert load_pretrained(run_dir / "best.pt").config.F == 32


@pytest.mark.slow
def test_unfreeze_after_steps_trains_the_backbone_from_that_step(classifier_run, demo_shards, tmp_path):
    run_dir = tmp_path / "unfreeze"
    config = tiny_config(
        run_dir,
        demo_shards,
        model={
            "backbone": str(classifier_run / "best.pt"),
            "head_init": "pretrained",
            "head_type": "linear",
        },  # its parameters compare one to one with last.pt's
        training={"mode": "mrl", "freeze_backbone": True, "unfreeze_after_steps": 2},
        validation={"at_start": False},
    )
    trainer = Trainer(config_from_dict(config))
    before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.module).model.state_dict().items()}
    assert trainer.fit()["step"] == 4
    after = ReDimNetMRL.from_checkpoint(run_dir / "last.pt").state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"backbone", "head"} <= changed and "native" not in changed
    assert "step 2: backbone unfrozen" in (run_dir / "train.log").read_text()
