"""`launch/verify.py`: same speaker or not? The score per dim, the calibrated LLR and a decision.

    python launch/verify.py --checkpoint calibrated.pt --dim 64 A.wav B.wav
    python launch/verify.py --checkpoint calibrated.pt --dim 64 --dim 256 --far 0.01 --pairs pairs.txt --json
    python launch/verify.py --checkpoint calibrated.pt --enrol a1.wav a2.wav --test b.wav c.wav

Pairs: two files, `--pairs FILE` (lines `A B`, or `LABEL A B` as in a VoxCeleb trial list, the label
carried to the output; relative paths are taken under --audio-root, default the current folder),
or an enrolment of several files against each `--test` file. An enrolment's d-dim vector is the
mean of its files' L2-normalised d-dim embeddings, normalised again.

Every file is decoded before any is embedded (a bad one stops the run early; the audio is held in
memory, about 230 MB per hour of it), then embedded whole, exactly as launch/evaluate.py embeds an
utterance (the same extraction, `extract_embeddings`, with `crop_tolerance` 0): `evaluate
--crop-tolerance 0` on the same audio gives the same cosine scores. A checkpoint calibrated by launch/calibrate.py adds the
LLR (nats; > 0 favours the same speaker) and a decision: at the stored score threshold of
`--far RATE` when given, else where the LLR is 0 (the Bayes decision for an even prior).

Output: a Markdown table (a row per pair and dim), or with --json one JSON object per pair and
line: {"enrol": [paths], "test": path, ["label": 0|1,] "score": {"64": cosine}, "llr": {...},
"decision": {"64": "same" | "different"}, "operating_point": "..."}.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl_dist.cli_errors import InputError, add_error_options, command, program_name
from mrl_dist.data.audio import seconds_to_samples
from mrl_dist.eval.calibration import apply_calibration, extraction_note, rate_key
from mrl_dist.eval.cli import load_eval_checkpoint
from mrl_dist.eval.extract import extract_embeddings
from mrl_dist.eval.score_norm import NATIVE, dim_vectors
from mrl_dist.eval.windows import MIN_SECONDS, load_audio
from mrl_dist.models.inference import inference_form
from mrl_dist.preflight import raise_problems, readable_file_problem

HOW_TO_CALIBRATE = (
    "add one with: python launch/calibrate.py --checkpoint {checkpoint} --data CAL.manifest.json "
    "--output CALIBRATED.pt (held-out calibration speakers), then verify with --checkpoint CALIBRATED.pt"
)


@dataclass(frozen=True)
class Pair:
    enrol: tuple[str, ...]  # paths as given
    test: str
    label: int | None = None


def parse_verify_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("verify.py"),
        description="Speaker verification of audio pairs: score per dim, calibrated LLR, decision.",
    )
    add_error_options(parser)
    parser.add_argument("files", nargs="*", metavar="A B", help="two audio files to compare")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (calibrated: launch/calibrate.py)")
    parser.add_argument("--pairs", type=Path, help="a file of pairs: lines 'A B' or 'LABEL A B'")
    parser.add_argument("--audio-root", type=Path, default=Path("."), help="folder of --pairs' relative paths")
    parser.add_argument("--enrol", nargs="+", help="enrolment files (their mean embedding)")
    parser.add_argument("--test", nargs="+", help="files compared with the --enrol enrolment")
    parser.add_argument(
        "--dim", type=int, action="append", help="dim to score; repeat for several (default: every calibrated dim)"
    )
    parser.add_argument("--far", type=float, help="decide at the stored threshold of this false-acceptance rate")
    parser.add_argument("--llr", action="store_true", help="require calibrated LLRs (an error without calibration)")
    parser.add_argument("--json", action="store_true", help="one JSON object per pair and line")
    parser.add_argument("--max-seconds", type=float, help="use only the first N seconds of each file")
    parser.add_argument("--batch-size", type=int, default=16, help="files per batch (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args(argv)
    ways = [bool(args.files), args.pairs is not None, bool(args.enrol or args.test)]
    if sum(ways) != 1:
        parser.error("give the pairs one way: two files A B, --pairs FILE, or --enrol FILES --test FILES")
    if args.files and len(args.files) != 2:
        parser.error(f"expected two files A B, got {len(args.files)}")
    if (args.enrol is None) != (args.test is None):
        parser.error("--enrol and --test go together")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.max_seconds is not None and args.max_seconds < MIN_SECONDS:
        parser.error(f"--max-seconds must be at least {MIN_SECONDS}")
    if args.checkpoint.is_dir():
        args.checkpoint = args.checkpoint / "best.pt"
    return args


def read_pairs(path: Path) -> list[Pair]:
    """`A B` or `LABEL A B` per line; blank lines and `#` comments skipped; ValueError naming the
    file and line of the first malformed one."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) == 3 and fields[0] in ("0", "1"):
            pairs.append(Pair((fields[1],), fields[2], int(fields[0])))
        elif len(fields) == 2:
            pairs.append(Pair((fields[0],), fields[1]))
        else:
            raise ValueError(f"--pairs {path}, line {number}: expected 'A B' or 'LABEL(0|1) A B', got {line.strip()!r}")
    if not pairs:
        raise ValueError(f"--pairs {path}: no pairs in it")
    return pairs


def requested_pairs(args: argparse.Namespace) -> list[Pair]:
    if args.pairs is not None:
        return read_pairs(args.pairs)
    if args.enrol:
        return [Pair(tuple(args.enrol), test) for test in args.test]
    return [Pair((args.files[0],), args.files[1])]


def resolve_path(args: argparse.Namespace, given: str) -> Path:
    """A path of the pairs as read from disk: relative ones of --pairs under --audio-root."""
    path = Path(given)
    return path if path.is_absolute() or args.pairs is None else args.audio_root / path


def score_names(args: argparse.Namespace, model: Any, calibration: dict | None, checkpoint: Path) -> list[str]:
    """The score rows asked for ("64", ...; "native" for a plain model), checked against what the
    model and, for an LLR or a decision, its calibration provide."""
    model_dims = getattr(model, "dims", None)
    if model_dims is None:
        if args.dim:
            raise ValueError(f"--dim {args.dim}: {checkpoint} has only its native embedding; omit --dim")
        names = [NATIVE]
    elif args.dim:
        outside = [d for d in args.dim if not 0 < d <= max(model_dims)]
        if outside:
            raise ValueError(f"--dim {outside}: outside 1..{max(model_dims)}, the size of {checkpoint}'s embedding")
        names = [str(d) for d in dict.fromkeys(args.dim)]
    else:
        calibrated = [name for name in (calibration or {}).get("dims", {}) if name.isdigit()]
        names = calibrated or [str(d) for d in model_dims]
    wants_llr = args.llr or args.far is not None
    if wants_llr and calibration is None:
        asked = "--far" if args.far is not None else "--llr"
        raise ValueError(f"{asked}: {checkpoint} has no calibration; " + HOW_TO_CALIBRATE.format(checkpoint=checkpoint))
    if calibration is not None:
        missing = [name for name in names if name not in calibration["dims"]]
        if missing and wants_llr:
            raise ValueError(
                f"--dim {missing}: not calibrated in {checkpoint} (calibrated: {list(calibration['dims'])})"
            )
        if args.far is not None and rate_key(args.far) not in {rate_key(r) for r in calibration["far_targets"]}:
            raise ValueError(f"--far {args.far:g}: {checkpoint} stores thresholds for {calibration['far_targets']}")
    return names


def embed_audio(args: argparse.Namespace, model: Any, paths: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{path: {kind: [D]}}`` of every file, each embedded whole (`extract_embeddings`,
    crop_tolerance 0). Every file is decoded first: InputError lists each one that cannot be used
    (unreadable, or shorter than MIN_SECONDS: its length and the minimum) before any is embedded."""
    waves: dict[str, np.ndarray] = {}
    problems = []
    for given in paths:
        try:
            wave = load_audio(resolve_path(args, given))
        except ValueError as error:
            problems.append(str(error))
            continue
        waves[given] = wave[: seconds_to_samples(args.max_seconds)] if args.max_seconds else wave
    raise_problems(problems)
    order = sorted(waves, key=lambda key: len(waves[key]))

    def batches() -> Iterator[dict]:
        for first in range(0, len(order), args.batch_size):
            keys = order[first : first + args.batch_size]
            lengths = [len(waves[key]) for key in keys]
            wave = torch.zeros(len(keys), max(lengths))
            for row, key in enumerate(keys):
                wave[row, : lengths[row]] = torch.from_numpy(waves[key])
            yield {"wave": wave, "lengths": torch.tensor(lengths), "key": keys}

    return extract_embeddings(model, batches(), device=args.device, crop_tolerance=0.0)


def verify_pairs(args: argparse.Namespace) -> tuple[list[dict], str | None]:
    """The result of every pair (as the module docstring's JSON) and the operating point."""
    pairs = requested_pairs(args)
    files = list(dict.fromkeys(path for pair in pairs for path in (*pair.enrol, pair.test)))
    unreadable = [p for p in (readable_file_problem(resolve_path(args, path), "audio file") for path in files) if p]
    if len(unreadable) > 3:  # one line, not thousands, for a pairs file under the wrong --audio-root
        unreadable = [f"{len(unreadable)} of {len(files)} audio files cannot be read, e.g. {'; '.join(unreadable[:3])}"]
    raise_problems([readable_file_problem(args.checkpoint, "--checkpoint"), *unreadable])
    model, _, calibration = load_eval_checkpoint(args.checkpoint)
    names = score_names(args, model, calibration, args.checkpoint)
    note = extraction_note(calibration, args.max_seconds) if calibration is not None else None
    if note:
        print(f"verify: note: {args.checkpoint}: {note}", file=sys.stderr)
    embeddings = embed_audio(args, inference_form(model).to(args.device), files)
    row = {path: index for index, path in enumerate(files)}
    vectors = {name: dim_vectors(embeddings, files, name) for name in names}  # [F, d] normalised
    operating_point = None
    if args.far is not None:
        operating_point = f"score >= the stored threshold for FAR {rate_key(args.far)}"
    elif calibration is not None:
        operating_point = "LLR >= 0"
    results = []
    for pair in pairs:
        result: dict[str, Any] = {"enrol": list(pair.enrol), "test": pair.test}
        if pair.label is not None:
            result["label"] = pair.label
        result["score"], llrs, decisions = {}, {}, {}
        for name in names:
            enrol = vectors[name][[row[path] for path in pair.enrol]].mean(axis=0)
            enrol /= max(float(np.linalg.norm(enrol)), 1e-12)
            score = float(enrol @ vectors[name][row[pair.test]])
            result["score"][name] = score
            entry = (calibration or {}).get("dims", {}).get(name)
            if entry is None:
                continue
            llrs[name] = float(apply_calibration(entry, [score])[0])
            accept = score >= entry["thresholds"][rate_key(args.far)] if args.far is not None else llrs[name] >= 0
            decisions[name] = "same" if accept else "different"
        if llrs:
            result["llr"], result["decision"] = llrs, decisions
            result["operating_point"] = operating_point
        results.append(result)
    return results, operating_point


def results_table(results: Sequence[dict]) -> str:
    """Markdown: a row per pair and dim; '-' where there is no calibration."""
    labelled = "label" in results[0]
    header = ["enrol", "test", "dim", "score", "LLR", "decision"] + (["label"] if labelled else [])
    align = ["---", "---", "---", "---:", "---:", "---"] + (["---:"] if labelled else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for result in results:
        for name, score in result["score"].items():
            llr = result.get("llr", {}).get(name)
            cells = ["+".join(result["enrol"]), result["test"], name, f"{score:.4f}"]
            cells += ["-" if llr is None else f"{llr:.3f}", result.get("decision", {}).get(name, "-")]
            cells += [str(result["label"])] if labelled else []
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command("verify.py")
def verify_main(argv: list[str]) -> int:
    """`launch/verify.py`: results on stdout; 2 (one line on stderr) on a bad input, every file
    checked before any is embedded."""
    args = parse_verify_args(argv)
    try:
        results, operating_point = verify_pairs(args)
    except (OSError, ValueError, LookupError) as error:
        raise InputError(str(error)) from error
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(results_table(results))
    if operating_point is None:
        print(
            f"verify: scores only: {args.checkpoint} has no calibration for LLRs and decisions; "
            + HOW_TO_CALIBRATE.format(checkpoint=args.checkpoint),
            file=sys.stderr,
        )
    else:
        print(f"verify: decisions at {operating_point}", file=sys.stderr)
    return 0
