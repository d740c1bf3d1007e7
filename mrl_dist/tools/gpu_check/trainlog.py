"""Reading what a trainer launch wrote: train.log split into process lifetimes (start and end step,
"unfrozen" lines, logged crops/s), the last logged step, and files that may not exist yet."""

from __future__ import annotations

import contextlib
import re
import statistics
from pathlib import Path
from typing import Any

_LOSS_LINE = re.compile(r" step (\d+) loss=")


def last_logged_step(train_log: Path, offset: int) -> int:
    if not train_log.is_file():
        return -1
    with open(train_log, encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        steps = [int(m.group(1)) for m in _LOSS_LINE.finditer(handle.read())]
    return max(steps, default=-1)


_START_LINE = re.compile(r"mode=(\S+) ranks=(\d+) device=(\S+) precision=(\S+) .*start_step=(\d+)")
_ANY_STEP = re.compile(r"\bstep[ -](\d+)")
_RATE = re.compile(r" step (\d+) loss=.*crops_per_s=(\S+)")


def parse_train_log(text: str) -> list[dict[str, Any]]:
    """One entry per process lifetime (each starts with the trainer's "mode=... start_step=N" line):
    its start and last step, its "unfrozen" lines and its logged crops/s."""
    segments: list[dict[str, Any]] = []
    for line in text.splitlines():
        start = _START_LINE.search(line)
        if start:
            segments.append(
                {
                    "mode": start.group(1),
                    "ranks": int(start.group(2)),
                    "device": start.group(3),
                    "start_step": int(start.group(5)),
                    "end_step": int(start.group(5)),
                    "unfreeze_lines": 0,
                    "rates": [],
                    "stopped_by_signal": False,
                }
            )
            continue
        if not segments:
            continue
        segment = segments[-1]
        segment["end_step"] = max([segment["end_step"], *(int(m) for m in _ANY_STEP.findall(line))])
        if "unfrozen" in line.lower():
            segment["unfreeze_lines"] += 1
        if "stop requested by signal" in line:
            segment["stopped_by_signal"] = True
        rate = _RATE.search(line)
        if rate:
            with contextlib.suppress(ValueError):
                segment["rates"].append(float(rate.group(2)))
    return segments


def expected_unfreeze_lines(segment: dict[str, Any], unfreeze_after: int) -> int:
    """1 if this process lifetime crossed the unfreeze step (started before it, ran past it), else
    0: a run resumed past the step unfreezes while building its model, before the loop."""
    return int(segment["start_step"] < unfreeze_after < segment["end_step"])


def steps_per_second(segment: dict[str, Any], crops_per_step: int) -> float | None:
    """Median of the logged crops/s over crops per step; the first interval (start-up, PCA,
    step-0 validation) is left out when there are others."""
    rates = segment["rates"][1:] or segment["rates"]
    return statistics.median(rates) / crops_per_step if rates else None


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
