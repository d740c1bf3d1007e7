"""Export size and CPU latency: onnxruntime vs TorchScript vs the PyTorch eval model.

Each row goes through what `launch/export.py` does (checkpoint file -> `build_export` ->
`export_model` -> `verify_export`), then times one wave (default 4 s, batch 1) through
onnxruntime's CPU provider, the TorchScript file and the training code's eval model
(`model(wave, dim)` under `torch.no_grad()`, MelFrontend and all), interleaved (ORT, TS, PyTorch,
ORT, ...) after `warmup` untimed calls each, so load from other jobs hits all three alike. The
models carry random weights with randomised BatchNorm statistics: latency and size do not depend
on the values. Used by `launch/bench_export.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models import ReDimNetMRL, build_preset, save_official_checkpoint
from ..tools.bench_inference import TimesByName, randomise_batchnorms
from .convert import example_wave, export_model, load_runner, verify_export
from .model import build_export, reference_embedding

# The benchmark's models: name -> (how its checkpoint file is made, the dims to export).
BENCH_MODELS = {
    "b2-mrl": "ReDimNetMRL on the b2 preset, dims 64/128/192/256 (random head)",
    "redimnet2-b3": "ReDimNet2 B3, official-format file (native 192-D embedding)",
}
DEFAULT_DIMS = {"b2-mrl": (64, 128, 192, 256), "redimnet2-b3": (192,)}
RUNTIMES = ("onnxruntime", "torchscript", "pytorch")


@dataclass
class ExportTiming(TimesByName):
    model: str
    dim: int
    sizes_mb: dict[str, float]  # format -> file size
    export_s: dict[str, float]  # format -> seconds the export took
    difference: float  # max |onnxruntime - PyTorch export module| (verify_export)
    times: dict[str, list[float]] = field(default_factory=dict)  # runtime -> ms per timed call


def write_bench_checkpoint(name: str, folder: Path, seed: int = 0) -> Path:
    """The checkpoint file of a BENCH_MODELS entry, random weights, written into `folder`."""
    torch.manual_seed(seed)
    if name == "b2-mrl":
        model = ReDimNetMRL.from_redimnet(build_preset("b2").eval(), dims=list(DEFAULT_DIMS[name]), head_init="random")
        randomise_batchnorms(model, seed)
        path = folder / "b2-mrl.pt"
        model.save_checkpoint(path)
        return path
    if name == "redimnet2-b3":
        model = build_preset("redimnet2-b3")
        randomise_batchnorms(model, seed)
        return save_official_checkpoint(model.eval(), folder / "redimnet2-b3.pt")
    raise ValueError(f"unknown benchmark model {name!r}; expected one of {sorted(BENCH_MODELS)}")


def time_calls(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """ms per call of each function, interleaved: `warmup` untimed rounds, then `repeats` timed."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return times


def measure_export(
    checkpoint: Path,
    dim: int,
    folder: Path,
    name: str = "",
    seconds: float = 4.0,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 2,
) -> ExportTiming:
    """Export `checkpoint` at `dim` as ONNX and TorchScript into `folder`, verify the ONNX file,
    and time the three runtimes on one `[batch_size, seconds * 16 kHz]` wave."""
    torch.set_num_threads(threads)
    module, model, _ = build_export(checkpoint, dim)
    paths, sizes, export_s = {}, {}, {}
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "ts.pt")):
        start = time.perf_counter()
        paths[fmt] = export_model(module, folder / f"{checkpoint.stem}-{dim}.{suffix}", fmt)
        export_s[fmt] = time.perf_counter() - start
        sizes[fmt] = paths[fmt].stat().st_size / 1e6
    difference = verify_export(paths["onnx"], "onnx", module)
    onnx_run = load_runner(paths["onnx"], "onnx", threads=threads)
    script_run = load_runner(paths["torchscript"], "torchscript")
    wave = example_wave((batch_size, int(seconds * 16000)), seed=2)
    array = np.ascontiguousarray(wave.numpy())
    calls = {
        "onnxruntime": lambda: onnx_run(array),
        "torchscript": lambda: script_run(array),
        "pytorch": lambda: reference_embedding(model, wave, dim),
    }
    timing = ExportTiming(name or checkpoint.stem, dim, sizes, export_s, difference)
    timing.times = time_calls(calls, repeats, warmup)
    return timing
