"""Outputs of a frozen network for audio crops, on disk: the one file form shared by the
pooled-feature cache (data/features.py: the trunk's pooled features of seeded crops) and the
teacher-embedding cache (train/distill.py: each teacher's embeddings of fixed crops).

A file is one `torch.save`d dict of columns, one row per crop:

    {"format": "<kind>/<version>", <header fields: what produced the rows>,
     "keys": N str (utterance), "starts": [N] int64 (crop start, samples),
     <the outputs> [N, D], <columns of the kind's own>}

Written atomically (a killed run leaves no partial file under the name) and read back with
`weights_only=True`, checked: a torn file, one of another kind or of an older format is an error
naming the file and what to do, never rows silently mixed into a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

CROP_COLUMNS = ("keys", "starts")  # the columns every kind has: which crop a row is of


def write_outputs_file(path: Path, payload: dict) -> Path:
    """`payload` ("format", header, columns) to `path`, atomically; creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def read_outputs_file(
    path: Path,
    expected_format: str,
    fields: Sequence[str],
    *,
    remedy: str,
    error: type[Exception],
    mmap: bool = False,
) -> dict:
    """The payload of `path`, checked to be a readable `expected_format` file holding the crop
    columns and `fields`. Problems raise `error` (the caller's kind: FeatureCacheError,
    CheckpointError) with a message naming the file and ending in `remedy` (what to do)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as cause:  # a torn or foreign file
        detail = str(cause).splitlines()[0] if str(cause) else ""
        raise error(f"{path}: unreadable ({type(cause).__name__}: {detail}); {remedy}") from cause
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != expected_format:
        raise error(f"{path}: not a {expected_format} file (format {found!r}); {remedy}")
    missing = [name for name in (*CROP_COLUMNS, *fields) if name not in payload]
    if missing:
        raise error(f"{path}: a {expected_format} file without {missing}; {remedy}")
    return payload
