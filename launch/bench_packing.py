#!/usr/bin/env python
"""What packing VoxCeleb2 costs: AAC transcode speed per core, FLAC level vs bytes and crop speed,
peak disk of a pack, planning a 1,092,009-file listing, and the estimate at 8/32/64 cores.

    python launch/bench_packing.py --utterances 40 --levels 0 5 8

What is measured and how: mrl_dist/tools/bench_packing.py.
"""

from mrl_dist.tools.packing_cli import bench_packing_main

if __name__ == "__main__":
    raise SystemExit(bench_packing_main())
