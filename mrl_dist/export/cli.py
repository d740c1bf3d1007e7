"""Command lines of `launch/export.py` and `launch/bench_export.py`.

    python launch/export.py --checkpoint RUN/best.pt --dim 128 --format onnx --output model-128.onnx
    python launch/export.py --checkpoint b2-vox2-ft_lm.pt --format torchscript --output b2.ts.pt
    python launch/bench_export.py --models b2-mrl redimnet2-b3 --repeats 20 --threads 2

Arguments and printing live here; what is built, written and timed lives in model.py,
convert.py and bench.py, imported when a command runs so that `--help` needs neither onnx nor
onnxruntime.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..cli_errors import InputError, add_error_options, command, program_name
from ..preflight import raise_problems, readable_file_problem, writable_output_problem
from ..tools.machine import bench_header

TOLERANCE = 1e-4  # |file - PyTorch| above this fails the export check
INSTALL_HINT = 'pip install -e ".[export]"  (onnx, onnxruntime, onnxscript)'


# --- export -----------------------------------------------------------------------------------


def parse_export_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("export.py"),
        description="A checkpoint as one self-contained ONNX or TorchScript file: wave [B, T] float32 16 kHz "
        "(dynamic B and T) in, the L2-normalised dim-D embedding out, front-end inside.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="an MRL checkpoint (RUN/best.pt) or an official ReDimNet / ReDimNet2 .pt file",
    )
    parser.add_argument(
        "--dim",
        type=int,
        help="embedding size: one of an MRL checkpoint's dims; for an official (plain) file any "
        "value up to its embed_dim, which keeps the native embedding's first dim values "
        "(not trained to stand alone). Default: the largest MRL dim, or embed_dim",
    )
    parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    parser.add_argument(
        "--output",
        type=Path,
        help="file to write (default: <checkpoint stem>-<dim>.onnx or .ts.pt beside the checkpoint)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 for dynamo)")
    parser.add_argument(
        "--onnx-exporter",
        default="dynamo",
        choices=("dynamo", "legacy"),
        help="torch.onnx.export path: dynamo (torch.export + onnxscript, default) or legacy "
        "(the deprecated TorchScript-based one, dynamo=False)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip running the file (onnxruntime / torch.jit.load) against PyTorch"
    )
    add_error_options(parser)
    args = parser.parse_args(argv)
    if args.dim is not None and args.dim < 1:
        parser.error(f"--dim {args.dim}: must be >= 1")
    return args


def default_output(checkpoint: Path, dim: int, fmt: str) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}-{dim}.{'onnx' if fmt == 'onnx' else 'ts.pt'}")


@command("export.py")
def export_main(argv: list[str]) -> int:
    """`launch/export.py`: write the file, print its size and the verification; 0 when it
    matches PyTorch within 1e-4, 1 when it does not, 2 (one line on stderr) for a bad checkpoint,
    option or setup, the paths checked before the model is built."""
    args = parse_export_args(argv)
    output_problem = (
        writable_output_problem(args.output, "--output")
        if args.output is not None
        else writable_output_problem(args.checkpoint.parent, "--output (default: beside --checkpoint)", folder=True)
    )
    raise_problems([readable_file_problem(args.checkpoint, "--checkpoint"), output_problem])
    import torch

    from .convert import VERIFY_BATCH_SIZES, VERIFY_SAMPLES, example_wave, export_model, verify_export
    from .model import build_export, reference_embedding

    try:  # ExportError (a dim the checkpoint cannot give, ...) is reported by `command`
        module, model, description = build_export(args.checkpoint, args.dim)
        output = args.output or default_output(args.checkpoint, module.dim, args.format)
        print(f"{args.checkpoint}: {description}; exporting dim {module.dim} as {args.format}")
        path = export_model(module, output, args.format, opset=args.opset, exporter=args.onnx_exporter)
    except ImportError as err:
        raise InputError(f"{err}; the ONNX export needs {INSTALL_HINT}") from err
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.no_verify:
        return 0
    try:
        difference = verify_export(path, args.format, module)
    except ImportError as err:
        raise InputError(f"{err}; verifying needs {INSTALL_HINT}, or pass --no-verify") from err
    runtime = "onnxruntime (CPU)" if args.format == "onnx" else "torch.jit.load"
    shapes = f"batch {'/'.join(map(str, VERIFY_BATCH_SIZES))} x {'/'.join(map(str, VERIFY_SAMPLES))} samples"
    print(
        f"verify: max |{runtime} - PyTorch| = {difference:.2e} over {shapes} "
        f"({'OK' if difference <= TOLERANCE else 'FAILED'}, tolerance {TOLERANCE:g})"
    )
    # The file equals the export module; this says how far the module is from the training code.
    wave = example_wave((2, VERIFY_SAMPLES[-1]), seed=3)
    with torch.no_grad():
        training = float((module(wave) - reference_embedding(model, wave, module.dim)).abs().max())
    print(f"vs the training code: max |export module - eval model| = {training:.2e} (PyTorch, same waves)")
    return 0 if difference <= TOLERANCE else 1


# --- bench_export -----------------------------------------------------------------------------


def parse_bench_export_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from .bench import BENCH_MODELS

    parser = argparse.ArgumentParser(
        prog=program_name("bench_export.py"),
        description="Export size and CPU latency: onnxruntime vs TorchScript vs the PyTorch eval model, per dim.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(BENCH_MODELS),
        choices=list(BENCH_MODELS),
        help="; ".join(f"{k}: {v}" for k, v in BENCH_MODELS.items()),
    )
    parser.add_argument("--dims", type=int, nargs="+", help="dims to export (default: every dim of each model)")
    parser.add_argument("--seconds", type=float, default=4.0, help="utterance length")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of each runtime")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each runtime first")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--keep", type=Path, help="write checkpoints and exports here (default: a temporary folder)")
    add_error_options(parser)
    return parser.parse_args(argv)


@command("bench_export.py")
def bench_export_main(argv: list[str]) -> int:
    """`launch/bench_export.py`: a Markdown table, one row per (model, dim), and a machine line."""
    args = parse_bench_export_args(argv)
    if args.keep is not None:
        raise_problems([writable_output_problem(args.keep, "--keep", folder=True)])
    try:
        from .bench import DEFAULT_DIMS, measure_export, write_bench_checkpoint
    except ImportError as err:
        raise InputError(f"{err}; needs {INSTALL_HINT}") from err
    print(
        "| model | dim | ONNX MB | TorchScript MB | ONNX export s | max abs ORT - PyTorch | onnxruntime ms "
        "(best / median) | TorchScript ms (best / median) | PyTorch eval ms (best / median) | ORT speed-up (best) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            checkpoint = write_bench_checkpoint(name, folder)
            for dim in args.dims or DEFAULT_DIMS[name]:
                t = measure_export(
                    checkpoint,
                    dim,
                    folder,
                    name=name,
                    seconds=args.seconds,
                    batch_size=args.batch_size,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    threads=args.threads,
                )
                best, median = t.best, t.median
                cells = " | ".join(
                    f"{best[r]:.1f} / {median[r]:.1f}" for r in ("onnxruntime", "torchscript", "pytorch")
                )
                print(
                    f"| {name} | {dim} | {t.sizes_mb['onnx']:.1f} | {t.sizes_mb['torchscript']:.1f} | "
                    f"{t.export_s['onnx']:.0f} | {t.difference:.1e} | {cells} | "
                    f"{best['pytorch'] / best['onnxruntime']:.2f}x |",
                    flush=True,
                )
    import onnxruntime

    print(bench_header(f"onnxruntime {onnxruntime.__version__}"))
    return 0
