#!/usr/bin/env python
"""Trunk inference speed: plain eval form vs `inference_form` (mrl_dist/models/inference.py).

    python launch/bench_inference.py --preset b2 --batch-size 16 --seconds 4 --repeats 5 --threads 2
    python launch/bench_inference.py --preset tiny --batch-size 1 --mrl

How the two are timed: mrl_dist/tools/bench_inference.py. Prints the largest output difference,
then a Markdown row (best and median ms/batch of each, speed-up of the bests) and a machine line
(date, CPU, torch, load, command).
"""

from mrl_dist.tools.cli import bench_inference_main

if __name__ == "__main__":
    raise SystemExit(bench_inference_main())
