"""Export: a checkpoint as one self-contained ONNX or TorchScript file, wave in, embedding out.

* `frontend` - `ExportableMelFrontend`: MelFrontend without torch.stft or reflect padding
* `model`    - `EmbeddingExport` (wave [B, T] -> L2-normalised [B, dim]) and checkpoint loading
* `convert`  - ONNX / TorchScript writers and `verify_export` (the file's runtime vs PyTorch)
* `bench`    - export size and CPU latency, onnxruntime vs PyTorch; `cli` - launch/export.py
* `quantize` - int8 copies of an ONNX file (dynamic / static), what stayed fp32 and why;
  `speech` - calibration and trial speech; `bench_int8` - int8 vs fp32 EER and latency
* `hub`      - what hubconf.py's torch.hub entry points do

Exporting needs torch, so the names below are imported with the package; onnx and onnxruntime
(the `export` extra) are imported inside the functions that use them.
"""

from .bench import measure_export
from .convert import export_model, export_onnx, export_torchscript, load_runner, verify_export
from .frontend import ExportableMelFrontend, reflect_pad, with_exportable_frontend
from .model import EmbeddingExport, ExportError, build_export, load_for_export
from .quantize import Int8Report, quantise_onnx

__all__ = [
    "EmbeddingExport",
    "ExportError",
    "ExportableMelFrontend",
    "Int8Report",
    "build_export",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_for_export",
    "load_runner",
    "measure_export",
    "quantise_onnx",
    "reflect_pad",
    "verify_export",
    "with_exportable_frontend",
]
