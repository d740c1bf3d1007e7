"""The trainer's own training step (train/step.py), timed on synthetic waves (no data loader).

    synthetic wave [B, T] float32 16 kHz, label [B] int64 (VoxCeleb2's 5,994 classes)
      -> TrainingStep: the mode's TrainModule (ReDimNet or ReDimNetMRL + Matryoshka AAM) under
         autocast -> backward -> clip -> AdamW + schedule, as in training on one rank

Bench modes map to trainer settings:
    classifier     training.mode=classifier  (every parameter trains)
    mrl-frozen     training.mode=mrl, freeze_backbone=true  (trunk under no_grad, eval mode)
    mrl-unfrozen   training.mode=mrl, freeze_backbone=false (trunk at lr x backbone_lr_ratio)

Weights are random (`pretrained: null`, `head_init: random`): speed and memory do not depend on
their values, and nothing is downloaded. Used by `launch/bench_train.py` and `memory.py`.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import Config, config_from_dict
from ..data.audio import seconds_to_samples
from ..models import build_preset
from ..precision import autocast_dtype
from ..train.modes import Mode, TrainModule, describe_parameters, load_backbone, make_mode
from ..train.setup import make_optimizer, make_scheduler
from ..train.step import SingleDevice, TrainingStep, compile_forward

BENCH_MODES = ("classifier", "mrl-frozen", "mrl-unfrozen")
VOXCELEB2_SPEAKERS = 5994


def bench_config(
    preset: str,
    mode: str,
    batch_size: int,
    crop_seconds: float = 2.0,
    precision: str = "no",
    mrl_dims: Sequence[int] = (64, 128, 192, 256),
    compile: bool = False,
    sampled_classes: int | None = None,
) -> Config:
    """The trainer config of one bench case (defaults elsewhere: AdamW, grad_clip 5.0, AAM 0.2/30);
    `compile`: training.compile, `sampled_classes`: loss.sampled_classes."""
    if mode not in BENCH_MODES:
        raise ValueError(f"bench mode {mode!r}: expected one of {', '.join(BENCH_MODES)}")
    return config_from_dict(
        {
            "model": {"backbone": preset, "pretrained": None, "mrl_dims": list(mrl_dims), "head_init": "random"},
            "data": {"crop_seconds": crop_seconds},
            "training": {
                "mode": "classifier" if mode == "classifier" else "mrl",
                "freeze_backbone": mode == "mrl-frozen",
                "batch_size": batch_size,
                "mixed_precision": precision,
                "compile": compile,
            },
            "loss": {"sampled_classes": sampled_classes},
        },
        source=f"bench {preset} {mode}",
    )


def with_random_weights(cfg: Config) -> Config:
    """A copy of a run config that builds the same architecture without downloading weights."""
    data = {
        "model": {
            "backbone": cfg.model.backbone,
            "pretrained": None,
            "mrl_dims": list(cfg.model.mrl_dims),
            "head_init": "random",
        },
        "training": {
            "mode": cfg.training.mode,
            "freeze_backbone": cfg.training.freeze_backbone,
            "batch_size": cfg.training.batch_size,
            "mixed_precision": cfg.training.mixed_precision,
            "grad_clip": cfg.training.grad_clip,
        },
        "data": {"crop_seconds": cfg.data.crop_seconds},
        "loss": {"subcenters": cfg.loss.subcenters, "tied": cfg.loss.tied, "sampled_classes": cfg.loss.sampled_classes},
    }
    return config_from_dict(data, source=f"{cfg.run_dir} (random weights)")


@dataclass
class BenchStep:
    """The trainer's module, mode and `TrainingStep` for one config, on one device and process."""

    module: TrainModule
    mode: Mode
    step: TrainingStep

    def __call__(self, batch: dict) -> torch.Tensor:
        """One optimizer step on `batch` (grad_accum micro-batches of it); returns the detached loss."""
        _, stats = self.step(self.module, itertools.repeat(batch))
        return stats["loss"]


def build_training_step(
    cfg: Config,
    num_classes: int = VOXCELEB2_SPEAKERS,
    device: str | torch.device = "cpu",
    from_features: bool = False,
    compile_backend: str = "inductor",
) -> BenchStep:
    """What the trainer builds for `cfg` (mode, module, optimizer, schedule, the train/eval policy)
    on `device`, stepped by `SingleDevice` instead of an Accelerator; `from_features`: the module
    takes pooled features, as the trainer's does with data.features; `compile_backend`: the
    torch.compile backend when training.compile is on (the trainer's is inductor)."""
    device = torch.device(device)
    tcfg = cfg.training
    mode = make_mode(cfg)
    module = mode.build(load_backbone(cfg), num_classes, from_features=from_features).to(device)
    module.train()
    optimizer = make_optimizer(cfg, module, mode.trunk_parameters(module))
    if tcfg.compile:  # where the trainer compiles it: before the engine prepares the module
        compile_forward(module, backend=compile_backend)
    engine = SingleDevice(device, tcfg.mixed_precision, tcfg.grad_accum)
    engine.prepare(module)
    mode.place_on_device(device, autocast_dtype(tcfg.mixed_precision), rank=0)
    step = TrainingStep(engine, optimizer, make_scheduler(cfg, optimizer), mode, tcfg, device)
    return BenchStep(module, mode, step)


def synthetic_batch(
    batch_size: int,
    crop_seconds: float,
    num_classes: int = VOXCELEB2_SPEAKERS,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """`{"wave": [B, T] float32 16 kHz (quiet noise), "label": [B] int64}`."""
    generator = torch.Generator().manual_seed(seed)
    wave = 0.1 * torch.randn(batch_size, seconds_to_samples(crop_seconds), generator=generator)
    label = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return {"wave": wave.to(device), "label": label.to(device)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ThroughputResult:
    preset: str
    mode: str
    device: str
    precision: str
    batch_size: int
    crop_seconds: float
    threads: int
    steps: int
    repeats: int
    crops_per_second: list[float]  # one per repeat
    parameters: int
    trainable: int
    peak_allocated_bytes: int | None  # CUDA only
    peak_reserved_bytes: int | None
    first_step_seconds: float | None = None  # the first warm-up step: with training.compile, the compile

    @property
    def best(self) -> float:
        return max(self.crops_per_second)

    @property
    def median(self) -> float:
        return statistics.median(self.crops_per_second)

    MARKDOWN_HEADER = (
        "| preset | mode | device | precision | batch | crop | threads | trainable params "
        "| crops/s (best) | crops/s (median) | ms/step (best) | peak alloc / reserved |\n"
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )

    def markdown_row(self) -> str:
        memory = "n/a (CPU)"
        if self.peak_allocated_bytes is not None and self.peak_reserved_bytes is not None:  # both or neither
            memory = f"{self.peak_allocated_bytes / 2**30:.2f} / {self.peak_reserved_bytes / 2**30:.2f} GiB"
        step_ms = 1000 * self.batch_size / self.best
        return (
            f"| {self.preset} | {self.mode} | {self.device} | {self.precision} | {self.batch_size} "
            f"| {self.crop_seconds:g} s | {self.threads} | {self.trainable:,} | {self.best:,.1f} "
            f"| {self.median:,.1f} | {step_ms:,.0f} | {memory} |"
        )


def measure_throughput(
    preset: str,
    mode: str,
    batch_size: int = 32,
    crop_seconds: float = 2.0,
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 1,
    device: str = "cpu",
    precision: str = "no",
    num_classes: int = VOXCELEB2_SPEAKERS,
    seed: int = 0,
    compile: bool = False,
    from_features: bool = False,
    sampled_classes: int | None = None,
    compile_backend: str = "inductor",
) -> ThroughputResult:
    """Crops per second of `steps` consecutive training steps after `warmup` untimed ones, `repeats`
    times on the same model (the batch stays on the device: this is the model step alone).
    `compile`: training.compile (the first warm-up step, timed apart, compiles; `compile_backend`
    the torch.compile backend); `from_features`:
    the head's step on pooled features [B, P] (data.features; mrl modes); `sampled_classes`:
    loss.sampled_classes."""
    if from_features and mode != "mrl-frozen":
        raise ValueError(
            f"bench mode {mode!r}: pooled features (from_features) train a frozen trunk's head: mrl-frozen"
        )
    torch.manual_seed(seed)
    target = torch.device(device)
    cfg = bench_config(
        preset, mode, batch_size, crop_seconds, precision, compile=compile, sampled_classes=sampled_classes
    )
    step = build_training_step(cfg, num_classes, target, from_features=from_features, compile_backend=compile_backend)
    batch = synthetic_batch(batch_size, crop_seconds, num_classes, target, seed)
    if from_features:
        pooled_dim = build_preset(preset).pool_out_dim
        batch = {"pooled": torch.randn(batch_size, pooled_dim, device=target), "label": batch["label"]}
    first_step_seconds = None
    for index in range(warmup):  # allocator, autotuning, compilation and AdamW state settle here
        start = time.perf_counter()
        loss = step(batch)
        if index == 0:
            float(loss)  # waits for the device
            first_step_seconds = time.perf_counter() - start
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    rates = []
    for _ in range(repeats):
        _synchronize(target)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(batch)
        float(loss)  # waits for the device
        _synchronize(target)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    sizes = describe_parameters(step.module)
    peak_allocated = peak_reserved = None
    if target.type == "cuda":
        peak_allocated = torch.cuda.max_memory_allocated(target)
        peak_reserved = torch.cuda.max_memory_reserved(target)
    return ThroughputResult(
        preset,
        mode,
        str(target),
        precision,
        batch_size,
        crop_seconds,
        torch.get_num_threads(),
        steps,
        repeats,
        rates,
        sizes["parameters"],
        sizes["trainable"],
        peak_allocated,
        peak_reserved,
        first_step_seconds,
    )
