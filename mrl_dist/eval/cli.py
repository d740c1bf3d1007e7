"""`launch/evaluate.py`: EER / minDCF per MRL dim of a checkpoint on a trial list, and a DET plot.

    python launch/evaluate.py --checkpoint runs/b2-mrl/best.pt --data shards/val.manifest.json
    python launch/evaluate.py --checkpoint b2-vox2-ft_lm.pt --data shards/val.manifest.json --json

An MRL inference checkpoint (one with ``mrl_config``) reports a row per dim, plus "native" when
it kept the pretrained embedding layer; an official ReDimNet checkpoint reports "native" only.
The table (Markdown, or JSON with --json) goes to stdout; progress and where the DET plot went,
to stderr.

With ``--ensemble-config CONFIG.yaml`` (a distillation config), the no-training baseline
`EnsembleRouter` built from its ``distill.teachers`` is scored on the same trials and reported
beside the checkpoint as rows ``ensemble@<dim>``: each dim served by its assigned teacher's
prefix-truncated embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from mrl_dist.data.pipeline import make_eval_loader, resolve_source
from mrl_dist.eval.det_plot import plot_det
from mrl_dist.eval.extract import CROP_TOLERANCE, evaluate_model
from mrl_dist.eval.metrics import det_curve, format_table
from mrl_dist.config import load_config
from mrl_dist.models.ensemble import EnsembleRouter
from mrl_dist.models.inference import inference_form
from mrl_dist.precision import AUTOCAST_DTYPES
from mrl_dist.models.loading import CheckpointError, load_pretrained, read_checkpoint
from mrl_dist.models.mrl import ReDimNetMRL



def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="EER / minDCF per MRL dim of a checkpoint on a trial list, and a DET plot.")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="MRL inference checkpoint (RUN/best.pt) or an official ReDimNet .pt")
    parser.add_argument("--data", required=True,
                        help="evaluation shards: NAME.manifest.json, or a shard list / brace pattern")
    parser.add_argument("--trials", type=Path, help="VoxCeleb-format trial list (default: the manifest's)")
    parser.add_argument("--dims", type=int, nargs="+", help="dims to report (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.add_argument("--det", type=Path, help="DET plot PNG (default: <checkpoint stem>.det.png beside it)")
    parser.add_argument("--no-det", action="store_true", help="do not draw the DET plot")
    parser.add_argument("--max-seconds", type=float, help="use only the first N seconds of each utterance")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default 16)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader worker processes (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none",
                        help="run the network under autocast in this dtype (default none)")
    parser.add_argument("--ensemble-config", type=Path,
                        help="a distill config: also score its teachers as an EnsembleRouter baseline")
    parser.add_argument("--crop-tolerance", type=float, default=CROP_TOLERANCE,
                        help="share of its samples an utterance may lose to share a batch pass "
                             f"(default {CROP_TOLERANCE}; 0 = whole utterances)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")
    if not 0 <= args.crop_tolerance < 1:
        parser.error("--crop-tolerance must be in [0, 1)")
    return args


def load_eval_model(checkpoint: Path) -> tuple[Any, str]:
    """The model of a checkpoint file, in eval mode, and a one-line description of it.

    ``mrl_config`` in the file -> ReDimNetMRL; otherwise it must be an official ReDimNet file.
    """
    # Read once to tell the formats apart; the loaders re-read it (cheap next to evaluation).
    payload = read_checkpoint(checkpoint)
    if "mrl_config" in payload:
        model = ReDimNetMRL.from_checkpoint(checkpoint)
        native = ", native" if model.native is not None else ""
        return model, f"ReDimNetMRL (dims {model.dims}{native})"
    return load_pretrained(checkpoint), "ReDimNet (official checkpoint, native embedding only)"


def resolve_trials(data: str, trials: Path | None) -> Path:
    """`--trials`, else the trial list the manifest of `--data` names."""
    if trials is not None:
        return trials
    found = resolve_source(data).trials_path
    if found is None:
        raise ValueError(f"--data {data}: no trial list recorded (not a manifest, or packed without --trials); "
                         "pass --trials FILE")
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


def merge_reports(report: dict, other: dict, prefix: str) -> dict:
    """`report` plus `other`'s rows renamed `prefix + name` (same trials, same structure)."""
    merged = dict(report)
    for metric in ("eer", "threshold"):
        merged[metric] = {**report[metric], **{prefix + k: v for k, v in other[metric].items()}}
    merged["min_dcf"] = {p: {**report["min_dcf"][p], **{prefix + k: v for k, v in other["min_dcf"][p].items()}}
                         for p in report["min_dcf"]}
    return merged


def write_det_plot(scores: dict, labels, path: Path, title: str) -> Path | None:
    """One DET curve per name; None (and a note on stderr) when matplotlib is missing."""
    curves = {name: det_curve(values, labels)[:2] for name, values in scores.items()}
    try:
        return plot_det(curves, path, title=title)
    except ImportError as error:
        print(f"evaluate: {error}; skipped the DET plot (the table is complete)", file=sys.stderr)
        return None


def run_evaluation(args: argparse.Namespace) -> dict:
    """Load, evaluate and plot as `args` say; returns the report plus where things came from."""
    model, description = load_eval_model(args.checkpoint)
    check_dims(model, args.dims)
    trials = resolve_trials(args.data, args.trials)
    model = inference_form(model).to(args.device)  # read-only: the faster, equal inference form
    batches = make_eval_loader(args.data, trials, max_seconds=args.max_seconds,
                               batch_size=args.batch_size, num_workers=args.num_workers)
    report, scores, labels = evaluate_model(
        model, batches, trials, args.dims, device=args.device,
        autocast_dtype=AUTOCAST_DTYPES[args.autocast], crop_tolerance=args.crop_tolerance,
        progress=sys.stderr.isatty())
    if args.ensemble_config is not None:
        ensemble = load_ensemble(args.ensemble_config).to(args.device)
        batches = make_eval_loader(args.data, trials, max_seconds=args.max_seconds,
                                   batch_size=args.batch_size, num_workers=args.num_workers)
        ensemble_report, ensemble_scores, _ = evaluate_model(
            ensemble, batches, trials, device=args.device, autocast_dtype=AUTOCAST_DTYPES[args.autocast],
            crop_tolerance=args.crop_tolerance)
        report = merge_reports(report, ensemble_report, prefix="ensemble@")
        scores.update({f"ensemble@{name}": values for name, values in ensemble_scores.items()})
    det_path = None
    if not args.no_det:
        target = args.det or args.checkpoint.with_name(f"{args.checkpoint.stem}.det.png")
        det_path = write_det_plot(scores, labels, target, f"{args.checkpoint.name} on {trials.name}")
    return {**report, "checkpoint": str(args.checkpoint), "model": description, "trials": str(trials),
            "det_plot": str(det_path) if det_path else None}


def evaluate_main(argv: list[str] | None = None) -> int:
    """`launch/evaluate.py`: the report on stdout, the DET plot's path on stderr; 2 on a bad input."""
    args = parse_args(argv)
    try:
        result = run_evaluation(args)
    except (CheckpointError, OSError, ValueError, LookupError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['checkpoint']}: {result['model']}\n{result['trials']}: {result['num_trials']} trials, "
              f"{result['num_targets']} targets\n")
        print(format_table(result))
    if result["det_plot"]:
        print(f"evaluate: DET curves written to {result['det_plot']}", file=sys.stderr)
    return 0
