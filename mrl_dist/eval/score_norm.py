"""Adaptive symmetric score normalisation (AS-norm; Matejka et al., Interspeech 2017), per dim.

    s(e, t)    the cosine score of a trial (enrolment e, test t)
    cohort     one vector per training speaker: the mean of its utterances' L2-normalised
               embeddings, normalised again (per dim: the prefix is taken and normalised first)
    mu_x, sd_x mean and standard deviation (population, ddof 0) of x's N highest cohort scores
    s_norm     0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)

numpy only; the cohort comes from `extract_embeddings` over training shards (evaluate's
`--asnorm-cohort`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..data.trials import Trial, utterance_key

NATIVE = "native"


def _normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def dim_vectors(embeddings: Mapping[str, Mapping[str, np.ndarray]], keys: Sequence[str], name: str) -> np.ndarray:
    """`[len(keys), d]` L2-normalised vectors of score row `name` ("64": the MRL prefix or the
    model's own 64-D output; "native": the native embedding)."""
    rows = []
    for key in keys:
        entry = embeddings[key]
        if name == NATIVE:
            rows.append(entry[NATIVE])
        elif name in entry:
            rows.append(entry[name])
        else:
            rows.append(entry["mrl"][: int(name)])
    return _normalise(np.asarray(rows, dtype=np.float64))


def speaker_of(key: str) -> str:
    """VoxCeleb keys are `speaker/video/utterance`."""
    return key.split("/", 1)[0]


def speaker_cohort(embeddings: Mapping[str, Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    """`[S, d]`: one normalised mean vector per speaker of `embeddings` (sorted by speaker)."""
    keys = sorted(embeddings)
    vectors = dim_vectors(embeddings, keys, name)
    speakers = np.array([speaker_of(k) for k in keys])
    return _normalise(np.stack([vectors[speakers == s].mean(axis=0) for s in np.unique(speakers)]))


def cohort_statistics(vectors: np.ndarray, cohort: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's `top` highest cosine scores against the cohort."""
    scores = vectors @ cohort.T
    top = min(top, cohort.shape[0])
    best = np.partition(scores, scores.shape[1] - top, axis=1)[:, -top:]
    return best.mean(axis=1), np.maximum(best.std(axis=1), 1e-12)


def as_norm(
    scores: np.ndarray,
    trials: Sequence[Trial],
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    cohort: np.ndarray,
    name: str,
    top: int = 300,
) -> np.ndarray:
    """AS-norm of the raw `scores [N]` of `trials` (score row `name`), the cohort `[S, d]`."""
    keys = sorted({utterance_key(t.enroll) for t in trials} | {utterance_key(t.test) for t in trials})
    index = {key: i for i, key in enumerate(keys)}
    mean, std = cohort_statistics(dim_vectors(embeddings, keys, name), cohort, top)
    enroll = np.array([index[utterance_key(t.enroll)] for t in trials])
    test = np.array([index[utterance_key(t.test)] for t in trials])
    return 0.5 * ((scores - mean[enroll]) / std[enroll] + (scores - mean[test]) / std[test])


def normalise_all(
    scores: Mapping[str, np.ndarray],
    trials: Sequence[Trial],
    embeddings: Mapping[str, Mapping[str, np.ndarray]],
    cohort_embeddings: Mapping[str, Mapping[str, np.ndarray]],
    top: int = 300,
) -> dict[str, np.ndarray]:
    """AS-norm scores for every score row (`{"64": [N], ..., "native": [N]}`) the cohort can give."""
    normed = {}
    for name, raw in scores.items():
        cohort = speaker_cohort(cohort_embeddings, name)
        normed[name] = as_norm(raw, trials, embeddings, cohort, name, top)
    return normed
