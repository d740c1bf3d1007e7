"""Command line of `launch/train.py`: config file, `--set` overrides, `--resume`."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError, load_config
from .launcher import relaunch_cpu_processes, use_cpu_when_no_gpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train mrl-dist models (MRL head, classifier, distillation).")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/a100.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, value parsed as YAML (repeatable): "
                             "--set training.batch_size=64 --set model.mrl_dims=[32,64]")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint of run_dir ('latest', a fresh start if "
                             "there is none) or from a checkpoints/step-N folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    relaunch_cpu_processes()
    use_cpu_when_no_gpu()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .loop import train  # heavy imports after the config is known to be valid

    result = train(cfg, resume=args.resume)
    print(f"{result['status']} at step {result['step']}; run folder: {result['run_dir']}")
    return 0
