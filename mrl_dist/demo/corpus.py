"""A synthetic multi-speaker corpus in VoxCeleb layout, for demos and end-to-end tests.

``make_demo_corpus(DIR)`` writes::

    DIR/train/<speaker>/<video>/<utt>.wav   e.g. train/id00003/v001/00002.wav, 16 kHz mono PCM16
    DIR/test/<speaker>/<video>/<utt>.wav    disjoint speakers (about test_fraction of them)
    DIR/trials.txt                          VoxCeleb-format pairs over DIR/test, balanced 1/0
    DIR/demo_corpus.json                    the arguments and what was written

The voices come from `synthetic_voice.py` (source-filter model, numpy only).

Difficulty (measured on the default corpus, 30 train / 10 test speakers, 3800 trials): an LDA on
mean+std log-mel gives ~3% EER; a 3-layer CNN (softmax, 2 s crops) trained 3 min on 2 shared CPU
cores 6-8% (400-1300 steps; same-video target pairs ~1%, cross-video ~7-9%); cosine on raw
long-term spectra ~40%.

Cost: the default corpus (40 speakers x 20 utterances, 3-8 s each, 1.2 h of audio, 135 MB)
takes about 8 s on one core of the 2-core development VM when it is otherwise idle (~10 ms per
utterance, half of it numpy FFTs; writing ~1 ms), 10-14 s when the other core is busy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from mrl_dist.data.trials import balanced_trials, write_trials
from mrl_dist.demo.synthetic_voice import synthesize_utterance
from mrl_dist.demo.voices import Session, SpeakerVoice, sample_session, sample_speaker

MANIFEST_NAME = "demo_corpus.json"
TRIALS_NAME = "trials.txt"
UTTERANCE_SECONDS = (3.0, 8.0)
VIDEOS_PER_SPEAKER = (2, 5)
# Seed streams: every speaker/video/utterance gets its own generator derived from (seed, ids),
# so a speaker's voice does not change when --speakers or --utterances changes.
_SPEAKER_STREAM, _VIDEO_STREAM, _UTTERANCE_STREAM, _SPLIT_STREAM, _LAYOUT_STREAM = 1, 2, 3, 4, 5


@dataclass
class DemoCorpus:
    """Where a demo corpus lives and what it holds."""

    root: Path
    train_dir: Path
    test_dir: Path
    trials: Path
    speakers_train: list[str]
    speakers_test: list[str]
    manifest: Path
    num_utterances: int = 0
    seconds: float = 0.0
    num_trials: int = 0


def speaker_name(index: int) -> str:
    """``3`` -> ``id00003`` (VoxCeleb-style speaker folder name)."""
    return f"id{index:05d}"


def make_demo_corpus(
    output: str | Path,
    speakers: int = 40,
    utterances: int = 20,
    seed: int = 0,
    sample_rate: int = 16_000,
    test_fraction: float = 0.25,
    progress: bool = False,
) -> DemoCorpus:
    """Synthesise ``speakers`` x ``utterances`` wavs under ``output``; byte-identical per arguments.

    Re-running into a directory that an earlier call wrote replaces that corpus; a directory
    holding other data under ``train/``, ``test/`` or ``trials.txt`` is refused.
    """
    _check_arguments(speakers, utterances, seed, sample_rate, test_fraction)
    root = Path(output)
    _prepare_output(root)
    speakers_test, speakers_train = split_speakers(speakers, test_fraction, seed)
    test_set = set(speakers_test)

    jobs = [
        (index, video, number)
        for index in range(speakers)
        for video, number in utterance_layout(seed, index, utterances)
    ]
    written: dict[str, list[str]] = {}
    seconds = {"train": 0.0, "test": 0.0}
    voices: dict[int, SpeakerVoice] = {}
    sessions: dict[tuple[int, int], Session] = {}
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synthesising", unit="utt")
    for index, video, number in iterator:
        name = speaker_name(index)
        split = "test" if name in test_set else "train"
        if index not in voices:
            voices[index] = sample_speaker(np.random.default_rng([seed, _SPEAKER_STREAM, index]), sample_rate)
        if (index, video) not in sessions:
            sessions[(index, video)] = sample_session(
                np.random.default_rng([seed, _VIDEO_STREAM, index, video]), sample_rate
            )
        rng = np.random.default_rng([seed, _UTTERANCE_STREAM, index, video, number])
        wave = synthesize_utterance(
            rng, voices[index], sessions[(index, video)], float(rng.uniform(*UTTERANCE_SECONDS))
        )
        relative = f"{name}/v{video:03d}/{number:05d}.wav"
        _write_wav(root / split / relative, wave, sample_rate)
        written.setdefault(name, []).append(relative)
        seconds[split] += len(wave) / sample_rate

    trials = balanced_trials({s: written[s] for s in speakers_test}, seed=seed)
    trials_path = write_trials(root / TRIALS_NAME, trials)
    corpus = DemoCorpus(
        root=root,
        train_dir=root / "train",
        test_dir=root / "test",
        trials=trials_path,
        speakers_train=speakers_train,
        speakers_test=speakers_test,
        manifest=root / MANIFEST_NAME,
        num_utterances=len(jobs),
        seconds=seconds["train"] + seconds["test"],
        num_trials=len(trials),
    )
    _write_manifest(corpus, seed, speakers, utterances, sample_rate, test_fraction, seconds)
    return corpus


def split_speakers(speakers: int, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(test, train) speaker names, disjoint and sorted; at least 2 test and 1 train speaker."""
    n_test = min(max(2, round(test_fraction * speakers)), speakers - 1)
    order = np.random.default_rng([seed, _SPLIT_STREAM, speakers]).permutation(speakers)
    test = sorted(speaker_name(int(i)) for i in order[:n_test])
    train = sorted(speaker_name(int(i)) for i in order[n_test:])
    return test, train


def utterance_layout(seed: int, speaker_index: int, utterances: int) -> list[tuple[int, int]]:
    """(video, utterance number) per utterance of one speaker; numbers restart at 1 per video.

    Every video gets at least one utterance; the rest land on videos at random, so sessions have
    unequal sizes like real interview clips.
    """
    rng = np.random.default_rng([seed, _LAYOUT_STREAM, speaker_index])
    n_videos = min(utterances, int(rng.integers(VIDEOS_PER_SPEAKER[0], VIDEOS_PER_SPEAKER[1] + 1)))
    videos = np.concatenate([np.arange(n_videos), rng.integers(0, n_videos, size=utterances - n_videos)])
    counts = np.bincount(videos, minlength=n_videos)
    return [(v, n) for v in range(n_videos) for n in range(1, int(counts[v]) + 1)]


def _check_arguments(speakers, utterances, seed, sample_rate, test_fraction) -> None:
    if seed < 0:
        raise ValueError(f"seed={seed}: must be a non-negative integer")
    if speakers < 3:
        raise ValueError(f"speakers={speakers}: need at least 3 (2 test speakers + 1 train)")
    if utterances < 2:
        raise ValueError(f"utterances={utterances}: need at least 2 per speaker for target trials")
    if sample_rate < 8_000:
        raise ValueError(f"sample_rate={sample_rate}: need at least 8000 Hz")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: must be strictly between 0 and 1")


def _prepare_output(root: Path) -> None:
    """Clear a corpus this module wrote before; refuse to clobber anything else."""
    ours = [root / "train", root / "test", root / TRIALS_NAME]
    present = [p for p in ours if p.exists()]
    if present and not (root / MANIFEST_NAME).is_file():
        raise FileExistsError(
            f"{present[0]} already exists and {root / MANIFEST_NAME} does not, so it was not "
            f"written by make_demo_corpus; choose an empty output directory"
        )
    for path in present:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """wave [T] float in [-1, 1] -> 16-bit PCM wav (explicit rounding keeps bytes reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


def _write_manifest(corpus, seed, speakers, utterances, sample_rate, test_fraction, seconds):
    record = {
        "generator": "mrl_dist.demo.corpus",
        "arguments": {
            "speakers": speakers,
            "utterances": utterances,
            "seed": seed,
            "sample_rate": sample_rate,
            "test_fraction": test_fraction,
        },
        "speakers_train": corpus.speakers_train,
        "speakers_test": corpus.speakers_test,
        "num_utterances": corpus.num_utterances,
        "num_trials": corpus.num_trials,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    corpus.manifest.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def describe(corpus: DemoCorpus, elapsed_seconds: float | None = None) -> str:
    """A few human-readable lines about what was written (used by the CLI)."""
    lines = [
        f"wrote {corpus.num_utterances} utterances ({corpus.seconds / 3600:.2f} h) to {corpus.root}",
        f"  train: {corpus.train_dir} ({len(corpus.speakers_train)} speakers)",
        f"  test:  {corpus.test_dir} ({len(corpus.speakers_test)} speakers)",
        f"  trials: {corpus.trials} ({corpus.num_trials} pairs, half target)",
        f"  manifest: {corpus.manifest}",
    ]
    if elapsed_seconds is not None:
        lines.append(f"  took {elapsed_seconds:.1f} s")
    return "\n".join(lines)
