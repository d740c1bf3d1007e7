#!/usr/bin/env python
"""Adapting a pretrained model to a new domain: which part to train, measured.

    python launch/bench_adapt.py --output runs/bench-adapt \
        --set model.backbone=runs/demo/classifier/best.pt \
        --set data.train=shards/so762/train.manifest.json --set data.val=shards/so762/val.manifest.json

Runs configs/adapt-cpu.yaml (or --config) as the head alone, LoRA of rank 4 and 16 + head, and
full fine-tuning, on the same data and steps; prints EER per dim at each run's last step beside
the native embedding and the PCA head, with trainable parameters, adapter size and wall time
(mrl_dist/tools/bench_adapt.py). Results: docs/benchmarks.md, "Adapting to a new domain".
"""

from mrl_dist.tools.cli import bench_adapt_main

if __name__ == "__main__":
    raise SystemExit(bench_adapt_main())
