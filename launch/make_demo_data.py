"""Write a synthetic multi-speaker corpus in VoxCeleb layout (16 kHz mono wav) plus trial list.

    python launch/make_demo_data.py --output data/demo
    python launch/make_demo_data.py --output /tmp/tiny --speakers 8 --utterances 4 --seed 1

Layout: OUTPUT/train/<speaker>/<video>/<utt>.wav, OUTPUT/test/... (disjoint speakers),
OUTPUT/trials.txt (VoxCeleb format, paths relative to OUTPUT/test) and OUTPUT/demo_corpus.json.
The same arguments always give byte-identical files. Re-running into the same folder replaces
the corpus written there before. The voice model lives in mrl_dist/demo/synthetic_voice.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.demo.corpus import describe, make_demo_corpus  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="folder to write the corpus into")
    parser.add_argument("--speakers", type=int, default=40, help="number of speakers (default 40)")
    parser.add_argument(
        "--utterances", type=int, default=20, help="utterances per speaker (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of speakers held out for test and trials (default 0.25, at least 2)",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=16_000, help="output sample rate in Hz (default 16000)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    except (ValueError, FileExistsError) as error:
        print(f"make_demo_data: {error}", file=sys.stderr)
        return 2
    print(describe(corpus, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
