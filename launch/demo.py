"""The main job on built-in demo data, on CPU in a few minutes, ending with an EER table per dim.

    python launch/demo.py                      # runs/demo/...
    python launch/demo.py --output /tmp/demo --classifier-steps 300
"""

import argparse
import logging

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mrl_dist, installed or not

from mrl_dist.demo.run import run_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="folder for data, shards and runs (default runs/demo)")
    parser.add_argument("--speakers", type=int, default=40, help="synthetic speakers (default 40)")
    parser.add_argument("--utterances", type=int, default=20, help="utterances per speaker (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-steps", type=int, default=150, help="backbone training steps (default 150)")
    parser.add_argument("--mrl-steps", type=int, default=1500,
                        help="MRL head training steps, on cached trunk features (default 1500)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run_demo(args.output, args.speakers, args.utterances, args.seed, args.classifier_steps, args.mrl_steps)


if __name__ == "__main__":
    main()
