"""One command that checks the GPU paths of the trainer on one CUDA device, in about 8 minutes.

    python launch/gpu_check.py --output gpu-check            # on a GPU machine
    python launch/gpu_check.py --device cpu --quick          # CPU self-test (tiny sizes, ~1 min)

Sections (each runs on its own: one that fails is recorded with its error, and the tail of its
output for subprocesses, and the others still run; the exit code is 1 if any failed):

  bench      the model step alone (synthetic waves already on the device; mrl_dist/train/bench.py,
             the code behind launch/bench_train.py) for b2 frozen MRL, b2 unfrozen MRL, b2
             classifier and b0+b2 -> b2 distillation, at each shipped GPU config's batch size, in bf16.
  train-run  a real `accelerate launch` of launch/train.py on one GPU (NCCL, through
             configs/accelerate/multi-gpu.yaml with --num_processes 1) on generated demo shards:
             a short classifier run makes a backbone, then an MRL run with unfreeze_after_steps is
             stopped by SIGTERM and continued with --resume latest to its end.
  loader     end-to-end crops/s from the shards into the device memory with N loader workers.
  deepspeed  ~30 ZeRO-2 steps (configs/accelerate/deepspeed-zero2.yaml) when deepspeed imports;
             --install-deepspeed tries `pip install deepspeed` first. CPU: skipped (GPU only).

A global deadline (--time-budget-s, default 480) is checked before each section and each bench
case; what no longer fits is recorded "skipped: time budget" instead of overrunning. Results go
to DIR/gpu-check.json and DIR/gpu-check.md (the Markdown is meant for docs/benchmarks.md's GPU
section; it names the machine, the date and the exact command). Progress lines go to stderr.

What the figures mean:

  crops/s        crops per second through the training step (best of the timed blocks; the median
                 is beside it). bench: the model step alone; loader: decoded crops arriving in
                 device memory; train-run: the trainer's own crops_per_s (loader + step + logging).
  peak alloc     torch.cuda.max_memory_allocated over the timed steps (CUDA only).
  GFLOP/crop     FLOPs of one training step per crop (forward + backward of the TrainModule; for
                 distillation the teachers' forward too), counted by torch's FlopCounterMode
                 with its grouped-convolution weight-gradient formula corrected (see
                 `conv_backward_flop`). Matmuls and convolutions only, as is usual for MFU.
  TFLOP/s, MFU   GFLOP/crop x crops/s, and that divided by the device's dense bf16 peak
                 (`BF16_DENSE_PEAKS`, or --peak-tflops). Unknown peak (CPU, an unlisted card):
                 MFU is null in the JSON and "n/a" in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("bench", "train-run", "loader", "deepspeed")
BENCH_CASES = ("mrl-frozen", "mrl-unfrozen", "classifier", "distill")
REPORT_FORMAT = "mrl-dist-gpu-check/1"
JSON_NAME, MARKDOWN_NAME = "gpu-check.json", "gpu-check.md"

# Dense (no sparsity) bf16 tensor-core peaks, matched in order against a lower-cased
# torch.cuda.get_device_name(): the more specific names first ("H100 PCIe" before "H100").
BF16_DENSE_PEAKS: tuple[tuple[str, float | None, str], ...] = (
    ("h100 pcie", 756e12, "H100 PCIe, dense bf16"),
    ("h100 nvl", 835e12, "H100 NVL, dense bf16"),
    ("h200 nvl", 835e12, "H200 NVL, dense bf16"),
    ("h100", 989e12, "H100 SXM, dense bf16"),
    ("h200", 989e12, "H200 SXM, dense bf16"),
    ("a100", 312e12, "A100, dense bf16"),
    ("l40s", 362e12, "L40S, dense bf16"),
    ("rtx 4090", 165e12, "RTX 4090, dense bf16 with fp32 accumulate"),
    ("rtx 3060", 51e12, "RTX 3060, dense bf16 with fp32 accumulate (approximate)"),
    ("rtx 5060 ti", None, "RTX 5060 Ti: peak unknown, pass --peak-tflops"),
)


# ---------------------------------------------------------------------------- arguments, plan

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch/gpu_check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu-check", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes everywhere (tiny preset, batch 4, short crops, a few steps)")
    parser.add_argument("--time-budget-s", type=float, default=480.0,
                        help="global deadline; sections that no longer fit are skipped")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="run only these sections")
    parser.add_argument("--precision", choices=("bf16", "no"), default=None,
                        help="autocast precision (default: bf16 on cuda, no on cpu)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak in TFLOP/s, for MFU (overrides the table)")
    parser.add_argument("--install-deepspeed", action="store_true",
                        help="pip install deepspeed when it does not import")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=None,
                        help="loader worker counts to time (default 0 2 4 8; --quick: 0 2)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="run configs whose batch sizes are benched (default: the shipped GPU configs)")
    parser.add_argument("--work-dir", default=None,
                        help="scratch folder for shards and runs (default: a temporary one, removed "
                             "unless a section failed or --keep-work)")
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args(argv)
    if args.time_budget_s <= 0:
        parser.error("--time-budget-s must be > 0")
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "no"
    if args.loader_workers is None:
        args.loader_workers = [0, 2] if args.quick else [0, 2, 4, 8]
    return args


@dataclass(frozen=True)
class BenchSize:
    batch_size: int
    crop_seconds: float
    configs: tuple[str, ...]  # config files (stems) that train at this size


@dataclass(frozen=True)
class Plan:
    """Every size the check uses: the full GPU pass, or the tiny --quick one."""

    preset: str  # MRL / classifier backbone and distillation student
    teachers: tuple[str, ...]
    bench_sizes: tuple[BenchSize, ...] | None  # None: each GPU config's size, read by the bench section
    bench_steps: int
    bench_warmup: int
    bench_repeats: int
    run_backbone: str
    run_batch: int
    run_crop: float
    run_workers: int
    classifier_steps: int
    mrl_steps: int
    unfreeze_after: int
    sigterm_after: int
    every: int  # validation and checkpoint cadence of the MRL run
    val_max_seconds: float
    deepspeed_steps: int
    loader_batch: int
    loader_crop: float
    loader_seconds: float  # timed per worker count, after the warm-up batches
    corpus_speakers: int = 8
    corpus_utterances: int = 6


def shipped_gpu_configs() -> list[str]:
    """Every configs/*.yaml; `bench_sizes_from_configs` keeps those that train in mixed precision."""
    return sorted(glob.glob(str(REPO / "configs" / "*.yaml")))


def bench_sizes_from_configs(paths: Sequence[str]) -> tuple[BenchSize, ...]:
    """One BenchSize per distinct (training.batch_size, data.crop_seconds) of the GPU configs."""
    from ..config import load_config

    sizes: dict[tuple[int, float], list[str]] = {}
    for path in paths:
        cfg = load_config(path)
        if cfg.training.mixed_precision == "no":
            continue  # a CPU config
        sizes.setdefault((cfg.training.batch_size, cfg.data.crop_seconds), []).append(Path(path).stem)
    if not sizes:
        raise ValueError(f"no GPU config (mixed_precision bf16/fp16) among {list(paths)}")
    return tuple(BenchSize(b, c, tuple(names)) for (b, c), names in sorted(sizes.items()))


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(preset="tiny", teachers=("tiny", "tiny"), bench_sizes=(BenchSize(4, 0.5, ("quick",)),),
                    bench_steps=2, bench_warmup=1, bench_repeats=1, run_backbone="tiny", run_batch=4,
                    run_crop=1.0, run_workers=0, classifier_steps=2, mrl_steps=8, unfreeze_after=3,
                    sigterm_after=4, every=4, val_max_seconds=1.0, deepspeed_steps=4, loader_batch=4,
                    loader_crop=1.0, loader_seconds=1.0)
    return Plan(preset="b2", teachers=("b0", "b2"), bench_sizes=None,
                bench_steps=20, bench_warmup=5, bench_repeats=2, run_backbone="b2", run_batch=32,
                run_crop=2.0, run_workers=4, classifier_steps=10, mrl_steps=60, unfreeze_after=20,
                sigterm_after=30, every=20, val_max_seconds=4.0, deepspeed_steps=30, loader_batch=256,
                loader_crop=2.0, loader_seconds=5.0)


# ---------------------------------------------------------------------------- FLOPs and MFU

def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **_kwargs) -> int:
    """FLOPs of aten.convolution_backward: each requested gradient (input, weight) costs what the
    forward convolution costs. torch's own formula counts the weight gradient of a grouped
    convolution `groups` times over (pytorch/pytorch#183405), and ReDimNet's blocks are grouped
    and depthwise convolutions: without this, b2's backward reads 6x its forward, not 2x."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(run_once: Callable[[], Any]) -> int:
    """Total FLOPs of the matmuls and convolutions `run_once()` executes (forward and backward)."""
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        run_once()
    return int(counter.get_total_flops())


def model_flops_utilisation(flops_per_crop: float | None, crops_per_second: float | None,
                            peak_flops: float | None) -> float | None:
    """Achieved FLOP/s over the device's peak, in [0, 1]-ish; None when any figure is unknown."""
    if not flops_per_crop or not crops_per_second or not peak_flops or peak_flops <= 0:
        return None
    return flops_per_crop * crops_per_second / peak_flops


def device_peak_flops(device_name: str | None, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s or None, where that figure comes from)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if not device_name:
        return None, "no CUDA device: peak unknown"
    lowered = device_name.lower()
    for key, peak, note in BF16_DENSE_PEAKS:
        if key in lowered:
            return peak, note
    return None, f"{device_name}: not in the peak table, pass --peak-tflops"


# ---------------------------------------------------------------------------- machine facts

def _nvidia_smi(query: str) -> str | None:
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def machine_info(device: str) -> dict[str, Any]:
    import accelerate

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "accelerate": accelerate.__version__, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": None, "gpu_memory_gib": None, "compute_capability": None, "driver": None,
        "cuda_runtime": torch.version.cuda, "cudnn": None,
    }
    if device == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    compute_capability=f"{properties.major}.{properties.minor}",
                    driver=_nvidia_smi("driver_version"), cudnn=torch.backends.cudnn.version(),
                    gpu_count=torch.cuda.device_count())
    return info


# ---------------------------------------------------------------------------- the check's state

class SectionError(RuntimeError):
    """A section failed; `output_tail` is the end of a subprocess's output when one was involved,
    `details` what the section had measured before it failed (kept in the report)."""

    def __init__(self, message: str, output_tail: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.output_tail = output_tail
        self.details = details or {}


@dataclass
class Check:
    args: argparse.Namespace
    plan: Plan
    work_dir: Path
    deadline: float  # time.monotonic() value
    started: float
    peak_flops: float | None
    _shards: Path | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        return self.args.device

    @property
    def precision(self) -> str:
        return self.args.precision

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def progress(self, text: str) -> None:
        print(f"[gpu-check {time.monotonic() - self.started:6.1f} s] {text}", file=sys.stderr, flush=True)

    def shards(self) -> Path:
        """Demo shards shared by the train-run, loader and deepspeed sections, made once."""
        if self._shards is None:
            from ..train.demo import prepare_demo_shards

            began = time.monotonic()
            self._shards = prepare_demo_shards(self.work_dir / "demo", speakers=self.plan.corpus_speakers,
                                               utterances=self.plan.corpus_utterances, seed=0, shard_size_mb=1)
            self.progress(f"demo shards ready in {time.monotonic() - began:.1f} s: {self._shards}")
        return self._shards


def _free_device_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- section: bench

def _flops_per_crop_of_bench_mode(preset: str, mode: str, batch_size: int, crop_seconds: float, device: str,
                                  precision: str) -> float:
    """One forward + backward of the trainer's TrainModule, counted. FLOPs per crop do not depend
    on the batch (every counted op is linear in it), so a small batch keeps this cheap."""
    from ..train.bench import VOXCELEB2_SPEAKERS, autocast_for, bench_config, build_training_step, synthetic_batch

    count_batch = min(batch_size, 8)
    cfg = bench_config(preset, mode, count_batch, crop_seconds, precision)
    module, _ = build_training_step(cfg, VOXCELEB2_SPEAKERS, device)
    wave, label = synthetic_batch(count_batch, crop_seconds, VOXCELEB2_SPEAKERS, device)

    def forward_backward() -> None:
        with autocast_for(device, precision):
            loss, _ = module(wave, label)
        loss.backward()

    flops = count_flops(forward_backward)
    del module, wave, label
    _free_device_memory(device)
    return flops / count_batch


def _random_teacher_files(presets: Sequence[str], folder: Path) -> list[str]:
    """Official-format checkpoints of randomly initialised presets: the trainer's distill mode
    loads teachers from files, and nothing may be downloaded (speed does not depend on weights)."""
    from ..models import build_preset, save_official_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in presets:
        path = folder / f"{name}-random.pt"
        if not path.is_file():
            torch.manual_seed(0)
            save_official_checkpoint(build_preset(name), path)
        paths.append(str(path))
    return paths


def distill_teacher_dims(dims: Sequence[int], teachers: int) -> list[list[int]]:
    """Small teachers take one short prefix each, the last (largest) teacher the rest: b0+b2 ->
    [64], [128, 192, 256], as configs/distill-b0-b2-b6.yaml gives its small teachers the short
    prefixes."""
    dims = list(dims)
    if not 1 <= teachers <= len(dims):
        raise ValueError(f"{teachers} teachers for {len(dims)} student dims {dims}")
    return [dims[i:i + 1] for i in range(teachers - 1)] + [dims[teachers - 1:]]


def measure_distill_throughput(teachers: Sequence[str], student: str, batch_size: int, crop_seconds: float,
                               steps: int, warmup: int, repeats: int, device: str, precision: str,
                               work_dir: Path) -> dict[str, Any]:
    """The trainer's distill mode (DistillMode: student ReDimNetMRL, DistillationLoss with adapters,
    similarity and AAM terms, teachers run live under autocast) timed on a synthetic batch, the way
    `measure_throughput` times the other modes. bench.train_step passes no teacher embeddings, so the
    step is written out here; it does what Trainer._step does on one rank with grad_accum 1."""
    from ..config import config_from_dict
    from ..train.bench import VOXCELEB2_SPEAKERS, autocast_for, synthetic_batch
    from ..train.loop import make_optimizer
    from ..train.modes import describe_parameters, make_mode

    dims = [64, 128, 192, 256]
    files = _random_teacher_files(teachers, work_dir / "teachers")
    split = distill_teacher_dims(dims, len(files))
    cfg = config_from_dict({
        "model": {"backbone": student, "pretrained": None, "mrl_dims": dims, "head_init": "random"},
        "data": {"crop_seconds": crop_seconds},
        "training": {"mode": "distill", "freeze_backbone": False, "batch_size": batch_size,
                     "mixed_precision": precision},
        "distill": {"teachers": [{"source": f, "dims": d, "weight": 1.0} for f, d in zip(files, split)],
                    "losses": {"embedding": 1.0, "similarity": 1.0, "aam": 0.5}},
    }, source=f"gpu-check distill {'+'.join(teachers)} -> {student}")
    torch.manual_seed(0)
    mode = make_mode(cfg, VOXCELEB2_SPEAKERS)
    module = mode.build(None, resuming=False).to(device)
    module.train()
    optimizer = make_optimizer(cfg, module, mode.trunk_parameters(module))
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    mode.attach(torch.device(device), autocast_dtype, 0)
    wave, label = synthetic_batch(batch_size, crop_seconds, VOXCELEB2_SPEAKERS, device)

    def step() -> torch.Tensor:
        extra = mode.extra_inputs({}, wave)  # the teachers' forward, under their own autocast
        with autocast_for(device, precision):
            loss, _ = module(wave, label, **extra)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    flops = count_flops(step)  # the first warm-up step, counted
    for _ in range(max(0, warmup - 1)):
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        _synchronize(device)
        began = time.perf_counter()
        for _ in range(steps):
            loss = step()
        float(loss)
        _synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - began))
    sizes = describe_parameters(module)
    peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if device == "cuda" else (None, None)
    del module, optimizer, mode, wave, label
    _free_device_memory(device)
    return {"crops_per_s": rates, "flops_per_crop": flops / batch_size, "peak_allocated_bytes": peak[0],
            "peak_reserved_bytes": peak[1], "parameters": sizes["parameters"], "trainable": sizes["trainable"]}


def bench_case(check: Check, kind: str, size: BenchSize) -> dict[str, Any]:
    """One bench row: crops/s, peak memory, FLOPs per crop and MFU of one mode at one size."""
    plan, device, precision = check.plan, check.device, check.precision
    row: dict[str, Any] = {"case": kind, "preset": plan.preset, "batch_size": size.batch_size,
                           "crop_seconds": size.crop_seconds, "precision": precision,
                           "configs": list(size.configs),
                           "teachers": list(plan.teachers) if kind == "distill" else None}
    if kind == "distill":
        measured = measure_distill_throughput(plan.teachers, plan.preset, size.batch_size, size.crop_seconds,
                                              plan.bench_steps, plan.bench_warmup, plan.bench_repeats, device,
                                              precision, check.work_dir)
    else:
        from ..train.bench import measure_throughput

        flops = _flops_per_crop_of_bench_mode(plan.preset, kind, size.batch_size, size.crop_seconds, device,
                                              precision)
        result = measure_throughput(plan.preset, kind, batch_size=size.batch_size, crop_seconds=size.crop_seconds,
                                    steps=plan.bench_steps, warmup=plan.bench_warmup, repeats=plan.bench_repeats,
                                    device=device, precision=precision)
        measured = {"crops_per_s": result.crops_per_second, "flops_per_crop": flops,
                    "peak_allocated_bytes": result.peak_allocated_bytes,
                    "peak_reserved_bytes": result.peak_reserved_bytes, "parameters": result.parameters,
                    "trainable": result.trainable}
    best = max(measured["crops_per_s"])
    row.update(status="ok", crops_per_s=best, crops_per_s_median=statistics.median(measured["crops_per_s"]),
               crops_per_s_blocks=measured["crops_per_s"], ms_per_step=1000 * size.batch_size / best,
               peak_allocated_bytes=measured["peak_allocated_bytes"],
               peak_reserved_bytes=measured["peak_reserved_bytes"], parameters=measured["parameters"],
               trainable=measured["trainable"], flops_per_crop=measured["flops_per_crop"],
               achieved_flops=measured["flops_per_crop"] * best,
               mfu=model_flops_utilisation(measured["flops_per_crop"], best, check.peak_flops))
    return row


def section_bench(check: Check) -> dict[str, Any]:
    rows = []
    sizes = check.plan.bench_sizes or bench_sizes_from_configs(check.args.configs or shipped_gpu_configs())
    # A GPU case takes ~10-20 s (model build, FLOP count, warm-up, timed blocks); --quick ~1 s.
    needs = 2.0 if check.args.quick else 20.0
    for size in sizes:
        for kind in BENCH_CASES:
            label = f"{kind} batch {size.batch_size}"
            if check.remaining() < needs:
                rows.append({"case": kind, "batch_size": size.batch_size, "crop_seconds": size.crop_seconds,
                             "preset": check.plan.preset, "status": "skipped", "reason": "time budget"})
                continue
            check.progress(f"bench: {label}")
            try:
                rows.append(bench_case(check, kind, size))
            except Exception as error:  # one case (an OOM, say) must not end the others
                rows.append({"case": kind, "batch_size": size.batch_size, "crop_seconds": size.crop_seconds,
                             "preset": check.plan.preset, "status": "failed",
                             "error": f"{type(error).__name__}: {error}"[:500]})
                check.progress(f"bench: {label} failed: {type(error).__name__}: {error}")
            # Outside the except block: its traceback kept the failed case's tensors alive.
            _free_device_memory(check.device)
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    section: dict[str, Any] = {"cases": rows, "sizes": [
        {"batch_size": z.batch_size, "crop_seconds": z.crop_seconds, "configs": list(z.configs)} for z in sizes]}
    if failed:
        section.update(status="failed", error="; ".join(f"{r['case']} batch {r['batch_size']}: {r['error']}"
                                                        for r in failed))
    elif not done:
        section.update(status="skipped", reason="time budget")
    else:
        fastest = max(done, key=lambda r: r["crops_per_s"])
        skipped = len(rows) - len(done)
        section.update(status="ok", summary=f"{len(done)} cases" + (f", {skipped} skipped (time budget)" if skipped
                                                                     else "")
                       + f"; fastest {fastest['crops_per_s']:,.0f} crops/s ({fastest['case']}, "
                         f"batch {fastest['batch_size']})")
    return section


# ---------------------------------------------------------------------------- subprocess plumbing

def accelerate_launch() -> list[str]:
    """`accelerate launch` from the console script beside this interpreter, else its module form."""
    script = Path(sys.executable).with_name("accelerate")
    if script.is_file():
        return [str(script), "launch"]
    return [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    """A TCP port nobody listens on now, for the torchrun rendezvous (fixed ports collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_prefix(check: Check, accelerate_config: str | None = None) -> list[str]:
    """`accelerate launch` for one process: CPU (simple launcher), one GPU over NCCL (torchrun
    through multi-gpu.yaml; plain --num_processes 1 would start an undistributed process) or a
    given accelerate config (DeepSpeed)."""
    launch = accelerate_launch()
    if check.device == "cpu":
        return [*launch, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                check.precision, "--dynamo_backend", "no"]
    config = accelerate_config or str(REPO / "configs" / "accelerate" / "multi-gpu.yaml")
    return [*launch, "--config_file", config, "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", check.precision, "--main_process_port", str(free_port())]


def subprocess_env(check: Check) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if check.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")  # small shared CPUs: no oversubscription
    return env


def output_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, progress-bar redraws (carriage returns) split into lines."""
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])[-6000:]


def _kill_tree(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the launcher and its ranks
    process.wait()


def run_logged(command: list[str], log: Path, timeout_s: float, env: dict[str, str], what: str) -> int:
    """Run `command` with stdout+stderr to `log`; kill it (and its children) after `timeout_s`."""
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            raise SectionError(f"{what}: killed after {timeout_s:.0f} s (time budget)", output_tail(log)) from None


def trainer_processes(launcher_pid: int) -> list[int]:
    """pids of the launch/train.py ranks under an `accelerate launch` process."""
    import psutil  # an accelerate dependency

    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(launcher_pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if any(part.endswith("train.py") for part in child.cmdline()):
                    found.append(child.pid)
    return found


_LOSS_LINE = re.compile(r" step (\d+) loss=")


def last_logged_step(train_log: Path, offset: int) -> int:
    if not train_log.is_file():
        return -1
    with open(train_log, encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        steps = [int(m.group(1)) for m in _LOSS_LINE.finditer(handle.read())]
    return max(steps, default=-1)


def run_and_sigterm(command: list[str], log: Path, train_log: Path, after_step: int, timeout_s: float,
                    env: dict[str, str]) -> tuple[int, int | None]:
    """Start a training launch, SIGTERM its trainer process(es) once train.log shows step
    `after_step`, and wait for the exit. Returns (exit code, step at which the signal went out;
    None if the run ended first). The ranks are signalled, not the launcher: accelerate's launcher
    answers SIGTERM by killing its child after 5 s, which is not how a preempted job ends."""
    offset = train_log.stat().st_size if train_log.is_file() else 0
    deadline = time.monotonic() + max(1.0, timeout_s)
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        signalled_at = None
        while process.poll() is None and time.monotonic() < deadline:
            step = last_logged_step(train_log, offset)
            if step >= after_step:
                ranks = trainer_processes(process.pid)
                for pid in ranks or [process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                signalled_at = step
                break
            time.sleep(0.05)
        try:
            return process.wait(timeout=max(1.0, deadline - time.monotonic())), signalled_at
        except subprocess.TimeoutExpired:
            _kill_tree(process)
            raise SectionError(f"{command[-1]}: killed after {timeout_s:.0f} s (time budget)",
                               output_tail(log)) from None


# ---------------------------------------------------------------------------- train.log parsing

_START_LINE = re.compile(r"mode=(\S+) ranks=(\d+) device=(\S+) precision=(\S+) .*start_step=(\d+)")
_ANY_STEP = re.compile(r"\bstep[ -](\d+)")
_RATE = re.compile(r" step (\d+) loss=.*crops_per_s=(\S+)")


def parse_train_log(text: str) -> list[dict[str, Any]]:
    """One entry per process lifetime (each starts with the trainer's "mode=... start_step=N" line):
    its start and last step, its "unfrozen" lines and its logged crops/s."""
    segments: list[dict[str, Any]] = []
    for line in text.splitlines():
        start = _START_LINE.search(line)
        if start:
            segments.append({"mode": start.group(1), "ranks": int(start.group(2)), "device": start.group(3),
                             "start_step": int(start.group(5)), "end_step": int(start.group(5)),
                             "unfreeze_lines": 0, "rates": [], "stopped_by_signal": False})
            continue
        if not segments:
            continue
        segment = segments[-1]
        segment["end_step"] = max([segment["end_step"], *(int(m) for m in _ANY_STEP.findall(line))])
        if "unfrozen" in line.lower():
            segment["unfreeze_lines"] += 1
        if "stop requested by signal" in line:
            segment["stopped_by_signal"] = True
        rate = _RATE.search(line)
        if rate:
            with contextlib.suppress(ValueError):
                segment["rates"].append(float(rate.group(2)))
    return segments


def expected_unfreeze_lines(segment: dict[str, Any], unfreeze_after: int) -> int:
    """1 if this process lifetime crossed the unfreeze step (started before it, ran past it), else
    0: a run resumed past the step unfreezes while building its model, before the loop."""
    return int(segment["start_step"] < unfreeze_after < segment["end_step"])


def steps_per_second(segment: dict[str, Any], crops_per_step: int) -> float | None:
    """Median of the logged crops/s over crops per step; the first interval (start-up, PCA,
    step-0 validation) is left out when there are others."""
    rates = segment["rates"][1:] or segment["rates"]
    return statistics.median(rates) / crops_per_step if rates else None


# ---------------------------------------------------------------------------- section: train-run

def run_config(check: Check, run_dir: Path, shards: Path, **sections: dict) -> dict[str, Any]:
    """A trainer config for the demo shards (the shape of tests/test_train.py's tiny_config)."""
    plan = check.plan
    config: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"backbone": plan.run_backbone, "pretrained": None, "mrl_dims": [64, 128, 192, 256],
                  "head_init": "random"},
        "data": {"train": str(shards / "train.manifest.json"), "val": str(shards / "val.manifest.json"),
                 "crop_seconds": plan.run_crop, "num_workers": plan.run_workers, "shuffle_buffer": 64},
        "training": {"mode": "classifier", "batch_size": plan.run_batch, "max_steps": plan.classifier_steps,
                     "steps_per_epoch": max(2, plan.every), "mixed_precision": check.precision,
                     "schedule": {"warmup_steps": 2, "decay": "cosine"}, "optimizer": {"name": "adamw", "lr": 0.002}},
        "validation": {"every_steps": plan.classifier_steps, "batch_size": 8, "max_seconds": plan.val_max_seconds},
        "checkpoint": {"every_steps": plan.classifier_steps, "keep_last": 2, "best_metric": "mean_eer"},
        "logging": {"every_steps": 1, "tensorboard": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _launch_record(name: str, command: list[str], rc: int, wall: float, segment: dict[str, Any] | None,
                   crops_per_step: int, unfreeze_after: int | None, log: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"launch": name, "command": shlex.join(command), "rc": rc, "wall_s": round(wall, 1),
                              "start_step": None, "end_step": None, "unfreeze_lines": None,
                              "unfreeze_expected": None, "steps_per_s": None}
    if segment is not None:
        record.update(start_step=segment["start_step"], end_step=segment["end_step"],
                      unfreeze_lines=segment["unfreeze_lines"], ranks=segment["ranks"], device=segment["device"],
                      steps_per_s=steps_per_second(segment, crops_per_step * segment["ranks"]))
        if unfreeze_after is not None:
            record["unfreeze_expected"] = expected_unfreeze_lines(segment, unfreeze_after)
    if rc != 0:
        record["output_tail"] = output_tail(log)
    return record


def _need(check: Check, seconds: float, what: str) -> float:
    """The time left for a subprocess, or SectionError when not even `seconds` are left."""
    left = check.remaining()
    if left < seconds:
        raise SectionError(f"time budget: {left:.0f} s left before {what}, which needs ~{seconds:.0f} s")
    return left


def section_train_run(check: Check) -> dict[str, Any]:
    from ..train import checkpointing as ckpt

    plan = check.plan
    shards = check.shards()
    root = check.work_dir / "train-run"
    root.mkdir(parents=True, exist_ok=True)
    env, log = subprocess_env(check), root / "launcher-output.log"
    train_py = str(REPO / "launch" / "train.py")
    launches: list[dict[str, Any]] = []
    startup = 20.0 if check.args.quick else 60.0  # imports, process group, model build, shards
    info: dict[str, Any] = {
        "launcher": "accelerate launch " + (
            "--cpu (1 process)" if check.device == "cpu"
            else "configs/accelerate/multi-gpu.yaml --num_processes 1 (torchrun, NCCL)"),
        "batch_size": plan.run_batch, "crop_seconds": plan.run_crop, "num_workers": plan.run_workers,
        "max_steps": plan.mrl_steps, "unfreeze_after_steps": plan.unfreeze_after,
        "sigterm_after_step": plan.sigterm_after, "launches": launches}

    # 1. A backbone: the MRL run needs a pretrained one for its frozen phase and unfreezing.
    backbone_dir = root / "classifier"
    config = write_config(root / "classifier.yaml", run_config(check, backbone_dir, shards))
    command = [*launch_prefix(check), train_py, "--config", str(config)]
    check.progress("train-run: classifier backbone")
    began = time.monotonic()
    rc = run_logged(command, log, _need(check, startup, "the classifier launch"), env, "classifier launch")
    segments = parse_train_log(_read(backbone_dir / "train.log"))
    launches.append(_launch_record("classifier (backbone)", command, rc, time.monotonic() - began,
                                   segments[-1] if segments else None, plan.run_batch, None, log))
    if rc != 0 or not (backbone_dir / "best.pt").is_file():
        raise SectionError(f"classifier launch exited {rc}" + ("" if rc else ", no best.pt written"),
                           output_tail(log), info)

    # 2. MRL on it: frozen, unfrozen at unfreeze_after, SIGTERM after sigterm_after, then resumed.
    mrl_dir = root / "mrl"
    config = write_config(root / "mrl.yaml", run_config(
        check, mrl_dir, shards,
        model={"backbone": str(backbone_dir / "best.pt"), "head_init": "pretrained"},
        training={"mode": "mrl", "freeze_backbone": True, "unfreeze_after_steps": plan.unfreeze_after,
                  "max_steps": plan.mrl_steps},
        validation={"every_steps": plan.every},
        checkpoint={"every_steps": plan.every}))
    command = [*launch_prefix(check), train_py, "--config", str(config)]
    check.progress(f"train-run: mrl, SIGTERM after step {plan.sigterm_after}")
    began = time.monotonic()
    rc, signalled_at = run_and_sigterm(command, log, mrl_dir / "train.log", plan.sigterm_after,
                                       _need(check, startup, "the MRL launch"), env)
    segments = parse_train_log(_read(mrl_dir / "train.log"))
    launches.append(_launch_record("mrl, SIGTERM", command, rc, time.monotonic() - began,
                                   segments[-1] if segments else None, plan.run_batch, plan.unfreeze_after, log))
    if rc != 0:
        raise SectionError(f"MRL launch exited {rc} after SIGTERM", output_tail(log), info)
    saved = ckpt.list_checkpoints(mrl_dir / "checkpoints")
    stopped_at = ckpt.read_trainer_state(saved[-1])["step"] if saved else None

    resume = [*launch_prefix(check), train_py, "--config", str(config), "--resume", "latest"]
    check.progress(f"train-run: mrl --resume latest (from step {stopped_at})")
    began = time.monotonic()
    rc = run_logged(resume, log, _need(check, startup, "the resumed MRL launch"), env, "resumed MRL launch")
    segments = parse_train_log(_read(mrl_dir / "train.log"))
    launches.append(_launch_record("mrl, --resume latest", resume, rc, time.monotonic() - began,
                                   segments[-1] if len(segments) >= 2 else None, plan.run_batch,
                                   plan.unfreeze_after, log))

    saved = ckpt.list_checkpoints(mrl_dir / "checkpoints")
    final_step = ckpt.read_trainer_state(saved[-1])["step"] if saved else None
    validations = [json.loads(line)["step"] for line in _read(mrl_dir / "metrics.jsonl").splitlines()
                   if line.strip()]
    unfreeze_lines = sum(s["unfreeze_lines"] for s in segments)
    unfreeze_expected = sum(expected_unfreeze_lines(s, plan.unfreeze_after) for s in segments)
    checks = train_run_checks(segments, signalled_at, stopped_at, rc, final_step, validations, plan)
    failed = [f"{name}: {detail}" for name, (ok, detail) in checks.items() if not ok]
    resumed_rate = launches[-1]["steps_per_s"]
    section: dict[str, Any] = {
        **info, "stopped_at": stopped_at, "final_step": final_step, "finished": checks["finished"][0],
        "unfreeze_lines": unfreeze_lines, "unfreeze_expected": unfreeze_expected, "validations": validations,
        "checkpoints": [p.name for p in saved],
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }
    if rc != 0:
        section["output_tail"] = output_tail(log)
    if failed:
        section.update(status="failed", error="checks failed: " + "; ".join(failed))
    else:
        section.update(status="ok", summary=f"finished at step {final_step}, stopped at {stopped_at} and resumed; "
                                            f"{unfreeze_lines} 'unfrozen' line(s); {len(validations)} validations"
                                            + (f"; {resumed_rate:.2f} steps/s" if resumed_rate else ""))
    return section


def train_run_checks(segments: list[dict[str, Any]], signalled_at: int | None, stopped_at: int | None, rc: int,
                     final_step: int | None, validations: list[int], plan: Plan) -> dict[str, tuple[bool, str]]:
    """name -> (passed, what was seen) for the SIGTERM / resume / unfreeze run."""
    first = segments[0] if segments else None
    second = segments[1] if len(segments) >= 2 else None
    expected = [expected_unfreeze_lines(s, plan.unfreeze_after) for s in segments]
    seen = [s["unfreeze_lines"] for s in segments]
    stop_logged = first is not None and first["stopped_by_signal"]
    return {
        "sigterm_sent": (signalled_at is not None,
                         f"signal at step {signalled_at}" if signalled_at is not None
                         else "the run ended before train.log showed the step to signal at"),
        "sigterm_exit_zero_with_checkpoint": (
            stop_logged and stopped_at is not None,
            f"stopped at step {stopped_at}, 'stop requested by signal' {'logged' if stop_logged else 'not logged'}"),
        "resumed_from_checkpoint": (
            second is not None and second["start_step"] == stopped_at,
            f"second launch start_step={second['start_step'] if second else None}, checkpoint step {stopped_at}"),
        "finished": (rc == 0 and final_step == plan.mrl_steps,
                     f"resumed launch exit {rc}, last checkpoint step {final_step} of {plan.mrl_steps}"),
        # Once per process lifetime that crossed the step; a resumed run unfreezes while building.
        "unfreeze_logged_once_per_crossing": (
            seen == expected,
            f"{sum(seen)} 'unfrozen' lines in train.log (per launch: {seen}), expected {sum(expected)} ({expected})"),
        "validated_at_the_end": (bool(validations) and validations[-1] == plan.mrl_steps,
                                 f"validations at steps {validations}"),
    }


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


# ---------------------------------------------------------------------------- section: deepspeed

def deepspeed_version(env: dict[str, str]) -> tuple[str | None, str]:
    """(version, import output) from `import deepspeed` in a fresh interpreter: its import probes
    CUDA and compilers, which must not leave state in this process."""
    try:
        result = subprocess.run([sys.executable, "-c", "import deepspeed; print(deepspeed.__version__)"],
                                capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired:
        return None, "import deepspeed timed out after 180 s"
    lines = result.stdout.strip().splitlines()
    return (lines[-1] if result.returncode == 0 and lines else None), (result.stdout + result.stderr)[-3000:]


def section_deepspeed(check: Check) -> dict[str, Any]:
    if check.device != "cuda":
        return {"status": "skipped", "reason": "needs CUDA (DeepSpeed runs on GPUs only here)"}
    env = subprocess_env(check)
    version, import_output = deepspeed_version(env)
    installed_now = False
    if version is None:
        if not check.args.install_deepspeed:
            return {"status": "skipped",
                    "reason": "deepspeed not installed (pass --install-deepspeed to pip install it)",
                    "import_output": import_output[-1000:]}
        root = check.work_dir / "deepspeed"
        root.mkdir(parents=True, exist_ok=True)
        pip_log = root / "pip-install.log"
        check.progress("deepspeed: pip install deepspeed")
        rc = run_logged([sys.executable, "-m", "pip", "install", "deepspeed"], pip_log,
                        min(300.0, _need(check, 60, "pip install deepspeed")), env, "pip install deepspeed")
        version, import_output = deepspeed_version(env)
        if rc != 0 or version is None:
            raise SectionError(f"pip install deepspeed exited {rc}"
                               + ("" if rc else "; deepspeed still does not import"),
                               output_tail(pip_log) + "\n" + import_output[-1500:])
        installed_now = True

    plan = check.plan
    shards = check.shards()
    root = check.work_dir / "deepspeed"
    root.mkdir(parents=True, exist_ok=True)
    run_dir, log = root / "run", root / "launcher-output.log"
    every = max(1, plan.deepspeed_steps // 2)
    config = write_config(root / "zero2.yaml", run_config(
        check, run_dir, shards, training={"max_steps": plan.deepspeed_steps, "grad_clip": 5.0},
        validation={"every_steps": plan.deepspeed_steps}, checkpoint={"every_steps": every}))
    command = [*launch_prefix(check, str(REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml")),
               str(REPO / "launch" / "train.py"), "--config", str(config)]
    check.progress(f"deepspeed: ZeRO-2, {plan.deepspeed_steps} steps")
    began = time.monotonic()
    rc = run_logged(command, log, _need(check, 60, "the DeepSpeed launch"), env, "DeepSpeed launch")
    wall = time.monotonic() - began
    segments = parse_train_log(_read(run_dir / "train.log"))
    from ..train import checkpointing as ckpt

    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    final_step = ckpt.read_trainer_state(saved[-1])["step"] if saved else None
    rate = steps_per_second(segments[-1], plan.run_batch) if segments else None
    section: dict[str, Any] = {"deepspeed": version, "installed_now": installed_now, "command": shlex.join(command),
                               "rc": rc, "wall_s": round(wall, 1), "final_step": final_step,
                               "max_steps": plan.deepspeed_steps, "steps_per_s": rate,
                               "checkpoints": [p.name for p in saved]}
    if rc != 0 or final_step != plan.deepspeed_steps:
        section.update(status="failed", output_tail=output_tail(log),
                       error=f"DeepSpeed launch exited {rc}, last checkpoint step {final_step} "
                             f"of {plan.deepspeed_steps}")
    else:
        section.update(status="ok", summary=f"deepspeed {version}: {final_step} ZeRO-2 steps"
                                            + (f", {rate:.2f} steps/s" if rate else ""))
    return section


# ---------------------------------------------------------------------------- section: loader

def time_loader(manifest: Path, num_workers: int, batch_size: int, crop_seconds: float, seconds: float,
                device: str) -> dict[str, Any]:
    """Crops/s of make_train_loader's batches copied into device memory, after warm-up batches
    (each worker's first batch carries its start-up); timed for `seconds`, at least 2 batches."""
    from ..data.pipeline import make_train_loader

    cuda = device == "cuda"
    loader = make_train_loader(manifest, batch_size=batch_size, crop_seconds=crop_seconds, num_workers=num_workers,
                               seed=0, rank=0, world_size=1, shuffle_buffer=256, steps_per_epoch=100_000,
                               pin_memory=cuda)
    batches = iter(loader)
    began = time.perf_counter()
    for _ in range(max(1, num_workers) + 1):
        next(batches)["wave"].to(device, non_blocking=cuda)
    first = time.perf_counter() - began
    _synchronize(device)
    count, began = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - began < seconds:
        next(batches)["wave"].to(device, non_blocking=cuda)
        count += 1
    _synchronize(device)
    elapsed = time.perf_counter() - began
    batches.close()  # ends the epoch's DataLoader, which shuts its workers down
    return {"num_workers": num_workers, "batch_size": batch_size, "crop_seconds": crop_seconds,
            "crops_per_s": count * batch_size / elapsed, "batches_timed": count, "warmup_s": round(first, 2),
            "status": "ok"}


def section_loader(check: Check) -> dict[str, Any]:
    plan = check.plan
    manifest = check.shards() / "train.manifest.json"
    rows = []
    for workers in check.args.loader_workers:
        if check.remaining() < plan.loader_seconds + 5:
            rows.append({"num_workers": workers, "status": "skipped", "reason": "time budget"})
            continue
        check.progress(f"loader: {workers} workers")
        try:
            rows.append(time_loader(manifest, workers, plan.loader_batch, plan.loader_crop, plan.loader_seconds,
                                    check.device))
        except Exception as error:
            rows.append({"num_workers": workers, "status": "failed", "error": f"{type(error).__name__}: {error}"[:500]})
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] == "ok"]
    section: dict[str, Any] = {"rows": rows, "into": check.device, "pin_memory": check.device == "cuda"}
    if failed:
        section.update(status="failed", error="; ".join(f"{r['num_workers']} workers: {r['error']}" for r in failed))
    elif not done:
        section.update(status="skipped", reason="time budget")
    else:
        best = max(done, key=lambda r: r["crops_per_s"])
        section.update(status="ok", summary=f"best {best['crops_per_s']:,.0f} crops/s with {best['num_workers']} "
                                            f"workers (batch {best['batch_size']}, {best['crop_seconds']:g} s crops)")
    return section


# ---------------------------------------------------------------------------- running it all

SECTION_FUNCTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "bench": section_bench, "train-run": section_train_run, "loader": section_loader, "deepspeed": section_deepspeed,
}
# Below this many seconds left a section is not started (GPU pass / --quick).
SECTION_MINIMUM_S = {"bench": (30, 3), "train-run": (150, 30), "loader": (15, 3), "deepspeed": (60, 5)}


def run_section(check: Check, name: str) -> dict[str, Any]:
    """Run one section, never raising: a failure becomes {"status": "failed", "error": ...}."""
    minimum = SECTION_MINIMUM_S[name][1 if check.args.quick else 0]
    if check.remaining() < minimum:
        check.progress(f"{name}: skipped (time budget: {check.remaining():.0f} s left, needs ~{minimum} s)")
        return {"status": "skipped", "reason": "time budget", "elapsed_s": 0.0}
    check.progress(f"{name}: start")
    began = time.monotonic()
    try:
        result = SECTION_FUNCTIONS[name](check)
    except SectionError as error:
        result = {**error.details, "status": "failed", "error": str(error)}
        if error.output_tail:
            result["output_tail"] = error.output_tail
    except Exception as error:  # any other bug or device error: recorded, the next section runs
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()[-4000:]}
    _free_device_memory(check.device)  # after the except block, whose traceback held the tensors
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    ending = result.get("summary") or result.get("reason") or result.get("error", "")
    check.progress(f"{name}: {result['status']} in {result['elapsed_s']:.1f} s: {ending[:300]}")
    return result


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "launch/gpu_check.py", *argv])


def run_all(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Every requested section in order; the JSON and Markdown are rewritten after each one, so
    an interrupted check still leaves what it measured."""
    started = time.monotonic()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    temporary = args.work_dir is None
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info(args.device)
    peak, peak_source = device_peak_flops(info["gpu"], args.peak_tflops)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv), "machine": info,
        "settings": {"device": args.device, "quick": args.quick, "precision": args.precision,
                     "time_budget_s": args.time_budget_s, "peak_flops": peak, "peak_source": peak_source,
                     "sections": list(args.sections)},
        "sections": {}, "elapsed_s": 0.0, "ok": True,
    }
    check = Check(args=args, plan=make_plan(args), work_dir=work_dir, deadline=started + args.time_budget_s,
                  started=started, peak_flops=peak)
    report["settings"]["plan"] = _plan_summary(check.plan)
    check.progress(f"device {args.device} ({info['gpu'] or info['cpu']}), precision {args.precision}, "
                   f"budget {args.time_budget_s:.0f} s, work dir {work_dir}")
    for name in SECTIONS:
        if name not in args.sections:
            continue
        report["sections"][name] = run_section(check, name)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        report["ok"] = all(s["status"] != "failed" for s in report["sections"].values())
        write_outputs(report, output)
    if temporary and report["ok"] and not args.keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        report["work_dir"] = str(work_dir)
        write_outputs(report, output)
        check.progress(f"work dir kept: {work_dir}")
    return report


def _plan_summary(plan: Plan) -> dict[str, Any]:
    summary = {k: v for k, v in plan.__dict__.items() if k != "bench_sizes"}
    summary["teachers"] = list(plan.teachers)
    return summary  # the bench sizes are in the bench section


def write_outputs(report: dict[str, Any], output: Path) -> None:
    (output / JSON_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output / MARKDOWN_NAME).write_text(render_markdown(report))


# ---------------------------------------------------------------------------- Markdown

def _cell(text: Any, limit: int = 220) -> str:
    """A table cell: one line, pipes escaped, long errors cut."""
    value = " ".join(str(text).split()).replace("|", "\\|")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _gib(value: int | None) -> str:
    return "n/a (CPU)" if value is None else f"{value / 2**30:.2f} GiB"


def _mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _rate(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _machine_line(machine: dict[str, Any]) -> str:
    parts = []
    if machine.get("gpu"):
        gpu = machine["gpu"] + (f" ({machine['gpu_memory_gib']} GiB)" if machine.get("gpu_memory_gib") else "")
        parts += [gpu, f"driver {machine.get('driver') or 'unknown'}",
                  f"CUDA {machine.get('cuda_runtime')} (torch build)"]
        if machine.get("cudnn"):
            parts.append(f"cuDNN {machine['cudnn']}")
    else:
        parts.append(f"no GPU ({machine.get('cpu')})")
    parts += [f"torch {machine.get('torch')}", f"accelerate {machine.get('accelerate')}",
              f"{machine.get('cpu_count')} CPUs ({machine.get('cpus_usable')} usable)",
              f"Python {machine.get('python')}"]
    return ", ".join(parts)


def _section_result(section: dict[str, Any]) -> str:
    status = section.get("status")
    if status == "ok":
        return _cell(section.get("summary", ""))
    if status == "skipped":
        return _cell(section.get("reason", ""))
    return _cell(section.get("error", ""))


def _bench_table(cases: Iterable[dict[str, Any]]) -> list[str]:
    lines = ["| case | model | batch | crop | precision | crops/s (best) | crops/s (median) | ms/step "
             "| peak alloc | GFLOP/crop | TFLOP/s | MFU | configs |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for row in cases:
        model = row.get("preset", "")
        if row.get("teachers"):
            model = "+".join(row["teachers"]) + " -> " + model
        head = (f"| {row['case']} | {model} | {row['batch_size']} | {row['crop_seconds']:g} s "
                f"| {row.get('precision', '-')}")
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(f"{head} | {row['status']}: {_cell(note, 120)} | - | - | - | - | - | - | "
                         f"{', '.join(row.get('configs') or []) or '-'} |")
            continue
        lines.append(f"{head} | {_rate(row['crops_per_s'])} | {_rate(row['crops_per_s_median'])} "
                     f"| {row['ms_per_step']:,.0f} | {_gib(row['peak_allocated_bytes'])} "
                     f"| {row['flops_per_crop'] / 1e9:.2f} | {row['achieved_flops'] / 1e12:.2f} | {_mfu(row['mfu'])} "
                     f"| {', '.join(row['configs'])} |")
    return lines


def _train_run_lines(section: dict[str, Any]) -> list[str]:
    lines = [f"Launcher: {section.get('launcher')}; batch {section.get('batch_size')} of "
             f"{section.get('crop_seconds', 0):g} s crops, {section.get('num_workers')} loader workers; MRL run of "
             f"{section.get('max_steps')} steps, unfreeze_after_steps {section.get('unfreeze_after_steps')}, "
             f"SIGTERM after step {section.get('sigterm_after_step')}.", "",
             "| launch | exit | start step | end step | 'unfrozen' lines (expected) | steps/s | wall |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for launch in section.get("launches", []):
        unfrozen = "-" if launch.get("unfreeze_expected") is None else \
            f"{launch['unfreeze_lines']} ({launch['unfreeze_expected']})"
        lines.append(f"| {launch['launch']} | {launch['rc']} | {launch.get('start_step', '-')} "
                     f"| {launch.get('end_step', '-')} | {unfrozen} | {_rate(launch.get('steps_per_s'), 2)} "
                     f"| {launch['wall_s']:.0f} s |")
    if "validations" in section:  # absent when a launch failed before the run's end
        lines += ["", f"Validations at steps {section['validations']}; checkpoints kept: "
                      f"{', '.join(section.get('checkpoints', [])) or 'none'}; finished: "
                      f"{'yes' if section.get('finished') else 'no'}."]
    if section.get("checks"):
        lines.append("")
    for name, result in section.get("checks", {}).items():
        lines.append(f"- {'ok' if result['ok'] else 'FAILED'}: {name} ({_cell(result['detail'], 300)})")
    return lines


def _loader_table(section: dict[str, Any]) -> list[str]:
    lines = [f"Batches from `make_train_loader` on the demo shards, copied to {section.get('into')}"
             f"{' from pinned memory' if section.get('pin_memory') else ''}.", "",
             "| loader workers | batch | crop | crops/s | batches timed | warm-up |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in section.get("rows", []):
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(f"| {row['num_workers']} | - | - | {row['status']}: {_cell(note, 120)} | - | - |")
            continue
        lines.append(f"| {row['num_workers']} | {row['batch_size']} | {row['crop_seconds']:g} s "
                     f"| {_rate(row['crops_per_s'], 0)} | {row['batches_timed']} | {row['warmup_s']:.1f} s |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown for docs/benchmarks.md: machine, date, command, one summary row per
    section, then each section's table."""
    machine, settings = report.get("machine", {}), report.get("settings", {})
    sections = report.get("sections", {})
    peak = settings.get("peak_flops")
    title = machine.get("gpu") or f"{settings.get('device', 'cpu')} (no GPU)"
    lines = [f"### GPU check: {title}", "",
             f"- Machine: {_machine_line(machine)}",
             f"- Date: {report.get('date')}",
             f"- Command: `{report.get('command')}`",
             f"- Precision: {settings.get('precision')}; MFU against "
             + (f"{peak / 1e12:g} TFLOP/s ({settings.get('peak_source')})" if peak else
                f"no known peak ({settings.get('peak_source')}): MFU n/a"),
             f"- Took {report.get('elapsed_s', 0):.0f} s of a {settings.get('time_budget_s', 0):.0f} s budget"
             + ("; --quick sizes" if settings.get("quick") else ""), "",
             "| section | status | result | time |", "| --- | --- | --- | ---: |"]
    for name, section in sections.items():
        lines.append(f"| {name} | {section.get('status')} | {_section_result(section)} "
                     f"| {section.get('elapsed_s', 0):.0f} s |")
    if sections.get("bench", {}).get("cases"):
        lines += ["", "#### Training step, synthetic batch on the device (`mrl_dist/train/bench.py`)", ""]
        lines += _bench_table(sections["bench"]["cases"])
    if sections.get("train-run", {}).get("launches"):
        lines += ["", "#### `accelerate launch` of launch/train.py on demo shards", ""]
        lines += _train_run_lines(sections["train-run"])
    if sections.get("loader", {}).get("rows"):
        lines += ["", "#### Loader: shards to device memory", ""]
        lines += _loader_table(sections["loader"])
    deepspeed = sections.get("deepspeed", {})
    if deepspeed.get("status") in ("ok", "failed") and deepspeed.get("command"):
        lines += ["", "#### DeepSpeed ZeRO-2", "",
                  f"deepspeed {deepspeed.get('deepspeed')}: exit {deepspeed.get('rc')}, last checkpoint step "
                  f"{deepspeed.get('final_step')} of {deepspeed.get('max_steps')}, "
                  f"{_rate(deepspeed.get('steps_per_s'), 2)} steps/s, {deepspeed.get('wall_s', 0):.0f} s; "
                  f"`{deepspeed.get('command')}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device; for the CPU self-test run "
              "python launch/gpu_check.py --device cpu --quick", file=sys.stderr)
        return 2
    report = run_all(args, argv)
    print(render_markdown(report))
    statuses = {name: s["status"] for name, s in report["sections"].items()}
    print(f"wrote {Path(args.output) / JSON_NAME} and {Path(args.output) / MARKDOWN_NAME}; "
          f"sections: {statuses}", file=sys.stderr)
    return 0 if report["ok"] else 1
