"""Embeddings of audio files: any format the packer reads, decoded to 16 kHz mono, batched by
length, one `dim`-D L2-normalised vector per file (`launch/embed.py`).

Keys are the files' paths relative to the folder given (`id10270/5r0dWxy17C8/00001`, without
the extension, as VoxCeleb trial lists name them), or the file stem for a file given directly.
A file that cannot be decoded is reported on stderr with its reason and left out; the run ends
with a count of them, never silently.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.audio import AUDIO_EXTENSIONS, AudioError, decode_file, seconds_to_samples
from .extract import embed_batch, length_groups

MRL = "mrl"


def audio_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(key, path) of every audio file among `inputs` (files, or folders searched recursively),
    sorted by key; an input that does not exist is an error naming it."""
    found: dict[str, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)
            found.update({p.relative_to(item).with_suffix("").as_posix(): p for p in files})
        elif item.is_file():
            found[item.stem] = item
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(
            f"--input {[str(i) for i in inputs]}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    return sorted(found.items())


@dataclass
class EmbeddingResult:
    keys: list[str]
    embeddings: np.ndarray  # [N, dim] float32, L2-normalised
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _decoded(
    files: Sequence[tuple[str, Path]], skipped: list, max_seconds: float | None
) -> Iterator[tuple[str, np.ndarray]]:
    for key, path in files:
        try:
            wave = decode_file(path).wave
        except AudioError as error:
            skipped.append((str(path), str(error)))
            print(f"embed: skipped {path}: {error}", file=sys.stderr)
            continue
        yield key, wave[: seconds_to_samples(max_seconds)] if max_seconds else wave


def embed_files(
    model: Any,
    files: Sequence[tuple[str, Path]],
    dim: int | None,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    max_seconds: float | None = None,
    progress: bool = True,
) -> EmbeddingResult:
    """Embed `files` with `model` (ReDimNetMRL: the `dim` prefix; a plain model: its native
    embedding, `dim` = its prefix). Files are sorted by length into batches of similar sizes."""
    skipped: list[tuple[str, str]] = []
    decoded = sorted(
        _decoded(tqdm(files, desc="decoding", unit="file", disable=not progress), skipped, max_seconds),
        key=lambda item: len(item[1]),
    )
    keys, rows = [], []
    model = model.to(device).eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(decoded), batch_size), desc="embedding", unit="batch", disable=not progress):
            chunk = decoded[start : start + batch_size]
            lengths = [len(w) for _, w in chunk]
            wave = torch.zeros(len(chunk), max(lengths))
            for row, (_, samples) in enumerate(chunk):
                wave[row, : len(samples)] = torch.from_numpy(samples)
            for group, crop in length_groups(lengths):
                outputs = embed_batch(model, wave[group, :crop].to(device))
                vectors = outputs[MRL] if MRL in outputs else outputs["native"]
                if dim is not None:
                    vectors = vectors[:, :dim]
                rows.append(torch.nn.functional.normalize(vectors.float(), dim=1).cpu().numpy())
                keys += [chunk[i][0] for i in group]
    embeddings = np.concatenate(rows) if rows else np.zeros((0, dim or 0), dtype=np.float32)
    order = np.argsort(keys)
    return EmbeddingResult([keys[i] for i in order], embeddings[order].astype(np.float32), skipped)


def write_embeddings(result: EmbeddingResult, output: Path) -> Path:
    """`output` (.npy, [N, dim] float32) and `<output stem>.keys.txt` (one key per row)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, result.embeddings)
    keys_path = output.with_suffix(".keys.txt")
    keys_path.write_text("".join(f"{key}\n" for key in result.keys))
    return keys_path
