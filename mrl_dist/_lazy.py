"""How every package of mrl_dist shows its public names (the one convention for `__init__.py`).

A package's `__init__` lists its public names and the module each lives in; a name is imported
from its module on first use (PEP 562). Why: importing one module (say the shard packer's audio
code) must never import its siblings (torch, the trainer) through the package front.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__, __dir__ = lazy_exports(__name__, {"Name": "module", ...})` in an `__init__`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
