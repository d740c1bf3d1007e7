"""Training on several corpora at once: `data.train` as a list of `{manifest, weight, name}`.

    data:
      train:
        - {manifest: shards/vox2/train.manifest.json, weight: 1.0}
        - {manifest: shards/cnceleb/train.manifest.json, weight: 0.5}

Each corpus keeps its own shard stream and shuffle buffer; every crop's corpus is drawn in
proportion to the weights (`interleave`), so a corpus's share of the batches is its weight's
share whatever its size. Speakers never merge across corpora: corpus i's labels are shifted by
the speakers of the corpora before it (the class count is the sum), and its utterance keys get
the prefix `NAME/` (teacher and feature caches are keyed by utterance, and two corpora may well
both hold `id00012/abc/00001`). A single corpus (a plain path, or a list of one) is read exactly
as before: no prefix, no shift.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrl_dist.config import ConfigError, TrainCorpusConfig
from mrl_dist.data.manifest import MANIFEST_SUFFIX, read_manifest
from mrl_dist.data.shard_reader import expand_urls


@dataclass(frozen=True)
class ShardSource:
    """Where shards are, plus what a manifest knows about them (None without one)."""

    urls: list[str]
    num_speakers: int | None = None
    total_samples: int | None = None
    trials_path: Path | None = None


def resolve_source(source: str | Path | Sequence[str]) -> ShardSource:
    """A `*.manifest.json` path, a list of shard URLs, or a brace pattern -> ShardSource."""
    if isinstance(source, (str, Path)) and str(source).endswith(MANIFEST_SUFFIX):
        manifest = read_manifest(source)
        return ShardSource(manifest.urls, manifest.num_speakers, manifest.total_samples, manifest.trials_path)
    urls = expand_urls(source)
    if not urls:
        raise ValueError(f"no shard URLs in source {source!r}")
    return ShardSource(urls)


@dataclass(frozen=True)
class CorpusPart:
    """One corpus of the training data, as the loaders read it."""

    name: str
    urls: list[str]
    weight: float
    label_offset: int  # added to this corpus's speaker labels
    key_prefix: str  # put before its utterance keys ("" for a single corpus)
    num_speakers: int | None
    total_samples: int | None


@dataclass(frozen=True)
class TrainingMix:
    """The corpora of `data.train`; `num_speakers` (the class count) and `total_samples` are sums,
    None when a corpus does not know them (shard URLs without a manifest)."""

    parts: list[CorpusPart]

    @property
    def urls(self) -> list[str]:
        return [url for part in self.parts for url in part.urls]

    @property
    def num_speakers(self) -> int | None:
        counts = [part.num_speakers for part in self.parts]
        return None if any(n is None for n in counts) else sum(n for n in counts if n is not None)

    @property
    def total_samples(self) -> int | None:
        counts = [part.total_samples for part in self.parts]
        return None if any(n is None for n in counts) else sum(n for n in counts if n is not None)

    def part_of_url(self) -> dict[str, CorpusPart]:
        return {url: part for part in self.parts for url in part.urls}


def corpus_name(manifest: str) -> str:
    """`shards/cnceleb/train.manifest.json` -> `train`; a URL's last path component likewise."""
    return manifest.rstrip("/").rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)


def mix_names(entries: Sequence[TrainCorpusConfig]) -> list[str]:
    """Each corpus's name: its `name`, else its manifest's file name without `.manifest.json`."""
    return [entry.name or corpus_name(str(entry.manifest)) for entry in entries]


def first_manifest(source: str | Sequence[TrainCorpusConfig]) -> str:
    """`data.train`'s manifest (or source), the first corpus's in a mix: where caches that
    belong beside the training shards go."""
    return source if isinstance(source, str) else str(source[0].manifest)


def mix_weights(source: str | Sequence[TrainCorpusConfig]) -> dict[str, float] | None:
    """`data.train`'s {corpus name: weight} when it mixes several corpora, else None (read from
    the config alone: a feature cache of the mix knows its corpora by these names)."""
    if isinstance(source, str) or len(source) < 2:
        return None
    return {name: float(entry.weight) for name, entry in zip(mix_names(source), source)}


def resolve_training_mix(source: str | Sequence[str] | Sequence[TrainCorpusConfig] | Sequence[dict]) -> TrainingMix:
    """`data.train` -> TrainingMix. A string (manifest, brace pattern) or a list of URLs is one
    corpus; a list of `{manifest, weight, name}` is a mix, each entry a manifest.

    Raises ConfigError naming `data.train[i]` for an empty corpus, a source that is not a
    manifest, or two corpora of one name; ManifestError for a missing or broken manifest."""
    if isinstance(source, (str, Path)) or (source and all(isinstance(item, str) for item in source)):
        return TrainingMix([_single_part(typing.cast("str | Sequence[str]", source))])
    entries = [
        item if isinstance(item, TrainCorpusConfig) else TrainCorpusConfig(**typing.cast(dict, item)) for item in source
    ]
    if not entries:
        raise ConfigError("data.train", "is an empty list; name at least one {manifest, weight}")
    parts: list[CorpusPart] = []
    seen: dict[str, int] = {}
    offset = 0
    for index, (entry, name) in enumerate(zip(entries, mix_names(entries))):
        key = f"data.train[{index}]"
        if not str(entry.manifest).endswith(MANIFEST_SUFFIX):
            raise ConfigError(f"{key}.manifest", f"must be a `NAME{MANIFEST_SUFFIX}` (got {entry.manifest!r})")
        if not entry.weight > 0:
            raise ConfigError(f"{key}.weight", f"must be > 0, got {entry.weight!r}")
        manifest = read_manifest(entry.manifest)
        if name in seen:
            raise ConfigError(
                f"{key}.name",
                f"{name!r} is data.train[{seen[name]}]'s name too; give each corpus its own `name`",
            )
        seen[name] = index
        if manifest.total_samples == 0 or not manifest.shards:
            raise ConfigError(f"{key}.manifest", f"{entry.manifest} holds no samples; remove it from the mix")
        single = len(entries) == 1
        parts.append(
            CorpusPart(
                name=name,
                urls=manifest.urls,
                weight=float(entry.weight),
                label_offset=0 if single else offset,
                key_prefix="" if single else f"{name}/",
                num_speakers=manifest.num_speakers,
                total_samples=manifest.total_samples,
            )
        )
        offset += manifest.num_speakers
    return TrainingMix(parts)


def _single_part(source: str | Sequence[str]) -> CorpusPart:
    shards = resolve_source(source)
    return CorpusPart(
        name=corpus_name(str(source)) if isinstance(source, (str, Path)) else "train",
        urls=shards.urls,
        weight=1.0,
        label_offset=0,
        key_prefix="",
        num_speakers=shards.num_speakers,
        total_samples=shards.total_samples,
    )


def namespace(samples: Iterable[dict], label_offset: int, key_prefix: str) -> Iterator[dict]:
    """Stage: one corpus's speakers and keys into the mix's namespace.

    Before and after: {"key", "label", ...}; the label (unless -1, unlabelled) is shifted by
    `label_offset` and the key gets `key_prefix`."""
    for sample in samples:
        label = sample["label"]
        yield {**sample, "key": key_prefix + sample["key"], "label": label + label_offset if label >= 0 else label}


def interleave(streams: Sequence[Iterator[dict]], weights: Sequence[float], rng: np.random.Generator):
    """Stage: one stream of samples from several endless ones, each next sample from stream i with
    probability weights[i] / sum(weights)."""
    probabilities = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    while True:
        # Draws in blocks: one numpy call per 256 samples instead of one per sample.
        for choice in rng.choice(len(streams), size=256, p=probabilities):
            yield next(streams[choice])
