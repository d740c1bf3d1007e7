"""Training checkpoints on disk: atomic `step-N` folders, pruning, and finding the latest.

A training checkpoint is what `accelerator.save_state` writes (model, optimizer, scheduler,
grad scaler, every rank's RNG states) plus `trainer_state.json` (step, epoch, data position,
best metric). It is written into `checkpoints/.step-N.tmp` and renamed once complete, so a
crash mid-save never leaves a folder that `--resume latest` would pick up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step}"


def temporary_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f".step-{step}.tmp"


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders are never listed)."""
    if not checkpoints.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in checkpoints.iterdir()
        if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name)) and (p / TRAINER_STATE).is_file()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, checkpoints: Path) -> Path | None:
    """`None` -> None; `"latest"` -> newest complete checkpoint (None if there is none); else a path."""
    if resume is None:
        return None
    if resume == "latest":
        existing = list_checkpoints(checkpoints)
        return existing[-1] if existing else None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a training checkpoint folder (no {TRAINER_STATE} in it)")
    return path


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2, sort_keys=True))


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / TRAINER_STATE).read_text())


def finalize(checkpoints: Path, step: int, keep_last: int) -> Path:
    """Rename the finished temporary folder into place and prune to the newest `keep_last`."""
    final = step_dir(checkpoints, step)
    if final.exists():  # the same step saved again (e.g. a stop signal right after a save)
        shutil.rmtree(final)
    temporary_dir(checkpoints, step).rename(final)
    for old in list_checkpoints(checkpoints)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final
