#!/usr/bin/env python
"""Head training from cached trunk features vs recomputing the frozen trunk, and the cache's cost.

    python launch/bench_features.py --presets tiny b2 --batch-size 128 --threads 2

What each column measures: mrl_dist/tools/bench_features.py.
"""

from mrl_dist.tools.cli import bench_features_main

if __name__ == "__main__":
    raise SystemExit(bench_features_main())
