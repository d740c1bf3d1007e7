"""The SLURM job scripts in launch/slurm/.

Fast: both parse as bash, sbatch reads every #SBATCH line of them, the lines the requeue rests
on are there, and outside a job they stop with the command that submits them.
Slow: a real SLURM started on this machine (tests/slurm_cluster.py: a controller and two 1-CPU
nodes) runs the packing job, and the training job as 2 nodes x 1 gloo process (machine rank, main
address and port from the job, c10d rendezvous), which is sent SLURM's time-limit warning mid-run
(it checkpoints and requeues itself), then requeued with `scontrol requeue` (as preemption does),
and resumes from its checkpoint each time until it finishes; on one node, the training job runs
2 processes per node (static rendezvous on the node). Skipped, with the reason, where SLURM is
not installed or cannot start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import FINAL_STATES, SlurmCluster, SlurmUnavailable, missing_requirements

from mrl_dist.demo.corpus import make_demo_corpus
from mrl_dist.demo.run import prepare_demo_shards

from train_configs import read_metrics, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]
TRAIN_JOB = REPO / "launch" / "slurm" / "train.sbatch"
PACK_JOB = REPO / "launch" / "slurm" / "make_shards.sbatch"
JOBS = [TRAIN_JOB, PACK_JOB]
MAX_STEPS = 60  # long enough that neither stop below can come after the end


@pytest.mark.parametrize("script", JOBS, ids=lambda path: path.name)
def test_job_script_parses_as_bash(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", JOBS, ids=lambda path: path.name)
def test_every_sbatch_directive_comes_before_the_first_command(script):
    """sbatch stops reading #SBATCH lines at the first line that is not a comment."""
    lines = script.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert [i for i, line in enumerate(lines) if line.startswith("#SBATCH")][-1] < first_command


def test_training_job_checkpoints_before_its_time_limit_requeues_and_always_resumes():
    text = TRAIN_JOB.read_text()
    for line in (
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --open-mode=append",
        "trap on_time_limit USR1",
        'scancel --signal=TERM "$SLURM_JOB_ID"',
        'scontrol requeue "$SLURM_JOB_ID"',
        'launch/train.py --config "$config" --resume latest',
        '--machine_rank "$SLURM_NODEID"',
        "--rdzv_backend c10d",
        'scontrol show hostnames "$SLURM_JOB_NODELIST"',
    ):
        assert line in text, f"{line!r} missing from {TRAIN_JOB.name}"


@pytest.mark.parametrize("script", JOBS, ids=lambda path: path.name)
def test_job_script_outside_slurm_stops_with_the_command_that_submits_it(script):
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    result = subprocess.run(["bash", str(script), "x"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "not inside a SLURM job" in result.stderr and f"sbatch [options] launch/slurm/{script.name}" in result.stderr


def test_training_job_refuses_a_resume_argument_of_its_own():
    env = {**os.environ, "SLURM_JOB_ID": "1"}
    result = subprocess.run(
        ["bash", str(TRAIN_JOB), "configs/cpu-demo.yaml", "--resume", "latest"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "every start passes --resume latest" in result.stderr


# ------------------------------------------------------------------ a real SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as error:
        pytest.skip(str(error))
    yield cluster
    cluster.stop()


def job_environment(**extra: str) -> dict[str, str]:
    """What a user's shell holds when they submit: this checkout's python, one thread per rank."""
    return {"MRL_DIST_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def wait_for_line(
    path: Path, pattern: str, timeout: float, slurm: SlurmCluster | None = None, job: str = ""
) -> re.Match:
    """The first match of `pattern` in `path`, polled for `timeout` s; the failure names the job's
    state and the daemons' logs when `slurm` and `job` are given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and (match := re.search(pattern, path.read_text())):
            return match
        time.sleep(0.5)
    state = f"; job {job}: {slurm.job(job)}\n{slurm.logs()}" if slurm is not None and job else ""
    raise AssertionError(f"{pattern!r} did not appear in {path} within {timeout:.0f} s{state}")


@pytest.mark.slow
def test_packing_job_packs_a_corpus_with_one_worker_per_cpu(slurm, tmp_path):
    corpus = make_demo_corpus(tmp_path / "audio", speakers=4, utterances=3, seed=3)
    output = tmp_path / "shards"
    log = tmp_path / "pack.out"
    job = slurm.submit(
        PACK_JOB,
        ["--cpus-per-task=1", f"--output={log}"],
        ["--input", str(corpus.train_dir), "--output", str(output), "--split", "train", "--shard-size-mb", "1"],
        cwd=REPO,
        env=job_environment(),
    )
    record = slurm.wait_for_job(job, lambda r: r["JobState"] in FINAL_STATES, 300, "packing finished", log)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text(errors="replace")[-3000:]
    assert "make_shards.py with 1 workers" in log.read_text(errors="replace")
    manifest = json.loads((output / "train.manifest.json").read_text())
    assert manifest["total_samples"] == len(list(corpus.train_dir.rglob("*.wav")))


def release_requeued(slurm: SlurmCluster, job: str, restarts: int, log: Path, timeout: float = 240) -> None:
    """Wait until the job has been requeued `restarts` times, then let it start now: SLURM holds a
    requeued batch job for 2 minutes (the credential lifetime) before it may start.

    Not too soon: a node refuses a job credential issued in the same second as the one revoked
    when the job's last run was killed ("Job credential revoked"), and the job then fails for
    good. So the release waits until the nodes are idle and 2 s more, and is repeated while the
    job is still held (the hold can be set again while the job's last processes end)."""
    slurm.wait_for_job(
        job,
        lambda r: int(r["Restarts"]) == restarts and r["JobState"] == "PENDING",
        120,
        f"pending after requeue {restarts}",
        log,
    )
    deadline = time.time() + timeout
    while not slurm.all_idle() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    record = slurm.job(job)
    while record["JobState"] == "PENDING":
        if time.time() > deadline:
            raise AssertionError(
                f"job {job}: pending {timeout:.0f} s after requeue {restarts}: {record}\n{slurm.logs()}"
            )
        if record.get("Reason") == "BeginTime":
            slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now")
        time.sleep(2)
        record = slurm.job(job)


@pytest.mark.slow
def test_training_job_requeued_by_its_time_limit_and_by_scontrol_resumes_each_time_to_the_end(slurm, tmp_path):
    shards = prepare_demo_shards(tmp_path / "data", speakers=10, utterances=6, seed=10, shard_size_mb=1)
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "run.yaml",
        tiny_config(
            run_dir,
            shards,
            training={"max_steps": MAX_STEPS, "collective_timeout_minutes": 1},
            validation={"every_steps": 1000, "batch_size": 8, "max_seconds": 2.0},
            checkpoint={"every_steps": 1000, "keep_last": 2},  # the stops' checkpoints and the last
        ),
    )
    job_log = tmp_path / "train.out"
    job = slurm.submit(
        TRAIN_JOB,
        ["--nodes=2", f"--output={job_log}"],
        [str(config)],
        cwd=REPO,
        env=job_environment(MRL_DIST_CPU="1"),
    )
    train_log = run_dir / "train.log"

    # What `--signal=B:USR1@300` sends 300 s before the time limit: the job checkpoints and requeues itself.
    wait_for_line(train_log, r"step 2 loss=", 300, slurm, job)
    slurm.command("scancel", "--batch", "--signal=USR1", job)
    release_requeued(slurm, job, 1, job_log)

    # Preemption and an administrator's requeue: SLURM sends SIGTERM itself and requeues the job.
    resumed_at = int(wait_for_line(train_log, r"start_step=([1-9]\d*)", 300, slurm, job).group(1))
    wait_for_line(train_log, rf"step {resumed_at + 2} loss=", 120, slurm, job)
    slurm.command("scontrol", "requeue", job)
    release_requeued(slurm, job, 2, job_log)

    record = slurm.wait_for_job(job, lambda r: r["JobState"] in FINAL_STATES, 300, "training finished", job_log)
    output = job_log.read_text(errors="replace")  # two ranks' progress bars may split a character
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "2"), output[-3000:]
    text = train_log.read_text()
    starts = [int(step) for step in re.findall(r"ranks=2 .*start_step=(\d+)", text)]
    stops = [int(step) for step in re.findall(r"step (\d+): stop requested by signal", text)]
    assert starts[0] == 0 and starts[1:] == stops and len(stops) == 2, text
    assert all(2 <= step < MAX_STEPS for step in stops)
    assert read_metrics(run_dir)[-1]["step"] == MAX_STEPS
    assert [f"start {n}:" in output for n in (1, 2, 3)] == [True, True, True]
    assert output.count("requeueing job") == 1  # the time limit's; SLURM requeued the second itself
    assert "2 node(s) x 1 process(es)" in output


@pytest.mark.slow
def test_training_job_on_one_node_runs_its_processes_per_node_to_the_end(slurm, tmp_path):
    shards = prepare_demo_shards(tmp_path / "data", speakers=10, utterances=6, seed=10, shard_size_mb=1)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_config(run_dir, shards))
    job_log = tmp_path / "train.out"
    job = slurm.submit(
        TRAIN_JOB,
        ["--nodes=1", f"--output={job_log}"],
        [str(config)],
        cwd=REPO,
        env=job_environment(MRL_DIST_CPU="1", MRL_DIST_PROCS_PER_NODE="2"),
    )
    record = slurm.wait_for_job(job, lambda r: r["JobState"] in FINAL_STATES, 300, "training finished", job_log)
    output = job_log.read_text(errors="replace")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), output[-3000:]
    assert "1 node(s) x 2 process(es)" in output
    assert "ranks=2" in (run_dir / "train.log").read_text()
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4]
