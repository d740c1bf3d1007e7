"""`launch/calibrate.py`: fit a checkpoint's per-dim calibration on a calibration trial list and
write the checkpoint again with it.

    python launch/calibrate.py --checkpoint runs/b2-mrl/best.pt --data shards/cal.manifest.json \
        --output runs/b2-mrl/calibrated.pt

The calibration trials must come from speakers the model was not trained on and that the
evaluation will not use (`launch/make_trials.py --holdout-speakers` makes such a set); evaluating
the calibrated file on trials of any of its speakers is refused. The trials are embedded exactly
as `launch/evaluate.py` embeds them (same loader, same extraction, the same options), each dim's
cosine scores get an affine map to LLRs and the score thresholds for the target false-acceptance
rates 0.001, 0.01 and 0.05 (eval/calibration.py), and OUT.pt is IN.pt plus
``{"calibration": {"format", "dims": {"64": {...}, ...}, "far_targets", "trials", "speakers",
"extraction"}}``. OUT.pt loads wherever IN.pt did (ReDimNetMRL.from_checkpoint, load_any_checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from mrl_dist.cli_errors import InputError, add_error_options, command, program_name
from mrl_dist.data.manifest import ManifestError
from mrl_dist.data.pipeline import make_eval_loader
from mrl_dist.data.remote import local_shard_path
from mrl_dist.data.trials import Trial, read_trials
from mrl_dist.eval.calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_KEY,
    FAR_TARGETS,
    MIN_TRIALS_PER_CLASS,
    fit_calibration,
    manifest_speakers,
    rate_key,
    trial_speakers,
)
from mrl_dist.eval.cli import add_extraction_arguments, check_extraction_arguments, resolve_trials, trial_list_problem
from mrl_dist.eval.extract import evaluate_embeddings, extract_embeddings
from mrl_dist.models.checkpoints import model_from_payload
from mrl_dist.models.inference import inference_form
from mrl_dist.models.loading import atomic_save, read_checkpoint
from mrl_dist.preflight import raise_problems, readable_file_problem, shard_source_problems, writable_output_problem


def parse_calibrate_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("calibrate.py"),
        description="Fit score -> LLR calibration and FAR thresholds per dim; write the checkpoint with them.",
    )
    add_error_options(parser)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="MRL checkpoint (RUN/best.pt), an official .pt, or a run folder"
    )
    parser.add_argument(
        "--data", required=True, help="calibration shards: NAME.manifest.json (held-out speakers), or a shard list"
    )
    parser.add_argument("--trials", type=Path, help="VoxCeleb-format calibration trial list (default: the manifest's)")
    parser.add_argument("--output", required=True, type=Path, help="OUT.pt: the checkpoint plus its calibration")
    add_extraction_arguments(parser)  # as launch/evaluate.py embeds its trials
    args = parser.parse_args(argv)
    check_extraction_arguments(parser, args)
    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / "best.pt"
    return args


def class_counts_problem(trials: list[Trial], what: str) -> str | None:
    """`what: ...` when the list has fewer than MIN_TRIALS_PER_CLASS target or non-target trials."""
    targets = sum(trial.label for trial in trials)
    nontargets = len(trials) - targets
    if min(targets, nontargets) >= MIN_TRIALS_PER_CLASS:
        return None
    return (
        f"{what}: {targets} target and {nontargets} non-target trials; calibration needs at least "
        f"{MIN_TRIALS_PER_CLASS} of each (more speakers or utterances: launch/make_trials.py --holdout-speakers N)"
    )


def check_calibrate_inputs(args: argparse.Namespace) -> Path:
    """Every input before the model is loaded; returns the calibration trial list. InputError lists
    every problem: an unreadable checkpoint or shard set, a trial list that is missing, does not
    parse or is too small, an output that cannot be written."""
    problems = [readable_file_problem(args.checkpoint, "--checkpoint")]
    problems += shard_source_problems(args.data, "--data")
    problems.append(writable_output_problem(args.output, "--output"))
    trials: Path | None = None
    what = "--trials"
    try:
        trials = resolve_trials(args.data, args.trials)
    except ManifestError:
        pass  # reported as a --data problem above
    except ValueError as error:
        problems.append(str(error))
    if trials is not None and (args.trials is not None or local_shard_path(args.data) is not None):
        what = f"--trials {trials}" if args.trials is not None else f"--data {args.data}: trial list {trials}"
        problem = readable_file_problem(trials, what) or trial_list_problem(trials, what)
        problems.append(problem or class_counts_problem(read_trials(trials), what))
    raise_problems(problems)
    assert trials is not None  # a list that could not be resolved was reported above
    return trials


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_calibration(args: argparse.Namespace, trials_path: Path) -> dict:
    """Embed and score the calibration trials, fit every dim (and "native"), write OUT.pt; returns
    the calibration stored."""
    trials = read_trials(trials_path)
    problem = class_counts_problem(trials, f"trial list {trials_path}")  # a remote manifest's list arrives here
    if problem:
        raise ValueError(problem)
    payload = read_checkpoint(args.checkpoint)
    loaded = model_from_payload(payload, args.checkpoint)
    model = inference_form(loaded.model).to(args.device)
    loader = make_eval_loader(
        args.data, trials_path, max_seconds=args.max_seconds, batch_size=args.batch_size, num_workers=args.num_workers
    )
    embeddings = extract_embeddings(
        model, loader, device=args.device, crop_tolerance=args.crop_tolerance, progress=sys.stderr.isatty()
    )
    _, scores, labels = evaluate_embeddings(model, embeddings, trials)
    targets = int(labels.sum())
    calibration = {
        "format": CALIBRATION_FORMAT,
        "dims": fit_calibration(scores, labels, FAR_TARGETS),
        "far_targets": list(FAR_TARGETS),
        "trials": {
            "path": str(trials_path),
            "sha256": file_sha256(trials_path),
            "data": str(args.data),
            "num_trials": int(labels.size),
            "num_targets": targets,
            "num_nontargets": int(labels.size) - targets,
        },
        "speakers": sorted(trial_speakers(trials, manifest_speakers(args.data))),
        "extraction": {"max_seconds": args.max_seconds, "crop_tolerance": args.crop_tolerance},
    }
    if CALIBRATION_KEY in payload:
        print(f"calibrate: {args.checkpoint} was calibrated already; its calibration is replaced", file=sys.stderr)
    atomic_save({**payload, CALIBRATION_KEY: calibration}, args.output)
    return calibration


def calibration_summary(calibration: dict) -> str:
    """Markdown: per dim the map, Cllr before and after it, minCllr and the thresholds."""
    rates = [rate_key(rate) for rate in calibration["far_targets"]]
    header = ["dim", "slope", "offset", "Cllr raw", "Cllr", "minCllr", *[f"threshold FAR {r}" for r in rates]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, entry in calibration["dims"].items():
        cells = [name, f"{entry['slope']:.3f}", f"{entry['offset']:.3f}"]
        cells += [f"{entry[key]:.4f}" for key in ("cllr_raw", "cllr", "min_cllr")]
        cells += [f"{entry['thresholds'][rate]:.4f}" for rate in rates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command("calibrate.py")
def calibrate_main(argv: list[str]) -> int:
    """`launch/calibrate.py`: OUT.pt written, the per-dim summary on stdout; 2 (one line on stderr)
    on a bad input, every input checked before the model is loaded."""
    args = parse_calibrate_args(argv)
    trials_path = check_calibrate_inputs(args)
    try:
        calibration = run_calibration(args, trials_path)
    except (OSError, ValueError, LookupError) as error:  # found while embedding: a trial utterance missing
        raise InputError(str(error)) from error
    info = calibration["trials"]
    print(
        f"{args.checkpoint} calibrated on {info['path']}: {info['num_trials']} trials "
        f"({info['num_targets']} targets), {len(calibration['speakers'])} speakers\n"
    )
    print(calibration_summary(calibration))
    for rate in calibration["far_targets"]:
        if rate * info["num_nontargets"] < 10:
            print(
                f"calibrate: note: the FAR {rate_key(rate)} threshold rests on fewer than 10 non-target scores "
                f"above it ({info['num_nontargets']} non-targets); measure it on more trials before relying on it",
                file=sys.stderr,
            )
    inverted = [name for name, entry in calibration["dims"].items() if entry["slope"] <= 0]
    if inverted:
        print(
            f"calibrate: warning: dims {inverted}: the fitted slope is not positive, so on these trials a higher "
            "score does not mean a likelier same speaker; is the checkpoint trained, and are the trials labelled right?",
            file=sys.stderr,
        )
    print(f"calibrate: wrote {args.output}", file=sys.stderr)
    return 0
