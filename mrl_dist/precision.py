"""Mixed precision: the one map from a precision name to its autocast dtype.

Names are `training.mixed_precision`'s ("no", "bf16", "fp16"); "none" (the evaluation command's
spelling) means the same as "no".
"""

from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "no": None,
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """`"bf16"` -> torch.bfloat16, `"fp16"` -> torch.float16, `"no"` / `"none"` -> None."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def autocast(device: torch.device | str, precision: str):
    """The autocast region Accelerate puts around `forward` for `precision` (a no-op for "no")."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
