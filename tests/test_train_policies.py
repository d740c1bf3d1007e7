"""What the trainer does on the paths users launch: unfreezing once, the train/eval policy of
BatchNorm, resuming at an epoch boundary, fp32 AAM logits under bf16, the margin warm-up,
DeepSpeed's config, collective timeouts, the frozen trunk's validation cache, wandb resume."""

from __future__ import annotations

import sys
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import DeepSpeedPlugin

from mrl_dist.config import ConfigError, config_from_dict, load_config
from mrl_dist.data.manifest import read_manifest
from mrl_dist.data.pipeline import make_eval_loader
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.eval.extract import evaluate_model
from mrl_dist.losses import MatryoshkaAAMLoss, aam_logits
from mrl_dist.models import ReDimNetMRL, build_preset, save_official_checkpoint
from mrl_dist.train import ds_config
from mrl_dist.train.loop import Trainer
from mrl_dist.train.modes import trunk_batchnorms
from mrl_dist.train.schedule import margin_at
from mrl_dist.train.tracking import Tracker

from train_configs import REPO, read_metrics, tiny_config


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    return prepare_demo_shards(
        tmp_path_factory.mktemp("policy-demo"), speakers=10, utterances=6, seed=4, shard_size_mb=1
    )


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> Path:
    """An official-format tiny backbone, eval mode as `load_pretrained` returns it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pretrained") / "tiny-pretrained.pt"
    save_official_checkpoint(build_preset("tiny").eval(), path)
    return path


def _mrl(pretrained_file: Path, extra: dict | None = None, **training) -> dict:
    """Sections of an mrl run on the pretrained file (no step-0 validation); `extra` merges in."""
    sections = {
        "model": {"backbone": str(pretrained_file), "head_init": "pretrained"},
        "training": {"mode": "mrl", **training},
        "validation": {"at_start": False},
    }
    for name, values in (extra or {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    return sections


# ---------------------------------------------------------------------------- unfreezing once


@pytest.mark.slow
def test_unfreezing_under_bf16_happens_once_and_keeps_one_forward_wrapper(demo_shards, pretrained_file, tmp_path):
    config = tiny_config(
        tmp_path / "run",
        demo_shards,
        **_mrl(
            pretrained_file,
            {"validation": {"every_steps": 100}, "checkpoint": {"every_steps": 100}},
            freeze_backbone=True,
            unfreeze_after_steps=1,
            max_steps=5,
            mixed_precision="bf16",
        ),
    )
    trainer = Trainer(config_from_dict(config))
    raw = trainer.accelerator.unwrap_model(trainer.module)
    forward_before = raw.forward
    head_weight = raw.model.head.linear.weight
    assert trainer.fit()["step"] == 5
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("backbone unfrozen") == 1 and "step 1: backbone unfrozen" in log
    assert raw.forward is forward_before  # no autocast wrapper added around the first one
    assert len(trainer.accelerator._models) == 1
    # The head's AdamW moments carried on across the unfreeze: 5 updates, not 4.
    assert trainer.raw_optimizer.state[head_weight]["step"] == 5
    assert not raw.model.trunk_frozen and raw.model.frozen_parts == ["native"]


# ---------------------------------------------------------------------------- BatchNorm policy


def _bn_snapshot(layers):
    return [(layer.training, layer.running_mean.clone()) for layer in layers]


def _one_step(trainer: Trainer) -> None:
    trainer.training_step(trainer.module, trainer._batches(), trainer._agree)


@pytest.mark.parametrize(
    "case",
    [
        "mrl-frozen-pretrained",
        "mrl-unfrozen-pretrained",
        "mrl-unfrozen-pretrained-freeze-bn-stats",
        "classifier-preset",
        "classifier-pretrained-freeze-bn-stats",
        "distill-unfrozen-pretrained",
        "distill-frozen-pretrained",
    ],
)
def test_batchnorm_training_flags_and_statistics_follow_the_policy(case, demo_shards, pretrained_file, tmp_path):
    freeze_stats = case.endswith("freeze-bn-stats")
    frozen = case.endswith("-frozen-pretrained")
    if case.startswith(("mrl", "distill")):
        # The linear head has a BatchNorm of its own (the rotation head's statistics are fixed by design).
        extra = {"model": {"head_type": "linear"}}
        if case.startswith("distill"):
            extra["distill"] = {"teachers": [{"source": str(pretrained_file), "dims": [32, 64, 192]}]}
        sections = _mrl(pretrained_file, extra, freeze_backbone=frozen, freeze_bn_stats=freeze_stats)
        sections["training"]["mode"] = "distill" if case.startswith("distill") else "mrl"
    else:
        backbone = str(pretrained_file) if "pretrained" in case else "tiny"
        sections = {"model": {"backbone": backbone}, "training": {"freeze_bn_stats": freeze_stats}}
    trainer = Trainer(config_from_dict(tiny_config(tmp_path / "run", demo_shards, **sections)))
    model = trainer.accelerator.unwrap_model(trainer.module).model
    trunk = trunk_batchnorms(model)
    head = [model.head.bn] if hasattr(model, "head") else [model.bn]
    trunk_before, head_before = _bn_snapshot(trunk), _bn_snapshot(head)
    _one_step(trainer)
    trunk_trains = not frozen and not freeze_stats
    for (training, mean), layer in zip(trunk_before, trunk):
        assert training is trunk_trains and layer.training is trunk_trains
        assert torch.equal(mean, layer.running_mean) is not trunk_trains  # statistics move iff in train mode
    for (training, mean), layer in zip(head_before, head):
        assert training and layer.training and not torch.equal(mean, layer.running_mean)
    if freeze_stats:  # fixed statistics, but the trunk's affine parameters still train
        assert all(layer.weight.requires_grad for layer in trunk)


def test_validation_runs_in_eval_mode_and_training_resumes_in_train_mode(demo_shards, pretrained_file, tmp_path):
    trainer = Trainer(
        config_from_dict(tiny_config(tmp_path / "run", demo_shards, **_mrl(pretrained_file, freeze_backbone=False)))
    )
    model = trainer.accelerator.unwrap_model(trainer.module).model
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    trainer.validate()
    _one_step(trainer)
    hook.remove()
    assert seen[0] is False and seen[-1] is True


# ---------------------------------------------------------------------------- resume at an epoch boundary


def _record_positions(monkeypatch) -> list[tuple[int, int, int]]:
    positions: list[tuple[int, int, int]] = []
    original = Tracker.step

    def step(self, step, crops_per_step, values):
        state = self._trainer_state
        positions.append((state["step"], state["epoch"], state["batches_into_epoch"]))
        return original(self, step, crops_per_step, values)

    monkeypatch.setattr(Tracker, "step", step)
    return positions


def _trainer(config: dict, resume: str | None = None) -> Trainer:
    trainer = Trainer(config_from_dict(config), resume=resume)
    trainer.tracker._trainer_state = trainer.state
    return trainer


def test_resuming_at_an_epoch_boundary_continues_the_same_epoch_sequence(demo_shards, tmp_path, monkeypatch):
    positions = _record_positions(monkeypatch)
    sections = {
        "training": {"max_steps": 6, "steps_per_epoch": 2},
        "validation": {"every_steps": 100},
        "checkpoint": {"every_steps": 2, "keep_last": 3},
    }
    _trainer(tiny_config(tmp_path / "straight", demo_shards, **sections)).fit()
    straight = list(positions)
    positions.clear()
    stopped = {**sections, "training": {"max_steps": 2, "steps_per_epoch": 2}}
    _trainer(tiny_config(tmp_path / "resumed", demo_shards, **stopped)).fit()
    _trainer(tiny_config(tmp_path / "resumed", demo_shards, **sections), resume="latest").fit()
    assert positions == straight == [(1, 0, 1), (2, 0, 2), (3, 1, 1), (4, 1, 2), (5, 2, 1), (6, 2, 2)]


# ---------------------------------------------------------------------------- AAM and margin


def test_aam_logits_under_bf16_autocast_are_float32_and_equal_the_fp32_computation():
    torch.manual_seed(0)
    embeddings, weights = torch.randn(16, 64), torch.randn(10, 64)
    labels = torch.randint(0, 10, (16,))
    reference, _ = aam_logits(embeddings, weights, labels, margin=0.2, scale=30.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cosine = aam_logits(embeddings.bfloat16(), weights, labels, margin=0.2, scale=30.0)
        loss, _ = MatryoshkaAAMLoss([32, 64], 10)(embeddings, labels)
    assert logits.dtype == cosine.dtype == loss.dtype == torch.float32
    expected, _ = aam_logits(embeddings.bfloat16().float(), weights, labels, margin=0.2, scale=30.0)
    assert torch.equal(logits, expected)
    assert torch.allclose(logits, reference, atol=0.5)  # only the bf16 rounding of the input differs


def test_margin_warms_up_linearly_from_its_start_step_and_is_constant_without_warmup():
    loss = config_from_dict({"loss": {"margin": 0.2, "margin_warmup_start": 10, "margin_warmup_steps": 4}}).loss
    assert [round(margin_at(step, loss), 6) for step in (0, 9, 10, 11, 12, 13, 100)] == [
        0.0,
        0.0,
        0.05,
        0.1,
        0.15,
        0.2,
        0.2,
    ]
    assert margin_at(0, config_from_dict({}).loss) == 0.2


def test_the_trainer_applies_the_margin_schedule_each_step(demo_shards, tmp_path):
    config = tiny_config(tmp_path / "run", demo_shards, loss={"margin": 0.2, "margin_warmup_steps": 4})
    trainer = Trainer(config_from_dict(config))
    trainer.fit()
    assert trainer.accelerator.unwrap_model(trainer.module).loss.margin == pytest.approx(0.2)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 1 " in log and "margin=0.05" in log and "margin=0.2" in log


# ---------------------------------------------------------------------------- DeepSpeed


def _shipped_deepspeed_plugin() -> DeepSpeedPlugin:
    """The plugin `accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml` builds."""
    launcher = yaml.safe_load((REPO / "configs/accelerate/deepspeed-zero2.yaml").read_text())
    return DeepSpeedPlugin(**launcher["deepspeed_config"])


@pytest.mark.parametrize("config", ["a100", "h100", "rtx4090-24gb"])
def test_deepspeed_auto_values_are_filled_from_the_run_config(config):
    cfg = load_config(REPO / "configs" / f"{config}.yaml", ["training.grad_accum=2"])
    filled = ds_config.fill_deepspeed_config(_shipped_deepspeed_plugin().deepspeed_config, cfg, world_size=8)
    assert filled["train_micro_batch_size_per_gpu"] == cfg.training.batch_size
    assert filled["gradient_accumulation_steps"] == 2
    assert filled["gradient_clipping"] == cfg.training.grad_clip
    assert filled["train_batch_size"] == cfg.training.batch_size * 2 * 8
    assert "auto" not in {filled[k] for k in ("train_batch_size", "train_micro_batch_size_per_gpu")}


def test_a_deepspeed_value_that_contradicts_the_run_config_names_both():
    cfg = load_config(REPO / "configs" / "a100.yaml", ["training.grad_clip=1.0"])
    with pytest.raises(ConfigError, match=r"training.grad_clip: is 1.0 but .* gradient_clipping: 5.0"):
        ds_config.fill_deepspeed_config({"gradient_clipping": 5.0}, cfg, world_size=1)


def test_unfreezing_mid_run_is_refused_under_deepspeed_naming_the_key():
    cfg = load_config(REPO / "configs" / "a100.yaml", ["data.features=null", "training.unfreeze_after_steps=3000"])
    with pytest.raises(ConfigError, match="training.unfreeze_after_steps.*DeepSpeed"):
        ds_config.check_deepspeed_supported(cfg)
    ds_config.check_deepspeed_supported(load_config(REPO / "configs" / "a100.yaml"))


# ---------------------------------------------------------------------------- collectives


def _collective_worker(rank: int, port: int, results) -> None:
    import os

    import torch.distributed as dist

    from mrl_dist.train.collectives import CollectiveError, Collectives

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=2))
    collectives = Collectives(
        rank, 2, torch.device("cpu"), step_timeout=timedelta(seconds=2), main_wait_timeout=timedelta(seconds=30)
    )
    head = torch.full((3,), float(rank + 1))
    if rank == 0:
        time.sleep(3)  # rank 0 "fits the PCA head" longer than the step timeout
    collectives.broadcast_from_main([head], "receiving the PCA head from rank 0")
    results[f"head{rank}"] = head.tolist()
    if rank == 1:
        time.sleep(5)  # hung past the step timeout
        return
    try:
        collectives.sum(torch.ones(2), "step 7: all-reduce of the skip/stop decision")
        results["error"] = None
    except CollectiveError as err:
        results["error"] = str(err)


@pytest.mark.slow
def test_a_hung_rank_fails_the_step_collective_quickly_while_waits_for_rank_0_are_long():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        start = time.time()
        mp.spawn(_collective_worker, args=(29631, results), nprocs=2)
        results = dict(results)
    assert results["head0"] == results["head1"] == [1.0, 1.0, 1.0]  # waited 3 s past the 2 s step limit
    assert results["error"].startswith(
        "rank 0 of 2: step 7: all-reduce of the skip/stop decision failed or "
        "timed out (limit 2 s, training.collective_timeout_minutes)"
    )
    assert time.time() - start < 30


def test_collective_timeouts_come_from_the_config(demo_shards, tmp_path):
    config = tiny_config(
        tmp_path / "run", demo_shards, training={"collective_timeout_minutes": 3.5}, validation={"timeout_minutes": 90}
    )
    trainer = Trainer(config_from_dict(config))
    assert trainer.collectives.step_timeout == timedelta(minutes=3.5)
    assert trainer.collectives.main_wait_timeout == timedelta(minutes=90)


# ---------------------------------------------------------------------------- frozen-trunk validation


def test_a_frozen_trunk_is_run_once_over_the_validation_set(demo_shards, pretrained_file, tmp_path):
    config = tiny_config(tmp_path / "run", demo_shards, **_mrl(pretrained_file, freeze_backbone=True))
    trainer = Trainer(config_from_dict(config))
    model = trainer.accelerator.unwrap_model(trainer.module).model
    trunk_calls = []
    model.backbone.register_forward_hook(lambda *args: trunk_calls.append(1))
    first = trainer.validate()
    after_first = len(trunk_calls)
    second = trainer.validate()
    assert after_first > 0 and len(trunk_calls) == after_first  # the second ran the head alone
    assert first["eer"] == second["eer"]


def test_validation_from_cached_pooled_features_equals_a_full_pass(demo_shards, pretrained_file, tmp_path):
    config = tiny_config(
        tmp_path / "run",
        demo_shards,
        **_mrl(
            pretrained_file, {"validation": {"every_steps": 1, "at_start": True}}, freeze_backbone=True, max_steps=2
        ),
    )
    trainer = Trainer(config_from_dict(config))
    trainer.fit()
    cached = read_metrics(tmp_path / "run")
    model = trainer.accelerator.unwrap_model(trainer.module).model
    val = config_from_dict(config).data.val
    loader = make_eval_loader(val, None, max_seconds=2.0, batch_size=8, num_workers=0)
    report, _, _ = evaluate_model(model, loader, read_manifest(val).trials_path)  # a full pass
    assert report["eer"] == cached[-1]["eer"]


# ---------------------------------------------------------------------------- resume continuity


def test_wandb_continues_the_same_run_on_resume(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        init=lambda **kwargs: (
            calls.append(kwargs) or types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)
        )
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = config_from_dict({"logging": {"wandb": True, "tensorboard": False}})
    for _ in range(2):
        Tracker(cfg, tmp_path, is_main=True, start_step=0).close()
    assert calls[0]["id"] == calls[1]["id"] and calls[0]["resume"] == "allow"
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == calls[0]["id"]


def _break_every_third_flac(shards: Path, target: Path) -> Path:
    """A copy of the demo shards in which every third training FLAC is not audio."""
    import io
    import shutil
    import tarfile

    shutil.copytree(shards, target)
    for shard in sorted(target.glob("train-*.tar")):
        data = shard.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as source, tarfile.open(shard, "w") as sink:
            for index, member in enumerate(source.getmembers()):
                payload = source.extractfile(member).read()
                if member.name.endswith(".flac") and index % 6 == 0:
                    payload = b"not flac"
                member.size = len(payload)
                sink.addfile(member, io.BytesIO(payload))
    return target


def test_skipped_sample_counts_add_up_across_a_resume_and_its_partial_epoch(demo_shards, tmp_path):
    shards = _break_every_third_flac(demo_shards, tmp_path / "shards")
    sections = {"training": {"max_steps": 2, "steps_per_epoch": 3}, "validation": {"every_steps": 100}}
    first = Trainer(config_from_dict(tiny_config(tmp_path / "run", shards, **sections)))
    first.fit()
    before = first.state["skipped_samples"]
    assert before == first.train_loader.skipped > 0
    sections["training"]["max_steps"] = 4
    second = Trainer(config_from_dict(tiny_config(tmp_path / "run", shards, **sections)), resume="latest")
    second.fit()
    assert second.partial_epoch_loader is not None  # the resumed epoch's rest came from its own loader
    this_run = second.train_loader.skipped + second.partial_epoch_loader.skipped
    assert second.state["skipped_samples"] == before + this_run
    assert (tmp_path / "run" / "checkpoints" / "step-4" / "trainer_state.json").read_text().count(
        f'"skipped_samples": {before + this_run}'
    ) == 1


def test_library_warnings_reach_the_run_folder_s_log(tmp_path):
    import logging

    cfg = config_from_dict({"logging": {"tensorboard": False}})
    tracker = Tracker(cfg, tmp_path, is_main=True, start_step=0)
    logging.getLogger("mrl_dist.data.manifest").warning("skipped 3 samples so far")
    tracker.close()
    logging.getLogger("mrl_dist.data.manifest").warning("after the run: not in its log")
    log = (tmp_path / "train.log").read_text()
    assert "WARNING mrl_dist.data.manifest: skipped 3 samples so far" in log and "after the run" not in log


# ---------------------------------------------------------------------------- head anchor


def test_the_head_anchor_is_zero_at_the_start_and_the_relative_squared_drift_after(
    demo_shards, pretrained_file, tmp_path
):
    sections = _mrl(pretrained_file, {"loss": {"head_anchor": 2.0}}, freeze_backbone=True)
    trainer = Trainer(config_from_dict(tiny_config(tmp_path / "run", demo_shards, **sections)))
    module = trainer.accelerator.unwrap_model(trainer.module)
    assert float(module.anchor_penalty().detach()) == 0.0
    weight = module.mrl_model.head.linear.weight
    start = {name: p.detach().clone() for name, p in module.mrl_model.head.named_parameters() if p.requires_grad}
    with torch.no_grad():
        weight.add_(0.01)
    size = sum(float((p**2).sum()) for p in start.values())
    expected = 2.0 * 0.01**2 * weight.numel() / size
    assert float(module.anchor_penalty().detach()) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_an_anchored_run_logs_the_pull_and_resumes_towards_the_same_start(demo_shards, pretrained_file, tmp_path):
    sections = _mrl(pretrained_file, {"loss": {"head_anchor": 1.0}}, freeze_backbone=True)
    run_dir = tmp_path / "anchored"
    Trainer(
        config_from_dict(
            tiny_config(run_dir, demo_shards, **{**sections, "training": {**sections["training"], "max_steps": 2}})
        )
    ).fit()
    assert "head_anchor=" in (run_dir / "train.log").read_text()
    resumed = Trainer(config_from_dict(tiny_config(run_dir, demo_shards, **sections)), resume="latest")
    module = resumed.accelerator.unwrap_model(resumed.module)
    saved = torch.load(run_dir / "checkpoints" / "step-2" / "pytorch_model.bin", weights_only=True)
    anchors = {k: v for k, v in saved.items() if "head_anchor_" in k}
    assert anchors and all(torch.equal(module.get_buffer(k), v) for k, v in anchors.items())
    assert float(module.anchor_penalty().detach()) > 0  # the resumed head is the trained one, W0 the start


def test_a_head_anchor_without_a_matryoshka_head_is_refused():
    with pytest.raises(ConfigError, match="loss.head_anchor: pulls a Matryoshka head"):
        config_from_dict({"training": {"mode": "classifier"}, "loss": {"head_anchor": 1.0}})


def test_a_classifier_from_a_pretrained_backbone_starts_at_the_speakers_mean_embeddings(
    demo_shards, pretrained_file, tmp_path
):
    sections = {
        "model": {"backbone": str(pretrained_file), "head_init": "pretrained"},
        "training": {"mode": "classifier", "max_steps": 1},
        "validation": {"at_start": False},
        "loss": {"class_init": "mean", "class_init_batches": 2},
    }
    trainer = Trainer(config_from_dict(tiny_config(tmp_path / "lmft", demo_shards, **sections)))
    assert any(line.startswith("class weights: speaker means of 16 crops") for line in trainer.tracker_lines)


# ---------------------------------------------------------------------------- head from a run


@pytest.mark.slow
def test_a_run_starts_its_head_from_an_earlier_run_on_the_same_trunk_and_refuses_another(
    demo_shards, pretrained_file, tmp_path
):
    first = tmp_path / "head-only"
    sections = _mrl(pretrained_file, {"model": {"head_init": "pca", "pca_batches": 1}}, freeze_backbone=True)
    Trainer(
        config_from_dict(
            tiny_config(first, demo_shards, **{**sections, "training": {**sections["training"], "max_steps": 1}})
        )
    ).fit()
    earlier = ReDimNetMRL.from_checkpoint(first / "last.pt")
    sections["model"]["head_from"] = str(first / "last.pt")
    trainer = Trainer(config_from_dict(tiny_config(tmp_path / "next", demo_shards, **sections)))
    head = trainer.accelerator.unwrap_model(trainer.module).mrl_model.head
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), earlier.head.state_dict().values()))
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_official_checkpoint(build_preset("tiny").eval(), other)
    sections["model"]["backbone"] = str(other)
    with pytest.raises(ValueError, match="was trained on another trunk than model.backbone"):
        Trainer(config_from_dict(tiny_config(tmp_path / "wrong", demo_shards, **sections)))
