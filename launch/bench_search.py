#!/usr/bin/env python
"""Top-1 identification and queries/s, brute force vs the MRL cascade; see mrl_dist/search/bench.py.

python launch/bench_search.py                                   # 10k, 100k, 1M synthetic + runs/demo
python launch/bench_search.py --sizes 10000 --no-demo           # a quick look
python launch/bench_search.py --threads 2 --backend faiss       # the faiss exhaustive stage
"""

from mrl_dist.search.cli import bench_search_main

if __name__ == "__main__":
    raise SystemExit(bench_search_main())
