"""Long recordings in sliding windows: one embedding per window with its start and end time, every
MRL prefix from one backbone pass per window (`launch/embed.py --window SECONDS --hop SECONDS`),
for search or diarization.

    wave [T] 16 kHz -> windows [start, start + window) every `hop` seconds
        -> extract_embeddings (evaluation's own extraction, whole windows, never cropped)
        -> {"64": [W, 64], ..., "256": [W, 256]} L2-normalised, starts [W], ends [W] seconds

The last window ends where the recording ends, so its tail is never dropped (it overlaps its
neighbour more than `hop` says); a recording shorter than one window but at least `MIN_SECONDS`
long is one window of its own length.

The command writes OUT.npy [W, D] float32 (D = --dim, default the model's largest), every row
L2-normalised: its first d columns, normalised again, are the window's d-dim embedding (a prefix of
a normalised vector points where the prefix itself points). Beside it OUT.keys.txt
(`<file key>@<start>-<end>`, one per row, as launch/search.py reads keys) and OUT.windows.tsv
(file key, start and end in seconds, one row per window).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl_dist.data.audio import SAMPLE_RATE, AudioError, decode_file, seconds_to_samples
from mrl_dist.eval.extract import MRL, NATIVE, extract_embeddings

#: The shortest audio embedded: make_shards.py's default --min-seconds, the shortest utterance
#: training and evaluation ever see.
MIN_SECONDS = 0.5


def load_audio(path: str | Path, minimum_seconds: float = MIN_SECONDS) -> np.ndarray:
    """[T] float32 16 kHz mono of an audio file; ValueError naming the file when it cannot be
    decoded or is shorter than `minimum_seconds` (saying how long it is)."""
    try:
        wave = decode_file(path).wave
    except AudioError as error:
        raise ValueError(f"{path}: cannot be used: {error}") from error
    if len(wave) < seconds_to_samples(minimum_seconds):
        raise ValueError(
            f"{path}: {len(wave) / SAMPLE_RATE:.2f} s long; the minimum is {minimum_seconds:.2f} s of audio"
        )
    return wave


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows over `num_samples`: 0, hop, 2 hop, ... while a whole window
    fits, then one ending at the last sample if the grid left a tail; [0] when one window does not
    fit (that window is the whole recording)."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be at least one sample; got {window} and {hop}")
    if num_samples <= window:
        return [0]
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return starts


@dataclass
class WindowEmbeddings:
    starts: np.ndarray  # [W] float64 seconds
    ends: np.ndarray  # [W] float64 seconds
    embeddings: dict[str, np.ndarray]  # str(dim) -> [W, dim] float32, rows L2-normalised


def _full_vector_kind(model: Any) -> str:
    """The embedding whose prefixes are the dims: the MRL head's output, else the native one."""
    return MRL if hasattr(model, "head") else NATIVE


def embed_windows(
    model: Any,
    wave: np.ndarray,
    window_seconds: float,
    hop_seconds: float,
    dims: Sequence[int],
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> WindowEmbeddings:
    """Embed `wave` [T] float32 16 kHz in windows of `window_seconds` every `hop_seconds`.

    Args:
        model: a ReDimNetMRL (prefixes of its head's output) or a plain ReDimNet (prefixes of its
            native embedding), on `device`.
        dims: the prefix sizes to return; all come from one pass per window.
    Returns:
        WindowEmbeddings with ``embeddings[str(d)]`` [W, d] for every d in `dims`.
    """
    window, hop = seconds_to_samples(window_seconds), seconds_to_samples(hop_seconds)
    starts = window_starts(len(wave), window, hop)
    length = min(window, len(wave))
    samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    kind = _full_vector_kind(model)

    def batches() -> Iterator[dict]:
        for first in range(0, len(starts), batch_size):
            chunk = starts[first : first + batch_size]
            rows = torch.stack([samples[start : start + length] for start in chunk])
            yield {"wave": rows, "key": [str(first + i) for i in range(len(chunk))]}

    extracted = extract_embeddings(model, batches(), device=device, heads=[kind], crop_tolerance=0.0)
    full = np.stack([extracted[str(i)][kind] for i in range(len(starts))]).astype(np.float32)
    embeddings = {}
    for dim in dims:
        prefix = full[:, :dim]
        embeddings[str(dim)] = prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)
    start_seconds = np.array(starts, dtype=np.float64) / SAMPLE_RATE
    return WindowEmbeddings(start_seconds, start_seconds + length / SAMPLE_RATE, embeddings)


def check_window_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--window / --hop of launch/embed.py: positive, the window at least MIN_SECONDS; the hop
    defaults to half the window."""
    if args.window is None:
        if args.hop is not None:
            parser.error("--hop needs --window")
        return
    if args.window < MIN_SECONDS:
        parser.error(f"--window {args.window}: must be at least {MIN_SECONDS} s")
    if args.hop is None:
        args.hop = args.window / 2
    if args.hop <= 0:
        parser.error(f"--hop {args.hop}: must be > 0")


def embed_files_in_windows(
    args: argparse.Namespace, model: Any, files: Sequence[tuple[str, Path]], description: str
) -> int:
    """The --window mode of launch/embed.py: every file in windows, written as the module
    docstring says. A file that cannot be decoded or is shorter than MIN_SECONDS is reported on
    stderr and left out (counted); 1 when no file gave a window."""
    dim = args.dim if args.dim is not None else max(getattr(model, "dims", [model.embed_dim]))
    rows, keys, spans = [], [], []
    skipped = 0
    model = model.to(args.device)
    for key, path in files:
        try:
            wave = load_audio(path)
            wave = wave[: seconds_to_samples(args.max_seconds)] if args.max_seconds else wave
        except ValueError as error:
            skipped += 1
            print(f"embed: skipped {error}", file=sys.stderr)
            continue
        found = embed_windows(model, wave, args.window, args.hop, [dim], batch_size=args.batch_size, device=args.device)
        rows.append(found.embeddings[str(dim)])
        for start, end in zip(found.starts.tolist(), found.ends.tolist()):
            keys.append(f"{key}@{start:.2f}-{end:.2f}")
            spans.append(f"{key}\t{start:.3f}\t{end:.3f}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, np.concatenate(rows) if rows else np.zeros((0, dim), dtype=np.float32))
    args.output.with_suffix(".keys.txt").write_text("".join(f"{key}\n" for key in keys))
    windows_path = args.output.with_suffix(".windows.tsv")
    windows_path.write_text("key\tstart\tend\n" + "".join(spans))
    print(
        f"embed: {len(keys)} windows of {args.window:g} s every {args.hop:g} s, {dim} dims ({description}) -> "
        f"{args.output}, times {windows_path}; {skipped} of {len(files)} files skipped",
        file=sys.stderr,
    )
    return 1 if not keys else 0
