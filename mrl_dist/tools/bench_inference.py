"""Trunk inference speed: plain eval form vs `inference_form` (mrl_dist/models/inference.py).

Plain: `model.eval()` under `torch.no_grad()`; inference form: `inference_form(model)` under
`torch.inference_mode()`. Both run `forward` (wave -> embedding) on the same synthetic waves,
random weights with randomised BatchNorm statistics; the two are timed interleaved (plain, form,
plain, form, ...) after `warmup` untimed calls each, so load from other jobs hits both alike.
Used by `launch/bench_inference.py`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..models import ReDimNetMRL, build_preset
from ..models.inference import inference_context, inference_form


class TimesByName:
    """Best and median of a timing result's `times` (name -> ms per timed call)."""

    times: dict[str, list[float]]

    @property
    def best(self) -> dict[str, float]:
        return {name: min(values) for name, values in self.times.items()}

    @property
    def median(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.times.items()}


@dataclass
class InferenceTiming(TimesByName):
    """What one comparison measured: ms/batch of each form per timed call, and their agreement."""

    difference: float  # max |plain - form| over the last warm-up outputs
    build_s: float  # time inference_form took to build the fast copy
    times: dict[str, list[float]]  # "plain" / "form" -> ms per timed call


def randomise_batchnorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                if module.running_mean is None or module.running_var is None:
                    raise ValueError(f"BatchNorm {name!r} keeps no running statistics (track_running_stats=False)")
                n = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.25 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(1.0 + 0.5 * torch.randn(n, generator=generator))
                module.bias.copy_(0.3 * torch.randn(n, generator=generator))


def measure_inference(
    preset: str,
    batch_size: int,
    seconds: float,
    repeats: int,
    warmup: int,
    mrl: bool = False,
    channels_last: bool = True,
    compile: bool = False,
) -> InferenceTiming:
    """Time the plain eval model against its inference form on one batch of synthetic waves."""
    torch.manual_seed(0)
    model = build_preset(preset)
    randomise_batchnorms(model)
    if mrl:
        model = ReDimNetMRL.from_redimnet(model, dims=[32, 64, 192], head_init="pretrained")
    model.eval()
    start = time.perf_counter()
    fast = inference_form(model, channels_last=channels_last, compile=compile)
    build_s = time.perf_counter() - start
    wave = torch.randn(batch_size, int(seconds * 16000))

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(wave)

    def form() -> torch.Tensor:
        with inference_context():
            return fast(wave)

    for _ in range(warmup):
        reference, output = plain(), form()
    if warmup == 0:
        reference, output = plain(), form()
    difference = (reference - output).abs().max().item()
    times: dict[str, list[float]] = {"plain": [], "form": []}
    for _ in range(repeats):
        for name, run in (("plain", plain), ("form", form)):
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    return InferenceTiming(difference, build_s, times)
