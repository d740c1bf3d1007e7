"""The shipped configs load and agree with each other; the memory estimator behind their batch sizes
measures what it claims (tiny preset, short crops: seconds, not minutes)."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from mrl_dist.config import load_config
from mrl_dist.models import PRESETS
from mrl_dist.models.presets import REDIMNET2_PRETRAINED
from mrl_dist.tools.bench import bench_config, measure_throughput
from mrl_dist.tools.memory import (
    GPU_TARGETS,
    LiveStorageBytes,
    SavedTensorBytes,
    estimate_gpu_peak,
    largest_fitting_batch,
    measure_step_memory,
)

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
GPU_CONFIGS = [path for path in RUN_CONFIGS if path.stem in GPU_TARGETS]


def test_every_gpu_target_has_its_config_file():
    assert sorted(path.stem for path in GPU_CONFIGS) == sorted(GPU_TARGETS)
    assert len(ACCELERATE_CONFIGS) >= 5


def is_known_model(source: str) -> bool:
    """A preset, a ReDimNet2 name with official weights, or the checkpoint an earlier run writes
    (the CPU demo's runs/demo/classifier/best.pt)."""
    return (
        source in PRESETS or source in REDIMNET2_PRETRAINED or (source.startswith("runs/") and source.endswith(".pt"))
    )


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads_and_names_known_presets(path):
    cfg = load_config(path)
    assert is_known_model(cfg.model.backbone), cfg.model.backbone
    assert all(is_known_model(teacher.source) for teacher in cfg.distill.teachers)


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_config_trains_the_mrl_head_of_a_frozen_pretrained_b2(path):
    cfg = load_config(path)
    assert (cfg.model.backbone, cfg.model.head_init, cfg.model.mrl_dims) == ("b2", "pca", [64, 128, 192, 256])
    assert (cfg.model.pretrained.train_type, cfg.model.pretrained.dataset) == ("ft_lm", "vox2")
    assert (cfg.training.mode, cfg.training.freeze_backbone, cfg.training.mixed_precision) == ("mrl", True, "bf16")
    assert (cfg.data.train, cfg.data.val) == ("shards/train.manifest.json", "shards/val.manifest.json")
    assert cfg.data.crop_seconds == 2.0
    assert (cfg.training.optimizer.name, cfg.training.optimizer.lr) == ("adamw", 0.001)
    assert cfg.training.schedule.decay == "cosine"
    assert 0 < cfg.training.schedule.warmup_steps < cfg.training.max_steps // 10
    assert cfg.run_dir == f"runs/{path.stem}-b2-mrl"


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_config_header_gives_its_launch_command_and_estimate(path):
    header = path.read_text().split("\nrun_dir:")[0]
    launch = re.search(r"accelerate launch --config_file (\S+) launch/train.py --config (\S+)", header)
    assert launch, f"{path.name}: no launch command in the head comment"
    assert (REPO / launch.group(1)).is_file()
    assert launch.group(2) == f"configs/{path.name}"
    assert "ESTIMATE" in header and "GiB" in header
    assert "freeze_backbone=false" in header and "unfreeze_after_steps" in header
    assert f"batch_size={GPU_TARGETS[path.stem].unfrozen_batch}" in header or "the batch of 256 fits" in header


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses_with_a_distributed_type(path):
    from accelerate.commands.config.config_args import ClusterConfig

    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"NO", "MULTI_GPU", "MULTI_CPU", "DEEPSPEED"}
    ClusterConfig.from_yaml_file(str(path))  # accelerate itself rejects unknown keys


def test_deepspeed_launcher_leaves_batch_accumulation_and_clipping_to_the_run_config():
    deepspeed = yaml.safe_load((REPO / "configs/accelerate/deepspeed-zero2.yaml").read_text())["deepspeed_config"]
    assert deepspeed["zero_stage"] == 2
    # Left out, so "auto": the trainer fills them from each run config (mrl_dist/train/ds_config.py).
    assert not {"gradient_clipping", "gradient_accumulation_steps"} & set(deepspeed)


# --- the estimator ---


def test_live_storage_bytes_counts_an_allocation_until_it_is_freed():
    with LiveStorageBytes() as tracker:
        block = torch.ones(1000)  # 4,000 bytes
        doubled = block * 2
        del block, doubled
        torch.zeros(10)
    assert tracker.peak == 8000
    assert tracker.timeline[-1] == 40


def test_saved_tensor_bytes_counts_each_storage_once_and_skips_ignored_ones():
    weight = torch.ones(100, requires_grad=True)
    x = torch.ones(250, requires_grad=True)
    with SavedTensorBytes(ignore={weight.untyped_storage().data_ptr()}) as saved:
        (x * x).sum().backward()  # mul saves x twice: one storage
        (weight * 3.0).sum()  # saves nothing of its own beyond weight, which is ignored
    assert saved.total == 1000


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: a second intra-op thread only adds waiting on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_memory(one_thread):
    torch.manual_seed(0)
    return {
        mode: measure_step_memory(bench_config("tiny", mode, 4, crop_seconds=0.5, precision="no"), num_classes=100)
        for mode in ("mrl-frozen", "mrl-unfrozen")
    }


def test_estimate_grows_with_the_batch(tiny_memory):
    for memory in tiny_memory.values():
        small, large = (estimate_gpu_peak(memory, batch) for batch in (16, 64))
        assert large.bytes > small.bytes
        assert large.saved_method_bytes > small.saved_method_bytes


def test_unfrozen_needs_more_than_frozen(tiny_memory):
    frozen, unfrozen = tiny_memory["mrl-frozen"], tiny_memory["mrl-unfrozen"]
    assert unfrozen.gradient_bytes > frozen.gradient_bytes
    assert unfrozen.optimizer_bytes > frozen.optimizer_bytes
    assert estimate_gpu_peak(unfrozen, 32).bytes > estimate_gpu_peak(frozen, 32).bytes
    assert largest_fitting_batch(unfrozen, 4 * 2**30) < largest_fitting_batch(frozen, 4 * 2**30)


def test_live_method_sees_the_frozen_trunk_that_saved_tensors_miss(tiny_memory):
    frozen = tiny_memory["mrl-frozen"]
    assert frozen.live(256) - frozen.live(128) > 2 * (frozen.saved(256) - frozen.saved(128))


def test_throughput_bench_prints_one_markdown_row(one_thread):
    result = measure_throughput(
        "tiny", "mrl-frozen", batch_size=2, crop_seconds=0.5, steps=1, warmup=1, num_classes=100
    )
    assert result.best > 0 and result.trainable < result.parameters
    assert result.markdown_row().count("|") == result.MARKDOWN_HEADER.splitlines()[0].count("|")


def test_the_demo_s_mrl_stage_is_the_cpu_demo_config_s_recipe(tmp_path):
    from mrl_dist.config import config_from_dict, config_to_dict
    from mrl_dist.demo.run import demo_config

    shipped = config_to_dict(load_config(REPO / "configs" / "cpu-demo.yaml"))
    demo = config_to_dict(config_from_dict(demo_config(tmp_path, tmp_path, "mrl", 1500, "backbone.pt")))
    for section, keys in {
        "model": ["head_init", "head_type", "pca_batches", "train_extra_dims"],
        "data": ["features", "feature_crops_per_utterance", "crops_per_speaker", "crop_seconds"],
        "training": ["batch_size", "max_steps", "optimizer", "schedule", "freeze_backbone"],
        "loss": ["margin", "scale", "class_init"],
        "validation": ["every_steps"],
    }.items():
        for key in keys:
            assert demo[section][key] == shipped[section][key], f"{section}.{key}"


def test_gpu_mrl_configs_train_the_head_from_cached_features_with_class_mean_weights():
    for path in GPU_CONFIGS:
        cfg = load_config(path)
        if cfg.training.mode == "mrl":
            assert cfg.data.features == "auto" and cfg.loss.class_init == "mean", path
