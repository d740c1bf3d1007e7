"""Command lines of the benchmarks and the GPU check: `launch/bench_train.py`, `bench_loader.py`,
`bench_inference.py`, `bench_distill.py`, `bench_features.py` and `gpu_check.py`.

Arguments and printing live here; what is measured lives beside it (bench.py, bench_loader.py,
bench_inference.py, bench_distill.py, bench_features.py, memory.py, gpu_check/), imported by the
command that needs it so that one command's --help does not import every benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ..cli_errors import InputError, add_error_options, command, program_name
from ..models import PRESETS
from .bench import BENCH_MODES, VOXCELEB2_SPEAKERS, ThroughputResult, measure_throughput
from .machine import bench_header

# --- bench_train ------------------------------------------------------------------------------


def parse_bench_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_train.py"),
        description="Training-step throughput of one preset and mode, or the memory estimate of the shipped configs.",
    )
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--mode", default="classifier", choices=BENCH_MODES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=1, help="timed blocks; best and median are printed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--num-classes", type=int, default=VOXCELEB2_SPEAKERS, help="speaker classes of the AAM loss")
    parser.add_argument(
        "--sampled-classes", type=int, help="loss.sampled_classes: classes scored per step (default: every class)"
    )
    parser.add_argument("--compile", action="store_true", help="training.compile: the step's forward via torch.compile")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="with --compile: the torch.compile backend (the trainer's is inductor; aot_eager traces without "
        "generating kernels)",
    )
    parser.add_argument("--json", type=Path, help="also write the result's fields to this JSON file")
    parser.add_argument(
        "--from-features",
        action="store_true",
        help="mrl-frozen only: the head's step on pooled features, as data.features trains (no trunk)",
    )
    parser.add_argument(
        "--estimate-memory",
        nargs="+",
        metavar="CONFIG",
        help="print the estimated peak memory of these configs (those with a known card) and exit",
    )
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_train.py")
def bench_train_main(argv: list[str]) -> int:
    """`launch/bench_train.py`: a Markdown throughput row (mrl_dist/tools/bench.py), or with
    --estimate-memory the memory tables of configs (mrl_dist/tools/memory.py); 2 without CUDA."""
    args = parse_bench_train_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(bench_header(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"))
    if args.estimate_memory:
        from .memory import config_memory_tables

        training, validation = config_memory_tables(
            args.estimate_memory, num_classes=args.num_classes, sampled_classes=args.sampled_classes
        )
        classes = f"{args.num_classes:,} classes" + (
            f", {args.sampled_classes:,} sampled per step" if args.sampled_classes else ""
        )
        print(f"\n# AAM loss over {classes}")
        print("\nTraining step, estimated peak memory per device (CPU-measured, see mrl_dist/tools/memory.py):\n")
        print(training)
        print("\nValidation on rank 0, estimated peak memory (batch of utterances padded to the length shown):\n")
        print(validation)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device")
    if args.from_features and args.mode != "mrl-frozen":
        raise InputError(f"--from-features trains a frozen trunk's head: use --mode mrl-frozen, not {args.mode}")
    result = measure_throughput(
        args.preset,
        args.mode,
        batch_size=args.batch_size,
        crop_seconds=args.crop_seconds,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        precision=args.precision,
        num_classes=args.num_classes,
        compile=args.compile,
        from_features=args.from_features,
        sampled_classes=args.sampled_classes,
        compile_backend=args.compile_backend,
    )
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    print(ThroughputResult.MARKDOWN_HEADER)
    print(result.markdown_row())
    print("# crops/s per repeat: " + ", ".join(f"{rate:.1f}" for rate in result.crops_per_second))
    step = f"compiled (training.compile, {args.compile_backend})" if args.compile else "eager"
    inputs = "pooled features" if args.from_features else f"{args.crop_seconds:g} s waves"
    classes = f"{args.num_classes:,} classes" + (f", {args.sampled_classes:,} sampled" if args.sampled_classes else "")
    print(f"# {step} step on {inputs}, {classes}; first step {result.first_step_seconds:.2f} s")
    return 0


# --- bench_loader -----------------------------------------------------------------------------


def parse_bench_loader_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_loader.py"),
        description="Crops per second of one loader worker: shard pipeline vs naive per-file loading vs raw limit, "
        "per shard codec (FLAC, PCM), with the disk each codec takes.",
    )
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0, help="utterance length")
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--crops", type=int, default=3000, help="crops timed per loader")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of N interleaved runs")
    parser.add_argument("--no-m4a", action="store_true", help="skip the naive m4a row")
    parser.add_argument(
        "--decode-paths", action="store_true", help="also time other ways of cutting a crop out of stored audio"
    )
    parser.add_argument(
        "--storage-corpus",
        type=Path,
        help="also pack this VoxCeleb-layout folder (real speech) with each codec and report its bytes per "
        "second of audio",
    )
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_loader.py")
def bench_loader_main(argv: list[str]) -> int:
    """`launch/bench_loader.py`: a Markdown table of the loaders of mrl_dist/tools/bench_loader.py."""
    args = parse_bench_loader_args(argv)
    torch.set_num_threads(1)  # one loader worker is one core
    if args.storage_corpus is not None and not args.storage_corpus.is_dir():
        raise InputError(f"--storage-corpus {args.storage_corpus}: not a folder (a VoxCeleb-layout corpus)")
    from . import bench_loader as bench

    whole, best, storage = bench.measure_loaders(
        args.utterances, args.seconds, args.crop_seconds, args.crops, args.batch_size, args.repeats, m4a=not args.no_m4a
    )
    pipeline, raw = best[bench.pipeline_row("flac")], best[bench.raw_row("flac")]
    print(bench_header())
    print(
        f"# {args.utterances} x {args.seconds:g} s utterances, {args.crop_seconds:g} s crops, "
        f"batch {args.batch_size}, one worker, best of {args.repeats}"
    )
    print("| loader | crops/s (best 4-batch window) | crops/s (whole run) | time per crop vs FLAC raw |")
    print("| --- | ---: | ---: | ---: |")
    for name in best:
        print(f"| {name} | {best[name]:,.0f} | {whole[name]:,.0f} | {raw / best[name]:.2f}x |")
    print(
        f"\nflac pipeline: {raw / pipeline:.2f}x the raw limit's time per crop (target <= 1.5x), "
        f"{pipeline / best[bench.NAIVE_FLAC]:.2f}x the naive FLAC loader's crops/s (target >= 2x)\n"
    )
    print(_codec_table(bench, best, storage, f"VoxCeleb2 dev ({bench.VOXCELEB2_HOURS:,} h), estimate"))
    if args.storage_corpus is not None:
        real = bench.measure_storage(args.storage_corpus)
        print(f"\n# storage of {args.storage_corpus} packed with each codec (real speech)")
        print("| codec | bytes per audio second | bytes per crop | VoxCeleb2 dev, estimate |")
        print("| --- | ---: | ---: | ---: |")
        for codec, measured in real.items():
            print(
                f"| {codec} | {measured.bytes_per_audio_second:,.0f} | {measured.bytes_per_crop / 1e3:,.1f} kB "
                f"| {measured.voxceleb2_dev_bytes / 1e9:,.0f} GB |"
            )
    if args.decode_paths:
        print(f"\n# one {args.seconds:g} s utterance in memory, a random {args.crop_seconds:g} s crop each time")
        print("| way to get a crop | us per crop | crops/s per core |")
        print("| --- | ---: | ---: |")
        paths = bench.measure_decode_paths(args.seconds, args.crop_seconds, args.crops, args.repeats)
        for name, micros in paths.items():
            print(f"| {name} | {micros:,.1f} | {1e6 / micros:,.0f} |")
    return 0


def _codec_table(bench, best: dict[str, float], storage: dict, disk_header: str) -> str:
    """The per-codec summary: crops/s per core (pipeline and raw), bytes read per crop, disk."""
    lines = [
        f"| codec | crops/s per core, pipeline | crops/s per core, raw | bytes read per crop | "
        f"bytes per audio second | {disk_header} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for codec, measured in storage.items():
        lines.append(
            f"| {codec} | {best[bench.pipeline_row(codec)]:,.0f} | {best[bench.raw_row(codec)]:,.0f} "
            f"| {measured.bytes_per_crop / 1e3:,.1f} kB | {measured.bytes_per_audio_second:,.0f} "
            f"| {measured.voxceleb2_dev_bytes / 1e9:,.0f} GB |"
        )
    return "\n".join(lines)


# --- bench_inference --------------------------------------------------------------------------


def parse_bench_inference_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_inference.py"),
        description="Trunk inference speed: plain eval form vs `inference_form` (mrl_dist/models/inference.py).",
    )
    parser.add_argument("--preset", default="b2", choices=PRESETS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each form")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each form first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--mrl", action="store_true", help="ReDimNetMRL (dims 32/64/192) instead of the plain model")
    parser.add_argument("--no-channels-last", action="store_true", help="inference_form(channels_last=False)")
    parser.add_argument("--compile", action="store_true", help="inference_form(compile=True)")
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_inference.py")
def bench_inference_main(argv: list[str]) -> int:
    """`launch/bench_inference.py`: the largest output difference, a Markdown row (best and median
    ms/batch of each form, speed-up of the bests) and a machine line (mrl_dist/tools/bench_inference.py)."""
    args = parse_bench_inference_args(argv)
    torch.set_num_threads(args.threads)
    from .bench_inference import measure_inference

    timing = measure_inference(
        args.preset,
        args.batch_size,
        args.seconds,
        args.repeats,
        args.warmup,
        mrl=args.mrl,
        channels_last=not args.no_channels_last,
        compile=args.compile,
    )
    best, median = timing.best, timing.median
    family = "ReDimNet2" if args.preset.startswith("redimnet2") else "ReDimNet"
    kind = f"ReDimNetMRL ({family})" if args.mrl else family
    print(f"max |plain - form| = {timing.difference:.2e}; inference_form built in {timing.build_s:.2f} s")
    print(
        "| preset | model | batch | seconds | plain ms/batch (best / median) | "
        "inference form ms/batch (best / median) | speed-up (best) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {args.preset} | {kind} | {args.batch_size} | {args.seconds:g} | "
        f"{best['plain']:.1f} / {median['plain']:.1f} | {best['form']:.1f} / {median['form']:.1f} | "
        f"**{best['plain'] / best['form']:.2f}x** |"
    )
    print(bench_header())
    return 0


# --- bench_distill ----------------------------------------------------------------------------


def parse_bench_distill_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_distill.py"),
        description="Distillation step speed with teachers run live vs read from the teacher-embedding cache.",
    )
    parser.add_argument("--teachers", nargs="+", default=["b0", "b2"], help="teacher presets (random weights)")
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_distill.py")
def bench_distill_main(argv: list[str]) -> int:
    """`launch/bench_distill.py`: a Markdown row of mrl_dist/tools/bench_distill.py's comparison."""
    args = parse_bench_distill_args(argv)
    torch.set_num_threads(args.threads)
    from .bench_distill import measure_teacher_cache

    result = measure_teacher_cache(
        args.teachers, args.student, batch_size=args.batch_size, crop_seconds=args.crop_seconds, steps=args.steps
    )
    print("| teachers | student | batch | teachers ms/batch | live crops/s | cached crops/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {'+'.join(args.teachers)} | {args.student} | {args.batch_size} | {result.teacher_ms_per_batch:.0f} | "
        f"{result.live_crops_per_second:.1f} | {result.cached_crops_per_second:.1f} | {result.speedup:.2f}x |"
    )
    return 0


# --- bench_features ---------------------------------------------------------------------------


def parse_bench_features_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_features.py"),
        description="Head training from cached trunk features vs recomputing the frozen trunk, and the cache's cost.",
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "b2"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--crops-per-utterance", type=int, default=4, help="K of the cache")
    parser.add_argument("--recompute-steps", type=int, default=3)
    parser.add_argument("--cached-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_features.py")
def bench_features_main(argv: list[str]) -> int:
    """`launch/bench_features.py`: a Markdown row per preset (mrl_dist/tools/bench_features.py)."""
    args = parse_bench_features_args(argv)
    from .bench_features import build_rate, cached_step_rate

    torch.set_num_threads(args.threads)
    print(bench_header())
    print(
        "| preset | P | recompute crops/s | cached crops/s | speed-up | cache build crops/s "
        f"| build per 1,000 utt. (K={args.crops_per_utterance}) | size per 1,000 utt. |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.presets:
        recompute = measure_throughput(
            preset,
            "mrl-frozen",
            batch_size=args.batch_size,
            crop_seconds=args.crop_seconds,
            steps=args.recompute_steps,
            warmup=1,
        ).best
        cached, pooled_dim = cached_step_rate(preset, args.batch_size, args.cached_steps)
        build = build_rate(preset, min(args.batch_size, 32), args.crop_seconds, repeats=2)
        crops = 1000 * args.crops_per_utterance
        size_mb = crops * (2 * pooled_dim + 3 * 8 + 40) / 1e6  # fp16 features + label/start/id + key
        print(
            f"| {preset} | {pooled_dim} | {recompute:,.1f} | {cached:,.0f} | {cached / recompute:,.0f}x "
            f"| {build:,.1f} | {crops / build:,.0f} s | {size_mb:,.1f} MB |"
        )
    return 0


# --- bench_adapt ------------------------------------------------------------------------------


ADAPT_RECIPE = "configs/adapt-cpu.yaml"


def parse_bench_adapt_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ..train.cli import add_config_arguments
    from .bench_adapt import VARIANTS

    parser = argparse.ArgumentParser(
        prog=program_name("bench_adapt.py"),
        description="Adapting a pretrained model to a new domain: the head alone, LoRA adapters of two ranks "
        "and full fine-tuning, each a real run of the recipe, scored on the validation speakers.",
    )
    add_config_arguments(parser, "the recipe each variant changes (default configs/adapt-cpu.yaml)", ADAPT_RECIPE)
    parser.add_argument("--output", type=Path, required=True, help="folder of the variants' run folders")
    parser.add_argument(
        "--variants", nargs="+", default=["head", "lora-r4", "lora-r16", "full"], choices=list(VARIANTS)
    )
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_adapt.py")
def bench_adapt_main(argv: list[str]) -> int:
    """`launch/bench_adapt.py`: a Markdown table of docs/benchmarks.md's domain-adaptation section."""
    args = parse_bench_adapt_args(argv)
    if not Path(args.config).is_file():
        raise InputError(f"--config {args.config}: not found")
    from .bench_adapt import bench_adapt

    _, report = bench_adapt(Path(args.config), args.output, args.variants, args.overrides)
    print(bench_header())
    print(report)
    return 0


# --- gpu_check --------------------------------------------------------------------------------


@command("gpu_check.py")
def gpu_check_main(argv: list[str]) -> int:
    """`launch/gpu_check.py`: the GPU checks; arguments and sections are mrl_dist/tools/gpu_check/'s."""
    from .gpu_check import main

    return main(argv)
