"""Real speech for the int8 files: calibration waves (static quantisation) and the utterances of
a trial list (`launch/bench_int8.py`).

Both read what the rest of the project reads: shards (`NAME.manifest.json`, a shard list) through
the evaluation loader, or a folder of audio files decoded as `launch/embed.py` decodes them. A
file that cannot be decoded is counted and named, never dropped silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..data.audio import AudioError, decode_file, seconds_to_samples


def calibration_waves(source: str | Path, count: int = 64, max_seconds: float = 4.0) -> list[np.ndarray]:
    """Up to `count` utterances, `[T]` float32 16 kHz, each its first `max_seconds`, spread over
    `source`: a folder of audio files (searched recursively; every k-th file by path) or shards
    (every k-th utterance of the stream, k from the manifest's utterance count).

    Use held-out speakers, never the evaluation ones. Raises ValueError when none can be read."""
    path = Path(source)
    if path.is_dir():
        waves = _folder_waves(path, count, max_seconds)
    else:
        waves = _shard_waves(str(source), count, max_seconds)
    if not waves:
        raise ValueError(f"--int8-calibration {source}: no readable utterances; give shards or a folder of audio")
    return waves


def _folder_waves(folder: Path, count: int, max_seconds: float) -> list[np.ndarray]:
    from ..eval.embed import audio_inputs

    files = audio_inputs([folder])
    stride = max(1, len(files) // count)
    waves: list[np.ndarray] = []
    skipped = 0
    for _, file in files[::stride]:
        if len(waves) == count:
            break
        try:
            waves.append(decode_file(file).wave[: seconds_to_samples(max_seconds)].astype(np.float32))
        except AudioError as error:
            skipped += 1
            print(f"int8 calibration: skipped {file}: {error}", file=sys.stderr)
    if skipped:
        print(f"int8 calibration: {skipped} file(s) of {folder} could not be decoded", file=sys.stderr)
    return waves


def _shard_waves(source: str, count: int, max_seconds: float) -> list[np.ndarray]:
    from ..data.manifest import read_manifest
    from ..data.pipeline import make_eval_loader

    total = read_manifest(source).total_samples if source.endswith(".manifest.json") else count
    stride = max(1, total // count)
    loader = make_eval_loader(source, None, max_seconds=max_seconds, batch_size=1, strict=False)
    waves: list[np.ndarray] = []
    for index, batch in enumerate(loader):
        if len(waves) == count:
            break
        if index % stride == 0:
            waves.append(batch["wave"][0, : int(batch["lengths"][0])].numpy().astype(np.float32))
    return waves


def trial_waves(source: str, trials: Path, max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """key -> `[T]` float32 16 kHz of every utterance `trials` names, whole (or its first
    `max_seconds`), read from the shards `source`; raises if one is missing (eval loader)."""
    from ..data.pipeline import make_eval_loader

    loader = make_eval_loader(source, trials, max_seconds=max_seconds, batch_size=1)
    waves = {}
    for batch in loader:
        waves[batch["key"][0]] = batch["wave"][0, : int(batch["lengths"][0])].numpy().astype(np.float32)
    return waves
