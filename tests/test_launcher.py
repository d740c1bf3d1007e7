"""mrl_dist/train/launcher.py: a CPU launch that started one rank of several is refused with the
command that starts them all; every launch that started its ranks goes through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mrl_dist.train.launcher import RANK_VARIABLES, LaunchError, refuse_single_process_cpu_launch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def simple_cpu_launch(monkeypatch):
    """The environment `accelerate launch --cpu --num_processes 2` gives its one process."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(sys, "argv", ["launch/train.py", "--config", "configs/cpu-demo.yaml"])
    return monkeypatch


def test_a_cpu_launch_of_several_processes_without_mpirun_is_refused_with_the_command_to_use(simple_cpu_launch):
    with pytest.raises(LaunchError) as refused:
        refuse_single_process_cpu_launch()
    message = str(refused.value)
    assert "\n" not in message  # one line: the command reports it as `train.py: error: ...`
    assert "accelerate launch --multi_gpu --num_processes N launch/train.py --config configs/cpu-demo.yaml" in message
    assert "torchrun --nproc_per_node N launch/train.py --config configs/cpu-demo.yaml" in message


@pytest.mark.parametrize("rank_variable", RANK_VARIABLES)
def test_ranks_started_by_torchrun_or_mpirun_go_through(simple_cpu_launch, rank_variable):
    simple_cpu_launch.setenv(rank_variable, "0")
    refuse_single_process_cpu_launch()


def test_one_cpu_process_goes_through(simple_cpu_launch):
    simple_cpu_launch.delenv("MASTER_ADDR")  # the simple launcher sets it only for several processes
    refuse_single_process_cpu_launch()


def test_a_launch_not_forced_onto_the_cpu_goes_through(simple_cpu_launch):
    simple_cpu_launch.delenv("ACCELERATE_USE_CPU")
    refuse_single_process_cpu_launch()


@pytest.mark.slow
def test_accelerate_launch_cpu_with_two_processes_stops_before_training(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29541",
            str(REPO / "launch" / "train.py"),
            "--config",
            str(REPO / "configs" / "cpu-demo.yaml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0  # the script's 2; accelerate's launcher exits 1 after it
    assert "train.py: error: `accelerate launch --cpu` with more than one process" in result.stderr, result.stderr[
        -3000:
    ]
    assert "accelerate launch --multi_gpu --num_processes N" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
