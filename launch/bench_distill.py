#!/usr/bin/env python
"""Distillation step speed with teachers run live vs read from the teacher-embedding cache.

python launch/bench_distill.py --teachers b0 b2 --student tiny --batch-size 32 --steps 5 --threads 2
"""

from mrl_dist.tools.cli import bench_distill_main

if __name__ == "__main__":
    raise SystemExit(bench_distill_main())
