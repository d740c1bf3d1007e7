"""`launch/evaluate.py`: EER / minDCF per MRL dim of checkpoints on a trial list, and a DET plot.

    python launch/evaluate.py --checkpoint runs/b2-mrl/best.pt --data shards/val.manifest.json
    python launch/evaluate.py --checkpoint b2-vox2-ft_lm.pt --data shards/val.manifest.json --json
    python launch/evaluate.py --checkpoint runs/a --checkpoint runs/b --data shards/val.manifest.json \
        --asnorm-cohort shards/train.manifest.json

Several `--checkpoint`s (files, or run folders meaning RUN/best.pt) are scored on identical trials:
one table with a column per checkpoint and a row per dim, a DET plot (a panel per checkpoint;
the smallest, middle and largest dim and native unless `--det-all-dims`) and EER / minDCF against
the dim (`<stem>.dims.png`, eval/plots.py). `--asnorm-cohort TRAIN_MANIFEST` adds AS-norm rows (`asnorm@<dim>`) beside the
raw ones: a cohort of one mean embedding per training speaker, the top `--asnorm-top` (300)
cohort scores of each side (eval/score_norm.py).

An MRL inference checkpoint (one with ``mrl_config``) reports a row per dim, plus "native" when
it kept the pretrained embedding layer; an official ReDimNet checkpoint reports "native" only.
The table (Markdown, or JSON with --json) goes to stdout; progress and where the DET plot went,
to stderr.

A checkpoint calibrated by `launch/calibrate.py` also reports, per calibrated dim, Cllr (raw
score and calibrated LLR), minCllr, the actual DCF at the Bayes threshold of each prior, and the
FAR / FRR measured at each stored threshold (eval/calibration.py: `calibrated_metrics`); trials
of a speaker the calibration was fitted on are refused.

With ``--ensemble-config CONFIG.yaml`` (a distillation config), the no-training baseline
`EnsembleRouter` built from its ``distill.teachers`` is scored on the same trials and reported
beside the checkpoint as rows ``ensemble@<dim>``: each dim served by its assigned teacher's
prefix-truncated embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrl_dist.cli_errors import InputError, add_error_options, command, program_name
from mrl_dist.config import ConfigError, load_config
from mrl_dist.data.manifest import ManifestError
from mrl_dist.data.pipeline import make_eval_loader, resolve_source
from mrl_dist.data.remote import local_shard_path
from mrl_dist.data.trials import read_trials
from mrl_dist.eval.calibration import (
    CALIBRATION_KEY,
    calibrated_metrics,
    calibration_table,
    check_calibration,
    extraction_note,
    overlap_problem,
)
from mrl_dist.eval.extract import CROP_TOLERANCE, evaluate_embeddings, evaluate_model, extract_embeddings
from mrl_dist.eval.metrics import format_table, verification_report
from mrl_dist.eval.score_norm import normalise_all
from mrl_dist.eval.windows import check_window_options, embed_files_in_windows
from mrl_dist.models.checkpoints import load_any_checkpoint, model_from_payload
from mrl_dist.models.ensemble import EnsembleRouter
from mrl_dist.models.inference import inference_form
from mrl_dist.models.loading import read_checkpoint
from mrl_dist.precision import AUTOCAST_DTYPES
from mrl_dist.preflight import (
    checkpoint_problem,
    raise_problems,
    readable_file_problem,
    shard_source_problems,
    writable_output_problem,
)


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """How trial utterances are embedded, the same for evaluate and calibrate (a calibration
    holds only for scores extracted the way it was fitted)."""
    parser.add_argument("--max-seconds", type=float, help="use only the first N seconds of each utterance")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default 16)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader worker processes (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--crop-tolerance",
        type=float,
        default=CROP_TOLERANCE,
        help="share of its samples an utterance may lose to share a batch pass "
        f"(default {CROP_TOLERANCE}; 0 = whole utterances)",
    )


def check_extraction_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")
    if not 0 <= args.crop_tolerance < 1:
        parser.error("--crop-tolerance must be in [0, 1)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("evaluate.py"),
        description="EER / minDCF per MRL dim of a checkpoint on a trial list, and a DET plot.",
    )
    add_error_options(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        action="append",
        help="MRL inference checkpoint (RUN/best.pt), an official ReDimNet/ReDimNet2 .pt, or a "
        "run folder (its best.pt); repeat to compare several on the same trials",
    )
    parser.add_argument(
        "--data", required=True, help="evaluation shards: NAME.manifest.json, or a shard list / brace pattern"
    )
    parser.add_argument("--trials", type=Path, help="VoxCeleb-format trial list (default: the manifest's)")
    parser.add_argument("--dims", type=int, nargs="+", help="dims to report (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.add_argument("--det", type=Path, help="DET plot PNG (default: <checkpoint stem>.det.png beside it)")
    parser.add_argument("--no-det", action="store_true", help="do not draw the DET plot")
    parser.add_argument("--det-all-dims", action="store_true", help="DET: every dim (default: min, mid, max, native)")
    parser.add_argument("--no-dims-plot", action="store_true", help="do not draw EER/minDCF vs dim (<stem>.dims.png)")
    add_extraction_arguments(parser)
    parser.add_argument(
        "--autocast",
        choices=["none", "bf16", "fp16"],
        default="none",
        help="run the network under autocast in this dtype (default none)",
    )
    parser.add_argument(
        "--ensemble-config", type=Path, help="a distill config: also score its teachers as an EnsembleRouter baseline"
    )
    parser.add_argument(
        "--asnorm-cohort", help="training shards (NAME.manifest.json) whose speakers form the AS-norm cohort"
    )
    parser.add_argument("--asnorm-top", type=int, default=300, help="top cohort scores per side (default 300)")
    parser.add_argument(
        "--asnorm-max-seconds",
        type=float,
        default=4.0,
        help="first N seconds of each cohort utterance (default 4; the cohort's cost)",
    )
    args = parser.parse_args(argv)
    check_extraction_arguments(parser, args)
    if args.asnorm_top < 1:
        parser.error("--asnorm-top must be >= 1")
    args.checkpoint = [path / "best.pt" if path.is_dir() else path for path in args.checkpoint]
    return args


def load_eval_model(checkpoint: Path) -> tuple[Any, str]:
    """The model of a checkpoint file, in eval mode, and a one-line description of it.

    ``mrl_config`` in the file -> ReDimNetMRL; otherwise it must be an official ReDimNet,
    ReDimNet2 or SSRFNet file (`load_any_checkpoint`).
    """
    loaded = load_any_checkpoint(checkpoint)
    return loaded.model, loaded.description


def load_eval_checkpoint(checkpoint: Path) -> tuple[Any, str, dict | None]:
    """As `load_eval_model`, plus the file's calibration (launch/calibrate.py; None when it has
    none). The file is read once."""
    payload = read_checkpoint(checkpoint)
    loaded = model_from_payload(payload, checkpoint)
    calibration = payload.get(CALIBRATION_KEY)
    return (
        loaded.model,
        loaded.description,
        None if calibration is None else check_calibration(calibration, str(checkpoint)),
    )


def resolve_trials(data: str, trials: Path | None) -> Path:
    """`--trials`, else the trial list the manifest of `--data` names."""
    if trials is not None:
        return trials
    found = resolve_source(data).trials_path
    if found is None:
        raise ValueError(
            f"--data {data}: no trial list recorded (not a manifest, or packed without --trials); pass --trials FILE"
        )
    return found


def check_dims(model: Any, dims: Sequence[int] | None) -> None:
    """Refuse dims the model cannot produce before spending time on extraction."""
    if dims is None:
        return
    model_dims = getattr(model, "dims", None)
    if model_dims is None:
        raise ValueError(f"--dims {list(dims)}: this checkpoint has only the native embedding; omit --dims")
    too_big = [d for d in dims if not 0 < d <= max(model_dims)]
    if too_big:
        raise ValueError(f"--dims {too_big}: outside 1..{max(model_dims)}, the MRL head's output size")


def load_ensemble(config_path: Path) -> EnsembleRouter:
    """The EnsembleRouter of a distill config's teachers, in eval mode."""
    teachers = load_config(config_path).distill.teachers
    if not teachers:
        raise ValueError(f"--ensemble-config {config_path}: distill.teachers is empty")
    return EnsembleRouter.from_config(teachers).eval()


def trial_list_problem(path: Path, what: str) -> str | None:
    """`what PATH: ...` unless `path` is a trial list that parses."""
    try:
        read_trials(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{what} {path}: {error}"
    return None


def ensemble_problems(config_path: Path) -> list[str | None]:
    """--ensemble-config: a distill config whose teachers can all be loaded."""
    try:
        teachers = load_config(config_path).distill.teachers
    except (ConfigError, FileNotFoundError) as error:
        return [f"--ensemble-config: {error}"]
    if not teachers:
        return [f"--ensemble-config {config_path}: distill.teachers is empty"]
    return [
        checkpoint_problem(
            teacher.source,
            f"--ensemble-config {config_path}: distill.teachers[{index}].source",
            (teacher.train_type, teacher.dataset),
        )
        for index, teacher in enumerate(teachers)
    ]


def det_target(args: argparse.Namespace) -> Path:
    """Where the DET plot goes: --det, else beside the first checkpoint."""
    first = args.checkpoint[0]
    return args.det or first.with_name(f"{first.stem}.det.png" if len(args.checkpoint) == 1 else "comparison.det.png")


def check_evaluation_inputs(args: argparse.Namespace) -> None:
    """Every input, before the first checkpoint is evaluated: each --checkpoint is a readable
    file, --data's shards and the trial list are there and the list parses, the AS-norm cohort's
    shards and the ensemble's teachers are there, the DET plot can be written. InputError lists
    every problem."""
    problems = [readable_file_problem(path, "--checkpoint") for path in args.checkpoint]
    problems += shard_source_problems(args.data, "--data")
    if args.trials is not None:
        problems.append(readable_file_problem(args.trials, "--trials") or trial_list_problem(args.trials, "--trials"))
    elif local_shard_path(args.data) is not None:  # a remote manifest's list is fetched when evaluating
        try:
            trials = resolve_trials(args.data, None)
        except ManifestError:
            pass  # reported as a --data problem above
        except ValueError as error:
            problems.append(str(error))
        else:
            what = f"--data {args.data}: trial list"
            problems.append(readable_file_problem(trials, what) or trial_list_problem(trials, what))
    if args.asnorm_cohort is not None:
        problems += shard_source_problems(args.asnorm_cohort, "--asnorm-cohort")
    if args.ensemble_config is not None:
        problems += ensemble_problems(args.ensemble_config)
    if not args.no_det:
        unwritable = writable_output_problem(det_target(args), "DET plot")
        problems.append(unwritable and f"{unwritable}; choose another with --det PATH, or --no-det")
    raise_problems(problems)


def merge_reports(report: dict, other: dict, prefix: str) -> dict:
    """`report` plus `other`'s rows renamed `prefix + name` (same trials, same structure)."""
    merged = dict(report)
    for metric in ("eer", "threshold"):
        merged[metric] = {**report[metric], **{prefix + k: v for k, v in other[metric].items()}}
    merged["min_dcf"] = {
        p: {**report["min_dcf"][p], **{prefix + k: v for k, v in other["min_dcf"][p].items()}}
        for p in report["min_dcf"]
    }
    return merged


def evaluate_checkpoint(args: argparse.Namespace, checkpoint: Path, trials: Path) -> tuple[dict, dict, Any]:
    """(result, scores by row name, labels) of one checkpoint: raw rows, then `ensemble@` and
    `asnorm@` rows when asked for."""
    model, description, calibration = load_eval_checkpoint(checkpoint)
    check_dims(model, args.dims)
    if calibration is not None:  # before the slow part: trials of calibration speakers are refused
        overlap = overlap_problem(
            calibration, read_trials(trials), f"--checkpoint {checkpoint}: trials {trials}", args.data
        )
        if overlap:
            raise ValueError(overlap)
        note = extraction_note(calibration, args.max_seconds)
        if note:
            print(f"evaluate: note: {checkpoint}: {note}", file=sys.stderr)
    model = inference_form(model).to(args.device)  # read-only: the faster, equal inference form
    options = dict(
        device=args.device, autocast_dtype=AUTOCAST_DTYPES[args.autocast], crop_tolerance=args.crop_tolerance
    )
    loader = make_eval_loader(
        args.data, trials, max_seconds=args.max_seconds, batch_size=args.batch_size, num_workers=args.num_workers
    )
    embeddings = extract_embeddings(model, loader, progress=sys.stderr.isatty(), **options)
    report, scores, labels = evaluate_embeddings(model, embeddings, trials, args.dims)
    if calibration is not None:  # measured on the raw rows only: the maps were fitted on raw scores
        report.update(calibrated_metrics(scores, labels, calibration))
    if args.asnorm_cohort is not None:
        cohort_loader = make_eval_loader(
            args.asnorm_cohort,
            None,
            max_seconds=args.asnorm_max_seconds,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        cohort = extract_embeddings(model, cohort_loader, progress=sys.stderr.isatty(), **options)
        normed = normalise_all(scores, read_trials(trials), embeddings, cohort, args.asnorm_top)
        report = merge_reports(report, verification_report(normed, labels), prefix="asnorm@")
        scores.update({f"asnorm@{name}": values for name, values in normed.items()})
    if args.ensemble_config is not None:
        ensemble = load_ensemble(args.ensemble_config).to(args.device)
        batches = make_eval_loader(
            args.data, trials, max_seconds=args.max_seconds, batch_size=args.batch_size, num_workers=args.num_workers
        )
        ensemble_report, ensemble_scores, _ = evaluate_model(ensemble, batches, trials, **options)
        report = merge_reports(report, ensemble_report, prefix="ensemble@")
        scores.update({f"ensemble@{name}": values for name, values in ensemble_scores.items()})
    return {**report, "checkpoint": str(checkpoint), "model": description, "trials": str(trials)}, scores, labels


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the run folder for RUN/best.pt, else the file stem (made unique)."""
    names = [
        path.parent.name if path.name in ("best.pt", "last.pt") and path.parent.name else path.stem for path in paths
    ]
    return [name if names.count(name) == 1 else f"{name}#{i + 1}" for i, name in enumerate(names)]


def comparison_table(labels: Sequence[str], results: Sequence[dict]) -> str:
    """Markdown: a row per score name, a column pair (EER %, minDCF 0.01) per checkpoint; '-'
    where a checkpoint has no such row (a plain model has no MRL dims)."""
    names = list(dict.fromkeys(name for result in results for name in result["eer"]))
    p_target = next(iter(results[0]["min_dcf"]))
    header = ["dim"] + [f"{label} {what}" for label in labels for what in ("EER %", f"minDCF {p_target}")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in names:
        cells = [name]
        for result in results:
            eer = result["eer"].get(name)
            cells += ["-", "-"] if eer is None else [f"{100 * eer:.3f}", f"{result['min_dcf'][p_target][name]:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_evaluation(args: argparse.Namespace) -> dict:
    """Evaluate every checkpoint on the same trials and plot; returns the report(s) and paths."""
    trials = resolve_trials(args.data, args.trials)
    labels_by_checkpoint = checkpoint_labels(args.checkpoint)
    results, all_scores, labels = [], {}, None
    for label, checkpoint in zip(labels_by_checkpoint, args.checkpoint):
        result, scores, labels = evaluate_checkpoint(args, checkpoint, trials)
        results.append(result)
        prefix = f"{label}:" if len(args.checkpoint) > 1 else ""
        all_scores.update({prefix + name: values for name, values in scores.items()})
    if labels is None:  # argparse asks for at least one --checkpoint
        raise InputError("no --checkpoint given")
    from mrl_dist.eval.plots import write_evaluation_plots  # the DET plot, and EER / minDCF vs dim beside it

    title = f"{' vs '.join(labels_by_checkpoint)} on {trials.name}"
    det_path = write_evaluation_plots(args, all_scores, labels, results, labels_by_checkpoint, det_target(args), title)
    det = str(det_path) if det_path else None
    if len(results) == 1:
        return {**results[0], "det_plot": det}
    return {
        "checkpoints": [{**r, "label": lbl} for lbl, r in zip(labels_by_checkpoint, results)],
        "trials": str(trials),
        "num_trials": results[0]["num_trials"],
        "num_targets": results[0]["num_targets"],
        "table": comparison_table(labels_by_checkpoint, results),
        "det_plot": det,
    }


@command("evaluate.py")
def evaluate_main(argv: list[str]) -> int:
    """`launch/evaluate.py`: the report on stdout, the DET plot's path on stderr; 2 (one line on
    stderr) on a bad input, every input checked before the first checkpoint is evaluated."""
    args = parse_args(argv)
    check_evaluation_inputs(args)
    try:
        result = run_evaluation(args)
    except (OSError, ValueError, LookupError) as error:  # found while evaluating: --dims, a trial missing
        raise InputError(str(error)) from error
    if args.json:
        print(json.dumps(result, indent=2))
    elif "checkpoints" in result:
        for entry in result["checkpoints"]:
            print(f"{entry['label']}: {entry['checkpoint']}: {entry['model']}")
        print(f"{result['trials']}: {result['num_trials']} trials, {result['num_targets']} targets\n")
        print(result["table"])
    else:
        print(
            f"{result['checkpoint']}: {result['model']}\n{result['trials']}: {result['num_trials']} trials, "
            f"{result['num_targets']} targets\n"
        )
        print(format_table(result))
        if result.get("cllr"):
            print(f"\ncalibrated on {result['calibrated_on']['path']}:\n{calibration_table(result)}")
    if result["det_plot"]:
        print(f"evaluate: DET curves written to {result['det_plot']}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- launch/embed.py


def parse_embed_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("embed.py"), description="Embeddings of audio files: one L2-normalised dim-D vector per file."
    )
    add_error_options(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="MRL checkpoint (RUN/best.pt) or an official-format model file; a run folder: its best.pt",
    )
    parser.add_argument(
        "--dim",
        type=int,
        help="embedding size: an MRL prefix (default: the largest) or, for a "
        "plain model, a prefix of its native embedding",
    )
    parser.add_argument("--input", required=True, nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("--output", required=True, type=Path, help="OUT.npy; keys go to OUT.keys.txt")
    parser.add_argument("--batch-size", type=int, default=16, help="files per batch (default 16)")
    parser.add_argument("--max-seconds", type=float, help="use only the first N seconds of each file")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--window", type=float, help="long recordings: embed windows of this many seconds (eval/windows.py)"
    )
    parser.add_argument("--hop", type=float, help="seconds between window starts (default: half the window)")
    args = parser.parse_args(argv)
    check_window_options(parser, args)
    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / "best.pt"
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


@command("embed.py")
def embed_main(argv: list[str]) -> int:
    """`launch/embed.py`: writes OUT.npy and OUT.keys.txt; 2 (one line on stderr) on a bad input,
    the paths checked before the model is loaded; 1 if every file failed."""
    from mrl_dist.eval.embed import audio_inputs, embed_files, write_embeddings

    args = parse_embed_args(argv)
    raise_problems(
        [readable_file_problem(args.checkpoint, "--checkpoint"), writable_output_problem(args.output, "--output")]
    )
    files = audio_inputs(args.input)  # FileNotFoundError naming a missing input
    try:
        model, description = load_eval_model(args.checkpoint)
        limit = max(getattr(model, "dims", [model.embed_dim]))
        if args.dim is not None and not 0 < args.dim <= limit:
            raise ValueError(f"--dim {args.dim}: outside 1..{limit}, the size of this model's embedding")
    except (OSError, ValueError) as error:
        raise InputError(str(error)) from error
    if args.window is not None:
        return embed_files_in_windows(args, inference_form(model), files, description)
    result = embed_files(
        inference_form(model),
        files,
        args.dim,
        batch_size=args.batch_size,
        device=args.device,
        max_seconds=args.max_seconds,
        progress=not args.no_progress,
    )
    keys_path = write_embeddings(result, args.output)
    print(
        f"embed: {len(result.keys)} embeddings of {result.embeddings.shape[1]} dims ({description}) -> "
        f"{args.output}, keys {keys_path}; {len(result.skipped)} of {len(files)} files skipped",
        file=sys.stderr,
    )
    return 1 if not result.keys else 0
