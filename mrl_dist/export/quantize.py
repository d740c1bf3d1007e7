"""int8 ONNX: an exported fp32 file -> a quantised copy beside it, and which operators stayed fp32.

    model-128.onnx (fp32, from convert.export_onnx)
      -> preprocess: onnxruntime's `quant_pre_process` (symbolic + ONNX shape inference, graph
         optimisation: BatchNorm folded into Conv, ...), the step onnxruntime recommends first
      -> choose: Conv, MatMul and Gemm nodes are quantised, except the EXCLUDED ones below
      -> quantise: "dynamic" (weights int8, activations quantised per call from their own
         range; no data needed) or "static" (activation ranges calibrated on held-out speech,
         QDQ format, per-channel weights)
      -> model-128.int8-dynamic.onnx / model-128.int8-static.onnx, with the fp32 file's metadata
         plus what was quantised (`Int8Report`)

Which Conv / MatMul / Gemm nodes stay fp32, and why (`EXCLUDED`):

* the front-end: every node the log-mel spectrogram's `Log` depends on (the DFT conv, the mel
  filterbank MatMul). The power spectrum spans many decades; one int8 scale per tensor rounds
  its quiet bands to zero, and the log turns that into large errors.
* grouped (depthwise) convolutions: few multiply-adds per weight, so int8 saves little compute
  and adds (de)quantisation around each one; on the CPU measured (docs/benchmarks.md) the
  int8 model was slower with them quantised.
* MatMuls of two activations (attention scores and their weighted sums): there is no weight to
  quantise ahead of time; dynamic quantisation skips them anyway, and a calibrated fixed range
  fits scores whose range changes with every utterance poorly.
* the embedding layer: the Gemm / MatMul nodes after the last Conv (the head over the pooled
  statistics). One small matrix per utterance, so int8 saves nothing there, and its error goes
  straight into the embedding: with it fp32 the static file's embeddings were ~3x closer to
  the fp32 file's (ReDimNet b2, speechocean762 dev).

Every other operator (normalisations, GELU / ReLU, softmax, statistics pooling, reshapes) takes
and gives float32 in both modes. Dynamic mode stores uint8 weights: onnxruntime's ConvInteger
ran several times slower with int8 weights than with uint8 ones on the CPU measured.

onnx and onnxruntime (the `export` extra) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INT8_MODES = ("dynamic", "static")
QUANTISED_OP_TYPES = ("Conv", "MatMul", "Gemm")
EXCLUDED = {
    "front-end": "the log-mel front-end: the power spectrum spans too many decades for one int8 scale",
    "depthwise": "grouped (depthwise) convolution: little compute to save, int8 was slower here",
    "activations": "MatMul of two activations (attention): no weight to quantise, per-utterance ranges",
    "embedding": "the embedding layer after pooling: one small matrix per utterance, its error goes straight out",
}
NOT_QUANTISED_BY_ORT = "left fp32 by onnxruntime's quantiser"
OTHER_OPS_REASON = "no int8 weights in either mode: normalisations, activations, softmax, pooling, reshapes"


@dataclass
class Int8Report:
    """What one quantisation did: written to the log and into the int8 file's metadata."""

    mode: str
    path: Path
    preprocess: str  # which preprocessing steps ran
    quantised: dict[str, int]  # op type -> nodes with int8 weights
    kept_fp32: dict[str, dict[str, int]]  # reason -> {op type: nodes}: Conv / MatMul / Gemm left fp32
    other_fp32: dict[str, int]  # op type -> nodes of the other operators (all fp32)
    calibration_waves: int = 0  # static: utterances the activation ranges come from
    extra: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as log lines, one per fact."""
        quantised = ", ".join(f"{op} {n}" for op, n in sorted(self.quantised.items())) or "none"
        lines = [f"int8 ({self.mode}): {self.path}", f"  preprocessing: {self.preprocess}"]
        if self.mode == "static":
            lines.append(f"  activation ranges calibrated on {self.calibration_waves} utterances")
        lines.append(f"  int8 weights: {quantised}")
        for reason, counts in self.kept_fp32.items():
            nodes = ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))
            lines.append(f"  stayed fp32: {nodes}: {EXCLUDED.get(reason, reason)}")
        others = ", ".join(f"{op} {n}" for op, n in sorted(self.other_fp32.items(), key=lambda kv: -kv[1]))
        lines.append(f"  also fp32 ({OTHER_OPS_REASON}): {others}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "preprocess": self.preprocess,
            "quantised": self.quantised,
            "kept_fp32": {EXCLUDED.get(reason, reason): counts for reason, counts in self.kept_fp32.items()},
            "calibration_waves": self.calibration_waves,
        }


def int8_path(fp32_path: str | Path, mode: str) -> Path:
    """`model-128.onnx` -> `model-128.int8-<mode>.onnx`, beside it."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(f"{fp32_path.stem}.int8-{mode}.onnx")


@contextlib.contextmanager
def _quiet():
    """Keep onnxruntime's quantisation tools' progress prints and warnings off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess(source: Path, output: Path) -> str:
    """onnxruntime's recommended preprocessing of `source` into `output`; returns what ran.

    Symbolic shape inference fails on some graphs the dynamo exporter writes (an Expand whose
    target shape it cannot follow); then the file is preprocessed without it and the report says so."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(source), str(output))
        return "symbolic and ONNX shape inference, onnxruntime graph optimisation"
    except Exception as err:  # noqa: BLE001 - any failure of the optional step: retry without it, say why
        with _quiet():
            quant_pre_process(str(source), str(output), skip_symbolic_shape=True)
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:160]
        return f"ONNX shape inference, onnxruntime graph optimisation (symbolic shape inference failed: {reason})"


def front_end_nodes(model: Any) -> set[str]:
    """Names of the nodes the first `Log` (the log-mel spectrogram) depends on; empty without one."""
    producers = {output: node for node in model.graph.node for output in node.output}
    log = next((node for node in model.graph.node if node.op_type == "Log"), None)
    found: set[str] = set()
    stack = [log] if log is not None else []
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        stack += [producers[name] for name in node.input if name in producers]
    return found


def excluded_nodes(model: Any) -> dict[str, str]:
    """Conv / MatMul / Gemm node name -> the EXCLUDED reason it stays fp32 for."""
    constants = {tensor.name for tensor in model.graph.initializer}
    constants |= {output for node in model.graph.node if node.op_type == "Constant" for output in node.output}
    front = front_end_nodes(model)
    last_conv = max((i for i, node in enumerate(model.graph.node) if node.op_type == "Conv"), default=-1)
    reasons: dict[str, str] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in QUANTISED_OP_TYPES:
            continue
        group = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        if node.name in front:
            reasons[node.name] = "front-end"
        elif node.op_type == "Conv" and group > 1:
            reasons[node.name] = "depthwise"
        elif node.op_type == "MatMul" and not any(name in constants for name in node.input):
            reasons[node.name] = "activations"
        elif index > last_conv:  # nodes are in topological order: after the trunk and pooling
            reasons[node.name] = "embedding"
    return reasons


def _calibration_reader(waves: Sequence[np.ndarray]):
    """An onnxruntime CalibrationDataReader over `waves`, each [T] or [1, T] float32."""
    from onnxruntime.quantization import CalibrationDataReader

    class WaveReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(waves)

        def get_next(self) -> dict[str, np.ndarray] | None:
            wave = next(self.remaining, None)
            return None if wave is None else {"wave": np.asarray(wave, dtype=np.float32).reshape(1, -1)}

    return WaveReader()


def gemm_aliases(model: Any) -> dict[str, str]:
    """Dynamic quantisation first rewrites every Gemm as a MatMul named `<gemm>_MatMul` (plus an
    Add); name of that MatMul -> the Gemm's name, so exclusions and the report follow it."""
    return {f"{node.name}_MatMul": node.name for node in model.graph.node if node.op_type == "Gemm" and node.name}


def _summarise(prepared: Any, quantised_model: Any, reasons: dict[str, str]) -> tuple[dict, dict, dict]:
    """(int8 weights by op type, fp32 Conv/MatMul/Gemm by reason and type, the other operators
    by type), op types as in the `prepared` model that was quantised."""
    before = Counter(node.op_type for node in prepared.graph.node)
    op_types = {node.name: node.op_type for node in prepared.graph.node}
    aliases = gemm_aliases(prepared)
    dequantised = {
        out for node in quantised_model.graph.node if node.op_type == "DequantizeLinear" for out in node.output
    }
    kept: dict[str, Counter] = {}
    for node in quantised_model.graph.node:
        if node.op_type in QUANTISED_OP_TYPES:
            if len(node.input) > 1 and node.input[1] in dequantised:  # QDQ: an int8 weight feeds it
                continue
            name = aliases.get(node.name, node.name)
            reason = reasons.get(name, NOT_QUANTISED_BY_ORT)
            kept.setdefault(reason, Counter())[op_types.get(name, node.op_type)] += 1
    others = {op: n for op, n in before.items() if op not in QUANTISED_OP_TYPES}
    fp32_counts = sum(kept.values(), Counter())
    quantised = {op: before[op] - fp32_counts[op] for op in QUANTISED_OP_TYPES if before[op] - fp32_counts[op] > 0}
    return quantised, {reason: dict(counts) for reason, counts in kept.items()}, others


def quantise_onnx(
    fp32_path: str | Path,
    output: str | Path | None = None,
    mode: str = "dynamic",
    calibration: Sequence[np.ndarray] | None = None,
) -> Int8Report:
    """Write an int8 copy of an exported fp32 ONNX file (see the module docstring).

    Args:
        fp32_path: a file from `export_onnx` (input `wave [B, T]`, output `embedding [B, dim]`).
        output: where to write it (default: `int8_path(fp32_path, mode)`).
        mode: "dynamic" or "static".
        calibration: static only: waves [T] float32 16 kHz of held-out speakers (not the
            evaluation ones); a few dozen utterances of a few seconds suffice.
    Raises:
        ValueError: an unknown mode, or static without calibration waves.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from .convert import METADATA_KEY

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode: unknown value {mode!r}; expected one of {INT8_MODES}")
    if mode == "static" and not calibration:
        raise ValueError("int8 static: no calibration waves; pass held-out speech (--int8-calibration)")
    fp32_path = Path(fp32_path)
    output = Path(output) if output is not None else int8_path(fp32_path, mode)
    output.parent.mkdir(parents=True, exist_ok=True)
    prepared = output.with_name(f"{output.stem}.preprocessed.onnx")
    try:
        steps = preprocess(fp32_path, prepared)
        model = onnx.load(str(prepared))
        reasons = excluded_nodes(model)
        ops, exclude = list(QUANTISED_OP_TYPES), sorted(reasons)
        if mode == "dynamic":
            exclude += sorted(alias for alias, gemm in gemm_aliases(model).items() if gemm in reasons)
        with _quiet():
            if mode == "dynamic":
                quantize_dynamic(
                    str(prepared), str(output), op_types_to_quantize=ops, nodes_to_exclude=exclude,
                    weight_type=QuantType.QUInt8,
                )  # fmt: skip
            else:
                quantize_static(
                    str(prepared), str(output), _calibration_reader(calibration or []),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, nodes_to_exclude=exclude,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    quantised_model = onnx.load(str(output))
    quantised, kept, others = _summarise(model, quantised_model, reasons)
    report = Int8Report(mode, output, steps, quantised, kept, others, len(calibration or []) if mode == "static" else 0)
    _write_metadata(quantised_model, onnx.load(str(fp32_path)), report, METADATA_KEY)
    onnx.save(quantised_model, str(output))
    return report


def _write_metadata(quantised_model: Any, fp32_model: Any, report: Int8Report, key: str) -> None:
    """The fp32 file's `key` entry (family, dim, input, output) plus `int8`: what was quantised."""
    original = next((entry.value for entry in fp32_model.metadata_props if entry.key == key), "{}")
    description = {**json.loads(original), "int8": report.to_json()}
    for entry in list(quantised_model.metadata_props):
        if entry.key == key:
            quantised_model.metadata_props.remove(entry)
    entry = quantised_model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(description)


def compare_files(fp32_path: str | Path, int8_path_: str | Path, waves: Sequence[np.ndarray]) -> float:
    """The smallest cosine similarity between the two files' embeddings of `waves` ([T] or
    [B, T] float32 each), both run by onnxruntime's CPU provider."""
    from .convert import load_runner

    reference, quantised = load_runner(fp32_path, "onnx"), load_runner(int8_path_, "onnx")
    worst = 1.0
    for wave in waves:
        batch = np.asarray(wave, dtype=np.float32).reshape(-1, np.shape(wave)[-1])
        a, b = reference(batch), quantised(batch)
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        worst = min(worst, float(cosine.min()))
    return worst
