"""Command lines of `launch/export.py` and `launch/bench_export.py`.

    python launch/export.py --checkpoint RUN/best.pt --dim 128 --format onnx --output model-128.onnx
    python launch/export.py --checkpoint b2-vox2-ft_lm.pt --format torchscript --output b2.ts.pt
    python launch/export.py --checkpoint RUN/best.pt --dim 128 --int8 dynamic static --int8-calibration dev.manifest.json
    python launch/bench_export.py --models b2-mrl redimnet2-b3 --repeats 20 --threads 2

Arguments and printing live here; what is built, written and timed lives in model.py,
convert.py and bench.py, imported when a command runs so that `--help` needs neither onnx nor
onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..cli_errors import InputError, add_error_options, command, program_name
from ..preflight import raise_problems, readable_file_problem, shard_source_problems, writable_output_problem
from ..tools.machine import bench_header
from .quantize import INT8_MODES

TOLERANCE = 1e-4  # |file - PyTorch| above this fails the export check
INT8_MIN_COSINE = 0.99  # an int8 file further than this from the fp32 one gets a warning line
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
    parser.add_argument(
        "--int8",
        nargs="+",
        choices=INT8_MODES,
        help="also write int8 copies of the ONNX file beside it (<output stem>.int8-<mode>.onnx): dynamic "
        "(no data needed) and/or static (activation ranges from --int8-calibration); the log says which "
        "operators stayed fp32 and why",
    )
    parser.add_argument(
        "--int8-calibration",
        help="static int8: held-out speech (never the evaluation speakers): shards (NAME.manifest.json) or a folder of audio",
    )
    parser.add_argument(
        "--int8-calibration-count", type=int, default=64, help="utterances for static calibration (default 64)"
    )
    parser.add_argument(
        "--int8-calibration-seconds", type=float, default=4.0, help="first N seconds of each (default 4)"
    )
    add_error_options(parser)
    args = parser.parse_args(argv)
    if args.dim is not None and args.dim < 1:
        parser.error(f"--dim {args.dim}: must be >= 1")
    check_int8_args(parser, args)
    return args


def check_int8_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--int8 needs ONNX; static needs --int8-calibration, which means nothing without it."""
    modes = args.int8 or []
    if modes and getattr(args, "format", "onnx") != "onnx":
        parser.error(f"--int8 quantises ONNX files; --format is {args.format}: use --format onnx")
    if "static" in modes and not args.int8_calibration:
        parser.error("--int8 static needs --int8-calibration: shards or a folder of held-out speech")
    if args.int8_calibration and "static" not in modes:
        parser.error("--int8-calibration is used by --int8 static only; add static to --int8")
    if args.int8_calibration_count < 1 or args.int8_calibration_seconds <= 0:
        parser.error("--int8-calibration-count must be >= 1 and --int8-calibration-seconds > 0")


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
    problems = [readable_file_problem(args.checkpoint, "--checkpoint"), output_problem]
    if args.int8_calibration and not Path(args.int8_calibration).is_dir():  # a folder is searched later
        problems += shard_source_problems(args.int8_calibration, "--int8-calibration")
    raise_problems(problems)
    calibration = read_calibration(args)  # before the export: a folder without audio fails in seconds
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
        write_int8(args, path, calibration)
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
    write_int8(args, path, calibration)
    return 0 if difference <= TOLERANCE else 1


def read_calibration(args: argparse.Namespace) -> list | None:
    """The waves `--int8 static` calibrates on ([T] float32 each), None without static."""
    if "static" not in (args.int8 or []):
        return None
    from .speech import calibration_waves

    try:
        return calibration_waves(args.int8_calibration, args.int8_calibration_count, args.int8_calibration_seconds)
    except (OSError, ValueError, RuntimeError) as err:  # no audio in the folder, unreadable shards
        raise InputError(str(err)) from err


def write_int8(args: argparse.Namespace, fp32_path: Path, calibration: list | None) -> None:
    """The int8 copies --int8 asks for, each with its report and its agreement with the fp32 file."""
    if not args.int8:
        return
    from .convert import VERIFY_BATCH_SIZES, VERIFY_SAMPLES, example_wave
    from .quantize import compare_files, quantise_onnx

    waves = [example_wave((b, t), seed=5).numpy() for b in VERIFY_BATCH_SIZES for t in VERIFY_SAMPLES]
    for mode in args.int8:
        report = quantise_onnx(fp32_path, mode=mode, calibration=calibration)
        print("\n".join(report.lines()))
        cosine = compare_files(fp32_path, report.path, waves + list(calibration or [])[:8])
        print(
            f"  wrote {report.path} ({report.path.stat().st_size / 1e6:.2f} MB); min cosine to the fp32 file {cosine:.5f}"
        )
        if cosine < INT8_MIN_COSINE:
            print(f"  (below {INT8_MIN_COSINE}: measure its EER with launch/bench_int8.py before shipping it)")


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


# --- bench_int8 -------------------------------------------------------------------------------


def parse_bench_int8_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("bench_int8.py"),
        description="int8 ONNX against fp32, per dim: EER and minDCF on the same trials, CPU latency side by side.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="an MRL checkpoint or an official .pt file")
    parser.add_argument("--data", required=True, help="evaluation shards with a trial list (NAME.manifest.json)")
    parser.add_argument("--trials", type=Path, help="VoxCeleb-format trial list (default: the manifest's)")
    parser.add_argument(
        "--dims", type=int, nargs="+", help="dims (default: the checkpoint's MRL dims, or its embed_dim)"
    )
    parser.add_argument("--int8", nargs="+", choices=INT8_MODES, default=["dynamic"], help="modes (default dynamic)")
    parser.add_argument("--int8-calibration", help="static: held-out speech, shards or a folder of audio")
    parser.add_argument("--int8-calibration-count", type=int, default=64, help="utterances (default 64)")
    parser.add_argument("--int8-calibration-seconds", type=float, default=4.0, help="seconds of each (default 4)")
    parser.add_argument("--max-seconds", type=float, help="first N seconds of each trial utterance (default: all)")
    parser.add_argument("--seconds", type=float, default=4.0, help="latency: wave length (default 4)")
    parser.add_argument("--repeats", type=int, default=20, help="latency: timed calls of each file (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="latency: untimed calls of each file first (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--onnx-exporter", default="dynamo", choices=("dynamo", "legacy"), help="as launch/export.py's")
    parser.add_argument("--keep", type=Path, help="write the ONNX files here (default: a temporary folder)")
    add_error_options(parser)
    args = parser.parse_args(argv)
    check_int8_args(parser, args)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    return args


@command("bench_int8.py")
def bench_int8_main(argv: list[str]) -> int:
    """`launch/bench_int8.py`: a Markdown table, one row per (dim, int8 mode), what stayed fp32
    (stderr), and a machine line."""
    args = parse_bench_int8_args(argv)
    problems = [readable_file_problem(args.checkpoint, "--checkpoint")]
    problems += shard_source_problems(args.data, "--data", trials_needed=args.trials is None)
    if args.trials is not None:
        problems.append(readable_file_problem(args.trials, "--trials"))
    if args.int8_calibration and not Path(args.int8_calibration).is_dir():
        problems += shard_source_problems(args.int8_calibration, "--int8-calibration")
    if args.keep is not None:
        problems.append(writable_output_problem(args.keep, "--keep", folder=True))
    raise_problems(problems)
    try:
        import onnxruntime

        from ..data.pipeline import resolve_source
        from .bench_int8 import TABLE_HEADER, compare_int8, table_rows
        from .model import ExportError, check_dim, export_dims, load_for_export
        from .speech import trial_waves
    except ImportError as err:
        raise InputError(f"{err}; needs {INSTALL_HINT}") from err
    try:
        model, description = load_for_export(args.checkpoint)
        dims = [check_dim(model, dim) for dim in args.dims] if args.dims else export_dims(model)
    except (ExportError, ValueError) as err:
        raise InputError(f"--checkpoint {args.checkpoint}: {err}") from err
    trials = args.trials or resolve_source(args.data).trials_path
    if trials is None:  # shard_source_problems(trials_needed=True) reports this first
        raise InputError(f"--data {args.data}: no trial list recorded; pass --trials FILE")
    calibration = read_calibration(args)
    try:
        waves = trial_waves(args.data, trials, args.max_seconds)
    except (OSError, ValueError, RuntimeError) as err:  # a trial utterance missing from the shards, ...
        raise InputError(str(err)) from err
    seconds = sum(len(wave) for wave in waves.values()) / 16000
    print(f"{args.checkpoint}: {description}; {len(waves)} utterances ({seconds / 3600:.2f} h) of {trials}")
    print(TABLE_HEADER)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for dim in dims:
            comparison = compare_int8(
                model,
                dim,
                folder,
                waves,
                trials,
                args.int8,
                calibration,
                threads=args.threads,
                seconds=args.seconds,
                repeats=args.repeats,
                warmup=args.warmup,
                exporter=args.onnx_exporter,
                name=args.checkpoint.stem,
            )
            for report in comparison.quantisation.values():
                print("\n".join(report.lines()), file=sys.stderr)
            print("\n".join(table_rows(comparison)), flush=True)
    first = next(iter(comparison.reports.values()))
    print(
        f"trials: {first['num_trials']} ({first['num_targets']} target); latency: median of {args.repeats} calls "
        f"after {args.warmup} warm-up, batch 1 x {args.seconds:g} s, {args.threads} onnxruntime threads"
    )
    print(bench_header(f"onnxruntime {onnxruntime.__version__}"))
    return 0
