#!/usr/bin/env python
"""Training-step throughput of one preset and mode, or the memory estimate of the shipped configs.

    python launch/bench_train.py --preset tiny --mode classifier --batch-size 32 --crop-seconds 2 \
        --steps 20 --warmup 3 --threads 2 --device cpu --precision no
    python launch/bench_train.py --preset b2 --mode mrl-frozen --batch-size 256 --device cuda --precision bf16
    python launch/bench_train.py --estimate-memory configs/*.yaml

Throughput: synthetic waves already in memory, so this is the model step alone (forward,
Matryoshka AAM over the MRL dims, backward, clipping, AdamW), not the loader; see
launch/bench_loader.py for that. Prints a Markdown row: crops/s (best and median of --repeats
timed blocks) and, on CUDA, the measured peak memory (torch.cuda.max_memory_allocated), the
figure that replaces the estimate. --estimate-memory prints the estimated peak memory of every
GPU config given (mrl_dist/tools/memory.py explains the method); it needs no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mrl_dist.models import PRESETS  # noqa: E402
from mrl_dist.tools.bench import BENCH_MODES, VOXCELEB2_SPEAKERS, ThroughputResult, measure_throughput  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--num-classes", type=int, default=VOXCELEB2_SPEAKERS)
    parser.add_argument("--estimate-memory", nargs="+", metavar="CONFIG",
                        help="print the estimated peak memory of these configs (those with a known card) and exit")
    return parser.parse_args(argv)


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (f"# {datetime.date.today()} {platform.node()} {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, {device}, torch {torch.__version__}, load average {load}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"# python {shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    if args.estimate_memory:
        from mrl_dist.tools.memory import config_memory_tables

        training, validation = config_memory_tables(args.estimate_memory)
        print("\nTraining step, estimated peak memory per device (CPU-measured, see mrl_dist/tools/memory.py):\n")
        print(training)
        print("\nValidation on rank 0, estimated peak memory (batch of utterances padded to the length shown):\n")
        print(validation)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    result = measure_throughput(args.preset, args.mode, batch_size=args.batch_size, crop_seconds=args.crop_seconds,
                                steps=args.steps, warmup=args.warmup, repeats=args.repeats, device=args.device,
                                precision=args.precision, num_classes=args.num_classes)
    print(ThroughputResult.MARKDOWN_HEADER)
    print(result.markdown_row())
    print("# crops/s per repeat: " + ", ".join(f"{rate:.1f}" for rate in result.crops_per_second))
    return 0


if __name__ == "__main__":
    sys.exit(main())
