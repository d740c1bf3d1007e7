"""Pooled-feature cache: a frozen trunk run once over the training audio, then read by the head.

With the trunk frozen, every epoch would otherwise run the same backbone over the same audio;
the head alone costs a fraction of that. `launch/cache_features.py` (mrl_dist/train/feature_cache.py)
writes, for every training utterance, K seeded crops of `data.crop_seconds` (each with its own
augmentation draw when augmentation is on) through the trunk; `--set data.features=DIR` trains
the head from them.

On disk, `DIR/`:

    features.manifest.json   written last: format, trunk fingerprint, crop length, K, seed,
                             augmentation, pooled dim, speakers, and the feature files
    <shard>.features.pt      one per audio shard, a frozen-outputs file (data/frozen_outputs.py):
                             {"format", "shard", "keys": N str, "labels": [N] int64,
                              "starts": [N] int64 crop start (samples), "augment_ids": [N] int64
                              (the crop's index k: its seeded augmentation draw),
                              "pooled": [N, P] float16}

A feature file depends only on its audio shard, the seed and the trunk, not on how many ranks
wrote it (rank r takes shards r, r + R, ...), so a resumed or re-sharded run reuses every file
already written (files are written atomically).

Stages (rank-agnostic; the caller passes rank and world size):

    audio shards -> iter_tar_samples -> parse_meta -> seeded_crops (K per utterance)
        -> [augmentation stages, each crop its own draw] -> crop batches
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl_dist.config import AugmentConfig
from mrl_dist.data.audio import AudioError, crop_chooser, repeat_to_length
from mrl_dist.data.augment import augment_stages
from mrl_dist.data.codecs import read_member_window
from mrl_dist.data.crops import crop_rng
from mrl_dist.data.frozen_outputs import read_outputs_file, write_outputs_file
from mrl_dist.data.manifest import write_json_atomic
from mrl_dist.data.mix import namespace
from mrl_dist.data.shard_reader import SkipCounter, audio_member, iter_tar_samples
from mrl_dist.data.stages import parse_meta

FEATURES_FORMAT = "mrl-dist-features/1"
FEATURES_MANIFEST = "features.manifest.json"
FEATURE_FILE_SUFFIX = ".features.pt"


class FeatureCacheError(ValueError):
    """A feature cache that does not fit the run (other trunk, crop length) or is incomplete."""


def trunk_fingerprint(model: torch.nn.Module, model_config: dict[str, Any]) -> str:
    """sha256 of the trunk's architecture and weights (front-end, backbone, pooling): two
    trunks with the same fingerprint give the same pooled features."""
    digest = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode())
    for part in ("spec", "backbone", "pool"):
        for name, tensor in sorted(getattr(model, part).state_dict().items()):
            digest.update(f"{part}.{name}".encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_file_name(shard_url: str) -> str:
    """`.../train-000003.tar` -> `train-000003.features.pt` (a crc keeps same-named shards of
    different folders apart)."""
    stem = Path(shard_url.split("?")[0]).name.removesuffix(".tar")
    return f"{stem}-{zlib.crc32(shard_url.encode()):08x}{FEATURE_FILE_SUFFIX}"


# ---------------------------------------------------------------------------- crops of every utterance


def seeded_crops(
    samples: Iterable[dict], crops_per_utterance: int, crop_frames: int, seed: int, skips: SkipCounter
) -> Iterator[dict]:
    """Stage: K crops of every utterance, each at a start drawn from `crop_rng(seed, key, k)`.

    Before: {"key", "url", "flac" or "wav", "label"}. After: {"key", "label", "wave": [crop_frames]
    float32, "start": int, "augment_id": k}. Short utterances are tiled (start 0).
    """
    for sample in samples:
        member, audio = audio_member(sample)
        for index in range(crops_per_utterance):
            rng = crop_rng(seed, sample["key"], index)
            try:
                wave, start = read_member_window(audio, member, crop_frames, crop_chooser(None, crop_frames, rng))
            except AudioError as error:
                skips.skip(error.reason, sample["url"], sample["key"], error.detail)
                break
            if len(wave) == 0:
                skips.skip("empty", sample["url"], sample["key"], "audio member has no samples")
                break
            wave = repeat_to_length(wave, crop_frames) if len(wave) < crop_frames else wave
            yield {"key": sample["key"], "label": sample["label"], "wave": wave, "start": start, "augment_id": index}


def augment_each_crop(
    crops: Iterable[dict], augment: AugmentConfig, seed: int, shard_url: str, skips: SkipCounter
) -> Iterable[dict]:
    """Stage: the configured augmentation stages over the shard's crops, one draw per crop from
    a generator seeded by (seed, shard): reproducible, and the same whichever rank runs it."""
    rng = np.random.default_rng([seed, 1, zlib.crc32(shard_url.encode())])
    for stage in augment_stages(augment, rng, skips):
        crops = stage(crops)
    return crops


def crop_batches(
    shard_url: str,
    *,
    crops_per_utterance: int,
    crop_frames: int,
    seed: int,
    batch_size: int,
    augment: AugmentConfig | None,
    skips: SkipCounter,
    label_offset: int = 0,
    key_prefix: str = "",
) -> Iterator[dict]:
    """Batches of one shard's crops: {"wave": [B, T] float32, "label": [B] int64, "key": B str,
    "start": [B] int64, "augment_id": [B] int64}; the last batch may be smaller. In a mix of
    corpora (data/mix.py) labels are shifted by `label_offset` and keys get `key_prefix`."""
    samples: Iterable[dict] = parse_meta(iter_tar_samples([shard_url], skips), skips)
    if key_prefix:
        samples = namespace(samples, label_offset, key_prefix)
    crops: Iterable[dict] = seeded_crops(samples, crops_per_utterance, crop_frames, seed, skips)
    if augment is not None:
        crops = augment_each_crop(crops, augment, seed, shard_url, skips)
    batch: list[dict] = []
    for crop in crops:
        batch.append(crop)
        if len(batch) == batch_size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(crops: list[dict]) -> dict:
    return {
        "wave": torch.from_numpy(np.stack([c["wave"] for c in crops])),
        "label": torch.tensor([c["label"] for c in crops], dtype=torch.int64),
        "key": [c["key"] for c in crops],
        "start": torch.tensor([c["start"] for c in crops], dtype=torch.int64),
        "augment_id": torch.tensor([c["augment_id"] for c in crops], dtype=torch.int64),
    }


# ---------------------------------------------------------------------------- files and manifest


def write_feature_file(
    path: Path,
    shard_url: str,
    keys: list[str],
    labels: torch.Tensor,
    starts: torch.Tensor,
    augment_ids: torch.Tensor,
    pooled: torch.Tensor,
) -> None:
    """One shard's features, atomically (a killed run leaves no partial file under `path`)."""
    payload = {
        "format": FEATURES_FORMAT,
        "shard": shard_url,
        "keys": keys,
        "labels": labels,
        "starts": starts,
        "augment_ids": augment_ids,
        "pooled": pooled.to(torch.float16),
    }
    write_outputs_file(path, payload)


def read_feature_file(path: Path) -> dict:
    """One shard's features (memory-mapped), as `write_feature_file` wrote them."""
    return read_outputs_file(
        path,
        FEATURES_FORMAT,
        ("shard", "labels", "augment_ids", "pooled"),
        remedy="delete it and run launch/cache_features.py again to rebuild it",
        error=FeatureCacheError,
        mmap=True,
    )


@dataclass(frozen=True)
class FeatureCache:
    """A finished cache: its manifest and the feature files (paths)."""

    root: Path
    manifest: dict

    @property
    def files(self) -> list[Path]:
        return [self.root / entry["name"] for entry in self.manifest["files"]]

    @property
    def corpora(self) -> dict[str, list[Path]]:
        """The feature files of each corpus of a mix (one unnamed corpus, "", otherwise)."""
        grouped: dict[str, list[Path]] = {}
        for entry in self.manifest["files"]:
            grouped.setdefault(entry.get("corpus", ""), []).append(self.root / entry["name"])
        return grouped

    @property
    def num_speakers(self) -> int | None:
        return self.manifest.get("num_speakers")

    @property
    def total_crops(self) -> int:
        return sum(entry["crops"] for entry in self.manifest["files"])


def write_manifest(root: Path, fields: dict, files: Sequence[tuple[str, int, str]]) -> Path:
    """`files`: (file name, crops, corpus name: "" unless the cache is of a mix of corpora)."""
    entries = [
        {"name": name, "crops": crops, **({"corpus": corpus} if corpus else {})} for name, crops, corpus in files
    ]
    payload = {"format": FEATURES_FORMAT, **fields, "files": entries}
    path = root / FEATURES_MANIFEST
    write_json_atomic(path, payload)
    return path


def open_feature_cache(root: str | os.PathLike) -> FeatureCache:
    """The cache in `root`; FeatureCacheError when it is missing or unfinished."""
    root = Path(root)
    path = root / FEATURES_MANIFEST
    if not path.is_file():
        raise FeatureCacheError(
            f"data.features: {root} holds no {FEATURES_MANIFEST} (an unfinished or missing "
            "cache); run launch/cache_features.py --output there first"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FEATURES_FORMAT:
        raise FeatureCacheError(f"{path}: format {manifest.get('format')!r}, expected {FEATURES_FORMAT}")
    missing = [entry["name"] for entry in manifest["files"] if not (root / entry["name"]).is_file()]
    if missing:
        raise FeatureCacheError(f"{path}: {len(missing)} feature file(s) are missing, e.g. {missing[:3]}")
    return FeatureCache(root, manifest)


def check_cache_fits(cache: FeatureCache, fingerprint: str, crop_seconds: float) -> None:
    """Refuse a cache made by another trunk or for another crop length, naming what differs."""
    made = cache.manifest
    if made["trunk_fingerprint"] != fingerprint:
        raise FeatureCacheError(
            f"data.features: {cache.root} was made by another trunk (fingerprint {made['trunk_fingerprint'][:12]}..., "
            f"backbone {made.get('backbone')!r}) than model.backbone of this run ({fingerprint[:12]}...); "
            "rebuild it with this run's config"
        )
    if abs(made["crop_seconds"] - crop_seconds) > 1e-9:
        raise FeatureCacheError(
            f"data.features: {cache.root} holds {made['crop_seconds']} s crops but "
            f"data.crop_seconds is {crop_seconds}; rebuild it or set data.crop_seconds"
        )
