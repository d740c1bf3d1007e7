"""The check's arguments and its Plan: every size it uses, the full GPU pass or the tiny --quick one,
with the bench sizes read from the shipped GPU configs."""

from __future__ import annotations

import argparse
import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SECTIONS = ("bench", "train-run", "loader", "deepspeed")  # in order of value: what a short budget keeps
COMPILE_BACKENDS = ("inductor", "aot_eager", "none")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from .. import gpu_check  # the package, complete by the time arguments are parsed

    summary = gpu_check.__doc__.split("\n\n")[0]  # the package docstring's first paragraph
    parser = argparse.ArgumentParser(
        prog="launch/gpu_check.py", description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="gpu-check", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes everywhere (tiny preset, batch 4, short crops, a few steps)"
    )
    parser.add_argument(
        "--time-budget-s", type=float, default=480.0, help="global deadline; sections that no longer fit are skipped"
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these sections"
    )
    parser.add_argument(
        "--precision",
        choices=("bf16", "no"),
        default=None,
        help="autocast precision (default: bf16 on cuda, no on cpu)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak in TFLOP/s, for MFU (overrides the table)",
    )
    parser.add_argument(
        "--install-deepspeed", action="store_true", help="pip install deepspeed when it does not import"
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        nargs="+",
        default=None,
        help="loader worker counts to time (default 0 2 4 8; --quick: 0 2)",
    )
    parser.add_argument(
        "--loader-codecs",
        nargs="+",
        choices=("flac", "pcm"),
        default=["flac", "pcm"],
        help="shard codecs the loader section times (make_shards --codec)",
    )
    parser.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default=None,
        help="torch.compile backend of the bench's compiled step (training.compile); none leaves it out "
        "(default: inductor; --quick: aot_eager, which traces without generating kernels)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="run configs whose batch sizes are benched (default: the shipped GPU configs)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="scratch folder for shards and runs (default: a temporary one, removed "
        "unless a section failed or --keep-work)",
    )
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args(argv)
    if args.time_budget_s <= 0:
        parser.error("--time-budget-s must be > 0")
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "no"
    if args.loader_workers is None:
        args.loader_workers = [0, 2] if args.quick else [0, 2, 4, 8]
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.quick else "inductor"
    return args


@dataclass(frozen=True)
class BenchSize:
    batch_size: int
    crop_seconds: float
    configs: tuple[str, ...]  # config files (stems) that train at this size
    modes: tuple[str, ...] = ()  # their training.mode values ("mrl", "classifier", "distill")


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
    loader_seconds: float  # timed per codec and worker count, after the warm-up batches
    bench_case_s: float  # what one eager bench case takes (model build, FLOP count, warm-up, timed blocks)
    compile_timeout_s: float  # the compiled bench case's subprocess is killed after this
    # Seconds the bench leaves for these later sections (the DeepSpeed check, last in value, gets
    # what is left), so that a slow bench cannot crowd out the real training run.
    reserve_s: tuple[tuple[str, float], ...] = ()
    corpus_speakers: int = 8
    corpus_utterances: int = 6


def shipped_gpu_configs() -> list[str]:
    """Every configs/*.yaml; `bench_sizes_from_configs` keeps those that train in mixed precision."""
    return sorted(glob.glob(str(REPO / "configs" / "*.yaml")))


def bench_sizes_from_configs(paths: Sequence[str]) -> tuple[BenchSize, ...]:
    """One BenchSize per distinct (training.batch_size, data.crop_seconds) of the GPU configs."""
    from ...config import load_config

    sizes: dict[tuple[int, float], list[tuple[str, str]]] = {}
    for path in paths:
        cfg = load_config(path)
        if cfg.training.mixed_precision == "no":
            continue  # a CPU config
        key = (cfg.training.batch_size, cfg.data.crop_seconds)
        sizes.setdefault(key, []).append((Path(path).stem, cfg.training.mode))
    if not sizes:
        raise ValueError(f"no GPU config (mixed_precision bf16/fp16) among {list(paths)}")
    return tuple(
        BenchSize(b, c, tuple(name for name, _ in found), tuple(sorted({mode for _, mode in found})))
        for (b, c), found in sorted(sizes.items())
    )


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            preset="tiny",
            teachers=("tiny", "tiny"),
            bench_sizes=(BenchSize(4, 0.5, ("quick",)),),
            bench_steps=2,
            bench_warmup=1,
            bench_repeats=1,
            run_backbone="tiny",
            run_batch=4,
            run_crop=1.0,
            run_workers=0,
            classifier_steps=2,
            mrl_steps=8,
            unfreeze_after=3,
            sigterm_after=4,
            every=4,
            val_max_seconds=1.0,
            deepspeed_steps=4,
            loader_batch=4,
            loader_crop=1.0,
            loader_seconds=1.0,
            bench_case_s=2.0,
            compile_timeout_s=90.0,
            reserve_s=(("train-run", 30.0), ("loader", 8.0)),
        )
    return Plan(
        preset="b2",
        teachers=("b0", "b2"),
        bench_sizes=None,
        bench_steps=20,
        bench_warmup=5,
        bench_repeats=2,
        run_backbone="b2",
        run_batch=32,
        run_crop=2.0,
        run_workers=4,
        classifier_steps=10,
        mrl_steps=60,
        unfreeze_after=20,
        sigterm_after=30,
        every=20,
        val_max_seconds=4.0,
        deepspeed_steps=30,
        loader_batch=256,
        loader_crop=2.0,
        loader_seconds=3.0,
        bench_case_s=20.0,
        compile_timeout_s=180.0,
        # Three trainer launches of well under a minute each on a GPU; 2 codecs x 4 worker counts
        # of 3 s + warm-up, and the end-to-end row.
        reserve_s=(("train-run", 150.0), ("loader", 50.0)),
    )
