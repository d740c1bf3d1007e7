"""Command lines of `launch/train.py` (config file, `--set` overrides, `--resume`) and
`launch/cache_features.py` (a frozen trunk's pooled features, cached once)."""

from __future__ import annotations

import argparse
import logging

from ..cli_errors import add_error_options, command, program_name
from ..config import Config, load_config
from .launcher import refuse_single_process_cpu_launch, use_cpu_when_no_gpu
from .preflight import check_feature_cache_inputs, check_training_inputs


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, default: str | None = None) -> None:
    """`--config FILE` (required unless it has a `default`) and repeatable `--set KEY=VALUE`, as
    every job that reads a run config takes them."""
    parser.add_argument("--config", required=default is None, default=default, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML (repeatable): "
        "--set training.batch_size=64 --set model.mrl_dims=[32,64]",
    )


def start_job(args: argparse.Namespace) -> Config:
    """What a config-driven job does first: refuse a CPU launch that started one rank of N, logging, the config.
    A config that cannot be read raises (ConfigError, FileNotFoundError): one line, see cli_errors."""
    refuse_single_process_cpu_launch()
    use_cpu_when_no_gpu()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    return load_config(args.config, args.overrides)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("train.py"), description="Train mrl-dist models (MRL head, classifier, distillation)."
    )
    add_config_arguments(parser, "YAML config, e.g. configs/a100.yaml")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of run_dir ('latest', a fresh start if "
        "there is none) or from a checkpoints/step-N folder",
    )
    add_error_options(parser)
    return parser.parse_args(argv)


@command("train.py")
def train_main(argv: list[str]) -> int:
    """`launch/train.py`: train as the config says; 2 (one line on stderr) when the config, a
    checkpoint, the data or the run folder is not usable, found before anything is built."""
    args = parse_args(argv)
    cfg = start_job(args)
    check_training_inputs(cfg, args.config, args.resume)
    from .loop import train

    result = train(cfg, resume=args.resume)
    print(f"{result['status']} at step {result['step']}; run folder: {result['run_dir']}")
    return 0


def parse_cache_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("cache_features.py"),
        description="Run a frozen-trunk config's trunk once over its training shards and store the pooled "
        "features; then train the head with --set data.features=OUTPUT.",
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
    add_error_options(parser)
    return parser.parse_args(argv)


@command("cache_features.py")
def cache_features_main(argv: list[str]) -> int:
    """`launch/cache_features.py`: build (or continue) the pooled-feature cache of a frozen-trunk
    config; 2 (one line on stderr) when the config, the trunk, the data or the output is not usable."""
    args = parse_cache_args(argv)
    cfg = start_job(args)
    check_feature_cache_inputs(cfg, args.config, args.output)
    from .feature_cache import build_feature_cache

    result = build_feature_cache(
        cfg, args.output, args.crops_per_utterance, args.batch_size, progress=not args.no_progress
    )
    if "manifest" in result:
        print(f"{result['crops']} crops in {result['files']} files, {result['seconds']:.1f} s: {result['manifest']}")
    return 0
