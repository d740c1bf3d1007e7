#!/usr/bin/env python
"""Trunk inference speed: plain eval form vs `inference_form` (mrl_dist/models/inference.py).

    python launch/bench_inference.py --preset b2 --batch-size 16 --seconds 4 --repeats 5 --threads 2
    python launch/bench_inference.py --preset tiny --batch-size 1 --mrl

Plain: `model.eval()` under `torch.no_grad()`; inference form: `inference_form(model)` under
`torch.inference_mode()`. Both run `forward` (wave -> embedding) on the same synthetic waves,
random weights with randomised BatchNorm statistics; the two are timed interleaved (plain, form,
plain, form, ...) after --warmup untimed calls each, so load from other jobs hits both alike.
Prints the largest output difference, then a Markdown row (best and median ms/batch of each,
speed-up of the bests) and a machine line (date, CPU, torch, load, command).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mrl_dist.models import PRESETS, ReDimNetMRL, build_preset  # noqa: E402
from mrl_dist.models.inference import inference_context, inference_form  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="b2", choices=PRESETS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each form")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each form first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--mrl", action="store_true", help="ReDimNetMRL (dims 32/64/192) instead of ReDimNet")
    parser.add_argument("--no-channels-last", action="store_true", help="inference_form(channels_last=False)")
    parser.add_argument("--compile", action="store_true", help="inference_form(compile=True)")
    return parser.parse_args(argv)


def randomise_batchnorms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.25 + 1.5 * torch.rand(n, generator=generator))
                module.weight.copy_(1.0 + 0.5 * torch.randn(n, generator=generator))
                module.bias.copy_(0.3 * torch.randn(n, generator=generator))


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    return (f"# {datetime.date.today()} {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load}; {command}")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_preset(args.preset)
    randomise_batchnorms(model)
    if args.mrl:
        model = ReDimNetMRL.from_redimnet(model, dims=[32, 64, 192], head_init="pretrained")
    model.eval()
    start = time.perf_counter()
    fast = inference_form(model, channels_last=not args.no_channels_last, compile=args.compile)
    build_s = time.perf_counter() - start
    wave = torch.randn(args.batch_size, int(args.seconds * 16000))

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model(wave)

    def form() -> torch.Tensor:
        with inference_context():
            return fast(wave)

    for _ in range(args.warmup):
        reference, output = plain(), form()
    if args.warmup == 0:
        reference, output = plain(), form()
    difference = (reference - output).abs().max().item()
    times: dict[str, list[float]] = {"plain": [], "form": []}
    for _ in range(args.repeats):
        for name, run in (("plain", plain), ("form", form)):
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start))
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    kind = "ReDimNetMRL" if args.mrl else "ReDimNet"
    print(f"max |plain - form| = {difference:.2e}; inference_form built in {build_s:.2f} s")
    print("| preset | model | batch | seconds | plain ms/batch (best / median) | "
          "inference form ms/batch (best / median) | speed-up (best) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.preset} | {kind} | {args.batch_size} | {args.seconds:g} | "
          f"{best['plain']:.1f} / {median['plain']:.1f} | {best['form']:.1f} / {median['form']:.1f} | "
          f"**{best['plain'] / best['form']:.2f}x** |")
    print(machine_line())


if __name__ == "__main__":
    main()
