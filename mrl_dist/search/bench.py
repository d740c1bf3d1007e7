"""Speaker identification benchmark: brute force at full dim vs the MRL cascade (`CascadeIndex`).

Synthetic enrolments stand in for a large speaker population: speaker centres whose per-dim
standard deviation decays with the dim index (as an MRL embedding's information is concentrated
in its first dims), queries = a centre plus isotropic noise, all L2-normalised; each query's
answer is its own centre. Reported per index size: top-1 accuracy and queries/s of both.
The demo corpus's held-out speakers (`runs/demo`) give the same on real embeddings: each speaker
is enrolled with half of its utterances and queried with the others.

Timing: the queries are searched in batches, brute force and cascade interleaved (so load from
other jobs hits both alike), `repeats` times; best and median queries/s are kept.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .enrol import embed_shards, enrol_embeddings, load_mrl_model, speaker_of, stack_embeddings
from .index import CascadeIndex

#: Per-dim standard deviation of the synthetic speaker centres: (1 + j / SCALE) ** -POWER.
CENTRE_SCALE, CENTRE_POWER = 32.0, 1.0


@dataclass
class SearchTiming:
    """One search mode on one index: accuracy and speed."""

    name: str
    top1: float  # share of queries whose best row is labelled with the query's speaker
    seconds: list[float]  # per timed batch
    batch: int  # queries per batch

    @property
    def best_qps(self) -> float:
        return self.batch / min(self.seconds)

    @property
    def median_qps(self) -> float:
        return self.batch / statistics.median(self.seconds)


def synthetic_centres(speakers: int, dim: int = 256, seed: int = 0) -> np.ndarray:
    """[speakers, dim] float32 unit rows, per-dim spread decaying with the dim index (MRL-like)."""
    rng = np.random.default_rng(seed)
    spread = ((1.0 + np.arange(dim) / CENTRE_SCALE) ** -CENTRE_POWER).astype(np.float32)
    centres = np.empty((speakers, dim), dtype=np.float32)
    for start in range(0, speakers, 65_536):
        block = rng.standard_normal((min(65_536, speakers - start), dim), dtype=np.float32) * spread
        centres[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return centres


def synthetic_queries(centres: np.ndarray, count: int, noise: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`count` queries: a random centre plus N(0, noise^2 / dim) per value, normalised ->
    (queries [count, dim] float32, the centre's row [count] int64)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(centres), count)
    dim = centres.shape[1]
    queries = centres[truth] + rng.standard_normal((count, dim), dtype=np.float32) * (noise / np.sqrt(dim))
    return queries / np.linalg.norm(queries, axis=1, keepdims=True), truth


def time_modes(
    modes: dict[str, Callable[[np.ndarray], np.ndarray]],
    queries: np.ndarray,
    truth: list[str],
    labels: list[str],
    batch: int,
    repeats: int,
) -> list[SearchTiming]:
    """Run each mode (queries [b, D] -> best rows [b]) over all queries in batches, interleaved,
    `repeats` times; top-1 from the first repeat."""
    batch = min(batch, len(queries))
    starts = range(0, len(queries) - batch + 1, batch)  # whole batches only: equal work per timing
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    hits = {name: 0 for name in modes}
    for search in modes.values():  # warm-up: work buffers, faiss indexes
        search(queries[:batch])
    for repeat in range(repeats):
        for start in starts:
            for name, search in modes.items():
                began = time.perf_counter()
                best = search(queries[start : start + batch])
                seconds[name].append(time.perf_counter() - began)
                if repeat == 0:
                    hits[name] += sum(labels[row] == truth[start + i] for i, row in enumerate(best))
    answered = len(starts) * batch
    return [SearchTiming(name, hits[name] / answered, seconds[name], batch) for name in modes]


def search_modes(
    index: CascadeIndex, first_dim: int, shortlist: int, scan_dtypes: Sequence[str] = ("float32",)
) -> dict[str, Callable]:
    """The compared searches, each returning the best row of every query: brute force and the
    cascade with a float32 scan, then both again with each other scan dtype."""
    modes = {}
    for scan_dtype in scan_dtypes:
        suffix = "" if scan_dtype == "float32" else f", {scan_dtype} scan"
        modes[f"cascade {first_dim} -> {index.size}, K = {shortlist}{suffix}"] = lambda q, s=scan_dtype: index.search(
            q, 1, first_dim=first_dim, shortlist=shortlist, scan_dtype=s
        )[0][:, 0]
        modes[f"brute force {index.size}-D{suffix}"] = lambda q, s=scan_dtype: index.search_brute(q, 1, scan_dtype=s)[
            0
        ][:, 0]
    brute = f"brute force {index.size}-D"
    return {brute: modes.pop(brute), **modes}


def bench_synthetic(
    size: int,
    *,
    queries: int,
    noise: float,
    batch: int,
    repeats: int,
    first_dim: int,
    shortlist: int,
    dtype: str,
    backend: str,
    scan_dtypes: Sequence[str] = ("float32",),
    seed: int = 0,
) -> list[SearchTiming]:
    """`search_modes` on `size` synthetic enrolments (one per speaker); brute force first."""
    centres = synthetic_centres(size, seed=seed)
    query_vectors, truth = synthetic_queries(centres, queries, noise, seed=seed + 1)
    keys = [str(row) for row in range(size)]
    index = CascadeIndex(centres, keys, dtype=dtype, backend=backend)
    del centres
    return time_modes(
        search_modes(index, first_dim, shortlist, scan_dtypes),
        query_vectors,
        [keys[t] for t in truth],
        index.labels,
        batch,
        repeats,
    )


def split_enrolment(keys: list[str]) -> tuple[list[str], list[str]]:
    """Each speaker's sorted utterance keys: the first half enrols it, the rest query (keys lists)."""
    by_speaker: dict[str, list[str]] = {}
    for key in sorted(keys):
        by_speaker.setdefault(speaker_of(key), []).append(key)
    enrol, query = [], []
    for utterances in by_speaker.values():
        if len(utterances) < 2:
            raise ValueError(f"speaker {speaker_of(utterances[0])} has 1 utterance: cannot enrol and query it")
        half = len(utterances) // 2
        enrol += utterances[:half]
        query += utterances[half:]
    return enrol, query


def bench_demo(
    run_dir: Path, *, first_dim: int, shortlist: int, scan_dtypes: Sequence[str] = ("float32",), batch_size: int = 16
) -> dict:
    """Top-1 on the demo's held-out speakers (`run_dir`/shards/val) with its MRL checkpoint."""
    checkpoint, shards = run_dir / "mrl" / "best.pt", run_dir / "shards" / "val.manifest.json"
    for needed in (checkpoint, shards):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} not found: make the demo run first with `python launch/demo.py` "
                "(~2 minutes), or pass --demo DIR / --no-demo"
            )
    model = load_mrl_model(checkpoint)
    embeddings, keys = stack_embeddings(embed_shards(model, shards, batch_size=batch_size))
    row = {key: position for position, key in enumerate(keys)}
    enrol_keys, query_keys = split_enrolment(keys)
    index = enrol_embeddings(embeddings[[row[k] for k in enrol_keys]], enrol_keys, dims=model.dims)
    queries = embeddings[[row[k] for k in query_keys]]
    truth = [speaker_of(key) for key in query_keys]
    modes = {
        **search_modes(index, first_dim, shortlist, scan_dtypes),
        f"brute force {first_dim}-D": lambda q: index.search_brute(q, 1, dim=first_dim)[0][:, 0],
    }
    timings = time_modes(modes, queries, truth, index.labels, batch=len(queries), repeats=1)
    return {
        "speakers": len(index),
        "enrol_utterances": len(enrol_keys),
        "queries": len(query_keys),
        "top1": {timing.name: timing.top1 for timing in timings},
    }
