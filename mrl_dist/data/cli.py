"""Command line of `launch/make_shards.py`: VoxCeleb-layout audio -> tar shards + manifest.

No torch here: packing needs numpy, soundfile and PyAV only (see mrl_dist/data/__init__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_errors import add_error_options, command, program_name
from ..preflight import raise_problems, readable_file_problem, readable_folder_problem, writable_output_problem
from .packing import pack_split, summary


def parse_make_shards_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("make_shards.py"),
        description="Pack VoxCeleb-layout audio into tar shards of 16 kHz mono FLAC for streaming training.",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        type=Path,
        help="folder of <speaker>/<video>/<utt>.<ext>; repeat to merge several",
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for shards + manifest")
    parser.add_argument("--split", required=True, help="split name: NAME-000000.tar, ...")
    parser.add_argument("--trials", type=Path, help="VoxCeleb trial list to copy and check")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--shard-size-mb", type=float, default=256.0, help="target shard MiB")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="skip utterances shorter than this")
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
    problems = [readable_folder_problem(folder, "--input") for folder in args.input]
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
    )
    print(summary(manifest, args.output.absolute()), file=sys.stderr)
    return 0
