"""What a class matrix of 100k+ speakers costs in one training step: every class vs sampled classes.

The step measured is the trainer's own (train/step.py via tools/bench.py) on pooled features,
what `data.features` trains and the GPU configs run: the Matryoshka head (BatchNorm + Linear
P -> 256) of a frozen trunk, the tied Matryoshka AAM over dims 64/128/192/256 against C classes,
backward, clipping and AdamW, float32, random weights, one process.

Per case it reports, in bytes:
  class matrix       C x 256 x 4 (one sub-centre); its gradient is as large (dense: rows not
                     drawn get zeros) and AdamW keeps two more (exp_avg, exp_avg_sq)
  logits per dim     B x K x 4, K = C or the sampled classes; the loss keeps several such
                     [B, K] tensors per dim for backward (cosines, margin terms, softmax) and
                     the normalised class matrix [K, d] per dim
  live peak          measured: the most bytes of tensor storages alive at once during forward +
                     backward (memory.LiveStorageBytes), parameters and AdamW state excluded;
                     what `torch.cuda.max_memory_allocated` adds above the resident tensors
and the time per optimizer step (median of the timed steps, after one warm-up step).

Used by `launch/bench_classes.py`; docs/configs.md ("Many speakers: 100k+ classes") has the figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models import build_preset
from .bench import bench_config, build_training_step
from .memory import LiveStorageBytes

FLOAT32 = 4


@dataclass
class ClassStepCost:
    """One case's bytes and time (see the module docstring)."""

    num_classes: int
    sampled_classes: int | None  # None: every class
    batch_size: int
    dims: list[int]
    matrix_bytes: int  # the class matrix [C, max_dim]
    adamw_bytes: int  # its AdamW state, both moments
    logits_bytes: list[int]  # [B, K] float32, per dim
    live_peak_bytes: int  # forward + backward, parameters and AdamW state excluded
    resident_bytes: int  # every parameter, its gradient and AdamW state
    step_ms: float  # median
    step_ms_all: list[float]

    @property
    def columns(self) -> int:
        return self.sampled_classes or self.num_classes


def _resident_keys(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> set[int]:
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers(), *state]}


def measure_class_step(
    num_classes: int,
    batch_size: int = 256,
    sampled_classes: int | None = None,
    preset: str = "b2",
    dims: Sequence[int] = (64, 128, 192, 256),
    steps: int = 3,
    seed: int = 0,
) -> ClassStepCost:
    """The head's training step on pooled features of `preset`'s trunk against `num_classes`
    classes (all of them, or `sampled_classes` per step), on the CPU: bytes and ms per step."""
    torch.manual_seed(seed)
    cfg = bench_config(preset, "mrl-frozen", batch_size, mrl_dims=dims, sampled_classes=sampled_classes)
    bench = build_training_step(cfg, num_classes, from_features=True)
    module, optimizer = bench.module, bench.step.optimizer
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "pooled": torch.randn(batch_size, build_preset(preset).pool_out_dim, generator=generator),
        "label": torch.randint(0, num_classes, (batch_size,), generator=generator),
    }
    bench(batch)  # warm-up: AdamW state exists from here on
    with LiveStorageBytes(_resident_keys(module, optimizer)) as tracker:
        loss, _ = bench.step.micro_batch(module, batch)
        del loss
    bench.step.apply(module, torch.tensor(True), {})
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        bench(batch)
        times.append(1000 * (time.perf_counter() - start))
    aam = module.aam_loss
    assert aam is not None  # mrl mode: the loss is the Matryoshka AAM
    matrix = aam.weight.numel() * FLOAT32
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad) * FLOAT32
    columns = aam.sampled_classes or num_classes
    return ClassStepCost(
        num_classes=num_classes,
        sampled_classes=aam.sampled_classes,
        batch_size=batch_size,
        dims=list(dims),
        matrix_bytes=matrix,
        adamw_bytes=2 * matrix,
        logits_bytes=[batch_size * columns * FLOAT32 for _ in dims],
        live_peak_bytes=tracker.peak,
        resident_bytes=sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        + 3 * trainable,
        step_ms=statistics.median(times),
        step_ms_all=times,
    )


MARKDOWN_HEADER = (
    "| classes | scored per step | batch | class matrix | matrix + gradient + AdamW | logits [B, K] per dim "
    "| live peak, forward + backward | resident (all parameters, gradients, AdamW) | ms/step (median) |\n"
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def markdown_row(cost: ClassStepCost) -> str:
    mib = 2**20
    scored = "all" if cost.sampled_classes is None else f"{cost.sampled_classes:,}"
    return (
        f"| {cost.num_classes:,} | {scored} | {cost.batch_size} | {cost.matrix_bytes / mib:,.0f} MiB "
        f"| {(2 * cost.matrix_bytes + cost.adamw_bytes) / mib:,.0f} MiB | {cost.logits_bytes[0] / mib:,.1f} MiB "
        f"| {cost.live_peak_bytes / mib:,.0f} MiB | {cost.resident_bytes / mib:,.0f} MiB | {cost.step_ms:,.0f} |"
    )
