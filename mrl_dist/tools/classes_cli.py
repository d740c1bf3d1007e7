"""Command line of `launch/bench_classes.py`: what 100k+ speaker classes cost in one training step
(tools/bench_classes.py), every class against sampled classes (`loss.sampled_classes`)."""

from __future__ import annotations

import argparse

import torch

from ..cli_errors import InputError, add_error_options, command, program_name
from ..models import PRESETS
from .machine import bench_header


def parse_bench_classes_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_classes.py"),
        description="The class matrix, its AdamW state, the logits and the time of one head step with many "
        "speaker classes: every class, and sampled classes per step.",
    )
    parser.add_argument("--classes", type=int, default=117_000, help="speaker classes (VoxBlink2 + VoxCeleb2: ~117k)")
    parser.add_argument(
        "--sampled",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also measure loss.sampled_classes K (each >= --batch-size)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--preset", default="b2", choices=PRESETS, help="the trunk whose pooled features the head takes"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_classes.py")
def bench_classes_main(argv: list[str]) -> int:
    """`launch/bench_classes.py`: a Markdown row per case (mrl_dist/tools/bench_classes.py)."""
    args = parse_bench_classes_args(argv)
    too_few = [k for k in args.sampled if k < args.batch_size]
    if too_few:
        raise InputError(f"--sampled {too_few}: each must be >= --batch-size {args.batch_size}")
    torch.set_num_threads(args.threads)
    from .bench_classes import MARKDOWN_HEADER, markdown_row, measure_class_step

    print(bench_header())
    print(
        f"# head step on {args.preset} pooled features, dims 64/128/192/256 (tied class matrix), "
        f"float32, batch {args.batch_size}, {args.threads} threads"
    )
    print(MARKDOWN_HEADER)
    for sampled in [None, *args.sampled]:
        cost = measure_class_step(args.classes, args.batch_size, sampled, args.preset, steps=args.steps)
        print(markdown_row(cost), flush=True)
    return 0
