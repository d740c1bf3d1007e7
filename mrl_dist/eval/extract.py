"""Embeddings of evaluation utterances and cosine scores of a trial list, for every MRL dim at once.

    batches {"wave": [B, T], "lengths": [B], "key": B str}
        -> extract_embeddings -> {key: {"mrl": [max_dim], "native": [E]}}
        -> score_trials       -> {"64": [N], ..., "256": [N], "native": [N]}
        -> verification_report (EER, minDCF per name)

One backbone pass serves every resolution: the MRL head's full output is stored once and each
dim's embedding is its prefix, taken (and L2-normalised) only when scoring; the native
embedding reuses the same pooled features.

Padding: the loader zero-pads utterances to the batch's longest, and the front-end's mean
normalisation and the attentive pooling would average over those zeros, so an embedding would
depend on its batch-mates. Each batch is therefore split into runs of similar length (see
`length_groups`): a run shares one forward pass, cropped to its shortest member, and no
utterance loses more than `crop_tolerance` (default 10 %) of its samples; utterances further
apart in length get passes of their own. Because the loader sorts by length, a batch is nearly
always one run (a single pass), and `crop_tolerance=0` gives exact whole-utterance embeddings
at the cost of more passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mrl_dist.data.trials import Trial, read_trials, utterance_key
from mrl_dist.eval.metrics import verification_report

#: Default share of its samples an utterance may lose to share a forward pass with shorter ones.
CROP_TOLERANCE = 0.1
NATIVE = "native"
MRL = "mrl"
#: The trunk's pooled features [P]: asked for explicitly (never a default kind), so a frozen
#: trunk's validation can run the trunk once and only the head afterwards (`embed_pooled_features`).
POOLED = "pooled"
# Trials are scored this many at a time so VoxCeleb1-H (550 k pairs) never gathers
# two [N, 256] copies of the embeddings at once.
_SCORE_CHUNK = 65_536


class MissingEmbeddingError(LookupError):
    """A trial names an utterance that has no embedding (it was not in the evaluated batches)."""


# ---------------------------------------------------------------------------------- batching
def length_groups(lengths: Sequence[int], crop_tolerance: float = CROP_TOLERANCE) -> list[tuple[list[int], int]]:
    """Split one batch into runs that can share a forward pass without padding.

    Items are taken longest first; a run that starts at length L takes every following item at
    least ``(1 - crop_tolerance) * L`` long and is cropped to its shortest member. So every
    utterance keeps at least ``1 - crop_tolerance`` of its samples, and with 0 only equal
    lengths share a pass.

    Args:
        lengths: [B] valid samples per row.
    Returns:
        ``[(row indices, crop length), ...]`` covering every row exactly once.
    """
    if not 0.0 <= crop_tolerance < 1.0:
        raise ValueError(f"crop_tolerance must be in [0, 1), got {crop_tolerance}")
    lengths = [int(n) for n in lengths]
    runs: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda r: (-lengths[r], r)):
        if runs and lengths[row] >= (1.0 - crop_tolerance) * lengths[runs[-1][0]]:
            runs[-1].append(row)
        else:
            runs.append([row])
    # Rows are taken longest first, so a run's last row is its shortest.
    return [(run, lengths[run[-1]]) for run in runs]


def _batch_lengths(batch: Mapping[str, Any]) -> list[int]:
    """`batch["lengths"]` as ints, checked against the padded width (all rows full when absent)."""
    wave, keys = torch.as_tensor(batch["wave"]), batch["key"]
    if wave.ndim != 2 or wave.shape[0] != len(keys):
        raise ValueError(f"batch: expected wave [B, T] with B = {len(keys)} keys, got shape {tuple(wave.shape)}")
    if "lengths" not in batch:
        return [int(wave.shape[1])] * len(keys)
    lengths = [int(n) for n in batch["lengths"]]
    for key, length in zip(keys, lengths):
        if not 0 < length <= wave.shape[1]:
            raise ValueError(f"batch: utterance {key!r} has length {length}, outside 1..{wave.shape[1]} (padded width)")
    return lengths


# ---------------------------------------------------------------------------------- models
def extraction_style(model: Any) -> str:
    """How `model` is embedded, by what it offers (duck-typed, so wrappers such as a compiled
    module work too):

    * ``"mrl"``: ReDimNetMRL (``pooled`` + ``head``): kinds ``"mrl"`` [max_dim], whose prefixes
      are the dims' embeddings, and ``"native"`` when it kept the pretrained embedding layer;
    * ``"redimnet"``: plain ReDimNet (``pooled`` + ``embed_pooled``): kind ``"native"``;
    * ``"per_dim"``: anything with ``forward_all(wave) -> {dim: [B, dim]}`` (e.g. the ensemble
      baseline, one model per dim): one kind per dim, named ``str(dim)``.
    """
    if hasattr(model, "pooled") and hasattr(model, "head"):
        return "mrl"
    if hasattr(model, "pooled") and hasattr(model, "embed_pooled"):
        return "redimnet"
    if hasattr(model, "forward_all"):
        return "per_dim"
    raise TypeError(
        f"cannot extract embeddings from {type(model).__name__}: expected a ReDimNetMRL, a ReDimNet "
        "or a model with forward_all(wave) -> {dim: [B, dim]}"
    )


def available_heads(model: Any) -> list[str]:
    """Embedding kinds `extract_embeddings` can produce for `model` (see `extraction_style`);
    empty for a ``forward_all`` model without ``dims`` (its kinds show on the first batch)."""
    style = extraction_style(model)
    if style == "mrl":
        return [MRL] + ([NATIVE] if getattr(model, "native", None) is not None else [])
    if style == "redimnet":
        return [NATIVE]
    return [str(d) for d in getattr(model, "dims", [])]


def embed_batch(model: Any, wave: torch.Tensor, heads: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """`wave [B, T]` (no padding) -> ``{kind: [B, D]}``, one backbone pass for all kinds.

    ``heads`` keeps only those kinds (None: all the model has); see `extraction_style`.
    """
    style = extraction_style(model)
    if style in ("mrl", "redimnet"):
        pooled = model.pooled(wave)
        return pooled_to_heads(model, pooled, available_heads(model) if heads is None else heads)
    outputs = {str(dim): embedding for dim, embedding in model.forward_all(wave).items()}
    return outputs if heads is None else {name: outputs[name] for name in heads}


def pooled_to_heads(model: Any, pooled: torch.Tensor, heads: Collection[str]) -> dict[str, torch.Tensor]:
    """`pooled [B, P]` of a ReDimNetMRL or ReDimNet -> ``{kind: [B, D]}`` for `heads`."""
    if extraction_style(model) == "redimnet":
        outputs = {NATIVE: lambda: model.embed_pooled(pooled)}
    else:
        outputs = {MRL: lambda: model.head(pooled), NATIVE: lambda: model.native_embedding(pooled)}
    outputs[POOLED] = lambda: pooled
    return {name: outputs[name]() for name in heads}


def _check_heads(model: Any, heads: Collection[str] | None) -> None:
    available = available_heads(model)
    if extraction_style(model) in ("mrl", "redimnet"):
        available = [*available, POOLED]
    if heads is None or (not available and extraction_style(model) == "per_dim"):
        return
    unknown = [name for name in heads if name not in available]
    if unknown:
        raise ValueError(f"heads {unknown} not available from {type(model).__name__}; it provides {available}")


def _check_device(model: Any, device: torch.device) -> None:
    if not isinstance(model, nn.Module):
        return
    param = next(model.parameters(), None)
    if param is None:
        return
    # "cpu" and "cpu:0" are the same memory; only accelerators have meaningful indices.
    index_matters = device.type != "cpu" and device.index is not None
    if param.device.type != device.type or (index_matters and param.device.index != device.index):
        raise ValueError(
            f"extract_embeddings: model is on {param.device} but device={device}; "
            f"move it first (model.to({str(device)!r}))"
        )


@contextlib.contextmanager
def _eval_mode(model: Any):
    """Every submodule in eval mode inside, each back to its own previous mode after.

    Restoring per submodule (not `model.train(was_training)`) keeps frozen parts that a
    trainer holds in eval mode as they were.
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    previous = [m.training for m in modules]
    for module in modules:
        module.training = False
    try:
        yield
    finally:
        for module, mode in zip(modules, previous):
            module.training = mode


# ---------------------------------------------------------------------------------- extraction
def extract_embeddings(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    device: str | torch.device = "cpu",
    heads: Collection[str] | None = None,
    autocast_dtype: torch.dtype | None = None,
    crop_tolerance: float = CROP_TOLERANCE,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Embeddings of every utterance in `batches`.

    Args:
        model: ReDimNetMRL, ReDimNet or a ``forward_all`` model (see `extraction_style`), already
            on ``device``; put in eval mode and without autograd here, each submodule's mode
            restored after.
        batches: ``{"wave": [B, T] float32 16 kHz zero-padded, "lengths": [B] int64 (optional:
            rows unpadded), "key": B str}``, e.g. from ``make_eval_loader``.
        heads: embedding kinds to keep (None: all the model has).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the network under autocast.
        crop_tolerance: see `length_groups` (0: whole utterances, exact).
    Returns:
        ``{key: {kind: float32 [D]}}`` on the CPU; kinds ``"mrl"`` [max_dim] (prefix = dim's
        embedding), ``"native"`` [E], or ``"<dim>"`` [dim] for ``forward_all`` models.
    Raises:
        ValueError: a key appears twice, a length is outside 1..T, or the model is elsewhere.
    """
    device = torch.device(device)
    _check_device(model, device)
    _check_heads(model, heads)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    total = len(batches) if isinstance(batches, Sized) else None
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    with _eval_mode(model), torch.no_grad():
        for batch in tqdm(batches, total=total, desc="embedding", unit="batch", disable=not progress):
            keys, wave = list(batch["key"]), torch.as_tensor(batch["wave"])
            for rows, crop in length_groups(_batch_lengths(batch), crop_tolerance):
                chunk = wave[rows, :crop].to(device, dtype=torch.float32, non_blocking=True)
                with autocast:
                    outputs = embed_batch(model, chunk, heads)
                on_cpu = {name: value.float().cpu().numpy() for name, value in outputs.items()}
                for position, row in enumerate(rows):
                    if keys[row] in embeddings:
                        raise ValueError(
                            f"extract_embeddings: utterance {keys[row]!r} appears twice in the "
                            "batches (is it in two shards?)"
                        )
                    embeddings[keys[row]] = {name: value[position] for name, value in on_cpu.items()}
    return embeddings


# ---------------------------------------------------------------------------------- scoring
def _as_trials(trials: Sequence[Trial] | str | Path) -> list[Trial]:
    return read_trials(trials) if isinstance(trials, (str, Path)) else list(trials)


def _dim_vector(key: str, entry: Mapping[str, np.ndarray], dim: int) -> np.ndarray:
    """The `dim`-D embedding of one utterance: its own ``"<dim>"`` kind, else the MRL prefix."""
    own = entry.get(str(dim))
    if own is not None:
        if own.shape[-1] != dim:
            raise ValueError(f"embedding {str(dim)!r} of {key!r} has {own.shape[-1]} values, not {dim}")
        return own
    full = entry.get(MRL)
    if full is None:
        raise ValueError(
            f"no {dim}-D embedding for {key!r}: it holds {sorted(entry)} (no MRL vector to take a "
            "prefix of; a plain ReDimNet only has 'native')"
        )
    if full.shape[-1] < dim:
        raise ValueError(f"dim {dim} exceeds the {full.shape[-1]}-D MRL embedding of {key!r}")
    return full[:dim]


def _cosine_pairs(matrix: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine of rows ``matrix[first[i]]`` and ``matrix[second[i]]``: [N] float64."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.maximum(norms, 1e-12)  # a zero embedding scores 0 instead of NaN
    scores = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), _SCORE_CHUNK):
        stop = start + _SCORE_CHUNK
        scores[start:stop] = np.einsum("nd,nd->n", unit[first[start:stop]], unit[second[start:stop]])
    return scores


def score_trials(
    embeddings: Mapping[str, Mapping[str, Any]],
    trials: Sequence[Trial] | str | Path,
    dims: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Cosine scores of every trial, per embedding dimension.

    Args:
        embeddings: ``{key: {kind: [D]}}`` from `extract_embeddings` (keys without extension).
        trials: Trial list or a trial-list file; its paths map to keys via ``utterance_key``.
        dims: dimensions to score: the first ``d`` MRL coordinates (or a model's own ``"<d>"``
            embedding), L2-normalised after the prefix is taken.
    Returns:
        ``{"64": [N], ..., "native": [N]}`` float64 in trial order; ``"native"`` comes last and
        only when the utterances carry a native embedding.
    Raises:
        MissingEmbeddingError: a trial utterance has no embedding (the first few are named).
    """
    trials = _as_trials(trials)
    pairs = [(utterance_key(t.enroll), utterance_key(t.test)) for t in trials]
    keys = sorted({key for pair in pairs for key in pair})
    missing = [key for key in keys if key not in embeddings]
    if missing:
        raise MissingEmbeddingError(
            f"score_trials: {len(missing)} of {len(keys)} trial utterance(s) have no embedding, e.g. {missing[:5]}; "
            "were they in the evaluated shards (and the same trial list)?"
        )
    row = {key: index for index, key in enumerate(keys)}
    first = np.array([row[a] for a, _ in pairs], dtype=np.int64)
    second = np.array([row[b] for _, b in pairs], dtype=np.int64)

    scores: dict[str, np.ndarray] = {}
    for dim in dims:
        matrix = np.stack([_dim_vector(key, embeddings[key], int(dim)) for key in keys]).astype(np.float64)
        scores[str(dim)] = _cosine_pairs(matrix, first, second)
    with_native = [NATIVE in embeddings[key] for key in keys]
    if any(with_native):
        if not all(with_native):
            lacking = keys[with_native.index(False)]
            raise ValueError(
                f"score_trials: some utterances have a native embedding and {lacking!r} has none; "
                "were they embedded by different models?"
            )
        matrix = np.stack([embeddings[key][NATIVE] for key in keys]).astype(np.float64)
        scores[NATIVE] = _cosine_pairs(matrix, first, second)
    if not scores:
        raise ValueError("score_trials: nothing to score: no dims given and no native embedding")
    return scores


def default_dims(model: Any, embeddings: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The dims to report: the model's ``dims``, else the numeric kinds of the embeddings."""
    dims = getattr(model, "dims", None)
    if dims is not None:
        return [int(d) for d in dims]
    first = next(iter(embeddings.values()), {})
    return sorted(int(name) for name in first if name.isdigit())


@torch.no_grad()
def embed_pooled_features(
    model: Any,
    pooled: Mapping[str, Mapping[str, np.ndarray]],
    *,
    device: str | torch.device = "cpu",
    heads: Collection[str] | None = None,
    batch_size: int = 1024,
) -> dict[str, dict[str, np.ndarray]]:
    """Embeddings from stored pooled features: `{key: {"pooled": [P]}}` (from `extract_embeddings`
    with ``heads=["pooled"]``) -> ``{key: {kind: [D]}}`` as `extract_embeddings` gives them, running
    only the head(s), in eval mode, float32. Equal to embedding the audio again with the same
    (frozen) trunk."""
    heads = available_heads(model) if heads is None else list(heads)
    keys = list(pooled)
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    with _eval_mode(model):
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            features = torch.from_numpy(np.stack([pooled[key][POOLED] for key in chunk])).to(device)
            outputs = {
                name: value.float().cpu().numpy() for name, value in pooled_to_heads(model, features, heads).items()
            }
            for position, key in enumerate(chunk):
                embeddings[key] = {name: value[position] for name, value in outputs.items()}
    return embeddings


def evaluate_embeddings(
    model: Any,
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    trials: Sequence[Trial] | str | Path,
    dims: Sequence[int] | None = None,
) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Score and measure embeddings already extracted; returns as `evaluate_model`."""
    trials = _as_trials(trials)
    if dims is None:
        dims = default_dims(model, embeddings)
    scores = score_trials(embeddings, trials, dims)
    labels = np.array([t.label for t in trials], dtype=np.int64)
    return verification_report(scores, labels), scores, labels


def evaluate_model(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    trials: Sequence[Trial] | str | Path,
    dims: Sequence[int] | None = None,
    **extract_options: Any,
) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Embed, score and measure: EER / minDCF per dim (and native) over a trial list.

    Args:
        dims: dims to report; None: the model's own (``model.dims``; none for a plain ReDimNet).
        extract_options: passed to `extract_embeddings` (device, heads, autocast_dtype, ...).
    Returns:
        ``(report, scores_by_name, labels [N] int64)``; report as `verification_report`.
    """
    embeddings = extract_embeddings(model, batches, **extract_options)
    return evaluate_embeddings(model, embeddings, trials, dims)


__all__ = [
    "CROP_TOLERANCE",
    "MissingEmbeddingError",
    "POOLED",
    "available_heads",
    "default_dims",
    "embed_batch",
    "embed_pooled_features",
    "evaluate_embeddings",
    "evaluate_model",
    "extract_embeddings",
    "extraction_style",
    "length_groups",
    "score_trials",
]
