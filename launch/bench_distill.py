#!/usr/bin/env python
"""Distillation step speed with teachers run live vs read from the teacher-embedding cache.

    python launch/bench_distill.py --teachers b0 b2 --student tiny --batch-size 32 --steps 5 --threads 2
"""

import argparse

import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.tools.bench_distill import measure_teacher_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", nargs="+", default=["b0", "b2"], help="teacher presets (random weights)")
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure_teacher_cache(args.teachers, args.student, batch_size=args.batch_size,
                                   crop_seconds=args.crop_seconds, steps=args.steps)
    print("| teachers | student | batch | teachers ms/batch | live crops/s | cached crops/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {'+'.join(args.teachers)} | {args.student} | {args.batch_size} | {result.teacher_ms_per_batch:.0f} | "
          f"{result.live_crops_per_second:.1f} | {result.cached_crops_per_second:.1f} | {result.speedup:.2f}x |")


if __name__ == "__main__":
    main()
