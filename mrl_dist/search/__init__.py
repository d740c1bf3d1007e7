"""Speaker identification with MRL prefixes: a cascade index of enrolment embeddings.

* `index`  - `CascadeIndex`: every row at every MRL prefix, short-prefix shortlist re-scored in full
* `exhaustive` - the exact top-k over all rows (row blocks, group maxima), behind backend "torch"
* `enrol`  - indexes from embedding files (`.npy` + `.keys.txt`) or from shards through a checkpoint
* `bench`  - identification accuracy and queries/s, brute force vs cascade
* `cli`    - `launch/search.py`, `launch/bench_search.py`

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "CascadeIndex": "index",
    "DEFAULT_DIMS": "index",
    "keys_path": "index",
    "enrol_embeddings": "enrol",
    "enrol_shards": "enrol",
    "read_embedding_file": "enrol",
    "speaker_of": "enrol",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
