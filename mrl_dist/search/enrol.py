"""Enrolment: a `CascadeIndex` from embedding files or from shards through an MRL checkpoint.

emb.npy [N, D] float32 + emb.keys.txt (one key per line, as `launch/embed.py` writes them)
or shards (NAME.manifest.json) + checkpoint -> {key: [D]}
    -> per speaker (key before its first '/'): the mean of its unit utterance embeddings
       (or every utterance, `per_utterance`) -> CascadeIndex
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .index import CascadeIndex


def speaker_of(key: str) -> str:
    """The speaker of an utterance key: what comes before its first '/' (``id00012/v3/00001`` -> ``id00012``)."""
    return key.split("/", 1)[0]


def embedding_keys_path(path: str | Path) -> Path:
    """The keys file beside an embedding file: emb.npy -> emb.keys.txt."""
    return Path(path).with_suffix(".keys.txt")


def read_embedding_file(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """`path` (.npy [N, D]) and its keys file -> (embeddings [N, D] float32, N keys)."""
    path = Path(path)
    keys_file = embedding_keys_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} not found")
    if not keys_file.is_file():
        raise FileNotFoundError(
            f"embedding file {path} has no keys file {keys_file} (one key per line, in row "
            "order, as launch/embed.py writes it)"
        )
    embeddings = np.load(path)
    keys = keys_file.read_text().split()
    if embeddings.ndim != 2 or len(embeddings) != len(keys):
        raise ValueError(
            f"{path} holds shape {embeddings.shape} but {keys_file} has {len(keys)} keys; "
            "expected [N, D] with one key per row"
        )
    return embeddings.astype(np.float32, copy=False), keys


def enrol_embeddings(
    embeddings: np.ndarray,
    keys: Sequence[str],
    *,
    per_utterance: bool = False,
    dims: Sequence[int] | None = None,
    dtype: str = "float32",
) -> CascadeIndex:
    """An index of utterance embeddings [N, D] keyed `keys`: one row per speaker (`speaker_of`), the
    mean of its utterances' unit embeddings; with `per_utterance`, one row per utterance labelled
    with its speaker. dims, dtype: as `CascadeIndex`."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) != len(keys):
        raise ValueError(f"{len(embeddings)} embeddings but {len(keys)} keys")
    labels = [speaker_of(key) for key in keys]
    if per_utterance:
        return CascadeIndex(embeddings, keys, labels, dims=dims, dtype=dtype)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    unique_speakers, row_speaker = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(unique_speakers), embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, row_speaker, unit)
    counts = np.bincount(row_speaker, minlength=len(unique_speakers))[:, None]
    speakers = [str(s) for s in unique_speakers]
    return CascadeIndex((sums / counts).astype(np.float32), speakers, speakers, dims=dims, dtype=dtype)


def embed_shards(
    model,
    shards: str | Path,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    max_seconds: float | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Every utterance of the shards (all of them, not only a trial list's) -> {key: MRL embedding
    [max dim] float32} of `model` (a ReDimNetMRL, already on `device`)."""
    from mrl_dist.data.pipeline import make_eval_loader, resolve_source
    from mrl_dist.eval.extract import extract_embeddings

    # The shard URLs, not the manifest: a manifest's trial list would restrict the utterances.
    batches = make_eval_loader(resolve_source(shards).urls, None, max_seconds=max_seconds, batch_size=batch_size)
    embeddings = extract_embeddings(model, batches, device=device, heads=["mrl"], progress=progress)
    return {key: entry["mrl"] for key, entry in embeddings.items()}


def stack_embeddings(embeddings: Mapping[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """{key: [D]} -> (embeddings [N, D] float32 in key order, sorted keys)."""
    keys = sorted(embeddings)
    return np.stack([embeddings[key] for key in keys]).astype(np.float32), keys


def load_mrl_model(checkpoint: str | Path, device: str = "cpu"):
    """The ReDimNetMRL of an MRL inference checkpoint, in its (faster, equal) inference form on `device`."""
    from mrl_dist.models.checkpoints import model_from_payload
    from mrl_dist.models.inference import inference_form
    from mrl_dist.models.loading import CheckpointError, read_checkpoint

    payload = read_checkpoint(checkpoint)
    if "mrl_config" not in payload:  # refused before building anything
        raise CheckpointError(
            f"{checkpoint}: not an MRL checkpoint (no mrl_config): enrolling shards needs a Matryoshka "
            "model; pass an MRL run's best.pt, or enrol an embedding file (--embeddings) that "
            "launch/embed.py wrote"
        )
    return inference_form(model_from_payload(payload, checkpoint).model).to(device)


def enrol_shards(
    checkpoint: str | Path,
    shards: str | Path,
    *,
    per_utterance: bool = False,
    dims: Sequence[int] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    **embed_options,
) -> CascadeIndex:
    """`enrol_embeddings` of every utterance in `shards`, embedded by the MRL `checkpoint`; dims
    default to the checkpoint's. embed_options: as `embed_shards`."""
    model = load_mrl_model(checkpoint, device)
    embeddings, keys = stack_embeddings(embed_shards(model, shards, device=device, **embed_options))
    return enrol_embeddings(embeddings, keys, per_utterance=per_utterance, dims=dims or model.dims, dtype=dtype)
