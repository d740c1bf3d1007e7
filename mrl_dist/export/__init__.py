"""Export: a checkpoint as one self-contained ONNX or TorchScript file, wave in, embedding out.

* `frontend` - `ExportableMelFrontend`: MelFrontend without torch.stft or reflect padding
* `model`    - `EmbeddingExport` (wave [B, T] -> L2-normalised [B, dim]) and checkpoint loading
* `convert`  - ONNX / TorchScript writers and `verify_export` (the file's runtime vs PyTorch)
* `bench`    - export size and CPU latency, onnxruntime vs PyTorch; `cli` - launch/export.py

Public names are imported on first use (the convention of every package: mrl_dist/_lazy.py),
so `--help` never imports onnx.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "ExportableMelFrontend": "frontend",
    "reflect_pad": "frontend",
    "with_exportable_frontend": "frontend",
    "EmbeddingExport": "model",
    "ExportError": "model",
    "build_export": "model",
    "load_for_export": "model",
    "export_model": "convert",
    "export_onnx": "convert",
    "export_torchscript": "convert",
    "load_runner": "convert",
    "verify_export": "convert",
    "measure_export": "bench",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
