"""Command lines of `launch/make_shards.py` (VoxCeleb-layout audio -> tar shards + manifest) and
`launch/make_trials.py` (a packed split -> held-out speakers with trials + the rest).

No torch here: packing needs numpy, soundfile and PyAV only (see mrl_dist/data/__init__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_errors import add_error_options, command, program_name
from ..preflight import raise_problems, readable_file_problem, readable_folder_problem, writable_output_problem
from .codecs import CODECS, DEFAULT_CODEC
from .holdout import make_holdout
from .holdout import summary as holdout_summary
from .layouts import LAYOUTS
from .packing import pack_split, summary
from .remote import is_url


def parse_make_shards_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("make_shards.py"),
        description="Pack a speaker corpus (VoxCeleb, CN-Celeb, LibriSpeech, a folder per speaker, a Kaldi "
        "data directory or a table) into tar shards of 16 kHz mono FLAC for streaming training. See docs/data.md.",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        type=Path,
        help="what --layout expects (default: folder of <speaker>/<video>/<utt>.<ext>); repeat to merge several",
    )
    parser.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        default="voxceleb",
        help="how --input holds the corpus (default voxceleb): "
        + "; ".join(f"{name}: {expects}" for name, expects in LAYOUTS.items()),
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for shards + manifest")
    parser.add_argument("--split", required=True, help="split name: NAME-000000.tar, ...")
    parser.add_argument("--trials", type=Path, help="VoxCeleb trial list to copy and check")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard MiB")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="skip utterances shorter than this")
    parser.add_argument(
        "--codec",
        choices=CODECS,
        default=DEFAULT_CODEC,
        help="how samples store audio (default flac): flac, compact, each crop decoded (~1,400-1,900 2 s crops/s "
        "per loader core); pcm, 16-bit .wav members sliced without decoding (3-7x the crops/s per core, "
        "1.4-1.8x the disk). See docs/data.md",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_error_options(parser)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.shard_size_mb <= 0:
        parser.error("--shard-size-mb must be > 0")
    if "/" in args.split or not args.split:
        parser.error("--split must be a plain name such as train")
    return args


@command("make_shards.py")
def make_shards_main(argv: list[str]) -> int:
    """`launch/make_shards.py`: pack one split; the summary goes to stderr; 2 (one line on stderr)
    on a packing error (PackError) or unusable paths, which are checked before anything is read."""
    args = parse_make_shards_args(argv)
    check_input = readable_file_problem if args.layout == "table" else readable_folder_problem
    problems = [check_input(path, "--input") for path in args.input]
    if args.trials is not None:
        problems.append(readable_file_problem(args.trials, "--trials"))
    problems.append(writable_output_problem(args.output, "--output", folder=True))
    raise_problems(problems)
    manifest = pack_split(
        args.input,
        args.output,
        args.split,
        trials=args.trials,
        workers=args.workers,
        shard_size_mb=args.shard_size_mb,
        min_seconds=args.min_seconds,
        progress=not args.no_progress,
        layout=args.layout,
        codec=args.codec,
    )
    print(summary(manifest, args.output.absolute()), file=sys.stderr)
    return 0


def target_pairs_option(text: str) -> int | None:
    """`--target-pairs`: 'all' -> None (every within-speaker pair), else a positive count."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive number, got {text!r}")
    return int(text)


def parse_make_trials_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("make_trials.py"),
        description="Hold out speakers of a packed split as a validation set with a balanced trial list; "
        "writes PREFIX.manifest.json, PREFIX.trials.txt and PREFIX.rest.manifest.json (for training).",
    )
    parser.add_argument("--data", required=True, help="the split's NAME.manifest.json (path or URL)")
    parser.add_argument("--holdout-speakers", required=True, type=int, help="speakers to hold out (>= 2)")
    parser.add_argument("--output", required=True, type=Path, help="prefix of the files written, e.g. shards/val")
    parser.add_argument(
        "--target-pairs",
        type=target_pairs_option,
        default=None,
        help="'all' within-speaker pairs (default) or N drawn with --seed; as many non-target pairs",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker choice and the pair sampling")
    add_error_options(parser)
    args = parser.parse_args(argv)
    if not args.output.name or args.output.name.endswith(".json"):
        parser.error("--output is a prefix such as shards/val (writes shards/val.manifest.json, ...)")
    return args


@command("make_trials.py")
def make_trials_main(argv: list[str]) -> int:
    """`launch/make_trials.py`: the summary goes to stderr; 2 (one line on stderr) on an unreadable
    manifest or a split that cannot give the set (HoldoutError)."""
    args = parse_make_trials_args(argv)
    problems = [writable_output_problem(args.output.parent, "--output", folder=True)]
    if not is_url(args.data):
        problems.append(readable_file_problem(args.data, "--data"))
    raise_problems(problems)
    result = make_holdout(args.data, args.holdout_speakers, args.output, target_pairs=args.target_pairs, seed=args.seed)
    print(holdout_summary(result), file=sys.stderr)
    return 0
