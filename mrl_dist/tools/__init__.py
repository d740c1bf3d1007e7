"""Benchmarks, memory estimates and the GPU check: they sit beside the trainer and run its own
step (train/step.py), so they measure what training does.

This front exports nothing: import each name from its module (`from mrl_dist.tools.bench import
measure_throughput`), so that the packing benchmark (`bench_packing`, `packing_cli`) never
imports torch.
"""
