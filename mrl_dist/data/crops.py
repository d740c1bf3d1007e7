"""Where a crop starts: the one rule for every crop the data layer cuts out of an utterance.

A crop of `crop_frames` samples out of `total_frames` can start at `crop_positions(total, crop)`
places (0 .. total - crop). Three kinds of crops choose among them:

    random crops (training, noise clips)   random_crop_start(rng, ...), rng the stage's generator
    fixed crops (cached teacher embeddings) fixed_crop_start(key, ...): key_hash(key) mod positions
    feature-cache crops (K per utterance)   random_crop_start(crop_rng(seed, key, k), ...)

Fixed and feature-cache crops both derive from the utterance key through `key_hash`, but they
stay two rules because they promise different things: a fixed crop is one place per key that no
seed, epoch or rank moves (a teacher embedding cached for it stays valid), while the cache's K
crops per key are K different places that change with the seed. The numbers both produce are
part of caches on disk: changing either rule invalidates them.
"""

from __future__ import annotations

import zlib

import numpy as np


def key_hash(key: str) -> int:
    """crc32 of an utterance key: the same in every process and Python run (unlike `hash()`)."""
    return zlib.crc32(key.encode())


def crop_positions(total_frames: int, crop_frames: int) -> int:
    """How many starts a crop of `crop_frames` has in `total_frames` (1 when it does not fit)."""
    return max(1, total_frames - crop_frames + 1)


def random_crop_start(rng: np.random.Generator, total_frames: int, crop_frames: int) -> int:
    """A start drawn uniformly from the crop's positions with `rng` (one draw)."""
    return int(rng.integers(0, crop_positions(total_frames, crop_frames)))


def fixed_crop_start(key: str, total_frames: int, crop_frames: int) -> int:
    """The same start for a key in every epoch, on every rank, for every seed."""
    return key_hash(key) % crop_positions(total_frames, crop_frames)


def crop_rng(seed: int, key: str, index: int) -> np.random.Generator:
    """The generator that draws the start of feature-cache crop `index` of utterance `key`."""
    return np.random.default_rng([seed, key_hash(key), index])
