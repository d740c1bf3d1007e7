"""EER and CPU latency of int8 ONNX files against the fp32 file they come from, per dim.

For each dim, what `launch/export.py --int8 ...` does, then a measurement on real trials:

    checkpoint -> EmbeddingExport(dim) -> export_onnx (fp32) -> quantise_onnx per int8 mode
    every utterance of the trial list -> each file, run by onnxruntime's CPU provider, batch 1,
        the whole utterance (no padding or cropping that could differ between files)
    -> cosine scores -> EER and minDCF of each file on the same trials
    latency: one fixed wave (default 4 s, batch 1) through each file, interleaved (fp32, int8,
        fp32, ...) after `warmup` untimed rounds, `repeats` timed ones, the same thread count

Used by `launch/bench_int8.py`; the numbers in docs/benchmarks.md ("int8 ONNX") come from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..data.trials import read_trials
from ..eval.extract import score_trials
from ..eval.metrics import verification_report
from ..tools.bench_inference import TimesByName
from .bench import time_calls
from .convert import example_wave, export_onnx, load_runner
from .model import EmbeddingExport
from .quantize import Int8Report, quantise_onnx

FP32 = "fp32"


def runtime_name(mode: str) -> str:
    return f"int8-{mode}"


@dataclass
class Int8Comparison(TimesByName):
    """One dim: the fp32 file and its int8 copies on the same trials and the same wave."""

    dim: int
    reports: dict[str, dict]  # FP32 / "int8-<mode>" -> verification_report on the trials
    sizes_mb: dict[str, float]  # same keys -> file size
    min_cosine: dict[str, float]  # "int8-<mode>" -> smallest cosine to the fp32 embedding over the utterances
    quantisation: dict[str, Int8Report]  # mode -> what was quantised
    times: dict[str, list[float]] = field(default_factory=dict)  # same keys -> ms per timed call

    def eer(self, name: str) -> float:
        return float(self.reports[name]["eer"][str(self.dim)])

    def min_dcf(self, name: str, p_target: str = "0.01") -> float:
        return float(self.reports[name]["min_dcf"][p_target][str(self.dim)])


def embed_utterances(path: str | os.PathLike, waves: Mapping[str, np.ndarray], threads: int) -> dict[str, np.ndarray]:
    """key -> the file's `[dim]` embedding of `waves[key]` (`[T]` float32), one call per utterance."""
    run = load_runner(path, "onnx", threads=threads)
    return {key: run(wave[None, :])[0] for key, wave in waves.items()}


def compare_int8(
    model,
    dim: int,
    folder: Path,
    waves: Mapping[str, np.ndarray],
    trials: Path,
    modes: Sequence[str] = ("dynamic",),
    calibration: Sequence[np.ndarray] | None = None,
    *,
    threads: int = 2,
    seconds: float = 4.0,
    repeats: int = 20,
    warmup: int = 3,
    exporter: str = "dynamo",
    name: str = "model",
) -> Int8Comparison:
    """Export `model` (a ReDimNetMRL or plain model in eval mode) at `dim` into `folder`, quantise
    it in each mode, and measure every file on `trials` (utterances `waves`: key -> `[T]`) and on
    one `[1, seconds * 16 kHz]` wave."""
    fp32_path = export_onnx(EmbeddingExport(model, dim), folder / f"{name}-{dim}.onnx", exporter=exporter)
    paths = {FP32: fp32_path}
    quantisation = {}
    for mode in modes:
        quantisation[mode] = quantise_onnx(fp32_path, mode=mode, calibration=calibration)
        paths[runtime_name(mode)] = quantisation[mode].path
    trial_list = read_trials(trials)
    labels = np.array([trial.label for trial in trial_list], dtype=np.int64)
    embeddings = {runtime: embed_utterances(path, waves, threads) for runtime, path in paths.items()}
    reports = {}
    for runtime, vectors in embeddings.items():
        scores = score_trials({key: {str(dim): vector} for key, vector in vectors.items()}, trial_list, [dim])
        reports[runtime] = verification_report(scores, labels)
    min_cosine = {runtime: _min_cosine(embeddings[FP32], embeddings[runtime]) for runtime in paths if runtime != FP32}
    comparison = Int8Comparison(
        dim, reports, {runtime: path.stat().st_size / 1e6 for runtime, path in paths.items()}, min_cosine, quantisation
    )
    wave = np.ascontiguousarray(example_wave((1, int(seconds * 16000)), seed=2).numpy())
    runners = {runtime: load_runner(path, "onnx", threads=threads) for runtime, path in paths.items()}
    comparison.times = time_calls({runtime: partial(run, wave) for runtime, run in runners.items()}, repeats, warmup)
    return comparison


def _min_cosine(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> float:
    keys = sorted(reference)
    a = np.stack([reference[key] for key in keys]).astype(np.float64)
    b = np.stack([other[key] for key in keys]).astype(np.float64)
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosine.min())


def table_rows(comparison: Int8Comparison) -> list[str]:
    """Markdown rows, one per int8 mode: EER and minDCF of both files, the change, latency, size."""
    rows = []
    fp32_eer, fp32_ms = comparison.eer(FP32), comparison.median[FP32]
    for runtime in comparison.min_cosine:
        eer, ms = comparison.eer(runtime), comparison.median[runtime]
        cells = [
            str(comparison.dim),
            runtime,
            f"{100 * fp32_eer:.2f}",
            f"{100 * eer:.2f}",
            f"{100 * (eer - fp32_eer):+.2f}",
            f"{comparison.min_dcf(FP32):.3f}",
            f"{comparison.min_dcf(runtime):.3f}",
            f"{comparison.min_cosine[runtime]:.4f}",
            f"{fp32_ms:.1f}",
            f"{ms:.1f}",
            f"{fp32_ms / ms:.2f}x",
            f"{comparison.sizes_mb[FP32]:.1f}",
            f"{comparison.sizes_mb[runtime]:.1f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


TABLE_HEADER = (
    "| dim | int8 | EER fp32 % | EER int8 % | delta (points) | minDCF0.01 fp32 | minDCF0.01 int8 | min cosine | "
    "latency fp32 ms | latency int8 ms | speed-up | MB fp32 | MB int8 |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)
