"""launch/make_shards.py: VoxCeleb-layout audio -> deterministic tar shards + manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from conftest import REPO, build_corpus, tone, write_wav

from mrl_dist.data.corpus import decode_to_cache
from mrl_dist.data.shard_writer import plan_shards


def shard_paths(manifest_path: Path) -> list[Path]:
    manifest = json.loads(manifest_path.read_text())
    return [manifest_path.parent / s["name"] for s in manifest["shards"]]


def tar_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def packed_samples(manifest_path: Path) -> dict[str, dict]:
    """key -> {"flac": bytes, "json": dict, "shard": name}, failing on a key seen twice."""
    samples: dict[str, dict] = {}
    for shard in shard_paths(manifest_path):
        for info, data in tar_members(shard):
            key, extension = info.name.split(".", 1)
            sample = samples.setdefault(key, {"shard": shard.name})
            assert extension not in sample, f"{info.name} packed twice"
            sample[extension] = json.loads(data) if extension == "json" else data
    return samples


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "make_shards.py"), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_good_file_is_packed_exactly_once(corpus, packed):
    samples = packed_samples(packed)
    assert sorted(samples) == sorted(corpus.good)
    assert all({"flac", "json"} <= sample.keys() for sample in samples.values())


def test_every_broken_file_is_listed_with_its_reason(corpus, packed):
    manifest = json.loads(packed.read_text())
    listed = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert listed == corpus.broken
    assert manifest["skipped_counts"] == dict(Counter(corpus.broken.values()))
    assert all(entry["detail"] for entry in manifest["skipped"])


def test_manifest_describes_shards_speakers_and_arguments(corpus, packed):
    manifest = json.loads(packed.read_text())
    assert manifest["total_samples"] == len(corpus.good) == sum(s["samples"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        digest = hashlib.sha256((packed.parent / shard["name"]).read_bytes()).hexdigest()
        assert shard["sha256"] == digest
    speakers = sorted({key.split("/")[0] for key in corpus.good})
    assert manifest["speakers"] == {name: label for label, name in enumerate(speakers)}
    assert manifest["speaker_counts"] == dict(Counter(k.split("/")[0] for k in corpus.good))
    seconds = sum(s["json"]["seconds"] for s in packed_samples(packed).values())
    assert manifest["total_hours"] == pytest.approx(seconds / 3600, abs=1e-6)
    assert manifest["arguments"]["min_seconds"] == 0.5
    assert manifest["arguments"]["input"] == [str(corpus.root)]
    assert manifest["version"]


def test_shard_names_follow_the_split_and_are_cut_near_the_requested_size(packed):
    names = [p.name for p in shard_paths(packed)]
    assert names == [f"train-{i:06d}.tar" for i in range(len(names))]
    assert len(names) >= 3
    sizes = [p.stat().st_size for p in shard_paths(packed)]
    # A shard closes before the sample that would overflow it; tar padding adds < 10 KiB.
    assert max(sizes) <= 0.1 * 2**20 + 10240


def test_json_member_records_speaker_label_source_and_original_format(corpus, packed):
    manifest = json.loads(packed.read_text())
    for key, sample in packed_samples(packed).items():
        meta = sample["json"]
        speaker, video, _ = key.split("/")
        assert (meta["speaker"], meta["video"]) == (speaker, video)
        assert meta["label"] == manifest["speakers"][speaker]
        assert meta["source"] == str(corpus.good[key])
        rate, channels = corpus.converted.get(key, (16000, 1))
        assert (meta["original_sample_rate"], meta["original_channels"]) == (rate, channels)


def test_stereo_and_other_rates_are_converted_to_16k_mono_flac(corpus, packed):
    samples = packed_samples(packed)
    for key in corpus.converted:
        info = sf.info(io.BytesIO(samples[key]["flac"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        source = sf.info(str(corpus.good[key])) if corpus.good[key].suffix == ".wav" else None
        if source is not None:
            assert info.frames == pytest.approx(source.duration * 16000, abs=2)
        assert samples[key]["json"]["seconds"] == info.frames / 16000


def test_aac_m4a_is_decoded_with_pyav(corpus, packed):
    m4a = [key for key, path in corpus.good.items() if path.suffix == ".m4a"]
    if not m4a:
        pytest.skip("this PyAV build has no AAC encoder to make a test m4a")
    wave, rate = sf.read(io.BytesIO(packed_samples(packed)[m4a[0]]["flac"]))
    assert rate == 16000 and wave.ndim == 1
    assert len(wave) / rate == pytest.approx(1.5, abs=0.1)  # AAC adds priming samples


def test_shards_take_samples_in_a_fixed_shuffled_order_so_each_mixes_speakers():
    records = [
        {
            "key": f"id{s}/v1/{u:05d}",
            "bytes": 4000,
            "seconds": 1.0,
            "frames": 16000,
            "path": f"/data/id{s}/v1/{u:05d}.wav",
            "original_sample_rate": 16000,
            "original_channels": 1,
        }
        for s in range(4)
        for u in range(25)
    ]
    labels = {f"id{s}": s for s in range(4)}
    per_sample = (512 + 4096) + (512 + 512)  # tar header + padded data, for .flac and .json
    plans = plan_shards(records, labels, "train", shard_bytes=10 * per_sample)
    assert [len(p.records) for p in plans] == [10] * 10
    for plan in plans:
        assert len({r["key"].split("/")[0] for r in plan.records}) >= 2, plan.name
        assert all(r["label"] == labels[r["key"].split("/")[0]] for r in plan.records)
    assert plan_shards(records, labels, "train", 10 * per_sample) == plans  # fixed seed


def test_tar_members_carry_no_machine_metadata_and_keep_sample_order(packed):
    for shard in shard_paths(packed):
        members = [info for info, _ in tar_members(shard)]
        assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644) for m in members)
        extensions = [m.name.split(".", 1)[1] for m in members]
        assert extensions == ["flac", "json"] * (len(members) // 2)


def test_webdataset_reads_the_shards_with_intact_keys(corpus, packed):
    urls = [str(p) for p in shard_paths(packed)]
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(keys) == sorted(corpus.good)
    first = next(iter(wds.WebDataset(urls, shardshuffle=False)))
    assert {"flac", "json"} <= first.keys()


def test_one_and_two_workers_give_byte_identical_shards_and_manifest(corpus, packed, make_shards, tmp_path):
    make_shards.pack_split(
        [corpus.root], tmp_path, "train", trials=corpus.trials, workers=2, shard_size_mb=0.1, progress=False
    )
    ours = sorted(p.name for p in tmp_path.iterdir())
    assert ours == sorted(p.name for p in packed.parent.iterdir())
    for name in ours:
        assert (tmp_path / name).read_bytes() == (packed.parent / name).read_bytes(), name


def test_success_leaves_no_cache_partial_manifest_or_temporaries(packed):
    names = sorted(p.name for p in packed.parent.iterdir())
    assert all(n.endswith(".tar") for n in names if n not in ("train.manifest.json", "train.trials.txt"))


def test_trial_list_is_copied_beside_the_manifest(corpus, packed):
    assert (packed.parent / "train.trials.txt").read_bytes() == corpus.trials.read_bytes()
    assert json.loads(packed.read_text())["trials"] == "train.trials.txt"


def test_several_inputs_merge_into_one_split(make_shards, tmp_path):
    first, second = tmp_path / "vox1", tmp_path / "vox2"
    write_wav(first / "id1/v1/00001.wav", tone(1.0, 16000, 200), 16000)
    write_wav(second / "id2/v1/00001.wav", tone(1.0, 16000, 300), 16000)
    write_wav(second / "id1/v1/00001.wav", tone(1.0, 16000, 250), 16000)  # same key again
    manifest = make_shards.pack_split([first, second], tmp_path / "out", "dev", workers=1, progress=False)
    assert manifest["speakers"] == {"id1": 0, "id2": 1}
    assert manifest["total_samples"] == 2
    assert [(e["path"], e["reason"]) for e in manifest["skipped"]] == [(str(second / "id1/v1/00001.wav"), "duplicate")]


def test_cli_summarises_skips_per_reason(corpus, tmp_path):
    result = run_cli("--input", str(corpus.root), "--output", str(tmp_path), "--split", "dev", "--workers", "2")
    assert result.returncode == 0, result.stderr
    for reason, count in Counter(corpus.broken.values()).items():
        assert f"{reason}: {count}" in result.stderr


@pytest.mark.parametrize(
    "missing, why",
    [
        ("id00009/nope/00001", "no such file in --input"),
        ("id00003/bad/00001", "skipped (too-short"),
    ],
)
def test_missing_trial_utterance_fails_naming_it_and_why(corpus, tmp_path, missing, why):
    trials = tmp_path / "trials.txt"
    trials.write_text(f"1 id00001/vidA/00001.wav id00001/vidB/00001.wav\n0 id00001/vidA/00001.wav {missing}.wav\n")
    result = run_cli(
        "--input",
        str(corpus.root),
        "--output",
        str(tmp_path / "out"),
        "--split",
        "val",
        "--trials",
        str(trials),
        "--workers",
        "1",
    )
    assert result.returncode != 0
    assert f"{missing}: {why}" in result.stderr
    assert not (tmp_path / "out" / "val.manifest.json").exists()


def test_no_valid_input_exits_nonzero_with_a_clear_message(tmp_path):
    (tmp_path / "in" / "id1" / "v1").mkdir(parents=True)
    (tmp_path / "in" / "id1" / "v1" / "00001.wav").write_bytes(b"")
    result = run_cli("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--split", "train")
    assert result.returncode != 0
    assert "no valid audio file" in result.stderr and "'empty': 1" in result.stderr


def test_rerun_keeps_intact_shards_and_rewrites_lost_or_corrupt_ones(corpus, packed, make_shards, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(packed.parent, output)
    shards = shard_paths(output / "train.manifest.json")
    (output / "train.manifest.json").rename(output / "train.manifest.partial.json")
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:-3000])
    untouched = (shards[2].stat().st_ino, shards[2].stat().st_mtime_ns)
    make_shards.pack_split(
        [corpus.root], output, "train", trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False
    )
    assert (shards[2].stat().st_ino, shards[2].stat().st_mtime_ns) == untouched
    for name in sorted(p.name for p in packed.parent.iterdir()):
        assert (output / name).read_bytes() == (packed.parent / name).read_bytes(), name


def must_not_decode(task):
    raise AssertionError(f"decoded {task[0].path} again instead of using the cache")


def crash_on_marked_files(task):
    if "crash" in task[0].key:
        os._exit(1)  # what a segfaulting decoder or the OOM killer does to a worker
    return decode_to_cache(task)


def test_interrupted_run_resumes_from_its_cache_to_the_same_result(corpus, packed, make_shards, tmp_path, monkeypatch):
    write = make_shards.write_shard
    calls = []

    def dying_write(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped while writing its third shard
        return write(task)

    monkeypatch.setattr(make_shards, "write_shard", dying_write)
    arguments = dict(trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        make_shards.pack_split([corpus.root], tmp_path, "train", **arguments)
    partial = json.loads((tmp_path / "train.manifest.partial.json").read_text())
    assert sum(bool(s["sha256"]) for s in partial["shards"]) == 2

    monkeypatch.setattr(make_shards, "write_shard", write)
    monkeypatch.setattr(make_shards, "decode_to_cache", must_not_decode)
    make_shards.pack_split([corpus.root], tmp_path, "train", **arguments)
    for name in sorted(p.name for p in packed.parent.iterdir()):
        assert (tmp_path / name).read_bytes() == (packed.parent / name).read_bytes(), name
    assert not list(tmp_path.glob(".*"))


def test_rerun_of_a_finished_split_only_verifies_it(corpus, packed, make_shards, tmp_path, monkeypatch):
    shutil.copytree(packed.parent, tmp_path / "out")
    monkeypatch.setattr(make_shards, "decode_to_cache", must_not_decode)
    manifest = make_shards.pack_split(
        [corpus.root], tmp_path / "out", "train", trials=corpus.trials, workers=2, shard_size_mb=0.1, progress=False
    )
    assert manifest == json.loads(packed.read_text())


def test_a_decoder_crash_costs_only_the_file_that_caused_it(make_shards, tmp_path, monkeypatch):
    for speaker in ("id1", "id2"):
        for utterance in ("00001", "00002", "crash"):
            write_wav(tmp_path / "in" / speaker / "v1" / f"{utterance}.wav", tone(1.0, 16000, 200), 16000)
    monkeypatch.setattr(make_shards, "decode_to_cache", crash_on_marked_files)
    manifest = make_shards.pack_split([tmp_path / "in"], tmp_path / "out", "train", workers=2, progress=False)
    assert manifest["total_samples"] == 4
    assert [(Path(e["path"]).stem, e["reason"]) for e in manifest["skipped"]] == [
        ("crash", "decoder-crashed"),
        ("crash", "decoder-crashed"),
    ]


def test_killed_process_resumes_to_the_same_result(tmp_path):
    corpus = build_corpus(tmp_path / "dev")
    arguments = ("--input", str(corpus.root), "--split", "train", "--shard-size-mb", "0.05", "--workers", "1")
    command = [sys.executable, str(REPO / "launch" / "make_shards.py"), *arguments, "--no-progress"]
    process = subprocess.Popen([*command, "--output", str(tmp_path / "a")], stderr=subprocess.DEVNULL)
    # Kill as soon as the first shard is on disk: mid pass 2 on this machine.
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline and not list((tmp_path / "a").glob("train-*.tar")):
        time.sleep(0.005)
    process.kill()
    process.wait()
    partial = tmp_path / "a" / "train.manifest.partial.json"
    finished = json.loads(partial.read_text())["shards"] if partial.exists() else []

    def identity(name):
        stat = (tmp_path / "a" / name).stat()
        return stat.st_ino, stat.st_mtime_ns

    kept = {s["name"]: identity(s["name"]) for s in finished if s["sha256"]}
    assert run_cli(*arguments, "--output", str(tmp_path / "a")).returncode == 0
    assert {name: identity(name) for name in kept} == kept  # finished shards are not rewritten
    assert run_cli(*arguments, "--output", str(tmp_path / "b")).returncode == 0
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "a").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_flac_encoding_is_reproducible():
    from mrl_dist.data.audio import encode_flac

    wave = np.random.default_rng(0).uniform(-1.2, 1.2, 20000).astype(np.float32)
    assert encode_flac(wave) == encode_flac(wave.copy())
    decoded, _ = sf.read(io.BytesIO(encode_flac(wave)), dtype="float32")
    assert decoded.max() <= 1.0 and decoded.min() >= -1.0  # overshoot is clipped, not wrapped


# A hard kill (SIGKILL) lands between a worker renaming a shard into place and the main process
# noting its sha256 in the manifest-in-progress; the worker's record of the shard keeps it.
KILLED_PACKER = """
import os, signal, sys, time
from mrl_dist.data import packing

source, output, trials, mode = sys.argv[1:]
write, written = packing.write_shard, []

def write_then_stall(task):
    result = write(task)  # the shard has its final name; the manifest does not know it yet
    written.append(result[0])
    if mode == "kill-self" and len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)  # mode "stall": a wide window for a kill from outside at this very point
    return result

packing.write_shard = write_then_stall
packing.pack_split([source], output, "train", trials=trials, workers=1, shard_size_mb=0.1,
                   progress=False)
"""


def start_killed_packer(corpus, output: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", KILLED_PACKER, str(corpus.root), str(output), str(corpus.trials), mode],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_shards(output: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (inode, mtime_ns, sha256) of every shard under its final name."""
    shards = {}
    for path in sorted(output.glob("train-*.tar")):
        stat = path.stat()
        shards[path.name] = (stat.st_ino, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return shards


def pack_tracking_writes(make_shards, monkeypatch, inputs, output, **arguments) -> list[str]:
    """pack_split(inputs, output, "train", **arguments) (one worker); returns the shards written."""
    write, written = make_shards.write_shard, []

    def tracked(task):
        written.append(task[1].name)
        return write(task)

    monkeypatch.setattr(make_shards, "write_shard", tracked)
    make_shards.pack_split(inputs, output, "train", **arguments)
    monkeypatch.setattr(make_shards, "write_shard", write)
    return written


def interrupt_after_renaming(make_shards, monkeypatch, inputs, output, shards: int, **arguments):
    """Stops a run right after its `shards`-th shard is renamed into place, before it is noted."""
    write, written = make_shards.write_shard, []

    def write_then_stop(task):
        written.append(write(task))
        if len(written) == shards:
            raise KeyboardInterrupt
        return written[-1]

    monkeypatch.setattr(make_shards, "write_shard", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_shards.pack_split(inputs, output, "train", **arguments)
    monkeypatch.setattr(make_shards, "write_shard", write)


def assert_same_files(output: Path, reference: Path):
    names = sorted(p.name for p in output.iterdir())
    assert names == sorted(p.name for p in reference.iterdir())
    for name in names:
        assert (output / name).read_bytes() == (reference / name).read_bytes(), name


def recorded_sha256(output: Path) -> dict[str, str | None]:
    partial = json.loads((output / "train.manifest.partial.json").read_text())
    return {s["name"]: s["sha256"] for s in partial["shards"]}


def test_shard_renamed_into_place_just_before_a_hard_kill_is_kept_on_resume(
    corpus, packed, make_shards, tmp_path, monkeypatch
):
    process = start_killed_packer(corpus, tmp_path, "kill-self")
    _, errors = process.communicate(timeout=120)
    assert process.returncode == -9, errors
    at_kill = final_shards(tmp_path)
    assert sorted(at_kill) == ["train-000000.tar", "train-000001.tar"]
    assert recorded_sha256(tmp_path)["train-000001.tar"] is None  # the kill point of the defect
    assert (tmp_path / ".train.tmp" / "shards" / "train-000001.tar.json").is_file()

    monkeypatch.setattr(make_shards, "decode_to_cache", must_not_decode)
    written = pack_tracking_writes(
        make_shards,
        monkeypatch,
        [corpus.root],
        tmp_path,
        trials=corpus.trials,
        workers=1,
        shard_size_mb=0.1,
        progress=False,
    )
    assert not set(written) & set(at_kill)
    assert {name: final_shards(tmp_path)[name] for name in at_kill} == at_kill
    assert json.loads((tmp_path / "train.manifest.json").read_text()) == json.loads(packed.read_text())
    assert_same_files(tmp_path, packed.parent)


def test_sigkill_after_two_shards_keeps_every_shard_complete_at_the_kill(corpus, packed, tmp_path):
    process = start_killed_packer(corpus, tmp_path / "out", "stall")
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "out").glob("train-*.tar"))) < 2:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no two shards within 60 s"
        time.sleep(0.005)
    process.kill()
    process.communicate()
    at_kill = final_shards(tmp_path / "out")
    assert 2 <= len(at_kill) < len(shard_paths(packed))

    result = run_cli(
        "--input",
        str(corpus.root),
        "--output",
        str(tmp_path / "out"),
        "--split",
        "train",
        "--trials",
        str(corpus.trials),
        "--workers",
        "1",
        "--shard-size-mb",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    assert {name: final_shards(tmp_path / "out")[name] for name in at_kill} == at_kill
    assert_same_files(tmp_path / "out", packed.parent)


@pytest.mark.parametrize("damage", ["truncated", "bytes-flipped"])
def test_shard_whose_record_matches_but_whose_bytes_are_damaged_is_rewritten(
    corpus, packed, make_shards, tmp_path, monkeypatch, damage
):
    arguments = dict(trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False)
    interrupt_after_renaming(make_shards, monkeypatch, [corpus.root], tmp_path, 2, **arguments)
    assert recorded_sha256(tmp_path)["train-000001.tar"] is None
    shard = tmp_path / "train-000001.tar"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:-3000])  # a torn file
    else:
        shard.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    written = pack_tracking_writes(make_shards, monkeypatch, [corpus.root], tmp_path, **arguments)
    assert "train-000001.tar" in written and "train-000000.tar" not in written
    assert_same_files(tmp_path, packed.parent)


@pytest.mark.parametrize("left_at_the_name", ["nothing", "an older file"])
def test_record_written_before_a_kill_that_stopped_the_rename_keeps_no_shard(
    corpus, packed, make_shards, tmp_path, monkeypatch, left_at_the_name
):
    from mrl_dist.data import shard_writer

    replace = os.replace

    def killed_at_the_rename(source, target):
        if Path(source).name.startswith(".train-000001.tar.tmp."):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(shard_writer.os, "replace", killed_at_the_rename)
    arguments = dict(trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        make_shards.pack_split([corpus.root], tmp_path, "train", **arguments)
    monkeypatch.setattr(shard_writer.os, "replace", replace)
    record = json.loads((tmp_path / ".train.tmp/shards/train-000001.tar.json").read_text())
    assert record["sha256"] == json.loads(packed.read_text())["shards"][1]["sha256"]
    assert list(tmp_path.glob(".train-000001.tar.tmp.*")) and not (tmp_path / "train-000001.tar").exists()
    if left_at_the_name == "an older file":
        shutil.copyfile(tmp_path / "train-000000.tar", tmp_path / "train-000001.tar")
    written = pack_tracking_writes(make_shards, monkeypatch, [corpus.root], tmp_path, **arguments)
    assert written[0] == "train-000001.tar" and "train-000000.tar" not in written
    assert_same_files(tmp_path, packed.parent)


def test_shard_record_of_another_input_does_not_keep_a_shard(corpus, make_shards, tmp_path, monkeypatch):
    source = tmp_path / "in"
    shutil.copytree(corpus.root, source)
    arguments = dict(workers=1, shard_size_mb=0.1, progress=False)
    interrupt_after_renaming(make_shards, monkeypatch, [source], tmp_path / "out", 2, **arguments)
    shard = tmp_path / "out" / "train-000001.tar"
    record = json.loads((tmp_path / "out/.train.tmp/shards/train-000001.tar.json").read_text())
    assert record["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    # The input changes under an utterance of that shard: its record is for another plan.
    key = next(
        info.name.split(".")[0]
        for info, _ in tar_members(shard)
        if (source / f"{info.name.split('.')[0]}.wav").is_file()
    )
    wave, rate = sf.read(str(source / f"{key}.wav"), dtype="float32")
    write_wav(source / f"{key}.wav", -wave, rate)
    stale = shard.read_bytes()

    written = pack_tracking_writes(make_shards, monkeypatch, [source], tmp_path / "out", **arguments)
    assert "train-000001.tar" in written
    make_shards.pack_split([source], tmp_path / "reference", "train", **arguments)
    assert_same_files(tmp_path / "out", tmp_path / "reference")
    assert stale != shard.read_bytes()  # keeping the shard would have been wrong


def test_sealed_shards_free_their_cache_files_and_a_lost_one_is_decoded_again_on_resume(
    corpus, packed, make_shards, tmp_path, monkeypatch
):
    from mrl_dist.data import shard_writer

    arguments = dict(trials=corpus.trials, workers=1, shard_size_mb=0.1, progress=False)
    interrupt_after_renaming(make_shards, monkeypatch, [corpus.root], tmp_path, 2, **arguments)
    cache = tmp_path / ".train.tmp" / "cache"
    sealed = {
        name: [info.name.split(".")[0] for info, _ in tar_members(tmp_path / name) if info.name.endswith(".flac")]
        for name in ("train-000000.tar", "train-000001.tar")
    }
    in_sealed = {key for keys in sealed.values() for key in keys}
    assert {key for key in corpus.good if shard_writer.cache_path(cache, key).exists()} == (
        corpus.good.keys() - in_sealed
    )
    (tmp_path / "train-000001.tar").unlink()  # lost after sealing: its samples are nowhere now

    decode, decoded = shard_writer.decode_file, []
    monkeypatch.setattr(shard_writer, "decode_file", lambda path: decoded.append(path) or decode(path))
    monkeypatch.setattr(make_shards, "decode_to_cache", must_not_decode)  # pass 1 keeps records
    written = pack_tracking_writes(make_shards, monkeypatch, [corpus.root], tmp_path, **arguments)
    assert written[0] == "train-000001.tar" and "train-000000.tar" not in written
    assert sorted(decoded) == sorted(str(corpus.good[key]) for key in sealed["train-000001.tar"])
    assert_same_files(tmp_path, packed.parent)
