"""Speaker-verification trial lists in the VoxCeleb text format.

A trial list has one pair per line::

    1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav
    0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav

label ``1`` is a target pair (same speaker), ``0`` a non-target pair; the two paths are
relative to the split folder that holds the audio (``<speaker>/<video>/<utt>.wav``).

Shards key samples as ``<speaker>/<video>/<utt>`` (no extension), so :func:`utterance_key`
and :func:`trial_keys` translate trial paths into the keys the evaluation looks up.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np


@dataclass(frozen=True, order=True)
class Trial:
    """One verification pair: ``label`` 1 = same speaker, 0 = different speakers."""

    label: int
    enroll: str
    test: str


def utterance_key(path: str) -> str:
    """``id10270/x6uYqmx31kE/00001.wav`` -> ``id10270/x6uYqmx31kE/00001`` (the shard key)."""
    pure = PurePosixPath(path)
    return str(pure.with_suffix("")) if pure.suffix else str(pure)


def trial_keys(trials: Iterable[Trial]) -> list[str]:
    """Sorted, de-duplicated utterance keys (paths without extension) used by ``trials``."""
    keys = set()
    for trial in trials:
        keys.add(utterance_key(trial.enroll))
        keys.add(utterance_key(trial.test))
    return sorted(keys)


def parse_trial_line(line: str, *, source: str = "<string>", line_number: int = 0) -> Trial:
    """Parse ``"<label> <enroll> <test>"``; ValueError names ``source`` and ``line_number``."""
    fields = line.split()
    where = f"{source}, line {line_number}"
    if len(fields) != 3:
        raise ValueError(
            f"{where}: expected '<label 0|1> <enroll path> <test path>' (3 fields), "
            f"got {len(fields)} field(s): {line.strip()!r}"
        )
    label_text, enroll, test = fields
    if label_text not in ("0", "1"):
        raise ValueError(f"{where}: label must be 1 (target) or 0 (non-target), got {label_text!r} in {line.strip()!r}")
    return Trial(label=int(label_text), enroll=enroll, test=test)


def read_trials(path: str | Path) -> list[Trial]:
    """Read a VoxCeleb-format trial list; blank lines are skipped, anything else must parse.

    Raises FileNotFoundError if ``path`` is missing and ValueError naming the file and the
    1-based line number of the first malformed line.
    """
    path = Path(path)
    trials = []
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            trials.append(parse_trial_line(line, source=str(path), line_number=line_number))
    return trials


def format_trial(trial: Trial) -> str:
    """The text line (without newline) that :func:`parse_trial_line` reads back."""
    if trial.label not in (0, 1):
        raise ValueError(f"trial label must be 0 or 1, got {trial.label!r} in {trial}")
    for path in (trial.enroll, trial.test):
        if not path or any(ch.isspace() for ch in path):
            raise ValueError(f"trial path must be non-empty without whitespace, got {path!r}")
    return f"{trial.label} {trial.enroll} {trial.test}"


def write_trials(path: str | Path, trials: Iterable[Trial]) -> Path:
    """Write ``trials`` one per line (``\\n`` endings, UTF-8); returns ``path``."""
    path = Path(path)
    lines = [format_trial(trial) + "\n" for trial in trials]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)
    return path


def balanced_trials(
    utterances_by_speaker: Mapping[str, Sequence[str]],
    *,
    seed: int,
    max_target_trials: int = 20_000,
) -> list[Trial]:
    """Equal numbers of target and non-target pairs, each unordered pair at most once.

    ``utterances_by_speaker`` maps a speaker to its utterance paths. Target pairs are every
    within-speaker pair (a seeded sample of ``max_target_trials`` when there are more);
    the same number of distinct cross-speaker pairs is drawn. Deterministic for ``seed``;
    lines come sorted so the file groups by enrollment utterance like VoxCeleb's lists.
    """
    speakers = sorted(s for s, utts in utterances_by_speaker.items() if len(utts) > 0)
    if len(speakers) < 2:
        raise ValueError(f"balanced trials need at least 2 speakers with utterances, got {len(speakers)}")
    # A stream of its own, so the corpus generator's draws for the same seed stay independent.
    rng = np.random.default_rng([seed, 0x7121A15])
    paths = [sorted(utterances_by_speaker[s]) for s in speakers]

    targets = [pair for utts in paths for pair in itertools.combinations(utts, 2)]
    if not targets:
        raise ValueError("balanced trials need a speaker with at least 2 utterances")
    if len(targets) > max_target_trials:
        chosen = rng.choice(len(targets), size=max_target_trials, replace=False)
        targets = [targets[i] for i in sorted(chosen)]

    nontargets = _distinct_cross_speaker_pairs(paths, len(targets), rng)
    trials = [Trial(1, a, b) for a, b in targets] + [Trial(0, a, b) for a, b in nontargets]
    return sorted(trials, key=lambda t: (t.enroll, t.test))


def _distinct_cross_speaker_pairs(
    paths: list[list[str]], count: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """``count`` distinct unordered cross-speaker utterance pairs, each as (a, b) with a < b."""
    flat = [p for utts in paths for p in utts]
    speaker_of = np.repeat(np.arange(len(paths)), [len(u) for u in paths])
    n = len(flat)
    available = (n * n - int(np.sum(np.bincount(speaker_of) ** 2))) // 2
    if count > available:
        raise ValueError(f"asked for {count} non-target pairs, only {available} exist")

    chosen: set[tuple[int, int]] = set()
    if available <= max(4 * count, 200_000):
        # Few pairs, or most of them wanted: enumerate them all and sample without replacement.
        i, j = np.triu_indices(n, k=1)
        cross = speaker_of[i] != speaker_of[j]
        i, j = i[cross], j[cross]
        picks = np.sort(rng.choice(len(i), size=count, replace=False))
        chosen = {(int(i[k]), int(j[k])) for k in picks}
    else:
        # Large: rejection sampling stays cheap because most draws are new cross pairs.
        while len(chosen) < count:
            a = rng.integers(0, n, size=2 * count)
            b = rng.integers(0, n, size=2 * count)
            for x, y in zip(a.tolist(), b.tolist()):
                if speaker_of[x] != speaker_of[y]:
                    pair = (min(x, y), max(x, y))
                    if pair not in chosen:
                        chosen.add(pair)
                        if len(chosen) == count:
                            break
    pairs = [(min(flat[a], flat[b]), max(flat[a], flat[b])) for a, b in chosen]
    return sorted(pairs)
