"""launch/make_shards.py --layout: corpora beyond VoxCeleb's folders (CN-Celeb, LibriSpeech, a folder
per speaker, a Kaldi data directory, a CSV/JSONL table) pack with the right keys and speakers, and
every bad entry is an error or a listed skip naming its file and line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import soundfile as sf
from conftest import REPO, tone, write_wav

from mrl_dist.data.corpus_lists import CorpusError


def write_audio(path: Path, seconds: float, freq: float = 200.0, sample_rate: int = 16000) -> Path:
    """A mono tone in the format the suffix names (.wav or .flac)."""
    return write_wav(path, tone(seconds, sample_rate, freq, seed=int(freq)), sample_rate)


def pack(make_shards, inputs, output: Path, layout: str, **arguments) -> dict:
    arguments = {"workers": 1, "progress": False, **arguments}
    return make_shards.pack_split([Path(i) for i in inputs], output, "train", layout=layout, **arguments)


def samples(output: Path) -> dict[str, dict]:
    """key -> {"flac": bytes, "json": dict} over every shard of the split `train` in `output`."""
    found: dict[str, dict] = {}
    manifest = json.loads((output / "train.manifest.json").read_text())
    for shard in manifest["shards"]:
        with tarfile.open(output / shard["name"]) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                found.setdefault(key, {})[extension] = json.loads(data) if extension == "json" else data
    return found


def frames(sample: dict) -> int:
    return sf.info(io.BytesIO(sample["flac"])).frames


def speakers(output: Path) -> dict[str, str]:
    return {key: sample["json"]["speaker"] for key, sample in samples(output).items()}


def skips(manifest: dict) -> list[tuple[str, str, str]]:
    return [(entry["path"], entry["reason"], entry["detail"]) for entry in manifest["skipped"]]


def kaldi_dir(folder: Path, wav_scp: str, utt2spk: str, segments: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wav.scp").write_text(wav_scp)
    (folder / "utt2spk").write_text(utt2spk)
    if segments is not None:
        (folder / "segments").write_text(segments)
    return folder


def test_cnceleb_layout_keys_speaker_and_file_stem(make_shards, tmp_path):
    root = tmp_path / "CN-Celeb_flac"
    write_audio(root / "data/id00000/singing-01-001.flac", 1.0)
    write_audio(root / "data/id00000/interview-02-003.flac", 1.0, 250)
    write_audio(root / "data/id00001/speech-01-001.flac", 1.0, 300)
    write_audio(root / "eval/test/id00800-singing-01-001.flac", 1.0)  # the eval lists: not data/
    manifest = pack(make_shards, [root], tmp_path / "out", "cnceleb")
    assert speakers(tmp_path / "out") == {
        "id00000/singing-01-001": "id00000",
        "id00000/interview-02-003": "id00000",
        "id00001/speech-01-001": "id00001",
    }
    assert manifest["speakers"] == {"id00000": 0, "id00001": 1} and manifest["skipped"] == []
    assert manifest["arguments"]["layout"] == "cnceleb"


def test_librispeech_layout_keys_speaker_chapter_and_stem(make_shards, tmp_path):
    root = tmp_path / "train-clean-100"
    write_audio(root / "103/1240/103-1240-0000.flac", 1.0)
    write_audio(root / "103/1240/103-1240-0001.flac", 1.0, 230)
    write_audio(root / "1034/121119/1034-121119-0000.flac", 1.0, 300)
    (root / "103/1240/103-1240.trans.txt").write_text("103-1240-0000 CHAPTER ONE\n")
    write_audio(root / "103/1240/999-1-0000.flac", 1.0)  # not this chapter's name
    manifest = pack(make_shards, [root], tmp_path / "out", "librispeech")
    assert speakers(tmp_path / "out") == {
        "103/1240/103-1240-0000": "103",
        "103/1240/103-1240-0001": "103",
        "1034/121119/1034-121119-0000": "1034",
    }
    assert [(Path(path).name, reason) for path, reason, _ in skips(manifest)] == [
        ("103-1240.trans.txt", "not-audio"),
        ("999-1-0000.flac", "bad-path"),
    ]


def test_folders_layout_keys_speaker_and_relative_path_at_any_depth(make_shards, tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "alice/day1/morning/take1.wav", 1.0)
    write_audio(root / "bob/take1.flac", 1.0, 300)
    write_audio(root / "stray.wav", 1.0)  # no speaker folder
    manifest = pack(make_shards, [root], tmp_path / "out", "folders")
    assert speakers(tmp_path / "out") == {"alice/day1/morning/take1": "alice", "bob/take1": "bob"}
    assert [(Path(path).name, reason) for path, reason, _ in skips(manifest)] == [("stray.wav", "bad-path")]


@pytest.mark.parametrize("layout, relative", [("folders", "v1/00001.wav"), ("voxceleb", "v1/00001.wav")])
def test_symlinked_speaker_folder_is_packed(make_shards, tmp_path, layout, relative):
    root = tmp_path / "corpus"
    write_audio(root / "spk1" / relative, 1.0)
    write_audio(tmp_path / "elsewhere/spk2" / relative, 1.0, 300)
    (root / "spk2").symlink_to(tmp_path / "elsewhere/spk2", target_is_directory=True)
    pack(make_shards, [root], tmp_path / "out", layout)
    stem = relative.rsplit(".", 1)[0]
    assert speakers(tmp_path / "out") == {f"spk1/{stem}": "spk1", f"spk2/{stem}": "spk2"}


def test_link_cycle_terminates_with_a_listed_skip_naming_it(make_shards, tmp_path):
    root = tmp_path / "corpus"
    write_audio(root / "spk1/v1/00001.wav", 1.0)
    (root / "spk1/v1/loop").symlink_to(root / "spk1", target_is_directory=True)
    manifest = pack(make_shards, [root], tmp_path / "out", "folders")
    assert list(speakers(tmp_path / "out")) == ["spk1/v1/00001"]
    [(path, reason, detail)] = skips(manifest)
    assert (path, reason) == (str(root / "spk1/v1/loop"), "link-cycle")
    assert str(root / "spk1") in detail


def test_kaldi_dir_packs_files_and_pipes_keyed_by_utterance_with_utt2spk_speakers(make_shards, tmp_path):
    first = write_audio(tmp_path / "audio/r1.wav", 1.0)
    second = write_audio(tmp_path / "audio/r2.flac", 1.5, 300)
    data = kaldi_dir(
        tmp_path / "data/train",
        f"spkA-r1 {first}\nspkB-r2 cat {second} |\n",
        "spkA-r1 spkA\nspkB-r2 spkB\n",
    )
    manifest = pack(make_shards, [data], tmp_path / "out", "kaldi")
    packed = samples(tmp_path / "out")
    assert {key: s["json"]["speaker"] for key, s in packed.items()} == {"spkA-r1": "spkA", "spkB-r2": "spkB"}
    assert packed["spkB-r2"]["json"]["source"] == f"cat {second}"
    assert frames(packed["spkB-r2"]) == 24000
    assert manifest["speakers"] == {"spkA": 0, "spkB": 1}


def test_kaldi_segments_cut_their_samples_and_bad_segments_are_listed(make_shards, tmp_path):
    recording = write_audio(tmp_path / "audio/meeting.wav", 3.0)
    data = kaldi_dir(
        tmp_path / "data",
        f"meeting {recording}\n",
        "meeting-a alice\nmeeting-b bob\nmeeting-c alice\nmeeting-d bob\n",
        "meeting-a meeting 0.0 1.0\n"
        "meeting-b meeting 1.0 2.5\n"
        "meeting-c meeting 2.0 4.0\n"  # past the end of the 3 s recording
        "meeting-d meeting 2.0 2.0\n",  # end <= start
    )
    manifest = pack(make_shards, [data], tmp_path / "out", "kaldi")
    packed = samples(tmp_path / "out")
    assert {key: frames(sample) for key, sample in packed.items()} == {"meeting-a": 16000, "meeting-b": 24000}
    assert (packed["meeting-b"]["json"]["start"], packed["meeting-b"]["json"]["end"]) == (1.0, 2.5)
    whole, _ = sf.read(str(recording), dtype="int16")
    cut, _ = sf.read(io.BytesIO(packed["meeting-b"]["flac"]), dtype="int16")
    assert (cut == whole[16000:40000]).all()
    assert manifest["skipped_counts"] == {"bad-segment": 2}
    detail = {utterance: d for _, _, d in skips(manifest) for utterance in ("meeting-c", "meeting-d") if utterance in d}
    assert f"{data}/segments:3" in detail["meeting-c"] and "past the end" in detail["meeting-c"]
    assert f"{data}/segments:4" in detail["meeting-d"] and "not after start" in detail["meeting-d"]


def test_relative_wav_scp_paths_resolve_against_the_working_folder(make_shards, tmp_path, monkeypatch):
    write_audio(tmp_path / "recipe/audio/r1.wav", 1.0)
    data = kaldi_dir(tmp_path / "recipe/data/train", "r1 audio/r1.wav\n", "r1 spk1\n")
    monkeypatch.chdir(tmp_path / "recipe")
    pack(make_shards, [Path("data/train")], tmp_path / "out", "kaldi")
    assert samples(tmp_path / "out")["r1"]["json"]["source"] == str(tmp_path / "recipe/audio/r1.wav")
    assert data.is_dir()


def test_missing_wav_scp_file_is_a_listed_skip_naming_its_line(make_shards, tmp_path):
    present = write_audio(tmp_path / "audio/r1.wav", 1.0)
    data = kaldi_dir(tmp_path / "data", f"r1 {present}\nr2 {tmp_path}/audio/gone.wav\n", "r1 s1\nr2 s2\n")
    manifest = pack(make_shards, [data], tmp_path / "out", "kaldi")
    assert list(samples(tmp_path / "out")) == ["r1"]
    [(path, reason, detail)] = skips(manifest)
    assert (path, reason) == (str(tmp_path / "audio/gone.wav"), "missing-file")
    assert f"{data / 'wav.scp'}:2" in detail


def test_failing_pipe_command_is_a_listed_skip_with_exit_status_and_stderr(make_shards, tmp_path):
    present = write_audio(tmp_path / "audio/r1.wav", 1.0)
    data = kaldi_dir(
        tmp_path / "data",
        f"r1 cat {present} |\nr2 echo no such recording >&2; exit 3 |\n",
        "r1 s1\nr2 s2\n",
    )
    manifest = pack(make_shards, [data], tmp_path / "out", "kaldi")
    assert list(samples(tmp_path / "out")) == ["r1"]
    [(_, reason, detail)] = skips(manifest)
    assert reason == "pipe-failed"
    assert "status 3" in detail and "no such recording" in detail


@pytest.mark.parametrize(
    "wav_scp, utt2spk, segments, named",
    [
        ("r1 {audio}\n", "r1 s1\nr9 s2\n", None, "utt2spk:2"),  # utterance without a recording
        ("r1 {audio}\n", "u1 s1\n", "u1 r9 0 1\n", "segments:1"),  # segment of an unknown recording
        ("r1 {audio}\nr2\n", "r1 s1\n", None, "wav.scp:2"),  # malformed: no path
        ("r1 {audio}\n", "r1 s1 extra\n", None, "utt2spk:1"),  # malformed: three fields
        ("r1 {audio}\n", "u1 s1\n", "u1 r1 0 one\n", "segments:1"),  # malformed: not seconds
        ("r1 {audio}\n", "r1 s1\nr1 s2\n", None, "utt2spk:2"),  # the same utterance twice
        ("r1 {audio}\n", "u.1 s1\n", "u.1 r1 0 1\n", "segments:1"),  # a key webdataset would cut
    ],
)
def test_unusable_kaldi_lines_are_errors_naming_file_and_line(make_shards, tmp_path, wav_scp, utt2spk, segments, named):
    audio = write_audio(tmp_path / "audio/r1.wav", 2.0)
    data = kaldi_dir(tmp_path / "data", wav_scp.format(audio=audio), utt2spk, segments)
    with pytest.raises(CorpusError, match=f"{data}/{named}"):
        pack(make_shards, [data], tmp_path / "out", "kaldi")


def test_same_key_from_two_kaldi_dirs_is_an_error_naming_both(make_shards, tmp_path):
    audio = write_audio(tmp_path / "audio/r1.wav", 1.0)
    first = kaldi_dir(tmp_path / "a", f"r1 {audio}\n", "r1 s1\n")
    second = kaldi_dir(tmp_path / "b", f"x {audio}\nr1 {audio}\n", "x s1\nr1 s1\n")
    with pytest.raises(CorpusError, match="r1 is listed twice") as error:
        pack(make_shards, [first, second], tmp_path / "out", "kaldi")
    assert f"{first}/wav.scp:1" in str(error.value) and f"{second}/wav.scp:2" in str(error.value)


def test_table_csv_resolves_paths_against_its_folder_with_keys_and_segments(make_shards, tmp_path):
    write_audio(tmp_path / "lists/audio/a.wav", 2.0)
    write_audio(tmp_path / "elsewhere/b.flac", 1.0, 300)
    table = tmp_path / "lists/train.csv"
    table.write_text(
        "path,speaker,start,end,key\n"
        "audio/a.wav,alice,0.5,1.5,\n"
        f"{tmp_path}/elsewhere/b.flac,bob,,,bob/custom-key\n"
        "audio/gone.wav,carol,,,\n"
    )
    manifest = pack(make_shards, [table], tmp_path / "out", "table")
    packed = samples(tmp_path / "out")
    assert {key: (s["json"]["speaker"], frames(s)) for key, s in packed.items()} == {
        "alice/a": ("alice", 16000),
        "bob/custom-key": ("bob", 16000),
    }
    assert packed["alice/a"]["json"]["source"] == str(tmp_path / "lists/audio/a.wav")
    [(path, reason, detail)] = skips(manifest)
    assert (reason, detail.split(": ")[0]) == ("missing-file", f"{table}:4")


def test_table_jsonl_packs_and_a_key_clash_names_both_lines(make_shards, tmp_path):
    write_audio(tmp_path / "one/a.wav", 1.0)
    write_audio(tmp_path / "two/a.wav", 1.0, 300)
    table = tmp_path / "train.jsonl"
    rows = [{"path": "one/a.wav", "speaker": "s1"}, {"path": "two/a.wav", "speaker": "s1", "key": "s1/a2"}]
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pack(make_shards, [table], tmp_path / "out", "table")
    assert speakers(tmp_path / "out") == {"s1/a": "s1", "s1/a2": "s1"}
    table.write_text("".join(json.dumps({**row, "key": None}) + "\n" for row in rows))
    with pytest.raises(CorpusError, match=f"{table}:1 and {table}:2"):
        pack(make_shards, [table], tmp_path / "out2", "table")


def test_malformed_table_row_is_an_error_naming_file_and_line(make_shards, tmp_path):
    table = tmp_path / "train.csv"
    table.write_text("path,speaker\na.wav,s1\nb.wav\n")
    with pytest.raises(CorpusError, match=f"{table}:3"):
        pack(make_shards, [table], tmp_path / "out", "table")


def kaldi_corpus(root: Path) -> Path:
    """A Kaldi directory of files, pipes and segments, 8 utterances of 1-1.5 s."""
    lines, speakers_of, segments = [], [], []
    for index in range(4):
        path = write_audio(root / f"audio/rec{index}.wav", 3.0, 150 + 40 * index)
        entry = f"cat {path} |" if index % 2 else str(path)
        lines.append(f"rec{index} {entry}")
        for part, (start, end) in enumerate([(0.0, 1.0), (1.25, 2.75)]):
            utterance = f"rec{index}-{part}"
            segments.append(f"{utterance} rec{index} {start} {end}")
            speakers_of.append(f"{utterance} spk{index % 3}")
    return kaldi_dir(root / "data", "\n".join(lines) + "\n", "\n".join(speakers_of) + "\n", "\n".join(segments) + "\n")


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(output.iterdir())}


def test_kaldi_layout_packs_byte_identical_shards_with_one_and_two_workers(make_shards, tmp_path):
    data = kaldi_corpus(tmp_path)
    one = pack(make_shards, [data], tmp_path / "one", "kaldi", workers=1, shard_size_mb=0.05)
    pack(make_shards, [data], tmp_path / "two", "kaldi", workers=2, shard_size_mb=0.05)
    assert len(one["shards"]) >= 2 and one["total_samples"] == 8
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_interrupted_kaldi_pack_resumes_to_the_same_result(make_shards, tmp_path, monkeypatch):
    data = kaldi_corpus(tmp_path)
    arguments = dict(workers=1, shard_size_mb=0.05)
    pack(make_shards, [data], tmp_path / "reference", "kaldi", **arguments)
    write, written = make_shards.write_shard, []

    def write_then_stop(task):
        written.append(write(task))
        if len(written) == 1:
            raise KeyboardInterrupt  # stopped right after its first shard is renamed into place
        return written[-1]

    monkeypatch.setattr(make_shards, "write_shard", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pack(make_shards, [data], tmp_path / "out", "kaldi", **arguments)
    monkeypatch.setattr(make_shards, "write_shard", write)
    pack(make_shards, [data], tmp_path / "out", "kaldi", **arguments)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "reference")


def test_cli_packs_a_table_and_reports_a_bad_line_in_one_line(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    table = tmp_path / "t.csv"
    table.write_text("path,speaker\na.wav,s1\n")
    command = [sys.executable, str(REPO / "launch/make_shards.py"), "--layout", "table", "--input", str(table)]
    command += ["--split", "train", "--workers", "1", "--no-progress"]
    result = subprocess.run([*command, "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "packed 1 utterances" in result.stderr
    table.write_text("path,speaker\na.wav\n")
    result = subprocess.run([*command, "--output", str(tmp_path / "bad")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{table}:2" in result.stderr, result.stderr
    assert os.path.isdir(tmp_path / "bad") is False or not list((tmp_path / "bad").glob("*.tar"))
