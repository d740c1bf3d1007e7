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
from mrl_dist.data.audio import AudioError, read_flac_window, repeat_to_length
from mrl_dist.data.augment import augment_stages
from mrl_dist.data.crops import crop_rng, random_crop_start
from mrl_dist.data.frozen_outputs import read_outputs_file, write_outputs_file
from mrl_dist.data.manifest import write_json_atomic
from mrl_dist.data.shard_reader import SkipCounter, iter_tar_samples
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

    Before: {"key", "url", "flac", "label"}. After: {"key", "label", "wave": [crop_frames]
    float32, "start": int, "augment_id": k}. Short utterances are tiled (start 0).
    """
    for sample in samples:
        for index in range(crops_per_utterance):
            rng = crop_rng(seed, sample["key"], index)
            try:
                wave, start = read_flac_window(
                    sample["flac"], crop_frames, lambda total, rng=rng: random_crop_start(rng, total, crop_frames)
                )
            except AudioError as error:
                skips.skip(error.reason, sample["url"], sample["key"], error.detail)
                break
            if len(wave) == 0:
                skips.skip("empty", sample["url"], sample["key"], "FLAC member has no samples")
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
) -> Iterator[dict]:
    """Batches of one shard's crops: {"wave": [B, T] float32, "label": [B] int64, "key": B str,
    "start": [B] int64, "augment_id": [B] int64}; the last batch may be smaller."""
    samples = parse_meta(iter_tar_samples([shard_url], skips), skips)
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
    def num_speakers(self) -> int | None:
        return self.manifest.get("num_speakers")

    @property
    def total_crops(self) -> int:
        return sum(entry["crops"] for entry in self.manifest["files"])


def write_manifest(root: Path, fields: dict, files: Sequence[tuple[str, int]]) -> Path:
    payload = {"format": FEATURES_FORMAT, **fields, "files": [{"name": name, "crops": crops} for name, crops in files]}
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


# ---------------------------------------------------------------------------- training batches


class FeatureLoader:
    """Training batches of cached pooled features, with the `TrainLoader` interface the trainer
    uses (`for batch in loader` is one epoch of `steps_per_epoch` batches; `set_epoch`,
    `skipped`, `num_classes`).

    Rank r reads the files r, r + R, ... (every file when there are fewer files than ranks);
    each epoch visits them in an order seeded by (seed, epoch, rank) and shuffles rows within a
    buffer of two files. Batches: {"pooled": [B, P] float32, "label": [B] int64, "key": B str,
    "skipped": 0}.
    """

    def __init__(
        self,
        cache: FeatureCache,
        *,
        batch_size: int,
        steps_per_epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        epoch: int = 0,
        crops_per_speaker: int = 1,
    ):
        files = cache.files
        self.files = files[rank::world_size] if len(files) >= world_size else files
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.num_classes = cache.num_speakers
        self.skipped = 0  # corrupt samples were skipped when the cache was built
        if crops_per_speaker > 1 and batch_size % crops_per_speaker:
            raise ValueError(
                f"data.crops_per_speaker {crops_per_speaker} does not divide training.batch_size {batch_size}"
            )
        self.crops_per_speaker = crops_per_speaker
        # Speaker-balanced batches: every row of this rank's files, and each speaker's row indices.
        self._table: dict | None = None
        self._rows_of: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _rows(self, rng: np.random.Generator) -> Iterator[dict]:
        """Endless chunks {"pooled", "label", "start", "key"} of two shuffled files each."""
        while True:
            order = rng.permutation(len(self.files))
            for first in range(0, len(order), 2):
                parts = [read_feature_file(self.files[i]) for i in order[first : first + 2]]
                keys = [key for p in parts for key in p["keys"]]
                mix = torch.from_numpy(rng.permutation(len(keys)))
                yield {
                    "pooled": torch.cat([p["pooled"] for p in parts]).float()[mix],
                    "label": torch.cat([p["labels"] for p in parts])[mix],
                    "start": torch.cat([p["starts"] for p in parts])[mix],
                    "key": [keys[i] for i in mix.tolist()],
                }

    def _speaker_batches(self, rng: np.random.Generator) -> Iterator[dict]:
        """Endless batches of `batch_size / crops_per_speaker` speakers x `crops_per_speaker` crops
        (crops of a speaker's other utterances and sessions whenever it has them)."""
        if self._table is None:
            # Read once and held in memory (this rank's share: features x 2 bytes x P per crop).
            parts = [read_feature_file(path) for path in self.files]
            self._table = {
                "pooled": torch.cat([p["pooled"] for p in parts]),
                "label": torch.cat([p["labels"] for p in parts]),
                "start": torch.cat([p["starts"] for p in parts]),
                "key": [key for p in parts for key in p["keys"]],
            }
            labels = self._table["label"].numpy()
            order = np.argsort(labels, kind="stable")
            speakers, first = np.unique(labels[order], return_index=True)
            self._rows_of = dict(zip(speakers.tolist(), np.split(order, first[1:])))
        speakers = np.array(sorted(self._rows_of))
        per_batch = self.batch_size // self.crops_per_speaker
        if per_batch > len(speakers):
            raise ValueError(
                f"a batch of {per_batch} speakers x {self.crops_per_speaker} crops needs {per_batch} "
                f"speakers; this rank's features hold {len(speakers)}: lower training.batch_size or "
                "raise data.crops_per_speaker"
            )
        table = self._table
        while True:
            chosen = rng.choice(speakers, size=per_batch, replace=False)
            rows = np.concatenate(
                [
                    rng.choice(
                        self._rows_of[s],
                        size=self.crops_per_speaker,
                        replace=len(self._rows_of[s]) < self.crops_per_speaker,
                    )
                    for s in chosen.tolist()
                ]
            )
            index = torch.from_numpy(rows)
            yield {
                "pooled": table["pooled"][index].float(),
                "label": table["label"][index],
                "start": table["start"][index],
                "key": [table["key"][i] for i in rows.tolist()],
                "skipped": 0,
            }

    def __iter__(self) -> Iterator[dict]:
        """One epoch: {"pooled": [B, P] float32, "label": [B] int64, "start": [B] int64 (of the crop
        in its utterance), "key": B str, "skipped": 0}."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        self.epoch += 1
        if self.crops_per_speaker > 1:
            batches = self._speaker_batches(rng)
            for _ in range(self.steps_per_epoch):
                yield next(batches)
            return
        chunks = self._rows(rng)
        pending = next(chunks)
        for _ in range(self.steps_per_epoch):
            while len(pending["key"]) < self.batch_size:
                more = next(chunks)
                pending = {
                    name: (pending[name] + more[name]) if name == "key" else torch.cat([pending[name], more[name]])
                    for name in pending
                }
            b = self.batch_size
            yield {**{name: value[:b] for name, value in pending.items()}, "skipped": 0}
            pending = {name: value[b:] for name, value in pending.items()}
