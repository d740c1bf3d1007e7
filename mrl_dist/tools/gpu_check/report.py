"""The report's files: the JSON as it stands and its Markdown rendering for docs/benchmarks.md."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPORT_FORMAT = "mrl-dist-gpu-check/1"
JSON_NAME, MARKDOWN_NAME = "gpu-check.json", "gpu-check.md"


def write_outputs(report: dict[str, Any], output: Path) -> None:
    (output / JSON_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output / MARKDOWN_NAME).write_text(render_markdown(report))


def _cell(text: Any, limit: int = 220) -> str:
    """A table cell: one line, pipes escaped, long errors cut."""
    value = " ".join(str(text).split()).replace("|", "\\|")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _gib(value: int | None) -> str:
    return "n/a (CPU)" if value is None else f"{value / 2**30:.2f} GiB"


def _mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _rate(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _machine_line(machine: dict[str, Any]) -> str:
    parts = []
    if machine.get("gpu"):
        gpu = machine["gpu"] + (f" ({machine['gpu_memory_gib']} GiB)" if machine.get("gpu_memory_gib") else "")
        parts += [
            gpu,
            f"driver {machine.get('driver') or 'unknown'}",
            f"CUDA {machine.get('cuda_runtime')} (torch build)",
        ]
        if machine.get("cudnn"):
            parts.append(f"cuDNN {machine['cudnn']}")
    else:
        parts.append(f"no GPU ({machine.get('cpu')})")
    parts += [
        f"torch {machine.get('torch')}",
        f"accelerate {machine.get('accelerate')}",
        f"{machine.get('cpu_count')} CPUs ({machine.get('cpus_usable')} usable)",
        f"Python {machine.get('python')}",
    ]
    return ", ".join(parts)


def _section_result(section: dict[str, Any]) -> str:
    status = section.get("status")
    if status == "ok":
        return _cell(section.get("summary", ""))
    if status == "skipped":
        return _cell(section.get("reason", ""))
    return _cell(section.get("error", ""))


def _bench_table(cases: Iterable[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | model | batch | crop | precision | crops/s (best) | crops/s (median) | ms/step "
        "| peak alloc | GFLOP/crop | TFLOP/s | MFU | configs |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for row in cases:
        model = row.get("preset", "")
        if row.get("teachers"):
            model = "+".join(row["teachers"]) + " -> " + model
        head = (
            f"| {row['case']} | {model} | {row['batch_size']} | {row['crop_seconds']:g} s | {row.get('precision', '-')}"
        )
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(
                f"{head} | {row['status']}: {_cell(note, 120)} | - | - | - | - | - | - | "
                f"{', '.join(row.get('configs') or []) or '-'} |"
            )
            continue
        lines.append(
            f"{head} | {_rate(row['crops_per_s'])} | {_rate(row['crops_per_s_median'])} "
            f"| {row['ms_per_step']:,.0f} | {_gib(row['peak_allocated_bytes'])} "
            f"| {row['flops_per_crop'] / 1e9:.2f} | {row['achieved_flops'] / 1e12:.2f} | {_mfu(row['mfu'])} "
            f"| {', '.join(row['configs'])} |"
        )
    return lines


def _train_run_lines(section: dict[str, Any]) -> list[str]:
    lines = [
        f"Launcher: {section.get('launcher')}; batch {section.get('batch_size')} of "
        f"{section.get('crop_seconds', 0):g} s crops, {section.get('num_workers')} loader workers; MRL run of "
        f"{section.get('max_steps')} steps, unfreeze_after_steps {section.get('unfreeze_after_steps')}, "
        f"SIGTERM after step {section.get('sigterm_after_step')}.",
        "",
        "| launch | exit | start step | end step | 'unfrozen' lines (expected) | steps/s | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for launch in section.get("launches", []):
        unfrozen = (
            "-"
            if launch.get("unfreeze_expected") is None
            else f"{launch['unfreeze_lines']} ({launch['unfreeze_expected']})"
        )
        lines.append(
            f"| {launch['launch']} | {launch['rc']} | {launch.get('start_step', '-')} "
            f"| {launch.get('end_step', '-')} | {unfrozen} | {_rate(launch.get('steps_per_s'), 2)} "
            f"| {launch['wall_s']:.0f} s |"
        )
    if "validations" in section:  # absent when a launch failed before the run's end
        lines += [
            "",
            f"Validations at steps {section['validations']}; checkpoints kept: "
            f"{', '.join(section.get('checkpoints', [])) or 'none'}; finished: "
            f"{'yes' if section.get('finished') else 'no'}.",
        ]
    if section.get("checks"):
        lines.append("")
    for name, result in section.get("checks", {}).items():
        lines.append(f"- {'ok' if result['ok'] else 'FAILED'}: {name} ({_cell(result['detail'], 300)})")
    return lines


def _loader_table(section: dict[str, Any]) -> list[str]:
    lines = [
        f"Batches from `make_train_loader` on the demo shards, copied to {section.get('into')}"
        f"{' from pinned memory' if section.get('pin_memory') else ''}.",
        "",
        "| loader workers | batch | crop | crops/s | batches timed | warm-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in section.get("rows", []):
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(f"| {row['num_workers']} | - | - | {row['status']}: {_cell(note, 120)} | - | - |")
            continue
        lines.append(
            f"| {row['num_workers']} | {row['batch_size']} | {row['crop_seconds']:g} s "
            f"| {_rate(row['crops_per_s'], 0)} | {row['batches_timed']} | {row['warmup_s']:.1f} s |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown for docs/benchmarks.md: machine, date, command, one summary row per
    section, then each section's table."""
    machine, settings = report.get("machine", {}), report.get("settings", {})
    sections = report.get("sections", {})
    peak = settings.get("peak_flops")
    title = machine.get("gpu") or f"{settings.get('device', 'cpu')} (no GPU)"
    lines = [
        f"### GPU check: {title}",
        "",
        f"- Machine: {_machine_line(machine)}",
        f"- Date: {report.get('date')}",
        f"- Command: `{report.get('command')}`",
        f"- Precision: {settings.get('precision')}; MFU against "
        + (
            f"{peak / 1e12:g} TFLOP/s ({settings.get('peak_source')})"
            if peak
            else f"no known peak ({settings.get('peak_source')}): MFU n/a"
        ),
        f"- Took {report.get('elapsed_s', 0):.0f} s of a {settings.get('time_budget_s', 0):.0f} s budget"
        + ("; --quick sizes" if settings.get("quick") else ""),
        "",
        "| section | status | result | time |",
        "| --- | --- | --- | ---: |",
    ]
    for name, section in sections.items():
        lines.append(
            f"| {name} | {section.get('status')} | {_section_result(section)} | {section.get('elapsed_s', 0):.0f} s |"
        )
    if sections.get("bench", {}).get("cases"):
        lines += ["", "#### Training step, synthetic batch on the device (`mrl_dist/tools/bench.py`)", ""]
        lines += _bench_table(sections["bench"]["cases"])
    if sections.get("train-run", {}).get("launches"):
        lines += ["", "#### `accelerate launch` of launch/train.py on demo shards", ""]
        lines += _train_run_lines(sections["train-run"])
    if sections.get("loader", {}).get("rows"):
        lines += ["", "#### Loader: shards to device memory", ""]
        lines += _loader_table(sections["loader"])
    deepspeed = sections.get("deepspeed", {})
    if deepspeed.get("status") in ("ok", "failed") and deepspeed.get("command"):
        lines += [
            "",
            "#### DeepSpeed ZeRO-2",
            "",
            f"deepspeed {deepspeed.get('deepspeed')}: exit {deepspeed.get('rc')}, last checkpoint step "
            f"{deepspeed.get('final_step')} of {deepspeed.get('max_steps')}, "
            f"{_rate(deepspeed.get('steps_per_s'), 2)} steps/s, {deepspeed.get('wall_s', 0):.0f} s; "
            f"`{deepspeed.get('command')}`",
        ]
    return "\n".join(lines) + "\n"
