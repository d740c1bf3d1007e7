#!/usr/bin/env python
"""Head training from cached trunk features vs recomputing the frozen trunk, and the cache's cost.

    python launch/bench_features.py --presets tiny b2 --batch-size 128 --threads 2

Per preset (random weights; speed does not depend on them), on the CPU:
  recompute  crops/s of the trainer's frozen-trunk MRL step from waves (`mrl_dist/tools/bench.py`:
             trunk under no_grad, head + Matryoshka AAM over 5,994 classes, backward, AdamW)
  cached     crops/s of the same step from pooled features (what `data.features` trains on)
  build      crops/s of the trunk's inference form (what `launch/cache_features.py` runs), and
             the cache's time and size per 1,000 utterances at K crops each (float16 features)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

import torch  # noqa: E402

from mrl_dist.data.audio import SAMPLE_RATE  # noqa: E402
from mrl_dist.models import build_preset, inference_form  # noqa: E402
from mrl_dist.tools.bench import (  # noqa: E402
    VOXCELEB2_SPEAKERS, bench_config, build_training_step, measure_throughput, train_step,
)


def cached_step_rate(preset: str, batch_size: int, steps: int) -> tuple[float, int]:
    """Crops/s of the frozen-trunk MRL step on pooled features [B, P]; returns (rate, P)."""
    cfg = bench_config(preset, "mrl-frozen", batch_size)
    module, optimizer = build_training_step(cfg)
    module.from_features = True
    pooled_dim = build_preset(preset).pool_out_dim
    pooled = torch.randn(batch_size, pooled_dim)
    label = torch.randint(0, VOXCELEB2_SPEAKERS, (batch_size,))
    for _ in range(3):
        train_step(module, optimizer, pooled, label)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(module, optimizer, pooled, label)
    return steps * batch_size / (time.perf_counter() - start), pooled_dim


def build_rate(preset: str, batch_size: int, crop_seconds: float, repeats: int) -> float:
    """Crops/s of the trunk's inference form over `crop_seconds` crops (the cache's build step)."""
    trunk = inference_form(build_preset(preset).eval())
    wave = 0.1 * torch.randn(batch_size, round(crop_seconds * SAMPLE_RATE))
    with torch.inference_mode():
        trunk.pooled(wave)
        start = time.perf_counter()
        for _ in range(repeats):
            trunk.pooled(wave)
    return repeats * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "b2"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--crops-per-utterance", type=int, default=4, help="K of the cache")
    parser.add_argument("--recompute-steps", type=int, default=3)
    parser.add_argument("--cached-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {datetime.date.today()} {platform.node()} {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; python {' '.join(sys.argv)}")
    print("| preset | P | recompute crops/s | cached crops/s | speed-up | cache build crops/s "
          f"| build per 1,000 utt. (K={args.crops_per_utterance}) | size per 1,000 utt. |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.presets:
        recompute = measure_throughput(preset, "mrl-frozen", batch_size=args.batch_size,
                                       crop_seconds=args.crop_seconds, steps=args.recompute_steps, warmup=1).best
        cached, pooled_dim = cached_step_rate(preset, args.batch_size, args.cached_steps)
        build = build_rate(preset, min(args.batch_size, 32), args.crop_seconds, repeats=2)
        crops = 1000 * args.crops_per_utterance
        size_mb = crops * (2 * pooled_dim + 3 * 8 + 40) / 1e6  # fp16 features + label/start/id + key
        print(f"| {preset} | {pooled_dim} | {recompute:,.1f} | {cached:,.0f} | {cached / recompute:,.0f}x "
              f"| {build:,.1f} | {crops / build:,.0f} s | {size_mb:,.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
