"""launch/gpu_check.py: arguments, FLOP and MFU arithmetic, train.log parsing, the Markdown report,
and one end-to-end CPU pass (`--device cpu --quick`)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrl_dist.tools.gpu_check import bench, runner
from mrl_dist.tools.gpu_check.bench import BENCH_CASES, COMPILED_CASE, bench_schedule, section_bench
from mrl_dist.tools.gpu_check.check import Check, OutOfTime, SectionError
from mrl_dist.tools.gpu_check.flops import count_flops, device_peak_flops, model_flops_utilisation
from mrl_dist.tools.gpu_check.plan import (
    SECTIONS,
    bench_sizes_from_configs,
    make_plan,
    parse_args,
    shipped_gpu_configs,
)
from mrl_dist.tools.gpu_check.report import JSON_NAME, MARKDOWN_NAME, render_markdown
from mrl_dist.tools.gpu_check.runner import main, run_all
from mrl_dist.tools.gpu_check.trainlog import expected_unfreeze_lines, parse_train_log, steps_per_second

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- arguments


def test_defaults_are_the_full_gpu_pass():
    args = parse_args([])
    assert args.output == "gpu-check" and args.device == "cuda" and not args.quick
    assert args.time_budget_s == 480 and args.precision == "bf16"
    assert args.sections == list(SECTIONS) and args.loader_workers == [0, 2, 4, 8]
    assert not args.install_deepspeed and args.peak_tflops is None


def test_cpu_quick_uses_fp32_small_sizes_and_the_given_budget():
    args = parse_args(["--device", "cpu", "--quick", "--time-budget-s", "120"])
    assert args.device == "cpu" and args.quick and args.time_budget_s == 120
    assert args.precision == "no" and args.loader_workers == [0, 2]
    plan = make_plan(args)
    assert plan.preset == "tiny" and [s.batch_size for s in plan.bench_sizes] == [4]
    assert plan.unfreeze_after < plan.sigterm_after < plan.mrl_steps


def test_a_non_positive_time_budget_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--time-budget-s", "0"])


def test_the_full_pass_benches_each_shipped_gpu_batch_size_once():
    assert make_plan(parse_args([])).bench_sizes is None  # read by the bench section
    sizes = bench_sizes_from_configs(shipped_gpu_configs())
    shapes = [(s.batch_size, s.crop_seconds) for s in sizes]  # (batch, crop): SSRFNet's crops are 3 s
    assert len(shapes) == len(set(shapes))
    by_shape = {(s.batch_size, s.crop_seconds): s.configs for s in sizes}
    assert "a100" in by_shape[(256, 2.0)] and "distill-b0-b2-b6" in by_shape[(128, 2.0)]
    assert not any(name.startswith(("cpu-", "distill-cpu")) for s in sizes for name in s.configs)


def test_the_bench_runs_its_cases_in_order_of_value():
    sizes = bench_sizes_from_configs(shipped_gpu_configs())
    schedule = bench_schedule(sizes, "inductor")
    main = (256, 2.0)  # the size most GPU configs train at
    first = [(c.kind, c.size.batch_size, c.size.crop_seconds, c.compile_backend) for c in schedule[:5]]
    assert first == [
        ("mrl-frozen", *main, None),
        ("mrl-unfrozen", *main, None),
        ("classifier", *main, None),
        ("distill", 128, 2.0, None),  # distillation at its own configs' size
        (COMPILED_CASE, *main, "inductor"),
    ]
    rest = schedule[5:]
    assert not any(c.compile_backend for c in rest)
    assert len(rest) == len(sizes) * len(BENCH_CASES) - 4  # every other (mode, size) once, eager
    assert [c.compile_backend for c in bench_schedule(sizes, "none")].count(None) == len(schedule) - 1


def fake_check(tmp_path, argv, remaining_s):
    args = parse_args(argv)
    now = time.monotonic()
    return Check(args, make_plan(args), tmp_path, deadline=now + remaining_s, started=now, peak_flops=None)


def test_the_bench_holds_time_back_for_the_training_run_and_the_loader(monkeypatch, tmp_path):
    ran = []

    def instant_case(check, case, eager_row=None, timeout_s=None):
        ran.append((case.kind, case.size.batch_size, case.compile_backend, timeout_s))
        check.deadline -= 60 if case.compile_backend else 20  # what the case "took"
        return {"case": case.kind, "batch_size": case.size.batch_size, "status": "ok", "crops_per_s": 1.0}

    monkeypatch.setattr(bench, "bench_case", instant_case)
    check = fake_check(tmp_path, [], remaining_s=200 + 150)  # 200 s held for train-run and loader
    section = section_bench(check)
    assert [(kind, batch, backend) for kind, batch, backend, _ in ran] == [
        ("mrl-frozen", 256, None),
        ("mrl-unfrozen", 256, None),
        ("classifier", 256, None),
        ("distill", 128, None),
        ("mrl-unfrozen", 256, "inductor"),
    ]
    assert 55 < ran[-1][3] <= 70  # the compile may use what is left above the reserve (70 s, less set-up)
    skipped = [c for c in section["cases"] if c["status"] == "skipped"]
    assert skipped and all(c["reason"] == "time budget (200 s held for train-run, loader)" for c in skipped)
    assert section["status"] == "ok" and f"{len(skipped)} skipped" in section["summary"]

    ran.clear()  # the bench alone holds nothing back
    section_bench(fake_check(tmp_path, ["--sections", "bench"], remaining_s=150))
    assert len(ran) == 5


def test_a_compile_that_outlasts_its_time_is_skipped_not_failed(monkeypatch, tmp_path):
    def too_long(check, case, flops_per_crop, timeout_s):
        raise OutOfTime(f"the compiled step: killed after {timeout_s:.0f} s (time budget)", "compiling...")

    def eager(check, case):
        return {
            "crops_per_s": [10.0],
            "flops_per_crop": 1e9,
            "peak_allocated_bytes": None,
            "peak_reserved_bytes": None,
            "parameters": 1,
            "trainable": 1,
            "first_step_s": 0.1,
        }

    monkeypatch.setattr(bench, "_measure_compiled", too_long)
    monkeypatch.setattr(bench, "_measure_eager", eager)
    check = fake_check(tmp_path, ["--device", "cpu", "--quick", "--sections", "bench"], remaining_s=60)
    section = section_bench(check)
    compiled = [c for c in section["cases"] if c.get("compile_backend")]
    assert [c["status"] for c in compiled] == ["skipped"] and "killed after" in compiled[0]["reason"]
    assert section["status"] == "ok"


# ---------------------------------------------------------------------------- FLOPs, peaks, MFU


def test_mfu_is_counted_flops_times_rate_over_the_peak():
    assert model_flops_utilisation(2e9, 1000.0, 1e13) == pytest.approx(0.2)
    assert model_flops_utilisation(8.2e9, 3000.0, 989e12) == pytest.approx(8.2e9 * 3000 / 989e12)


def test_mfu_is_none_without_a_known_peak():
    assert model_flops_utilisation(2e9, 1000.0, None) is None
    assert model_flops_utilisation(None, 1000.0, 1e13) is None
    peak, source = device_peak_flops("NVIDIA GeForce RTX 5060 Ti")
    assert peak is None and "--peak-tflops" in source
    assert device_peak_flops(None) == (None, "no CUDA device: peak unknown")


def test_peak_table_matches_the_specific_names_first_and_can_be_overridden():
    assert device_peak_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert device_peak_flops("NVIDIA H200")[0] == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-40GB")[0] == 312e12
    assert "approximate" in device_peak_flops("NVIDIA GeForce RTX 3060")[1]
    assert device_peak_flops("NVIDIA GeForce RTX 5060 Ti", override_tflops=100)[0] == 100e12


@pytest.mark.parametrize("groups", [1, 8, 64])
def test_a_conv_backward_costs_its_forward_once_per_gradient(groups):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    forward = count_flops(lambda: conv(x))
    total = count_flops(lambda: conv(x).sum().backward())
    assert total == 3 * forward  # forward + input gradient + weight gradient


# ---------------------------------------------------------------------------- train.log parsing

TRAIN_LOG = """\
2026-01-01 00:00:00 mode=mrl ranks=1 device=cuda:0 precision=bf16 classes=6 start_step=0 run_dir=r
2026-01-01 00:00:01 validation step 0 val EER 64:50.00%
2026-01-01 00:00:02 step 1 loss=1.0 lr=0.001 crops_per_s=10
2026-01-01 00:00:02 step 2 loss=1.0 lr=0.001 crops_per_s=64
2026-01-01 00:00:02 step 2: backbone unfrozen
2026-01-01 00:00:03 step 3 loss=1.0 lr=0.001 crops_per_s=32
2026-01-01 00:00:03 step 3: stop requested by signal, saving a checkpoint
2026-01-01 00:00:03 checkpoint r/checkpoints/step-3
2026-01-01 00:00:09 mode=mrl ranks=1 device=cuda:0 precision=bf16 classes=6 start_step=3 run_dir=r
2026-01-01 00:00:10 step 4 loss=1.0 lr=0.001 crops_per_s=1.6e+01
2026-01-01 00:00:10 checkpoint r/checkpoints/step-4
"""


def test_train_log_splits_into_process_lifetimes():
    first, second = parse_train_log(TRAIN_LOG)
    assert (first["start_step"], first["end_step"], first["unfreeze_lines"]) == (0, 3, 1)
    assert first["stopped_by_signal"] and not second["stopped_by_signal"]
    assert (second["start_step"], second["end_step"], second["unfreeze_lines"]) == (3, 4, 0)
    assert second["rates"] == [16.0]
    assert steps_per_second(first, crops_per_step=8) == pytest.approx(48 / 8)  # start-up interval left out


def test_only_a_lifetime_that_crosses_the_step_should_log_the_unfreeze():
    first, second = parse_train_log(TRAIN_LOG)
    assert expected_unfreeze_lines(first, unfreeze_after=2) == 1
    assert expected_unfreeze_lines(second, unfreeze_after=2) == 0  # resumed past it
    assert expected_unfreeze_lines(first, unfreeze_after=3) == 0  # stopped right at it


# ---------------------------------------------------------------------------- Markdown


def hand_made_report() -> dict:
    return {
        "date": "2026-12-01 10:00 UTC",
        "command": "python launch/gpu_check.py --output gpu-check",
        "machine": {
            "gpu": "NVIDIA H100 80GB HBM3",
            "gpu_memory_gib": 79.1,
            "driver": "550.54",
            "cuda_runtime": "12.4",
            "cudnn": 90100,
            "torch": "2.13.0",
            "accelerate": "1.16.0",
            "cpu_count": 32,
            "cpus_usable": 32,
            "python": "3.11.7",
            "cpu": "x86_64",
        },
        "settings": {
            "device": "cuda",
            "quick": False,
            "precision": "bf16",
            "time_budget_s": 480,
            "peak_flops": 989e12,
            "peak_source": "H100 SXM, dense bf16",
        },
        "elapsed_s": 301.0,
        "ok": False,
        "sections": {
            "bench": {
                "status": "ok",
                "summary": "2 cases; fastest 3,000 crops/s",
                "elapsed_s": 61.2,
                "cases": [
                    {
                        "case": "mrl-frozen",
                        "preset": "b2",
                        "teachers": None,
                        "batch_size": 256,
                        "crop_seconds": 2.0,
                        "precision": "bf16",
                        "configs": ["a100", "h100"],
                        "status": "ok",
                        "crops_per_s": 3000.0,
                        "crops_per_s_median": 2950.0,
                        "ms_per_step": 85.3,
                        "first_step_s": 1.5,
                        "peak_allocated_bytes": 6 * 2**30,
                        "peak_reserved_bytes": 7 * 2**30,
                        "flops_per_crop": 2.76e9,
                        "achieved_flops": 8.28e12,
                        "mfu": 8.28e12 / 989e12,
                    },
                    {
                        "case": "mrl-unfrozen",
                        "preset": "b2",
                        "teachers": None,
                        "compile_backend": "inductor",
                        "batch_size": 256,
                        "crop_seconds": 2.0,
                        "precision": "bf16",
                        "configs": ["a100", "h100"],
                        "status": "ok",
                        "crops_per_s": 2000.0,
                        "crops_per_s_median": 1990.0,
                        "speedup_over_eager": 1.25,
                        "ms_per_step": 128.0,
                        "first_step_s": 95.0,
                        "peak_allocated_bytes": 20 * 2**30,
                        "peak_reserved_bytes": 21 * 2**30,
                        "flops_per_crop": 8.4e9,
                        "achieved_flops": 16.8e12,
                        "mfu": 16.8e12 / 989e12,
                    },
                    {
                        "case": "distill",
                        "preset": "b2",
                        "teachers": ["b0", "b2"],
                        "batch_size": 256,
                        "crop_seconds": 2.0,
                        "precision": "bf16",
                        "configs": ["a100"],
                        "status": "failed",
                        "error": "OutOfMemoryError: CUDA out of memory",
                    },
                ],
            },
            "train-run": {
                "status": "failed",
                "elapsed_s": 95.0,
                "error": "checks failed: unfreeze_logged_once_per_crossing: 41 'unfrozen' lines",
                "launches": [
                    {
                        "launch": "mrl, SIGTERM",
                        "rc": 0,
                        "start_step": 0,
                        "end_step": 31,
                        "unfreeze_lines": 12,
                        "unfreeze_expected": 1,
                        "steps_per_s": 9.5,
                        "wall_s": 40.0,
                    }
                ],
                "checks": {
                    "finished": {"ok": True, "detail": "exit 0"},
                    "unfreeze_logged_once_per_crossing": {"ok": False, "detail": "41 lines"},
                },
                "validations": [0, 20, 40, 60],
                "checkpoints": ["step-40", "step-60"],
                "finished": True,
            },
            "loader": {
                "status": "ok",
                "summary": "best 7,000 crops/s with 8 workers",
                "elapsed_s": 30.0,
                "into": "cuda",
                "pin_memory": True,
                "rows": [
                    {
                        "codec": "pcm",
                        "num_workers": 8,
                        "batch_size": 256,
                        "crop_seconds": 2.0,
                        "crops_per_s": 7000.0,
                        "crops_per_s_per_core": 875.0,
                        "batches_timed": 140,
                        "warmup_s": 2.0,
                        "status": "ok",
                    },
                    {"codec": "pcm", "num_workers": 16, "status": "skipped", "reason": "time budget"},
                ],
                "end_to_end": {
                    "codec": "pcm",
                    "num_workers": 8,
                    "batch_size": 256,
                    "crop_seconds": 2.0,
                    "crops_per_s": 6500.0,
                    "batches_timed": 120,
                    "preset": "b2",
                    "step": "b2 mrl-frozen (bf16)",
                    "goal_crops_per_s": 20000,
                    "status": "ok",
                },
            },
            "deepspeed": {"status": "skipped", "reason": "deepspeed not installed", "elapsed_s": 0.4},
        },
    }


def test_markdown_names_the_machine_date_and_command():
    text = render_markdown(hand_made_report())
    assert "### GPU check: NVIDIA H100 80GB HBM3" in text
    assert "NVIDIA H100 80GB HBM3 (79.1 GiB), driver 550.54, CUDA 12.4 (torch build)" in text
    assert "32 CPUs" in text and "torch 2.13.0" in text
    assert "- Date: 2026-12-01 10:00 UTC" in text
    assert "- Command: `python launch/gpu_check.py --output gpu-check`" in text
    assert "989 TFLOP/s (H100 SXM, dense bf16)" in text


def test_markdown_has_a_row_per_section_with_failures_and_skips():
    lines = render_markdown(hand_made_report()).splitlines()
    assert "| bench | ok | 2 cases; fastest 3,000 crops/s | 61 s |" in lines
    assert (
        "| train-run | failed | checks failed: unfreeze_logged_once_per_crossing: 41 'unfrozen' lines | 95 s |"
    ) in lines
    assert "| loader | ok | best 7,000 crops/s with 8 workers | 30 s |" in lines
    assert "| deepspeed | skipped | deepspeed not installed | 0 s |" in lines


def test_markdown_bench_loader_and_run_tables():
    lines = render_markdown(hand_made_report()).splitlines()
    assert (
        "| mrl-frozen | b2 | 256 | 2 s | bf16 | 3,000.0 | 2,950.0 | 85 | 1.5 s | 6.00 GiB | 2.76 | 8.28 | 0.8 % "
        "| a100, h100 |"
    ) in lines
    assert (
        "| mrl-unfrozen, compiled (inductor) | b2 | 256 | 2 s | bf16 | 2,000.0 (1.25x eager) | 1,990.0 | 128 "
        "| 95.0 s | 20.00 GiB | 8.40 | 16.80 | 1.7 % | a100, h100 |"
    ) in lines
    assert (
        "| distill | b0+b2 -> b2 | 256 | 2 s | bf16 | failed: OutOfMemoryError: CUDA out of memory "
        "| - | - | - | - | - | - | - | a100 |"
    ) in lines
    assert "| pcm | 8 | 256 | 2 s | 7,000 | 875 | 140 | 2.0 s |" in lines
    assert "| pcm | 16 | - | - | skipped: time budget | - | - | - |" in lines
    assert (
        "End to end: pcm shards, 8 loader workers, batch 256 through the b2 mrl-frozen (bf16) training step: "
        "6,500 crops/s (120 batches timed)."
    ) in lines
    assert "| mrl, SIGTERM | 0 | 0 | 31 | 12 (1) | 9.50 | 40 s |" in lines
    assert "- FAILED: unfreeze_logged_once_per_crossing (41 lines)" in lines


def test_markdown_weighs_the_measured_figures_against_the_gpu_goals():
    lines = render_markdown(hand_made_report()).splitlines()
    assert (
        "- b2 mrl-frozen (bf16) fed from pcm shards by 8 workers: 6,500 crops/s against a goal of 20,000: not met"
    ) in lines
    assert "- mrl-unfrozen, compiled (inductor) b2, batch 256: MFU 1.7 % against a goal of 25 %: not met" in lines


def test_markdown_says_na_for_an_unknown_peak():
    report = hand_made_report()
    report["settings"].update(peak_flops=None, peak_source="NVIDIA GeForce RTX 5060 Ti: peak unknown")
    report["sections"]["bench"]["cases"][0]["mfu"] = None
    text = render_markdown(report)
    assert "no known peak" in text and "| 8.28 | n/a | a100, h100 |" in text


# ---------------------------------------------------------------------------- sections, budget


def stub_sections(monkeypatch, **functions):
    calls = []

    def make(name):
        def run(check):
            calls.append(name)
            return functions.get(name, lambda c: {"status": "ok", "summary": f"{name} stub"})(check)

        return run

    monkeypatch.setattr(runner, "SECTION_FUNCTIONS", {name: make(name) for name in SECTIONS})
    return calls


def test_a_failing_section_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(check):
        raise SectionError("classifier launch exited 1", output_tail="Traceback ...\nValueError: boom")

    calls = stub_sections(monkeypatch, **{"train-run": broken})
    code = main(["--device", "cpu", "--quick", "--output", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert code == 1 and calls == list(SECTIONS)
    report = json.loads((tmp_path / JSON_NAME).read_text())
    failed = report["sections"]["train-run"]
    assert failed["status"] == "failed" and failed["error"] == "classifier launch exited 1"
    assert "ValueError: boom" in failed["output_tail"]
    assert [s["status"] for n, s in report["sections"].items() if n != "train-run"] == ["ok"] * 3
    assert "| train-run | failed | classifier launch exited 1 |" in (tmp_path / MARKDOWN_NAME).read_text()


def test_an_unexpected_exception_fails_only_its_section(monkeypatch, tmp_path):
    stub_sections(monkeypatch, bench=lambda check: {}["missing"])
    report = run_all(
        parse_args(["--device", "cpu", "--quick", "--output", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    )
    assert report["sections"]["bench"]["status"] == "failed"
    assert report["sections"]["bench"]["error"] == "KeyError: 'missing'"
    assert "Traceback" in report["sections"]["bench"]["traceback"] and not report["ok"]
    assert report["sections"]["loader"]["status"] == "ok"


@pytest.mark.slow
def test_sections_past_the_deadline_are_skipped_not_run(monkeypatch, tmp_path):
    def slow(check):
        time.sleep(max(0.0, check.remaining() - 0.5))  # runs until less than a second is left
        return {"status": "ok", "summary": "slow stub"}

    calls = stub_sections(monkeypatch, bench=slow)
    monkeypatch.setattr(runner, "SECTION_MINIMUM_S", {name: (0, 0) if name == "bench" else (1, 1) for name in SECTIONS})
    code = main(
        [
            "--device",
            "cpu",
            "--quick",
            "--time-budget-s",
            "3",
            "--output",
            str(tmp_path),
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    report = json.loads((tmp_path / JSON_NAME).read_text())
    assert code == 0 and calls == ["bench"]
    assert {n: s["status"] for n, s in report["sections"].items()} == {
        "bench": "ok",
        "train-run": "skipped",
        "loader": "skipped",
        "deepspeed": "skipped",
    }
    assert report["sections"]["loader"]["reason"] == "time budget"


def test_cuda_without_a_gpu_is_an_error_that_names_the_cpu_self_test(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--output", str(tmp_path)]) == 2
    assert "--device cpu --quick" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cpu_quick_pass_writes_json_and_markdown_and_fails_nothing(tmp_path):
    output = tmp_path / "out"
    began = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--output",
            str(output),
            "--work-dir",
            "work",  # relative to cwd, as a user types it; the sections run commands from the repository
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - began
    report = json.loads((output / "gpu-check.json").read_text())
    sections = report["sections"]
    assert set(sections) == set(SECTIONS)
    statuses = {name: s["status"] for name, s in sections.items()}
    assert all(status in ("ok", "skipped") for status in statuses.values()), (statuses, result.stderr[-4000:])
    assert all(s.get("reason") for s in sections.values() if s["status"] == "skipped")
    assert sections["deepspeed"]["status"] == "skipped" and "CUDA" in sections["deepspeed"]["reason"]
    assert result.returncode == 0, result.stderr[-4000:]

    cases = sections["bench"]["cases"]
    assert {c["case"] for c in cases} == set(BENCH_CASES)
    assert all(c["flops_per_crop"] > 0 and c["mfu"] is None and c["crops_per_s"] > 0 for c in cases)
    compiled = [c for c in cases if c["compile_backend"]]  # training.compile, traced by aot_eager
    assert [(c["case"], c["compile_backend"]) for c in compiled] == [(COMPILED_CASE, "aot_eager")]
    assert compiled[0]["speedup_over_eager"] > 0 and compiled[0]["first_step_s"] > 0
    run = sections["train-run"]
    assert run["finished"] and run["validations"][-1] == run["max_steps"]
    assert run["unfreeze_lines"] == 1, run["launches"]  # once, in the launch that crossed the step
    loader = sections["loader"]
    assert {(row["codec"], row["num_workers"]) for row in loader["rows"]} == {
        (codec, workers) for codec in ("flac", "pcm") for workers in (0, 2)
    }
    assert all(row["crops_per_s"] > 0 and row["crops_per_s_per_core"] > 0 for row in loader["rows"])
    assert loader["end_to_end"]["status"] == "ok" and loader["end_to_end"]["crops_per_s"] > 0

    markdown = (output / "gpu-check.md").read_text()
    assert "| deepspeed | skipped |" in markdown and "- Command: `python launch/gpu_check.py --device cpu" in markdown
    assert elapsed < 120, f"the quick pass took {elapsed:.0f} s"
