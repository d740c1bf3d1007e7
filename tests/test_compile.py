"""training.compile: the compiled training step computes what the eager one does.

Inductor generates C++ on the CPU: its first step takes tens of seconds to minutes here, so the
equality tests are slow. The recompile checks trace with dynamo alone (`backend="eager"`). The
two longest (the whole classifier step compiled, about 150 s; two compiled DDP ranks) run only
with MRL_DIST_LONG_COMPILE_TESTS=1: they would take the suite past its time budget on 2 cores.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch._dynamo
from accelerate.state import AcceleratorState

from mrl_dist.config import ConfigError, config_from_dict
from mrl_dist.demo.run import prepare_demo_shards
from mrl_dist.models import build_preset, save_official_checkpoint
from mrl_dist.tools.bench import bench_config, build_training_step, synthetic_batch
from mrl_dist.train.loop import train
from mrl_dist.train.step import compile_forward

from train_configs import accelerate_two_cpu_processes, launch, tiny_config, write_config

BATCH, CROP_SECONDS, CLASSES = 4, 0.5, 10
LABELS = torch.tensor([1, 2, 3, 1])
long_compile = pytest.mark.skipif(
    not os.environ.get("MRL_DIST_LONG_COMPILE_TESTS"),
    reason="compiles for minutes on a CPU; set MRL_DIST_LONG_COMPILE_TESTS=1 to run it",
)


def built_module(mode: str, compiled: bool, from_features: bool = False, sampled_classes: int | None = None):
    """The trainer's TrainModule of a tiny bench case, the same weights whether compiled or not."""
    torch.manual_seed(0)
    cfg = bench_config("tiny", mode, BATCH, CROP_SECONDS, compile=compiled, sampled_classes=sampled_classes)
    return build_training_step(cfg, CLASSES, from_features=from_features).module


def pooled_features(module) -> torch.Tensor:
    return torch.randn(BATCH, module.mrl_model.head.bn.num_features, generator=torch.Generator().manual_seed(1))


def loss_and_gradients(module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss, _ = module(inputs, LABELS)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def assert_same_step(eager, compiled, inputs: torch.Tensor) -> None:
    eager_loss, eager_grads = loss_and_gradients(eager, inputs)
    compiled_loss, compiled_grads = loss_and_gradients(compiled, inputs)
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6), (compiled_loss, eager_loss)
    assert eager_grads and set(compiled_grads) == set(eager_grads)
    eager_all = torch.cat([grad.flatten() for grad in eager_grads.values()])
    compiled_all = torch.cat([compiled_grads[name].flatten() for name in eager_grads])
    assert (compiled_all - eager_all).norm() <= 1e-4 * eager_all.norm()
    # Per tensor, against the largest gradient: a bias right before a normalisation has a true
    # gradient of zero, and both steps give it rounding noise of ~1e-6 that differs.
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, rtol=1e-3, atol=1e-5 * eager_all.abs().max()), name


@pytest.mark.slow
@long_compile
def test_compiled_classifier_step_has_the_eager_loss_and_gradients():
    # Trunk (front-end, 2-D and 1-D stages, pooling), embedding layer and AAM loss, all trained.
    wave = synthetic_batch(BATCH, CROP_SECONDS, CLASSES)["wave"]
    assert_same_step(built_module("classifier", False), built_module("classifier", True), wave)


@pytest.mark.slow
def test_compiled_matryoshka_head_step_has_the_eager_loss_and_gradients():
    eager = built_module("mrl-frozen", False, from_features=True)
    compiled = built_module("mrl-frozen", True, from_features=True)
    assert_same_step(eager, compiled, pooled_features(eager))


def traced_head(sampled_classes: int | None = None):
    """A head + Matryoshka AAM module traced by dynamo alone (no code generation: fast)."""
    module = built_module("mrl-frozen", False, from_features=True, sampled_classes=sampled_classes)
    torch._dynamo.reset()
    return compile_forward(module, backend="eager")


def test_a_changing_margin_does_not_recompile_the_step():
    module = traced_head()
    features = pooled_features(module)
    losses = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for margin in (0.0, 0.1, 0.2):  # loss.margin_warmup_steps sets a new margin every step
            module.set_margin(margin)
            losses.append(module(features, LABELS)[0].item())
    assert losses[0] < losses[1] < losses[2]  # a larger margin on the target: a larger loss
    assert module.aam_loss.margin == 0.2


def test_sampled_classes_keep_the_compiled_step_static():
    module = traced_head(sampled_classes=6)
    features = pooled_features(module)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for labels in (LABELS, torch.tensor([0, 0, 9, 5]), torch.tensor([7, 8, 9, 4])):
            loss, _ = module(features, labels)
            loss.backward()
    assert torch.isfinite(loss)


def test_compile_is_refused_when_the_launcher_compiles_too(tmp_path, monkeypatch):
    from mrl_dist.train.setup import make_accelerator

    monkeypatch.setenv(
        "ACCELERATE_DYNAMO_BACKEND", "INDUCTOR"
    )  # what `accelerate launch --dynamo_backend inductor` sets
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = config_from_dict({"run_dir": str(tmp_path), "training": {"compile": True, "mixed_precision": "no"}})
    with pytest.raises(ConfigError, match="training.compile.*--dynamo_backend no"):
        make_accelerator(cfg)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    return prepare_demo_shards(tmp_path_factory.mktemp("compile-demo"), speakers=8, utterances=4, seed=5)


def logged_steps(run_dir: Path) -> list[dict[str, float]]:
    """Each step line of RUN/train.log as {loss, loss@32, ..., grad_norm} (4 significant digits)."""
    lines = re.findall(r" step \d+ (loss=.*?) lr=", (run_dir / "train.log").read_text())
    return [{key: float(value) for key, value in (pair.split("=") for pair in line.split())} for line in lines]


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory) -> Path:
    """A tiny trunk as an official-format file: the feature cache and the run load the same weights."""
    torch.manual_seed(0)
    return save_official_checkpoint(build_preset("tiny"), tmp_path_factory.mktemp("trunk") / "tiny.pt")


def head_run_config(run_dir: Path, shards: Path, trunk: Path, compiled: bool) -> dict:
    """3 steps of the MRL head on the trunk's cached features, validated once at the end."""
    return tiny_config(
        run_dir,
        shards,
        model={"backbone": str(trunk), "head_init": "random"},
        data={"features": "auto", "feature_crops_per_utterance": 1},
        training={"mode": "mrl", "freeze_backbone": True, "compile": compiled, "max_steps": 3},
        validation={"every_steps": 100, "at_start": False},
        checkpoint={"every_steps": 100},
    )


def assert_same_logs(eager: list[dict[str, float]], compiled: list[dict[str, float]]) -> None:
    # Weights are not compared: AdamW's first steps move each weight by about lr x sign(gradient),
    # so a rounding-level difference of a near-zero gradient becomes a whole step.
    assert len(eager) == len(compiled) == 3
    for eager_step, compiled_step in zip(eager, compiled):
        assert eager_step.keys() == compiled_step.keys()
        assert all(compiled_step[k] == pytest.approx(v, rel=2e-3) for k, v in eager_step.items()), (
            eager_step,
            compiled_step,
        )


@pytest.mark.slow
def test_a_compiled_run_logs_the_eager_losses_and_gradient_norms(demo_shards, trunk_file, tmp_path):
    logged = {}
    for compiled in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)
        run_dir = tmp_path / f"compile-{compiled}"
        assert (
            train(config_from_dict(head_run_config(run_dir, demo_shards, trunk_file, compiled)))["status"] == "finished"
        )
        logged[compiled] = logged_steps(run_dir)
    assert_same_logs(logged[False], logged[True])


@pytest.mark.slow
@long_compile
def test_two_compiled_ranks_log_the_eager_losses(demo_shards, trunk_file, tmp_path):
    # DDP wraps the module compiled in place; its first call, inside DDP's forward, is split at
    # DDP's gradient buckets. Both ranks' gradients are averaged exactly as in eager DDP.
    logged = {}
    for compiled, port in ((False, 29531), (True, 29532)):
        run_dir = tmp_path / f"ddp-compile-{compiled}"
        config = write_config(
            tmp_path / f"{compiled}.yaml", head_run_config(run_dir, demo_shards, trunk_file, compiled)
        )
        process = launch(accelerate_two_cpu_processes(config, port=port), tmp_path)
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-3000:]
        assert "ranks=2" in (run_dir / "train.log").read_text()
        logged[compiled] = logged_steps(run_dir)
    assert_same_logs(logged[False], logged[True])
