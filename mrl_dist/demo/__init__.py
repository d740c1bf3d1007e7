"""The embedded demo: synthetic voices, their VoxCeleb-layout corpus, and the demo's main job
(`launch/demo.py`). Tests use it as a fixture; nothing in the library depends on it.

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "run_demo": "run",
    "make_demo_corpus": "corpus",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
