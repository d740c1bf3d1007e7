"""Speaker identification with MRL prefixes: a cascade index of enrolment embeddings.

* `index`  - `CascadeIndex`: every row at every MRL prefix, short-prefix shortlist re-scored in full
* `exhaustive` - the exact top-k over all rows (row blocks, group maxima), behind backend "torch"
* `enrol`  - indexes from embedding files (`.npy` + `.keys.txt`) or from shards through a checkpoint
* `bench`  - identification accuracy and queries/s, brute force vs cascade
* `cli`    - `launch/search.py`, `launch/bench_search.py`

The index needs torch, so the names below are imported with the package; faiss (optional) is
imported inside the functions that use it.
"""

from .enrol import enrol_embeddings, enrol_shards, read_embedding_file, speaker_of
from .index import DEFAULT_DIMS, CascadeIndex, keys_path

__all__ = [
    "DEFAULT_DIMS",
    "CascadeIndex",
    "enrol_embeddings",
    "enrol_shards",
    "keys_path",
    "read_embedding_file",
    "speaker_of",
]
