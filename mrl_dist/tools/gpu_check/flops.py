"""FLOP counting (torch's FlopCounterMode with the grouped-convolution backward corrected), MFU,
the devices' dense bf16 peaks, and the machine facts the report names."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

# Dense (no sparsity) bf16 tensor-core peaks, matched in order against a lower-cased
# torch.cuda.get_device_name(): the more specific names first ("H100 PCIe" before "H100").
BF16_DENSE_PEAKS: tuple[tuple[str, float | None, str], ...] = (
    ("h100 pcie", 756e12, "H100 PCIe, dense bf16"),
    ("h100 nvl", 835e12, "H100 NVL, dense bf16"),
    ("h200 nvl", 835e12, "H200 NVL, dense bf16"),
    ("h100", 989e12, "H100 SXM, dense bf16"),
    ("h200", 989e12, "H200 SXM, dense bf16"),
    ("a100", 312e12, "A100, dense bf16"),
    ("l40s", 362e12, "L40S, dense bf16"),
    ("rtx 4090", 165e12, "RTX 4090, dense bf16 with fp32 accumulate"),
    ("rtx 3060", 51e12, "RTX 3060, dense bf16 with fp32 accumulate (approximate)"),
    ("rtx 5060 ti", None, "RTX 5060 Ti: peak unknown, pass --peak-tflops"),
)


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **_kwargs,
) -> int:
    """FLOPs of aten.convolution_backward: each requested gradient (input, weight) costs what the
    forward convolution costs. torch's own formula counts the weight gradient of a grouped
    convolution `groups` times over (pytorch/pytorch#183405), and ReDimNet's blocks are grouped
    and depthwise convolutions: without this, b2's backward reads 6x its forward, not 2x."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(run_once: Callable[[], Any]) -> int:
    """Total FLOPs of the matmuls and convolutions `run_once()` executes (forward and backward)."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})
    with counter:
        run_once()
    return int(counter.get_total_flops())


def model_flops_utilisation(
    flops_per_crop: float | None, crops_per_second: float | None, peak_flops: float | None
) -> float | None:
    """Achieved FLOP/s over the device's peak, in [0, 1]-ish; None when any figure is unknown."""
    if not flops_per_crop or not crops_per_second or not peak_flops or peak_flops <= 0:
        return None
    return flops_per_crop * crops_per_second / peak_flops


def device_peak_flops(device_name: str | None, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s or None, where that figure comes from)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if not device_name:
        return None, "no CUDA device: peak unknown"
    lowered = device_name.lower()
    for key, peak, note in BF16_DENSE_PEAKS:
        if key in lowered:
            return peak, note
    return None, f"{device_name}: not in the peak table, pass --peak-tflops"


def _nvidia_smi(query: str) -> str | None:
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def machine_info(device: str) -> dict[str, Any]:
    import accelerate

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": None,
        "gpu_memory_gib": None,
        "compute_capability": None,
        "driver": None,
        "cuda_runtime": torch.version.cuda,
        "cudnn": None,
    }
    if device == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            compute_capability=f"{properties.major}.{properties.minor}",
            driver=_nvidia_smi("driver_version"),
            cudnn=torch.backends.cudnn.version(),
            gpu_count=torch.cuda.device_count(),
        )
    return info
