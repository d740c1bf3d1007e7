"""Streaming training and evaluation batches from tar shards.

Training (`make_train_loader`), per loader worker:

    resampled_shards -> iter_tar_samples -> shuffle_samples -> parse_meta
        -> [speed_perturb] -> decode_crop -> [add_reverb] -> [add_noise] -> batch_crops

With several corpora (data/mix.py) each has its own stream up to parse_meta, namespaced, and
`interleave` draws each sample's corpus by the weights.

Every worker of every rank draws shards with replacement from an RNG seeded by
(seed, epoch, rank, worker), so streams never end and never coincide, and an epoch is a fixed
number of batches on every rank (no DDP rank waits at an epoch end for another that ran dry).
Only the crop's FLAC frames are decoded (a split packed with `--codec pcm` is sliced, not
decoded: codecs.py).

Evaluation (`make_eval_loader`): each shard once, the trial-list utterances only, whole
(optionally capped) utterances sorted by length into padded batches.

The stages themselves: stages.py (and augment.py). Library code stays rank-agnostic: the
trainer passes rank and world_size in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset

from mrl_dist.config import AugmentConfig
from mrl_dist.data.audio import seconds_to_samples
from mrl_dist.data.augment import (
    augment_from_dict,
    augment_stages,
    check_augment_sources,
    num_classes,
    speed_perturb,
)
from mrl_dist.data.mix import (
    CorpusPart,
    TrainingMix,
    interleave,
    namespace,
    resolve_source,
    resolve_training_mix,
)

__all__ = ["TrainLoader", "EvalLoader", "make_train_loader", "make_eval_loader", "resolve_source"]
from mrl_dist.data.shard_reader import AUDIO, SkipCounter, iter_tar_samples, resampled_shards
from mrl_dist.data.stages import (
    batch_crops,
    decode_crop,
    decode_whole,
    length_sorted_batches,
    parse_meta,
    shuffle_samples,
    worker_index,
    worker_rng,
)
from mrl_dist.data.trials import read_trials, trial_keys


def batches_for_worker(steps: int, worker: int, num_workers: int) -> int:
    """This worker's share of `steps` batches; the shares add up to exactly `steps`."""
    return steps // num_workers + (1 if worker < steps % num_workers else 0)


class TrainStream(IterableDataset):
    """Endless crops cut into `steps_per_epoch` batches per rank, split over loader workers."""

    def __init__(
        self,
        parts: list[CorpusPart],
        *,
        batch_size: int,
        crop_frames: int,
        seed: int,
        rank: int,
        epoch: int,
        steps_per_epoch: int,
        shuffle_buffer: int,
        augment: AugmentConfig | None,
        num_speakers: int | None,
        fixed_crops: bool = False,
    ):
        super().__init__()
        self.fixed_crops = fixed_crops
        self.parts, self.batch_size, self.crop_frames = parts, batch_size, crop_frames
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.steps_per_epoch, self.shuffle_buffer = steps_per_epoch, shuffle_buffer
        self.augment, self.num_speakers = augment, num_speakers

    def _corpus_samples(self, part: CorpusPart, shard_rng, shuffle_rng, skips: SkipCounter) -> Iterator[dict]:
        """One corpus's endless shuffled samples {"key", "url", "flac", "label"}, in the mix's namespace."""
        samples = iter_tar_samples(
            resampled_shards(part.urls, shard_rng), skips, max_empty_shards=max(8, 2 * len(part.urls))
        )
        samples = parse_meta(shuffle_samples(samples, self.shuffle_buffer, shuffle_rng), skips)
        return namespace(samples, part.label_offset, part.key_prefix) if part.key_prefix else samples

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_index()
        rng = worker_rng(self.seed, self.epoch, self.rank, worker)
        # Separate child generators: enabling one stage does not shift the draws of another.
        shard_rng, shuffle_rng, speed_rng, crop_rng, augment_rng = rng.spawn(5)
        skips = SkipCounter(f"train loader rank {self.rank} worker {worker}")
        if len(self.parts) == 1:
            samples = self._corpus_samples(self.parts[0], shard_rng, shuffle_rng, skips)
        else:  # each corpus its own shard and shuffle generators, and one more that picks the corpus
            pick_rng, *shard_rngs = shard_rng.spawn(len(self.parts) + 1)
            streams = [
                self._corpus_samples(part, part_shard_rng, part_shuffle_rng, skips)
                for part, part_shard_rng, part_shuffle_rng in zip(
                    self.parts, shard_rngs, shuffle_rng.spawn(len(self.parts))
                )
            ]
            samples = interleave(streams, [part.weight for part in self.parts], pick_rng)
        if self.augment is not None and self.augment.speed_perturb:
            if self.num_speakers is None:
                raise ValueError("speed perturbation relabels speakers: TrainStream needs num_speakers")
            samples = speed_perturb(samples, self.num_speakers, speed_rng)
        samples = decode_crop(samples, self.crop_frames, crop_rng, skips, fixed=self.fixed_crops)
        if self.augment is not None:
            for stage in augment_stages(self.augment, augment_rng, skips):
                samples = stage(samples)
        batches = batch_crops(samples, self.batch_size, skips)
        for _ in range(batches_for_worker(self.steps_per_epoch, worker, num_workers)):
            yield next(batches)


class TrainLoader:
    """Iterable of training batches; `len()` is the number of batches per epoch on every rank.

    Each `for batch in loader` is one epoch and advances `epoch`; call `set_epoch` to resume at
    a given epoch. `skipped` sums the corrupt samples the workers skipped (batch["skipped"]).
    `num_classes` is the classifier width (None when the source does not know its speakers).
    """

    def __init__(self, stream: TrainStream, num_workers: int, num_classes: int | None, pin_memory: bool = False):
        self.stream, self.num_workers, self.num_classes = stream, num_workers, num_classes
        self.pin_memory = pin_memory
        self.skipped = 0

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = epoch

    def __len__(self) -> int:
        return self.stream.steps_per_epoch

    def __iter__(self) -> Iterator[dict]:
        # A fresh DataLoader per epoch ships this epoch (hence the seeds) to new workers; the copy
        # pins it, since workers start only on the first next().
        loader = DataLoader(
            copy.copy(self.stream), batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        self.stream.epoch += 1
        for batch in loader:
            self.skipped += batch["skipped"]
            yield batch


def make_train_loader(
    source,
    *,
    batch_size: int,
    crop_seconds: float,
    num_workers: int,
    seed: int,
    rank: int,
    world_size: int,
    epoch: int = 0,
    shuffle_buffer: int = 1000,
    augment: AugmentConfig | dict | None = None,
    steps_per_epoch: int | None = None,
    num_speakers: int | None = None,
    pin_memory: bool = False,
    fixed_crops: bool = False,
) -> TrainLoader:
    """Training batches {"wave": [B, T] float32 16 kHz, "label": [B] int64 (-1: unlabelled),
    "key": B str, "start": [B] int64, "skipped": int} with T = seconds_to_samples(crop_seconds).

    fixed_crops: every key is always cut at the same place (its "start"), so teacher embeddings
    of a crop can be cached; otherwise crops are random and "start" is -1.

    source: a `NAME.manifest.json`, a list of shard URLs (paths, `pipe:` commands, http), a
    brace pattern, or a mix of corpora (a list of `{manifest, weight, name}`, data/mix.py).
    steps_per_epoch defaults to total_samples // (batch_size * world_size) from the manifests;
    it is required for other sources, as is num_speakers with speed perturbation.
    """
    mix = source if isinstance(source, TrainingMix) else resolve_training_mix(source)
    if isinstance(augment, dict):
        augment = augment_from_dict(augment)
    if augment is not None:
        check_augment_sources(augment)
    num_speakers = num_speakers or mix.num_speakers
    if steps_per_epoch is None:
        if mix.total_samples is None:
            raise ValueError(f"steps_per_epoch is required when the source is not a manifest (got {source!r})")
        steps_per_epoch = max(1, mix.total_samples // (batch_size * world_size))
    speed = augment is not None and augment.speed_perturb
    if speed and num_speakers is None:
        raise ValueError("speed perturbation relabels speakers: pass num_speakers or a manifest")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    stream = TrainStream(
        mix.parts,
        batch_size=batch_size,
        crop_frames=seconds_to_samples(crop_seconds),
        seed=seed,
        rank=rank,
        epoch=epoch,
        steps_per_epoch=steps_per_epoch,
        shuffle_buffer=shuffle_buffer,
        augment=augment,
        num_speakers=num_speakers,
        fixed_crops=fixed_crops,
    )
    classes = num_classes(num_speakers, speed) if num_speakers else None
    return TrainLoader(stream, num_workers, classes, pin_memory)


class EvalStream(IterableDataset):
    """Each shard once, split over ranks and loader workers; only `keys` (None: all) decoded."""

    def __init__(
        self,
        urls: list[str],
        keys: frozenset[str] | None,
        *,
        max_frames: int | None,
        batch_size: int,
        sort_buffer: int,
        rank: int,
        world_size: int,
    ):
        super().__init__()
        self.urls, self.keys, self.max_frames = urls, keys, max_frames
        self.batch_size, self.sort_buffer = batch_size, sort_buffer
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_index()
        part = self.rank * num_workers + worker
        urls = self.urls[part :: self.world_size * num_workers]
        skips = SkipCounter(f"eval loader rank {self.rank} worker {worker}")
        samples = iter_tar_samples(urls, skips, want=frozenset({AUDIO}))
        if self.keys is not None:
            samples = (s for s in samples if s["key"] in self.keys)
        samples = decode_whole(samples, self.max_frames, skips)
        yield from length_sorted_batches(samples, self.batch_size, self.sort_buffer, skips)


class EvalLoader:
    """Iterable of evaluation batches; after a pass, `missing` lists wanted keys never seen.

    With strict=True a pass that misses trial utterances raises at its end: scores over a
    partial trial list would look valid and be wrong.
    """

    def __init__(self, stream: EvalStream, num_workers: int, strict: bool = True):
        self.stream, self.num_workers, self.strict = stream, num_workers, strict
        self.skipped = 0
        self.missing: list[str] = []

    def __iter__(self) -> Iterator[dict]:
        seen: set[str] = set()
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers)
        for batch in loader:
            self.skipped += batch["skipped"]
            seen.update(batch["key"])
            yield batch
        wanted = self.stream.keys
        self.missing = sorted(wanted - seen) if wanted is not None else []
        if self.stream.world_size == 1 and self.missing and self.strict:
            raise RuntimeError(
                f"eval loader: {len(self.missing)} trial utterance(s) not found in the shards "
                f"(e.g. {self.missing[:5]}); {self.skipped} corrupt sample(s) were skipped. "
                "Re-pack the split with --trials so make_shards.py checks the list."
            )


def make_eval_loader(
    source,
    trials_path_or_keys=None,
    *,
    max_seconds: float | None = None,
    batch_size: int,
    num_workers: int = 0,
    sort_buffer: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    strict: bool = True,
) -> EvalLoader:
    """Evaluation batches {"wave": [B, T] float32 16 kHz zero-padded, "lengths": [B] int64,
    "key": B str, "skipped": int} of similar-length utterances.

    trials_path_or_keys: a VoxCeleb trial list, an iterable of keys, or None for the manifest's
    trial list (all utterances when there is none). max_seconds caps each utterance to its first
    N seconds. With world_size > 1 each rank reads its part of the shards (no missing check).
    """
    shards = resolve_source(source)
    if trials_path_or_keys is None:
        trials_path_or_keys = shards.trials_path
    if trials_path_or_keys is None:
        keys = None
    elif isinstance(trials_path_or_keys, (str, Path)):
        keys = frozenset(trial_keys(read_trials(trials_path_or_keys)))
    else:
        keys = frozenset(trials_path_or_keys)
    max_frames = None if max_seconds is None else seconds_to_samples(max_seconds)
    stream = EvalStream(
        shards.urls,
        keys,
        max_frames=max_frames,
        batch_size=batch_size,
        sort_buffer=sort_buffer,
        rank=rank,
        world_size=world_size,
    )
    return EvalLoader(stream, num_workers, strict)
