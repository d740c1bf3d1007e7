"""Command lines of `launch/demo.py` (the demo's main job) and `launch/make_demo_data.py` (its corpus)."""

from __future__ import annotations

import argparse
import logging
import time

from ..cli_errors import InputError, add_error_options, command, program_name
from ..preflight import raise_problems, writable_output_problem
from .corpus import describe, make_demo_corpus

DEMO_DESCRIPTION = """\
The main job on built-in demo data, on CPU in a few minutes, ending with an EER table per dim.

    python launch/demo.py                      # runs/demo/...
    python launch/demo.py --output /tmp/demo --classifier-steps 300
"""

DEMO_DATA_DESCRIPTION = """\
Write a synthetic multi-speaker corpus in VoxCeleb layout (16 kHz mono wav) plus trial list.

    python launch/make_demo_data.py --output data/demo
    python launch/make_demo_data.py --output /tmp/tiny --speakers 8 --utterances 4 --seed 1

Layout: OUTPUT/train/<speaker>/<video>/<utt>.wav, OUTPUT/test/... (disjoint speakers),
OUTPUT/trials.txt (VoxCeleb format, paths relative to OUTPUT/test) and OUTPUT/demo_corpus.json.
The same arguments always give byte-identical files. Re-running into the same folder replaces
the corpus written there before. The voice model lives in mrl_dist/demo/voices.py and synthetic_voice.py.
"""


def parse_demo_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("demo.py"),
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="runs/demo", help="folder for data, shards and runs (default runs/demo)")
    parser.add_argument("--speakers", type=int, default=40, help="synthetic speakers (default 40)")
    parser.add_argument("--utterances", type=int, default=20, help="utterances per speaker (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=150, help="backbone training steps (default 150)")
    parser.add_argument(
        "--mrl-steps", type=int, default=1500, help="MRL head training steps, on cached trunk features (default 1500)"
    )
    add_error_options(parser)
    return parser.parse_args(argv)


@command("demo.py")
def demo_main(argv: list[str]) -> int:
    """`launch/demo.py`: corpus, shards, backbone, MRL head and the EER table (mrl_dist/demo/run.py)."""
    args = parse_demo_args(argv)
    raise_problems([writable_output_problem(args.output, "--output", folder=True)])
    logging.basicConfig(level=logging.WARNING)
    from .run import run_demo  # the trainer's imports, after the arguments are known to be valid

    run_demo(args.output, args.speakers, args.utterances, args.seed, args.classifier_steps, args.mrl_steps)
    return 0


def parse_demo_data_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("make_demo_data.py"),
        description=DEMO_DATA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, help="folder to write the corpus into")
    parser.add_argument("--speakers", type=int, default=40, help="number of speakers (default 40)")
    parser.add_argument("--utterances", type=int, default=20, help="utterances per speaker (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of speakers held out for test and trials (default 0.25, at least 2)",
    )
    parser.add_argument("--sample-rate", type=int, default=16_000, help="output sample rate in Hz (default 16000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_error_options(parser)
    return parser.parse_args(argv)


@command("make_demo_data.py")
def make_demo_data_main(argv: list[str]) -> int:
    """`launch/make_demo_data.py`: write the corpus and say what was written; 2 (one line on
    stderr) on bad arguments or an output that cannot be written."""
    args = parse_demo_data_args(argv)
    raise_problems([writable_output_problem(args.output, "--output", folder=True)])
    started = time.perf_counter()
    try:
        corpus = make_demo_corpus(
            args.output,
            speakers=args.speakers,
            utterances=args.utterances,
            seed=args.seed,
            sample_rate=args.sample_rate,
            test_fraction=args.test_fraction,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError) as error:  # a corpus too small for a test split, ...
        raise InputError(str(error)) from error
    print(describe(corpus, time.perf_counter() - started))
    return 0
