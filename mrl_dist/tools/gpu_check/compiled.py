"""The bench's compiled case, in a process of its own: `torch.compile` cannot be interrupted inside
a process, and a compile that takes longer than the check can spare must be killed, not waited for.

    python -m mrl_dist.tools.gpu_check.compiled --preset b2 --mode mrl-unfrozen --batch-size 256 \\
        --crop-seconds 2 --device cuda --precision bf16 --backend inductor --output case.json

writes `measure_throughput(..., compile=True)`'s figures as JSON: crops/s per timed block, the
first step's seconds (the compile), peak memory and parameter counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mrl_dist.tools.gpu_check.compiled", description=__doc__)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--mode", required=True, help="a bench mode: classifier, mrl-frozen, mrl-unfrozen")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--crop-seconds", type=float, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps; the first one compiles")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--backend", default="inductor", help="the torch.compile backend")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, required=True, help="the JSON file to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ..bench import measure_throughput

    if args.threads:
        torch.set_num_threads(args.threads)  # as many as the eager cases had: a fair comparison on CPU

    result = measure_throughput(
        args.preset,
        args.mode,
        batch_size=args.batch_size,
        crop_seconds=args.crop_seconds,
        steps=args.steps,
        warmup=max(1, args.warmup),
        repeats=args.repeats,
        device=args.device,
        precision=args.precision,
        compile=True,
        compile_backend=args.backend,
    )
    args.output.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
