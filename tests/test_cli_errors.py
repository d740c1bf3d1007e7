"""Every command reports a problem with what it was given like argparse does: one line
`PROG: error: MESSAGE` on stderr, exit status 2, the traceback only on request; and it checks
its inputs (config, checkpoints, data, outputs) before any expensive work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrl_dist.cli_errors import InputError, command, one_line
from mrl_dist.models import ReDimNetMRL, build_preset
from mrl_dist.models.loading import CheckpointError
from mrl_dist.preflight import checkpoint_problem

from train_configs import accelerate_two_cpu_processes

REPO = Path(__file__).resolve().parents[1]


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This machine as a new user has it: no official checkpoint anywhere, downloads off."""
    env = {**os.environ, "MRL_DIST_OFFLINE": "1", "MRL_DIST_CHECKPOINTS": "", "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("MRL_DIST_TRACEBACK", None)
    return {**env, **extra}


def run_script(script: str, *args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- train -------------------------------------------------------------------------------------


def test_the_main_command_without_checkpoint_or_shards_fails_in_one_line_before_building_anything(tmp_path):
    started = time.perf_counter()
    result = run_script("train.py", "--config", REPO / "configs" / "a100.yaml", cwd=tmp_path, env=offline_env(tmp_path))
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr
    line = lines[0]
    # the checkpoint, where it was looked for and how to provide it; then both missing shard sets
    assert "model.backbone" in line and "b2-vox2-ft_lm.pt" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line and "MRL_DIST_CHECKPOINTS" in line
    assert "data.train" in line and "shards/train.manifest.json" in line
    assert "data.val" in line and "shards/val.manifest.json" in line
    assert not (tmp_path / "runs").exists()  # no accelerator, run folder or feature cache was made
    assert seconds < 60


@pytest.mark.parametrize("how", ["environment", "flag"])
def test_the_traceback_is_shown_on_request(tmp_path, how):
    env = offline_env(tmp_path, **({"MRL_DIST_TRACEBACK": "1"} if how == "environment" else {}))
    flag = ["--traceback"] if how == "flag" else []
    result = run_script("train.py", "--config", REPO / "configs" / "a100.yaml", *flag, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("train.py: error: ")


def test_a_bad_config_key_is_one_line_naming_the_key_and_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("training: {batch_sise: 64}\n")
    result = run_script("train.py", "--config", config, cwd=tmp_path, env=offline_env(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ")
    assert str(config) in lines[0] and "training.batch_sise" in lines[0]


@pytest.mark.slow
def test_under_several_ranks_each_rank_reports_its_error_once(tmp_path):
    command_line = accelerate_two_cpu_processes(REPO / "configs" / "a100.yaml", port=29631)
    env = {**offline_env(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command_line, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert sorted(line.split(": ")[2] for line in errors) == ["rank 0/2", "rank 1/2"], result.stderr[-3000:]
    assert all("b2-vox2-ft_lm.pt" in line and line.count("train.py: error: ") == 1 for line in errors)


# --- evaluate, make_shards ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def val_manifest(tmp_path_factory, make_shards) -> Path:
    from mrl_dist.demo.corpus import make_demo_corpus

    root = tmp_path_factory.mktemp("cli_errors")
    corpus = make_demo_corpus(root / "corpus", speakers=4, utterances=2, seed=0, test_fraction=0.5)
    make_shards.pack_split([corpus.test_dir], root / "shards", "val", trials=corpus.trials, workers=1, progress=False)
    return root / "shards" / "val.manifest.json"


def test_evaluate_checks_every_checkpoint_before_evaluating_the_first(val_manifest, tmp_path):
    torch.manual_seed(0)
    good = tmp_path / "good" / "best.pt"
    ReDimNetMRL.from_redimnet(build_preset("tiny"), head_init="pretrained").save_checkpoint(good)
    missing = tmp_path / "missing" / "best.pt"
    result = run_script(
        "evaluate.py", "--checkpoint", good, "--checkpoint", missing, "--data", val_manifest,
        cwd=tmp_path, env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: --checkpoint ")
    assert str(missing) in lines[0] and str(good) not in lines[0]
    assert result.stdout == "" and not list(good.parent.glob("*.png"))  # nothing was evaluated


def test_make_shards_checks_its_paths_before_reading_any_audio(tmp_path):
    output = tmp_path / "out"
    result = run_script(
        "make_shards.py", "--input", tmp_path / "nowhere", "--output", output, "--split", "train",
        "--trials", tmp_path / "trials.txt", cwd=tmp_path, env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("make_shards.py: error: 2 problems: ")
    assert "--input" in lines[0] and "nowhere" in lines[0] and "--trials" in lines[0]
    assert not output.exists()


# --- the convention itself ---------------------------------------------------------------------


def test_a_chained_error_reports_the_projects_message(capsys):
    @command("tool.py")
    def main(argv: list[str]) -> int:
        try:
            raise ConnectionResetError("[Errno 104] Connection reset by peer")
        except OSError as err:
            raise CheckpointError("checkpoint b2-vox2-ft_lm.pt not found; download failed") from err

    assert main([]) == 2
    assert capsys.readouterr().err == "tool.py: error: checkpoint b2-vox2-ft_lm.pt not found; download failed\n"


def test_a_bug_keeps_its_traceback():
    @command("tool.py")
    def main(argv: list[str]) -> int:
        return {}["missing"]

    with pytest.raises(KeyError):
        main([])


def test_the_traceback_flag_is_taken_off_the_command_line(capsys):
    seen = []

    @command("tool.py")
    def main(argv: list[str]) -> int:
        seen.append(argv)
        raise InputError("--input x: no such folder")

    assert main(["--input", "x", "--traceback"]) == 2
    err = capsys.readouterr().err
    assert seen == [["--input", "x"]]
    assert "Traceback (most recent call last)" in err and err.endswith("tool.py: error: --input x: no such folder\n")


def test_a_multi_line_message_becomes_one_line():
    listing = InputError("--trials t.txt: 2 utterance(s) are not in the split:\n  a/b/1: empty\n  a/b/2: too-short")
    assert one_line(listing) == "--trials t.txt: 2 utterance(s) are not in the split: a/b/1: empty; a/b/2: too-short"
    worker = CheckpointError(
        "Caught CheckpointError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nmrl_dist.models.loading.CheckpointError: x.pt: no such checkpoint file'
    )
    assert one_line(worker) == "mrl_dist.models.loading.CheckpointError: x.pt: no such checkpoint file"


# --- what pre-flight accepts -------------------------------------------------------------------


def test_an_official_name_present_locally_is_no_problem(isolated_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("MRL_DIST_OFFLINE", "1")
    monkeypatch.setenv("MRL_DIST_CHECKPOINTS", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "b2-vox2-ft_lm.pt").write_bytes(b"")  # presence is all pre-flight looks at
    assert checkpoint_problem("b2", "model.backbone") is None


def test_an_official_name_missing_locally_is_left_to_the_download_when_online(isolated_hub):
    assert checkpoint_problem("b2", "model.backbone") is None
    assert not isolated_hub.exists()  # nothing was downloaded or created


def test_an_official_name_missing_offline_says_where_it_looked(isolated_hub, monkeypatch):
    monkeypatch.setenv("MRL_DIST_OFFLINE", "1")
    problem = checkpoint_problem("redimnet2-b6", "distill.teachers[0].source", ("lm", "vb2+vox2_v0"))
    assert problem.startswith("distill.teachers[0].source: checkpoint b6-vb2+vox2_v0-lm.pt not found")
    assert str(isolated_hub / "redimnet2") in problem


@pytest.mark.parametrize(
    ("source", "weights", "expected"),
    [
        ("tiny", None, None),  # a preset trained from scratch needs no file
        ("tiny", (None, None), "has no official pretrained weights"),
        ("nonsense", None, "neither an existing checkpoint file nor a preset"),
        ("runs/x/best.pt", None, "no such file"),
    ],
)
def test_model_sources_are_judged_as_the_loaders_read_them(isolated_hub, source, weights, expected):
    problem = checkpoint_problem(source, "model.backbone", weights)
    assert problem is None if expected is None else expected in problem
