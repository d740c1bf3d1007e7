"""The data stages: each one `Iterable[dict] -> Iterable[dict]` over samples of a tar stream,
with its own numpy Generator. pipeline.py chains them into the training and evaluation loaders;
augment.py holds the augmentation stages.

    training:    shuffle_samples -> parse_meta -> decode_crop -> batch_crops
    evaluation:  decode_whole -> length_sorted_batches

A sample that cannot be decoded is skipped and counted (`SkipCounter`), never silently.
A sample's audio is its `"flac"` or `"wav"` member (codecs.py); "flac" below stands for either.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable

import numpy as np
import soxr
import torch
from torch.utils.data import get_worker_info

from mrl_dist.data.audio import SAMPLE_RATE, AudioError, repeat_to_length
from mrl_dist.data.codecs import read_member_crop, read_member_window
from mrl_dist.data.crops import fixed_crop_start, random_crop_start
from mrl_dist.data.shard_reader import SkipCounter, audio_member

# An endless stream of undecodable samples would otherwise spin forever without a batch.
MAX_FAILURES_IN_ROW = 1000


def worker_rng(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    """The one generator a loader worker derives all its randomness from."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, worker]))


def worker_index() -> tuple[int, int]:
    """(this loader worker's index, the number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shuffle_samples(samples: Iterable[dict], buffer_size: int, rng: np.random.Generator):
    """Stage: yields samples in random order through a buffer of `buffer_size` (any dict)."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        slot = int(rng.integers(buffer_size))
        buffer[slot], sample = sample, buffer[slot]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def parse_meta(samples: Iterable[dict], skips: SkipCounter):
    """Stage: reads the `.json` member.

    Before: {"key", "url", "flac": bytes, "json": bytes}. After: {"key", "url", "flac", "label":
    int} ("wav" instead of "flac" for a PCM sample). A sample whose JSON is broken is skipped and
    counted; one without a "label" (audio packed without speaker labels, usable for label-free
    distillation) gets label -1.
    """
    for sample in samples:
        try:
            label = int(json.loads(sample["json"]).get("label", -1))
        except (ValueError, AttributeError, TypeError) as error:
            skips.skip("bad-json", sample["url"], sample["key"], f"{type(error).__name__}: {error}")
            continue
        member, audio = audio_member(sample)
        yield {"key": sample["key"], "url": sample["url"], member: audio, "label": label}


def decode_crop(
    samples: Iterable[dict], crop_frames: int, rng: np.random.Generator, skips: SkipCounter, fixed: bool = False
):
    """Stage: decodes a random crop, seeking into the FLAC so only the crop's frames are decoded
    (a PCM sample's crop is a slice of its bytes).

    Before: {"key", "url", "flac", "label"[, "speed"]}. After: {"key", "label", "wave":
    [crop_frames] float32 16 kHz, "start": int (-1 for random crops)}. Utterances shorter than
    the crop are repeated to length. With "speed" s, `crop_frames * s` source frames are read
    and resampled to `crop_frames`. `fixed`: the crop start depends on the key alone (crops.py).
    """
    failures_in_row = 0
    for sample in samples:
        if failures_in_row >= MAX_FAILURES_IN_ROW:
            raise RuntimeError(
                f"{failures_in_row} samples in a row could not be decoded (last: "
                f"{sample['key']} in {sample['url']}); skipped: {skips.by_reason}"
            )
        speed = sample.get("speed", 1.0)
        wanted = crop_frames if speed == 1.0 else math.ceil(crop_frames * speed) + 8
        # total frames -> crop start; partial binds this sample's key and length now.
        choose: Callable[[int], int] = (
            functools.partial(fixed_crop_start, sample["key"], crop_frames=wanted)
            if fixed
            else functools.partial(random_crop_start, rng, crop_frames=wanted)
        )
        try:
            member, audio = audio_member(sample)
            wave, start = read_member_window(audio, member, wanted, choose)
        except AudioError as error:
            skips.skip(error.reason, sample["url"], sample["key"], error.detail)
            failures_in_row += 1
            continue
        if len(wave) == 0:
            skips.skip("empty", sample["url"], sample["key"], "audio member has no samples")
            failures_in_row += 1
            continue
        failures_in_row = 0
        if speed != 1.0:
            # Treating the audio as recorded at 16 kHz * speed makes it play `speed` times faster.
            wave = soxr.resample(wave, SAMPLE_RATE * speed, SAMPLE_RATE)
        wave = repeat_to_length(wave, crop_frames) if len(wave) < crop_frames else wave[:crop_frames]
        yield {"key": sample["key"], "label": sample["label"], "wave": wave, "start": start if fixed else -1}


def batch_crops(samples: Iterable[dict], batch_size: int, skips: SkipCounter):
    """Stage: stacks crops into batches.

    Before: {"key", "label", "wave": [T], "start"}. After: {"wave": [B, T] float32, "label": [B]
    int64 (-1: unlabelled), "key": list of B str, "start": [B] int64 crop starts (-1: random),
    "skipped": int (samples this worker skipped since its previous batch)}.
    """
    batch: list[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield {
                "wave": torch.from_numpy(np.stack([s["wave"] for s in batch])),
                "label": torch.tensor([s["label"] for s in batch], dtype=torch.int64),
                "key": [s["key"] for s in batch],
                "start": torch.tensor([s.get("start", -1) for s in batch], dtype=torch.int64),
                "skipped": skips.take(),
            }
            batch = []


def decode_whole(samples: Iterable[dict], max_frames: int | None, skips: SkipCounter):
    """Stage: whole utterances, capped to their first `max_frames` samples.

    Before: {"key", "url", "flac"}. After: {"key", "wave": [T] float32 16 kHz}, T <= max_frames.
    """
    for sample in samples:
        try:
            member, audio = audio_member(sample)
            wave = read_member_crop(audio, member, 0, max_frames)
        except AudioError as error:
            skips.skip(error.reason, sample["url"], sample["key"], error.detail)
            continue
        if len(wave) == 0:
            skips.skip("empty", sample["url"], sample["key"], "audio member has no samples")
            continue
        yield {"key": sample["key"], "wave": wave}


def length_sorted_batches(samples: Iterable[dict], batch_size: int, sort_buffer: int, skips: SkipCounter):
    """Stage: sorts each `sort_buffer` utterances by length (longest first) into padded batches.

    Before: {"key", "wave": [T]}. After: {"wave": [B, T_max] float32 zero-padded, "lengths": [B]
    int64, "key": list of B str, "skipped": int}. With a buffer larger than the set, the order
    is global; padding then costs little.
    """

    def flush(buffer):
        buffer.sort(key=lambda s: (-len(s["wave"]), s["key"]))
        for start in range(0, len(buffer), batch_size):
            chunk = buffer[start : start + batch_size]
            lengths = [len(s["wave"]) for s in chunk]
            wave = np.zeros((len(chunk), max(lengths)), dtype=np.float32)
            for row, s in enumerate(chunk):
                wave[row, : len(s["wave"])] = s["wave"]
            yield {
                "wave": torch.from_numpy(wave),
                "lengths": torch.tensor(lengths),
                "key": [s["key"] for s in chunk],
                "skipped": skips.take(),
            }

    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= sort_buffer:
            yield from flush(buffer)
            buffer = []
    yield from flush(buffer)
