"""A validation set carved out of a packed split: `launch/make_trials.py`.

    SPLIT.manifest.json  ->  PREFIX.manifest.json        the held-out speakers (evaluation)
                             PREFIX.trials.txt           balanced trials over their utterances
                             PREFIX.rest.manifest.json   every other speaker (training)

A sample's speaker label lives in its `.json` tar member (shard_reader.py), and the classifier
needs labels 0..K-1; removing speakers from a split leaves gaps. So both subsets get shards of
their own (`PREFIX-000000.tar ...`, `PREFIX.rest-000000.tar ...`): each sample's audio member
(`.flac`, or `.wav` in a split packed with `--codec pcm`) is copied unchanged, so the subsets keep
the split's codec, and its JSON gets the label of its speaker in the subset (sorted speaker ids ->
0..K-1, as packing.py numbers them). Loaders and evaluation then read the subsets as they read any
packed split, with no filter to honour. Output is deterministic for the same split and seed.

Rank-agnostic, no torch: it runs beside `launch/make_shards.py`.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .manifest import MANIFEST_FORMAT, MANIFEST_SUFFIX, read_manifest, write_json_atomic
from .remote import local_shard_path
from .shard_reader import SkipCounter, audio_member, iter_tar_samples
from .shard_writer import encode_sample_json, sha256_file, tar_member
from .trials import balanced_trials, write_trials

REST_SUFFIX = ".rest"
TRIALS_SUFFIX = ".trials.txt"
# Output shards are cut at about the source's mean shard size; this when the source is remote.
DEFAULT_SHARD_BYTES = 256 * 2**20
_SPEAKER_STREAM = 0x4B1D  # a stream of its own: the trial sampling (trials.py) draws from another


class HoldoutError(ValueError):
    """The split cannot give the asked-for validation set; the message says why and what to do."""


@dataclass(frozen=True)
class HoldoutResult:
    manifest: Path  # PREFIX.manifest.json, the held-out speakers
    trials: Path  # PREFIX.trials.txt
    rest_manifest: Path  # PREFIX.rest.manifest.json, the split without them
    speakers: list[str]  # the held-out speaker ids, sorted
    target_pairs: int
    nontarget_pairs: int
    holdout_samples: int
    rest_samples: int


def output_paths(prefix: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(PREFIX.manifest.json, PREFIX.trials.txt, PREFIX.rest.manifest.json)."""
    prefix = Path(prefix)
    return (
        prefix.with_name(prefix.name + MANIFEST_SUFFIX),
        prefix.with_name(prefix.name + TRIALS_SUFFIX),
        prefix.with_name(prefix.name + REST_SUFFIX + MANIFEST_SUFFIX),
    )


def choose_holdout_speakers(speakers: list[str], count: int, seed: int) -> list[str]:
    """`count` of `speakers` drawn with `seed`, sorted; the same for the same set whatever its order.

    Raises HoldoutError unless 2 <= count < len(speakers) (non-target pairs need two held-out
    speakers, training at least one remaining).
    """
    if count < 2:
        raise HoldoutError(f"--holdout-speakers {count}: non-target trials need at least 2 held-out speakers")
    if count >= len(speakers):
        raise HoldoutError(
            f"--holdout-speakers {count}: the split has only {len(speakers)} speakers and training needs at "
            f"least one left; hold out at most {len(speakers) - 1}"
        )
    pool = sorted(speakers)
    picks = np.random.default_rng([seed, _SPEAKER_STREAM]).choice(len(pool), size=count, replace=False)
    return sorted(pool[int(i)] for i in picks)


def check_pairable(counts: dict[str, int], speakers: list[str], seed: int) -> None:
    """Raises HoldoutError listing the held-out speakers with fewer than 2 utterances (no target pair)."""
    single = [f"{s} ({counts.get(s, 0)})" for s in speakers if counts.get(s, 0) < 2]
    if single:
        raise HoldoutError(
            f"held-out speaker(s) with fewer than 2 utterances give no target pair: {', '.join(single)}; "
            f"choose another --seed (was {seed}) or re-pack without them"
        )


class _ShardSetWriter:
    """Writes samples into `FOLDER/NAME-000000.tar ...`, a new shard once one passes `shard_bytes`.

    Tar headers carry no time, owner or permissions (shard_writer.tar_member), so equal input
    gives equal bytes. Each shard is written under a temporary name and renamed when complete.
    """

    def __init__(self, folder: Path, name: str, shard_bytes: int):
        self.folder, self.name, self.shard_bytes = folder, name, shard_bytes
        self.shards: list[dict] = []  # {"name", "samples", "sha256"} of the finished shards
        self._open: tuple[tarfile.TarFile, BinaryIO] | None = None  # the shard being written
        self._shard_name, self._temporary, self._samples = "", folder, 0

    def add(self, key: str, member: str, audio: bytes, meta: bytes) -> None:
        """Appends one sample: `<key>.<member>` (its audio, "flac" or "wav") and `<key>.json`."""
        if self._open is not None and self._open[1].tell() >= self.shard_bytes:
            self._finish()
        if self._open is None:
            self._shard_name = f"{self.name}-{len(self.shards):06d}.tar"
            self._temporary = self.folder / f".{self._shard_name}.tmp.{os.getpid()}"
            handle = open(self._temporary, "wb")
            self._open = (tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT), handle)
            self._samples = 0
        for extension, data in ((member, audio), ("json", meta)):
            self._open[0].addfile(tar_member(f"{key}.{extension}", len(data)), io.BytesIO(data))
        self._samples += 1

    def _finish(self) -> None:
        if self._open is None:
            return
        tar, handle = self._open
        self._open = None
        tar.close()
        handle.close()
        target = self.folder / self._shard_name
        os.replace(self._temporary, target)
        self.shards.append({"name": self._shard_name, "samples": self._samples, "sha256": sha256_file(target)})

    def close(self) -> list[dict]:
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Drops the shard being written (after an error); finished shards stay."""
        if self._open is not None:
            self._open[1].close()
            self._open = None
            self._temporary.unlink(missing_ok=True)


def _target_shard_bytes(urls: list[str]) -> int:
    """The mean size of the source's local shards (DEFAULT_SHARD_BYTES when remote)."""
    paths = [local_shard_path(url) for url in urls]
    sizes = [os.path.getsize(p) for p in paths if p is not None and os.path.isfile(p)]
    return max(1, sum(sizes) // len(sizes)) if sizes else DEFAULT_SHARD_BYTES


def _check_no_overwrite(source_urls: list[str], source_manifest: Path | str, folder: Path, names: list[str]) -> None:
    """Refuses an --output whose shards or manifests would replace the source's own files."""
    ours = [(folder / name).resolve() for name in names]
    for url in [*source_urls, str(source_manifest)]:
        path = local_shard_path(url)
        if path is None:
            continue
        resolved = Path(path).resolve()
        for prefix in ours:
            if resolved.parent == prefix.parent and resolved.name.startswith((prefix.name + "-", prefix.name + ".")):
                raise HoldoutError(
                    f"--output {folder / names[0]} would overwrite the source split's file {resolved}; "
                    "choose another output prefix"
                )


def _sample_meta(sample: dict) -> dict:
    """A sample's parsed `.json` member; its speaker is `speaker` there, else the key's first part."""
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict):
            raise ValueError(f"not a JSON object: {type(meta).__name__}")
        meta["speaker"] = str(meta.get("speaker") or sample["key"].split("/", 1)[0])
        float(meta.get("seconds", 0.0))  # checked here, summed into total_hours below
        return meta
    except (ValueError, TypeError) as error:
        raise HoldoutError(
            f"shard {sample['url']}: sample {sample['key']} has a broken .json member ({error}); re-pack the split"
        ) from error


def _manifest_payload(split: str, shards: list[dict], counts: Counter, seconds: float, **extra) -> dict:
    speakers = sorted(counts)
    return {
        "format": MANIFEST_FORMAT,
        "split": split,
        "sample_rate": 16000,
        "shards": shards,
        "total_samples": sum(counts.values()),
        "total_hours": round(seconds / 3600, 6),
        "num_speakers": len(speakers),
        "speakers": {speaker: label for label, speaker in enumerate(speakers)},
        "speaker_counts": dict(sorted(counts.items())),
        "skipped": [],
        "skipped_counts": {},
        **extra,
    }


def make_holdout(
    data: str | os.PathLike,
    holdout_speakers: int,
    prefix: str | os.PathLike,
    *,
    target_pairs: int | None = None,
    seed: int = 0,
) -> HoldoutResult:
    """Splits the packed split `data` (a NAME.manifest.json path or URL) into `holdout_speakers`
    held-out speakers with a balanced trial list, and the rest; writes the files of the module
    docstring beside `prefix`. `target_pairs`: None for every within-speaker pair, else that many
    drawn with `seed`; as many distinct cross-speaker pairs are drawn.

    Raises ManifestError for an unreadable manifest and HoldoutError when the split cannot give
    the set (too many speakers asked for, a held-out speaker with one utterance, too few pairs,
    damaged shards or shards that disagree with the manifest).
    """
    manifest = read_manifest(data)
    chosen = choose_holdout_speakers(list(manifest.speakers), holdout_speakers, seed)
    if manifest.speaker_counts:  # cheap check before reading the shards; repeated on what they hold
        check_pairable(manifest.speaker_counts, chosen, seed)
    if target_pairs is not None and target_pairs < 1:
        raise HoldoutError(f"--target-pairs {target_pairs}: must be 'all' or a positive number")

    manifest_path, trials_path, rest_path = output_paths(prefix)
    folder, name = manifest_path.parent, Path(prefix).name
    rest_name = name + REST_SUFFIX
    _check_no_overwrite(manifest.urls, manifest.path, folder, [name, rest_name])
    folder.mkdir(parents=True, exist_ok=True)

    held = set(chosen)
    holdout_labels = {speaker: label for label, speaker in enumerate(chosen)}
    rest_labels = {s: label for label, s in enumerate(sorted(s for s in manifest.speakers if s not in held))}
    shard_bytes = _target_shard_bytes(manifest.urls)
    writers = {True: _ShardSetWriter(folder, name, shard_bytes), False: _ShardSetWriter(folder, rest_name, shard_bytes)}
    counts: dict[bool, Counter] = {True: Counter(), False: Counter()}
    seconds = {True: 0.0, False: 0.0}
    utterances: dict[str, list[str]] = {speaker: [] for speaker in chosen}
    skips = SkipCounter(f"make_trials {data}")
    try:
        for sample in iter_tar_samples(manifest.urls, skips):
            key, meta = sample["key"], _sample_meta(sample)
            speaker = meta["speaker"]
            if speaker not in manifest.speakers:
                raise HoldoutError(
                    f"shard {sample['url']}: sample {key} is of speaker {speaker}, who is not in the manifest "
                    f"{manifest.path}; re-pack the split"
                )
            is_held = speaker in held
            meta["label"] = (holdout_labels if is_held else rest_labels)[speaker]
            # Compact with sorted keys, as packed: the same split gives the same bytes.
            writers[is_held].add(key, *audio_member(sample), encode_sample_json(meta))
            counts[is_held][speaker] += 1
            seconds[is_held] += float(meta.get("seconds", 0.0))
            if is_held:
                utterances[speaker].append(key)
        shards = {held_out: writer.close() for held_out, writer in writers.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    read = sum(counts[True].values()) + sum(counts[False].values())
    if skips.total or read != manifest.total_samples:
        raise HoldoutError(
            f"{manifest.path}: read {read} of its {manifest.total_samples} samples from its shards "
            f"(skipped: {skips.by_reason or 'none'}); fix or re-pack the shards and run again"
        )
    check_pairable(counts[True], chosen, seed)

    available = sum(n * (n - 1) // 2 for n in counts[True].values())
    if target_pairs is not None and target_pairs > available:
        raise HoldoutError(
            f"--target-pairs {target_pairs}: the {len(chosen)} held-out speakers give only {available} target pairs"
        )
    try:
        trials = balanced_trials(utterances, seed=seed, max_target_trials=target_pairs or available)
    except ValueError as error:  # fewer distinct non-target pairs than target pairs
        raise HoldoutError(f"cannot balance the trials: {error}; use --target-pairs N with a smaller N") from error
    write_trials(trials_path, trials)
    targets = sum(trial.label for trial in trials)

    origin = {
        "manifest": str(manifest.path),
        "holdout_speakers": len(chosen),
        "seed": seed,
        "target_pairs": "all" if target_pairs is None else target_pairs,
    }
    # The audio members are copied, so the subsets have the split's codec.
    inherited = {"codec": manifest.codec, **({"version": manifest.version} if manifest.version else {})}
    write_json_atomic(
        rest_path,
        _manifest_payload(
            rest_name, shards[False], counts[False], seconds[False], trials=None, holdout=origin, **inherited
        ),
    )
    write_json_atomic(
        manifest_path,
        _manifest_payload(
            name, shards[True], counts[True], seconds[True], trials=trials_path.name, holdout=origin, **inherited
        ),
    )
    return HoldoutResult(
        manifest=manifest_path,
        trials=trials_path,
        rest_manifest=rest_path,
        speakers=chosen,
        target_pairs=targets,
        nontarget_pairs=len(trials) - targets,
        holdout_samples=sum(counts[True].values()),
        rest_samples=sum(counts[False].values()),
    )


def summary(result: HoldoutResult) -> str:
    """The lines `launch/make_trials.py` prints when done."""
    shown = ", ".join(itertools.islice(result.speakers, 8)) + (", ..." if len(result.speakers) > 8 else "")
    return (
        f"make_trials: {len(result.speakers)} held-out speakers ({shown}), {result.holdout_samples} utterances "
        f"-> {result.manifest}\n"
        f"make_trials: {result.target_pairs} target + {result.nontarget_pairs} non-target trials -> {result.trials}\n"
        f"make_trials: {result.rest_samples} utterances of the other speakers -> {result.rest_manifest} (training)"
    )
