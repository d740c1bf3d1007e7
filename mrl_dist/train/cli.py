"""Command lines of `launch/train.py` (config file, `--set` overrides, `--resume`) and
`launch/cache_features.py` (a frozen trunk's pooled features, cached once)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import Config, ConfigError, load_config
from .launcher import relaunch_cpu_processes, use_cpu_when_no_gpu


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE`, as every job that reads a run config takes them."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML (repeatable): "
        "--set training.batch_size=64 --set model.mrl_dims=[32,64]",
    )


def start_job(args: argparse.Namespace) -> Config | None:
    """What a config-driven job does first: real gloo ranks on a CPU launch, logging, the config.
    None (after saying why on stderr) when the config cannot be read."""
    relaunch_cpu_processes()
    use_cpu_when_no_gpu()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    try:
        return load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train mrl-dist models (MRL head, classifier, distillation).")
    add_config_arguments(parser, "YAML config, e.g. configs/a100.yaml")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of run_dir ('latest', a fresh start if "
        "there is none) or from a checkpoints/step-N folder",
    )
    return parser.parse_args(argv)


def train_main(argv: list[str] | None = None) -> int:
    """`launch/train.py`: train as the config says; 2 when the config cannot be read."""
    args = parse_args(argv)
    cfg = start_job(args)
    if cfg is None:
        return 2
    from .loop import train  # heavy imports after the config is known to be valid

    result = train(cfg, resume=args.resume)
    print(f"{result['status']} at step {result['step']}; run folder: {result['run_dir']}")
    return 0


def parse_cache_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run a frozen-trunk config's trunk once over its training shards and store the pooled "
        "features; then train the head with --set data.features=OUTPUT."
    )
    add_config_arguments(parser, "YAML config of a frozen-trunk MRL run")
    parser.add_argument("--output", required=True, help="folder of the cache (resumable: re-run to continue)")
    parser.add_argument(
        "--crops-per-utterance",
        type=int,
        default=1,
        metavar="K",
        help="seeded crops of data.crop_seconds per utterance, each its own augmentation draw",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="crops per trunk pass (default 4 x validation.batch_size)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def cache_features_main(argv: list[str] | None = None) -> int:
    """`launch/cache_features.py`: build (or continue) the pooled-feature cache of a frozen-trunk config."""
    args = parse_cache_args(argv)
    cfg = start_job(args)
    if cfg is None:
        return 2
    try:
        from .feature_cache import build_feature_cache

        result = build_feature_cache(
            cfg, args.output, args.crops_per_utterance, args.batch_size, progress=not args.no_progress
        )
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "manifest" in result:
        print(f"{result['crops']} crops in {result['files']} files, {result['seconds']:.1f} s: {result['manifest']}")
    return 0
