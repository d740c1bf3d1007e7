#!/usr/bin/env python
"""Crops per second of one loader worker: shard pipeline vs naive per-file loading vs raw limit,
per shard codec (FLAC, PCM), with the bytes each codec reads per crop and takes on disk.

    python launch/bench_loader.py --utterances 200 --seconds 8 --crop-seconds 2
    python launch/bench_loader.py --decode-paths --storage-corpus DIR  # DIR: real speech, VoxCeleb layout

What the three loaders are and the targets: mrl_dist/tools/bench_loader.py.
"""

from mrl_dist.tools.cli import bench_loader_main

if __name__ == "__main__":
    raise SystemExit(bench_loader_main())
