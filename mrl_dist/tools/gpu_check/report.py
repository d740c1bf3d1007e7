"""The report's files: the JSON as it stands and its Markdown rendering for docs/benchmarks.md."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPORT_FORMAT = "mrl-dist-gpu-check/1"
GOAL_PRESET = "b2"  # the GPU goals are set for ReDimNet-b2
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


def _case_name(row: dict[str, Any]) -> str:
    if not row.get("compile_backend"):
        return row["case"]
    return f"{row['case']}, compiled ({row['compile_backend']})"


def _bench_table(cases: Iterable[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | model | batch | crop | precision | crops/s (best) | crops/s (median) | ms/step | first step "
        "| peak alloc | GFLOP/crop | TFLOP/s | MFU | configs |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for row in cases:
        model = row.get("preset", "")
        if row.get("teachers"):
            model = "+".join(row["teachers"]) + " -> " + model
        head = (
            f"| {_case_name(row)} | {model} | {row['batch_size']} | {row['crop_seconds']:g} s "
            f"| {row.get('precision', '-')}"
        )
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(
                f"{head} | {row['status']}: {_cell(note, 120)} | - | - | - | - | - | - | - | "
                f"{', '.join(row.get('configs') or []) or '-'} |"
            )
            continue
        rate = _rate(row["crops_per_s"])
        if row.get("speedup_over_eager"):
            rate += f" ({row['speedup_over_eager']:.2f}x eager)"
        first = "-" if row.get("first_step_s") is None else f"{row['first_step_s']:,.1f} s"
        lines.append(
            f"{head} | {rate} | {_rate(row['crops_per_s_median'])} "
            f"| {row['ms_per_step']:,.0f} | {first} | {_gib(row['peak_allocated_bytes'])} "
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
        f"{' from pinned memory' if section.get('pin_memory') else ''}; per core: crops/s over the "
        "worker processes (the main process decodes when there are none).",
        "",
        "| codec | loader workers | batch | crop | crops/s | crops/s per core | batches timed | warm-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in section.get("rows", []):
        codec = row["codec"]
        if row["status"] != "ok":
            note = row.get("reason") if row["status"] == "skipped" else row.get("error")
            lines.append(
                f"| {codec} | {row['num_workers']} | - | - | {row['status']}: {_cell(note, 120)} | - | - | - |"
            )
            continue
        lines.append(
            f"| {codec} | {row['num_workers']} | {row['batch_size']} | {row['crop_seconds']:g} s "
            f"| {_rate(row['crops_per_s'], 0)} | {_rate(row['crops_per_s_per_core'], 0)} | {row['batches_timed']} "
            f"| {row['warmup_s']:.1f} s |"
        )
    end = section.get("end_to_end")
    if end:
        lines.append("")
        if end.get("status") == "ok":
            lines.append(
                f"End to end: {end['codec']} shards, {end['num_workers']} loader workers, batch {end['batch_size']} "
                f"through the {end['step']} training step: {_rate(end['crops_per_s'], 0)} crops/s "
                f"({end['batches_timed']} batches timed)."
            )
        else:
            note = end.get("reason") if end.get("status") == "skipped" else end.get("error")
            lines.append(f"End to end: {end.get('status')}: {_cell(note, 200)}.")
    return lines


def _goal_lines(sections: dict[str, Any]) -> list[str]:
    """The GPU goals against what was measured on a GPU with b2 (not --quick's tiny model): the
    frozen-trunk step fed from shards, and the unfrozen step's model FLOP utilisation (eager and
    compiled; an MFU exists only for a device of known peak)."""
    lines = []
    end = sections.get("loader", {}).get("end_to_end", {})
    if end.get("status") == "ok" and end.get("preset") == GOAL_PRESET:
        goal = end["goal_crops_per_s"]
        verdict = "met" if end["crops_per_s"] >= goal else "not met"
        lines.append(
            f"- {end['step']} fed from {end['codec']} shards by {end['num_workers']} workers: "
            f"{end['crops_per_s']:,.0f} crops/s against a goal of {goal:,}: {verdict}"
        )
    for row in sections.get("bench", {}).get("cases", []):
        if row.get("case") == "mrl-unfrozen" and row.get("preset") == GOAL_PRESET and row.get("mfu") is not None:
            verdict = "met" if row["mfu"] >= 0.25 else "not met"
            lines.append(
                f"- {_case_name(row)} {row['preset']}, batch {row['batch_size']}: MFU {_mfu(row['mfu'])} "
                f"against a goal of 25 %: {verdict}"
            )
    return ["", "#### GPU goals", "", *lines] if lines else []


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
    if settings.get("device") == "cuda":
        lines += _goal_lines(sections)
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
