"""Estimate a training step's peak GPU memory from CPU measurements (no GPU needed).

Two measurements of one real training step (the trainer's `TrainModule`, AdamW, grad clipping)
on CPU, the forward under the config's autocast (CPU autocast, bf16 by default):

  saved   bytes autograd keeps for backward: every tensor `saved_tensors_hooks` sees during the
          forward, counted once per storage (data_ptr), parameter storages excluded. With a
          frozen trunk (under no_grad) this is the head and the loss alone.
  live    the bytes of all tensor storages alive at once during forward + backward, parameters
          and optimizer state excluded: saved tensors, the no_grad trunk's working set,
          gradients, temporaries. A `TorchDispatchMode` sees every op's outputs and weak
          references tell when a storage is freed: what `torch.cuda.max_memory_allocated`
          reports on a GPU, short of allocator rounding and cuDNN/cuBLAS workspaces.

Each is measured at batch 2 and 4 (BatchNorm in training mode refuses a single sample) and
extrapolated: saved linearly (fixed + per_sample x B); live op by op (op i's bytes are fitted
between the two sizes, the peak at B is the largest op), since the peak moves from the loss
(per step: normalised class weights) to the trunk (per crop) as B grows.

GPU peak = CUDA context + (1 + headroom) x tensors, where
  tensors (saved method) = parameters + gradients + AdamW state + saved(B) + DDP buckets
  tensors (live method)  = parameters + gradients + AdamW state
                           + max(live(B) - gradients, AdamW step temporaries) + DDP buckets
  CUDA context = 1.0 GiB (context, cuDNN/cuBLAS handles and workspaces), headroom = 20 %
  (allocator fragmentation), DDP buckets = one more copy of the trainable gradients.
Measured in float32 and asked for bf16, activations are halved (`HALF_PRECISION_FACTOR`); CPU
autocast measures 0.6-0.86 of float32 instead (normalisations stay float32), so measure at the
run's precision when it matters. The saved method misses the frozen trunk's no_grad working
set; plan with the larger of the two. These are estimates: replace them with
`launch/bench_train.py --device cuda` measurements (`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..config import Config
from ..precision import autocast
from .bench import VOXCELEB2_SPEAKERS, build_training_step, synthetic_batch

log = logging.getLogger(__name__)

GIB = 2**30
CUDA_CONTEXT_BYTES = 1 * GIB
FRAGMENTATION_HEADROOM = 0.2
HALF_PRECISION_FACTOR = 0.5


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {_storage_key(t) for t in tensors}


class LiveStorageBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside it and still alive: `timeline[i]` after
    op i (its inputs and outputs both alive), `peak` the most at once. Storages whose data_ptr is
    in `ignore` (parameters, optimizer state) are not counted."""

    def __init__(self, ignore: Iterable[int] = frozenset()):
        super().__init__()
        self.ignore = set(ignore)
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.timeline: list[int] = []

    @property
    def peak(self) -> int:
        return max(self.timeline, default=0)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()  # what died since the last op; this op's inputs are still referenced
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.ignore or key in self.live:
                continue  # empty, resident, or a view / in-place result of a counted storage
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.timeline.append(self.current)
        return out


class SavedTensorBytes:
    """Bytes of the storages autograd saves for backward while active (each storage once)."""

    def __init__(self, ignore: Iterable[int] = frozenset()):
        self.ignore = set(ignore)
        self.seen: set[int] = set()
        self.total = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key and key not in self.ignore and key not in self.seen:
            self.seen.add(key)
            self.total += tensor.untyped_storage().nbytes()
        return tensor

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def upper_envelope(lines: Iterable[tuple[float, float]], start: float = 1.0) -> list[tuple[float, float]]:
    """The lines `(fixed, per_sample)` that are the maximum somewhere on B >= start, in order of B."""
    lines = set(lines)
    current = max(lines, key=lambda line: (line[0] + line[1] * start, line[1]))
    hull, position = [current], start
    while True:
        fixed, slope = current
        crossings = [(max(position, (fixed - a) / (b - slope)), -b, (a, b)) for a, b in lines if b > slope]
        if not crossings:
            return hull
        position, _, current = min(crossings)
        hull.append(current)


@dataclass
class StepMemory:
    """One training step's memory, measured on CPU in float32, in bytes.

    `saved(B)` is linear; `live(B)` is the maximum over the ops of one step of each op's own line
    (the same ops run at every batch size, so op i's bytes are fitted between the two batch sizes):
    the peak can move from the loss (per step) to the trunk (per crop) as B grows.
    """

    name: str
    crop_seconds: float
    precision: str  # the autocast the forward ran under on CPU: no | bf16 | fp16
    parameter_bytes: int  # parameters and buffers
    gradient_bytes: int  # trainable parameters
    optimizer_bytes: int  # AdamW exp_avg + exp_avg_sq of trainable parameters
    saved_fixed: float
    saved_per_sample: float
    live_lines: list[tuple[float, float]]  # (fixed, per_sample) pieces of forward + backward
    optimizer_step_bytes: int  # temporaries alive during clipping and the AdamW step

    def saved(self, batch_size: int) -> float:
        return self.saved_fixed + self.saved_per_sample * batch_size

    def live(self, batch_size: int) -> float:
        return max(fixed + per_sample * batch_size for fixed, per_sample in self.live_lines)


def _fit_timelines(small: list[int], large: list[int], small_batch: int, large_batch: int) -> list[tuple[float, float]]:
    span = large_batch - small_batch
    if len(small) != len(large):  # a data-dependent op: fall back to the two peaks
        log.warning(
            "memory: %d ops at batch %d but %d at batch %d; fitting the peaks only",
            len(small),
            small_batch,
            len(large),
            large_batch,
        )
        small, large = [max(small)], [max(large)]
    lines = [(lo - (hi - lo) / span * small_batch, (hi - lo) / span) for lo, hi in zip(small, large)]
    return upper_envelope(lines)


def measure_step_memory(
    cfg: Config, num_classes: int = VOXCELEB2_SPEAKERS, batch_sizes: Sequence[int] = (2, 4), name: str | None = None
) -> StepMemory:
    """Measure `StepMemory` for the training step `cfg` describes (its model, mode, freezing, crop).

    Use random weights (`bench.with_random_weights`): the bytes do not depend on their values.
    """
    small, large = batch_sizes
    precision = cfg.training.mixed_precision
    torch.manual_seed(cfg.seed)
    bench = build_training_step(cfg, num_classes, "cpu")
    module, optimizer = bench.module, bench.step.optimizer

    def resident() -> set[int]:
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return _storage_keys([*module.parameters(), *module.buffers(), *state])

    def one_step(batch_size: int) -> tuple[int, list[int], int]:
        """(saved bytes, live bytes after each forward/backward op, AdamW step temporaries), of
        the trainer's step in its two halves: the micro-batch, then clip + optimizer step."""
        with LiveStorageBytes(resident()) as tracker:
            batch = synthetic_batch(batch_size, cfg.data.crop_seconds, num_classes)
            with SavedTensorBytes(resident()) as saved:  # backward saves nothing more
                loss, _ = bench.step.micro_batch(module, batch)
            finite = torch.isfinite(loss)
            del loss, batch
        grads = _storage_keys(p.grad for p in module.parameters() if p.grad is not None)
        with LiveStorageBytes(resident() | grads) as step_tracker:
            bench.step.apply(module, finite, {})
        return saved.total, tracker.timeline, step_tracker.peak

    one_step(small)  # the steady state: AdamW state exists from here on, grads are None
    saved_small, timeline_small, step_small = one_step(small)
    saved_large, timeline_large, step_large = one_step(large)
    saved_slope = (saved_large - saved_small) / (large - small)
    trainable = [p for p in module.parameters() if p.requires_grad]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    frozen = " frozen" if cfg.training.mode == "mrl" and cfg.training.freeze_backbone else ""
    return StepMemory(
        name=name or f"{cfg.model.backbone} {cfg.training.mode}{frozen}",
        crop_seconds=cfg.data.crop_seconds,
        precision=precision,
        parameter_bytes=sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]),
        gradient_bytes=sum(p.numel() * p.element_size() for p in trainable),
        optimizer_bytes=sum(t.numel() * t.element_size() for t in state),
        saved_fixed=saved_small - saved_slope * small,
        saved_per_sample=saved_slope,
        live_lines=_fit_timelines(timeline_small, timeline_large, small, large),
        optimizer_step_bytes=max(step_small, step_large),
    )


def activation_factor(measured: str, wanted: str) -> float:
    """Scale for activations measured under `measured` autocast to stand for `wanted`."""
    half = ("bf16", "fp16")
    if measured == wanted or (measured in half and wanted in half):
        return 1.0
    if measured == "no":
        return HALF_PRECISION_FACTOR
    raise ValueError(
        f"activations measured under {measured} autocast cannot stand for precision {wanted!r}; "
        "measure in float32 ('no') or at that precision"
    )


@dataclass
class PeakEstimate:
    batch_size: int
    precision: str
    saved_method_bytes: float
    live_method_bytes: float

    @property
    def bytes(self) -> float:
        """The planning figure: the larger of the two methods."""
        return max(self.saved_method_bytes, self.live_method_bytes)


def estimate_gpu_peak(
    memory: StepMemory,
    batch_size: int,
    precision: str | None = None,
    ddp: bool = True,
    context_bytes: float = CUDA_CONTEXT_BYTES,
    headroom: float = FRAGMENTATION_HEADROOM,
) -> PeakEstimate:
    """Peak GPU memory of one rank at `batch_size` (see the module docstring for the formula).
    `precision` defaults to the one `memory` was measured at."""
    precision = precision or memory.precision
    factor = activation_factor(memory.precision, precision)
    buckets = memory.gradient_bytes if ddp else 0
    resident = memory.parameter_bytes + memory.optimizer_bytes + buckets
    saved_tensors = resident + memory.gradient_bytes + factor * memory.saved(batch_size)
    # The live peak holds float32 gradients (not halved) next to half-precision activations.
    live_activations = max(0.0, memory.live(batch_size) - memory.gradient_bytes)
    live_tensors = resident + memory.gradient_bytes + max(factor * live_activations, memory.optimizer_step_bytes)
    scale = 1.0 + headroom
    return PeakEstimate(
        batch_size, precision, context_bytes + scale * saved_tensors, context_bytes + scale * live_tensors
    )


def largest_fitting_batch(
    memory: StepMemory,
    card_bytes: float,
    precision: str | None = None,
    margin: float = 0.15,
    multiple: int = 8,
    ddp: bool = True,
) -> int:
    """The largest multiple of `multiple` whose estimate stays under (1 - margin) x card memory."""
    budget = (1.0 - margin) * card_bytes
    batch = 0
    while estimate_gpu_peak(memory, batch + multiple, precision, ddp).bytes <= budget:
        batch += multiple
        if batch > 1 << 16:
            break
    return batch


def measure_inference_bytes(cfg: Config, seconds: Sequence[float] = (2.0, 4.0), batch_size: int = 2) -> float:
    """Bytes per second of audio per utterance at the peak of an eval-mode, no_grad forward under
    the config's autocast (what validation runs on rank 0): the slope between two lengths."""
    torch.manual_seed(cfg.seed)
    model = build_training_step(cfg, 8, "cpu").module.model.eval()
    ignore = _storage_keys([*model.parameters(), *model.buffers()])
    peaks = []
    for length in seconds:
        with torch.no_grad(), LiveStorageBytes(ignore) as tracker, autocast("cpu", cfg.training.mixed_precision):
            wave = synthetic_batch(batch_size, length, 8)["wave"]
            model(wave)
            del wave
        peaks.append(tracker.peak)
    return (peaks[1] - peaks[0]) / (seconds[1] - seconds[0]) / batch_size


# --- the shipped GPU configs: card, and the batch that fits once the backbone is unfrozen ---


@dataclass(frozen=True)
class CardTarget:
    card: str
    memory_gib: float  # what the driver reports, in GiB
    unfrozen_batch: int  # documented in the config's head comment


GPU_TARGETS = {
    "a100": CardTarget("NVIDIA A100 40 GB (the 80 GB card: twice the room)", 40.0, 256),
    "h100": CardTarget("NVIDIA H100 80 GB", 79.6, 256),
    "rtx3060-12gb": CardTarget("GeForce RTX 3060 12 GB", 12.0, 64),
    "rtx5060ti-16gb": CardTarget("GeForce RTX 5060 Ti 16 GB", 15.9, 96),
    "rtx4090-24gb": CardTarget("GeForce RTX 4090 24 GB", 24.0, 128),
}


def _cases(cfg: Config, target: CardTarget, sampled_classes: int | None = None) -> list[tuple[str, Config, int]]:
    """(label, config, batch): the config as shipped and, for a frozen mrl run, unfrozen at the
    shipped batch and at the documented unfrozen batch; `sampled_classes` replaces loss.sampled_classes."""
    from .bench import with_random_weights

    base = with_random_weights(cfg)
    if sampled_classes is not None:
        base.loss.sampled_classes = sampled_classes
    frozen = cfg.training.mode == "mrl" and cfg.training.freeze_backbone
    cases: list[tuple[str, Config, int]] = [("frozen" if frozen else cfg.training.mode, base, cfg.training.batch_size)]
    if frozen:
        unfrozen = copy.deepcopy(base)
        unfrozen.training.freeze_backbone = False
        cases.append(("unfrozen", unfrozen, cfg.training.batch_size))
        if target.unfrozen_batch != cfg.training.batch_size:
            cases.append(("unfrozen", unfrozen, target.unfrozen_batch))
    return cases


def config_memory_tables(
    config_paths: Sequence[str],
    margin: float = 0.15,
    padded_seconds: Sequence[float] = (20.0, 60.0),
    num_classes: int = VOXCELEB2_SPEAKERS,
    sampled_classes: int | None = None,
) -> tuple[str, str]:
    """Markdown tables of estimated peak memory for the shipped GPU configs among `config_paths`:
    training (as shipped, and with the backbone unfrozen) and validation (rank 0, no_grad, a
    batch of utterances padded to each of `padded_seconds`); the AAM loss over `num_classes`
    speakers, `sampled_classes` of them per step where given (else the config's)."""
    from ..config import load_config

    steps: dict[tuple, StepMemory] = {}
    per_second: dict[tuple, float] = {}
    training = [
        "| config | card | training | batch / device | saved method | live method | planning peak "
        "| of card | largest batch within 85 % |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lengths = " | ".join(f"{s:g} s utterances" for s in padded_seconds)
    validation = [
        f"| config | card | validation batch | {lengths} |",
        "| --- | --- | ---: |" + " ---: |" * len(padded_seconds),
    ]
    for path in config_paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in GPU_TARGETS:
            continue
        target, cfg = GPU_TARGETS[name], load_config(path)
        card_bytes = target.memory_gib * GIB
        for label, case, batch in _cases(cfg, target, sampled_classes):
            key = (
                case.model.backbone,
                case.training.mode,
                case.training.freeze_backbone,
                case.data.crop_seconds,
                case.training.mixed_precision,
            )
            if key not in steps:
                steps[key] = measure_step_memory(case, num_classes)
            estimate = estimate_gpu_peak(steps[key], batch)
            largest = largest_fitting_batch(steps[key], card_bytes, margin=margin)
            training.append(
                f"| {name} | {target.card} | {case.model.backbone} {label}, {case.training.mixed_precision} "
                f"| {batch} | {estimate.saved_method_bytes / GIB:.1f} GiB | {estimate.live_method_bytes / GIB:.1f} GiB "
                f"| **{estimate.bytes / GIB:.1f} GiB** | {100 * estimate.bytes / card_bytes:.0f} % | {largest} |"
            )
        shipped = _cases(cfg, target, sampled_classes)[0][1]
        resident = steps[
            (
                shipped.model.backbone,
                shipped.training.mode,
                shipped.training.freeze_backbone,
                shipped.data.crop_seconds,
                shipped.training.mixed_precision,
            )
        ]
        inference_key = (shipped.model.backbone, shipped.training.mixed_precision)
        if inference_key not in per_second:
            per_second[inference_key] = measure_inference_bytes(shipped)
        cells = []
        for seconds in padded_seconds:
            tensors = (
                resident.parameter_bytes
                + resident.optimizer_bytes
                + per_second[inference_key] * seconds * cfg.validation.batch_size
            )
            peak = CUDA_CONTEXT_BYTES + (1 + FRAGMENTATION_HEADROOM) * tensors
            cells.append(f"{peak / GIB:.1f} GiB ({100 * peak / card_bytes:.0f} %)")
        validation.append(f"| {name} | {target.card} | {cfg.validation.batch_size} | {' | '.join(cells)} |")
    return "\n".join(training), "\n".join(validation)
