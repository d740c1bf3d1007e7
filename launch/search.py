#!/usr/bin/env python
"""Speaker identification with MRL prefixes: enrol an index, query it; see mrl_dist/search/cli.py.

python launch/search.py enrol --embeddings enrol.npy --output runs/search/index.npz
python launch/search.py enrol --shards shards/val.manifest.json --checkpoint RUN/best.pt --output index.npz
python launch/search.py query --index runs/search/index.npz --embeddings queries.npy --top 5
"""

from mrl_dist.search.cli import search_main

if __name__ == "__main__":
    raise SystemExit(search_main())
