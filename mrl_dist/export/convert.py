"""Write an `EmbeddingExport` as ONNX or TorchScript, and check a written file against PyTorch.

ONNX goes through `torch.onnx.export(dynamo=True)` (torch.export + onnxscript, the exporter
torch 2.13 maintains) with a dynamic batch and a dynamic time axis, weights inside the one file;
`exporter="legacy"` takes the deprecated TorchScript-based path (`dynamo=False`,
`dynamic_axes`), which also works for these models. TorchScript is `torch.jit.trace`: every size
in these models is read from the input, so the trace is valid for any B and T (checked at
other shapes by `verify_export`, which is what would catch a length frozen into the graph).
The dynamo exporter's per-node debug metadata (fx nodes, stack traces with this machine's file
paths; a fifth of a small model's file) is stripped. Both files carry a small JSON description
(ONNX metadata `mrl_dist`, TorchScript extra file `mrl_dist.json`): family, dim, input, output.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .model import MIN_SAMPLES, EmbeddingExport, describe

FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("dynamo", "legacy")
LEGACY_OPSET = 17  # the legacy exporter's STFT-free graph needs nothing newer
METADATA_KEY = "mrl_dist"
# Verification shapes: two lengths (1.25 s, a multiple of the hop, and an odd 2.27 s) x two
# batch sizes, none of them the traced example's.
VERIFY_SAMPLES = (20_000, 36_321)
VERIFY_BATCH_SIZES = (1, 3)
EXAMPLE_SHAPE = (2, 32_000)  # batch 2, not 1: torch.export specialises sizes 0 and 1


def example_wave(shape: Sequence[int] = EXAMPLE_SHAPE, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporters' progress lines, deprecation notices and 'torchvision is not installed'
    logs off the console; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    module: EmbeddingExport, path: str | os.PathLike, opset: int | None = None, exporter: str = "dynamo"
) -> Path:
    """`module` -> one self-contained `.onnx` file: input `wave [batch, time]`, output
    `embedding [batch, dim]`. `opset` None: the exporter's default (20 for dynamo in torch 2.13)."""
    import onnx  # the `export` extra: pip install -e ".[export]"

    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter: unknown value {exporter!r}; expected one of {ONNX_EXPORTERS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = example_wave()
    input_names, output_names = ["wave"], ["embedding"]
    with torch.no_grad(), _quiet_exporter():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            time = torch.export.Dim("time", min=MIN_SAMPLES, max=16_000 * 3600)
            torch.onnx.export(
                module,
                (wave,),
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                opset_version=opset,
                dynamic_shapes={"wave": {0: batch, 1: time}},
                input_names=input_names,
                output_names=output_names,
            )
        else:
            torch.onnx.export(
                module,
                (wave,),
                str(path),
                dynamo=False,
                opset_version=opset or LEGACY_OPSET,
                dynamic_axes={"wave": {0: "batch", 1: "time"}, "embedding": {0: "batch"}},
                input_names=input_names,
                output_names=output_names,
            )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for node in proto.graph.node:  # dynamo's debug notes: stack traces naming this machine's paths
        del node.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(describe(module))
    onnx.save(proto, str(path))
    return path


def export_torchscript(module: EmbeddingExport, path: str | os.PathLike) -> Path:
    """`module` traced -> a `torch.jit.load`-able file, `forward(wave [B, T]) -> [B, dim]`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet_exporter():
        traced = torch.jit.trace(module, example_wave(), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(describe(module))})
    return path


def export_model(
    module: EmbeddingExport, path: str | os.PathLike, fmt: str, opset: int | None = None, exporter: str = "dynamo"
) -> Path:
    if fmt == "onnx":
        return export_onnx(module, path, opset=opset, exporter=exporter)
    if fmt == "torchscript":
        return export_torchscript(module, path)
    raise ValueError(f"format: unknown value {fmt!r}; expected one of {FORMATS}")


def load_runner(path: str | os.PathLike, fmt: str, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function `wave [B, T] float32 ndarray -> embedding ndarray` running the written file:
    onnxruntime's CPU provider for ONNX, `torch.jit.load` for TorchScript."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda wave: session.run(["embedding"], {"wave": wave})[0]
    if fmt == "torchscript":
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": it still is TorchScript's loader
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run(wave: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return loaded(torch.from_numpy(wave)).numpy()

        return run
    raise ValueError(f"format: unknown value {fmt!r}; expected one of {FORMATS}")


def verify_export(
    path: str | os.PathLike,
    fmt: str,
    module: EmbeddingExport,
    samples: Sequence[int] = VERIFY_SAMPLES,
    batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES,
    seed: int = 1,
) -> float:
    """The largest |file - PyTorch| over every (batch size, length) pair: the written file run
    by its runtime against `module` in PyTorch on the same random waves. Raises when a shape is
    wrong (an export that froze a size)."""
    run = load_runner(path, fmt)
    worst = 0.0
    for index, (batch, length) in enumerate((b, t) for b in batch_sizes for t in samples):
        wave = example_wave((batch, length), seed=seed + index)
        with torch.no_grad():
            expected = module(wave).numpy()
        got = run(wave.numpy())
        if got.shape != expected.shape:
            raise RuntimeError(
                f"{path}: wave {tuple(wave.shape)} gave an embedding of shape {got.shape}, expected {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
