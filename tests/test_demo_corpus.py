"""The synthetic demo corpus and VoxCeleb-format trial lists, as a specification.

One small corpus (6 speakers x 4 utterances, ~0.3 s to make) is shared by most tests; the
determinism tests make a few more of the same size.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mrl_dist.data.trials import (
    Trial,
    balanced_trials,
    read_trials,
    trial_keys,
    utterance_key,
    write_trials,
)
from mrl_dist.demo.cli import make_demo_data_main
from mrl_dist.demo.corpus import make_demo_corpus

REPO = Path(__file__).resolve().parents[1]
SPEAKERS, UTTERANCES, SEED = 6, 4, 0
WAV_PATH = re.compile(r"^(train|test)/id\d{5}/v\d{3}/\d{5}\.wav$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(
        tmp_path_factory.mktemp("demo") / "corpus",
        speakers=SPEAKERS,
        utterances=UTTERANCES,
        seed=SEED,
    )


def wav_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.wav"))


def speaker_of(path: str) -> str:
    return path.split("/")[0]


def long_term_log_spectrum(wave: np.ndarray, bands: int = 32) -> np.ndarray:
    """Mean power in ``bands`` linear bands, in log, mean removed (so gain does not count)."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, 512)[::256] * np.hanning(512)
    power = np.mean(np.abs(np.fft.rfft(frames)) ** 2, axis=0)[1:]
    log_power = np.log([band.mean() + 1e-10 for band in np.array_split(power, bands)])
    return log_power - log_power.mean()


# --- layout ----------------------------------------------------------------------------------


def test_writes_speakers_times_utterances_wavs_in_voxceleb_layout(corpus):
    relative = [p.relative_to(corpus.root).as_posix() for p in wav_files(corpus.root)]
    assert len(relative) == SPEAKERS * UTTERANCES == corpus.num_utterances
    assert all(WAV_PATH.match(p) for p in relative), relative
    per_speaker = {}
    for p in relative:
        per_speaker.setdefault(p.split("/")[1], []).append(p)
    assert sorted(per_speaker) == [f"id{i:05d}" for i in range(SPEAKERS)]
    assert all(len(paths) == UTTERANCES for paths in per_speaker.values())


def test_every_speaker_has_several_videos_numbered_from_one(corpus):
    for speaker_dir in [*corpus.train_dir.iterdir(), *corpus.test_dir.iterdir()]:
        videos = sorted(speaker_dir.iterdir())
        assert len(videos) >= 2, speaker_dir
        for video in videos:
            names = sorted(p.name for p in video.iterdir())
            assert names == [f"{n:05d}.wav" for n in range(1, len(names) + 1)]


def test_test_speakers_are_a_quarter_and_disjoint_from_train(corpus):
    train = sorted(p.name for p in corpus.train_dir.iterdir())
    test = sorted(p.name for p in corpus.test_dir.iterdir())
    assert train == corpus.speakers_train and test == corpus.speakers_test
    assert not set(train) & set(test)
    assert len(test) == round(0.25 * SPEAKERS) and len(train) + len(test) == SPEAKERS


# --- determinism -----------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files(corpus, tmp_path):
    again = make_demo_corpus(tmp_path / "again", speakers=SPEAKERS, utterances=UTTERANCES, seed=SEED)
    ours = [p.relative_to(corpus.root) for p in sorted(corpus.root.rglob("*")) if p.is_file()]
    theirs = [p.relative_to(again.root) for p in sorted(again.root.rglob("*")) if p.is_file()]
    assert ours == theirs
    for relative in ours:
        ours_bytes = (corpus.root / relative).read_bytes()
        assert ours_bytes == (again.root / relative).read_bytes(), relative


def test_another_seed_gives_different_audio(corpus, tmp_path):
    other = make_demo_corpus(tmp_path / "other", speakers=SPEAKERS, utterances=UTTERANCES, seed=SEED + 1)
    ours = {p.relative_to(corpus.root): p.read_bytes() for p in wav_files(corpus.root)}
    theirs = {p.relative_to(other.root): p.read_bytes() for p in wav_files(other.root)}
    shared = set(ours) & set(theirs)
    assert not any(ours[p] == theirs[p] for p in shared)


def test_rerunning_into_its_own_folder_replaces_the_old_corpus(tmp_path):
    make_demo_corpus(tmp_path, speakers=5, utterances=3, seed=0)
    smaller = make_demo_corpus(tmp_path, speakers=3, utterances=2, seed=0)
    assert len(wav_files(tmp_path)) == 3 * 2 == smaller.num_utterances


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "precious.wav").write_bytes(b"RIFF")
    with pytest.raises(FileExistsError, match="train"):
        make_demo_corpus(tmp_path, speakers=3, utterances=2)
    assert (tmp_path / "train" / "precious.wav").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"speakers": 2}, "speakers=2"),
        ({"utterances": 1}, "utterances=1"),
        ({"seed": -1}, "seed=-1"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
    ],
)
def test_impossible_arguments_are_rejected_by_name(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        make_demo_corpus(tmp_path, **{"speakers": 3, "utterances": 2, **arguments})


# --- audio -----------------------------------------------------------------------------------


def test_audio_is_16k_mono_pcm16_finite_unclipped_at_speech_level(corpus):
    for path in wav_files(corpus.root):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16"), path
        assert 3.0 <= info.duration <= 8.0, (path, info.duration)
        wave, _ = sf.read(str(path), dtype="float32")
        assert np.all(np.isfinite(wave))
        assert np.max(np.abs(wave)) < 0.99, path
        rms_db = 20 * np.log10(np.sqrt(np.mean(wave**2)))
        assert -35.0 < rms_db < -17.0, (path, rms_db)


def test_utterance_lengths_vary(corpus):
    durations = {round(sf.info(str(p)).duration, 2) for p in wav_files(corpus.root)}
    assert len(durations) > SPEAKERS * UTTERANCES // 2


def test_long_term_spectra_are_closer_within_speaker_than_across(corpus):
    paths = wav_files(corpus.root)
    spectra = np.stack([long_term_log_spectrum(sf.read(str(p))[0]) for p in paths])
    speakers = np.array([p.parent.parent.name for p in paths])
    distance = np.linalg.norm(spectra[:, None] - spectra[None], axis=-1)
    same = (speakers[:, None] == speakers[None]) & ~np.eye(len(paths), dtype=bool)
    other = speakers[:, None] != speakers[None]
    assert distance[same].mean() < 0.9 * distance[other].mean()


def test_one_video_is_more_alike_than_the_same_speakers_other_videos(corpus):
    paths = wav_files(corpus.root)
    spectra = np.stack([long_term_log_spectrum(sf.read(str(p))[0]) for p in paths])
    speakers = np.array([p.parent.parent.name for p in paths])
    videos = np.array([f"{p.parent.parent.name}/{p.parent.name}" for p in paths])
    distance = np.linalg.norm(spectra[:, None] - spectra[None], axis=-1)
    same_video = (videos[:, None] == videos[None]) & ~np.eye(len(paths), dtype=bool)
    other_video = (speakers[:, None] == speakers[None]) & (videos[:, None] != videos[None])
    assert distance[same_video].mean() < distance[other_video].mean()


# --- the corpus's trial list -----------------------------------------------------------------


def test_trials_are_balanced_and_point_at_test_speaker_files(corpus):
    trials = read_trials(corpus.trials)
    labels = [t.label for t in trials]
    assert labels.count(1) == labels.count(0) > 0
    for trial in trials:
        for path in (trial.enroll, trial.test):
            assert (corpus.test_dir / path).is_file(), path
            assert speaker_of(path) in corpus.speakers_test


def test_trial_labels_say_whether_the_speakers_match(corpus):
    for trial in read_trials(corpus.trials):
        assert trial.label == int(speaker_of(trial.enroll) == speaker_of(trial.test)), trial


def test_each_utterance_pair_appears_at_most_once(corpus):
    pairs = [frozenset((t.enroll, t.test)) for t in read_trials(corpus.trials)]
    assert all(len(pair) == 2 for pair in pairs)
    assert len(set(pairs)) == len(pairs)


# --- trials.py -------------------------------------------------------------------------------


def test_balanced_trials_use_every_target_pair_and_as_many_distinct_non_targets():
    utterances = {s: [f"{s}/v000/{n:05d}.wav" for n in range(1, 5)] for s in ("a", "b", "c")}
    trials = balanced_trials(utterances, seed=0)
    targets = {frozenset((t.enroll, t.test)) for t in trials if t.label == 1}
    assert targets == {frozenset(p) for u in utterances.values() for p in combinations(u, 2)}
    non_targets = [frozenset((t.enroll, t.test)) for t in trials if t.label == 0]
    assert len(set(non_targets)) == len(non_targets) == len(targets)
    assert balanced_trials(utterances, seed=0) == trials


def test_balanced_trials_cap_target_pairs():
    utterances = {s: [f"{s}/v/{n:05d}.wav" for n in range(10)] for s in ("a", "b")}
    trials = balanced_trials(utterances, seed=1, max_target_trials=7)
    assert [t.label for t in trials].count(1) == 7 == [t.label for t in trials].count(0)


def test_trial_list_round_trips_through_a_file(tmp_path):
    trials = [
        Trial(1, "id10270/x6uYqmx31kE/00001.wav", "id10270/8jEAjG6SegY/00008.wav"),
        Trial(0, "id10270/x6uYqmx31kE/00001.wav", "id10300/ize_eiCFEg0/00003.wav"),
    ]
    path = write_trials(tmp_path / "trials.txt", trials)
    assert path.read_text().splitlines()[0] == ("1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav")
    assert read_trials(path) == trials


def test_malformed_trial_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_text("1 a/b/1.wav a/c/2.wav\n\n0 a/b/1.wav\n")
    with pytest.raises(ValueError, match=r"broken\.txt, line 3: expected .*3 fields"):
        read_trials(path)


def test_trial_label_must_be_zero_or_one(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("target a/b/1.wav a/c/2.wav\n")
    with pytest.raises(ValueError, match=r"labels\.txt, line 1: label must be 1 .* or 0"):
        read_trials(path)


def test_trial_keys_are_sorted_unique_paths_without_extension():
    trials = [Trial(1, "s1/v1/00002.wav", "s1/v2/00001.wav"), Trial(0, "s1/v1/00002.wav", "s2/v1/00001.wav")]
    assert trial_keys(trials) == ["s1/v1/00002", "s1/v2/00001", "s2/v1/00001"]
    assert utterance_key("id10270/x6uYqmx31kE/00001.wav") == "id10270/x6uYqmx31kE/00001"


# --- command line ----------------------------------------------------------------------------


def test_cli_writes_the_corpus_and_says_what_it_wrote(tmp_path, capsys):
    code = make_demo_data_main(["--output", str(tmp_path), "--speakers", "3", "--utterances", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "wrote 6 utterances" in out and "trials.txt" in out and " h)" in out
    assert len(wav_files(tmp_path)) == 6


def test_cli_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    code = make_demo_data_main(["--output", str(tmp_path), "--speakers", "2", "--quiet"])
    assert code == 2
    assert "speakers=2" in capsys.readouterr().err
