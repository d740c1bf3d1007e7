"""Reading and writing run configs: a YAML file plus `--set` overrides -> a validated `Config`,
and the resolved `Config` back to YAML (`RUN/config.yaml`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import yaml

from .convert import ConfigError, _build, _Loader, apply_overrides
from .rules import validate
from .schema import Config


def config_from_dict(data: dict, source: str | None = None) -> Config:
    """Build and validate a Config from a plain mapping; errors name ``source``."""
    try:
        cfg = _build(Config, {} if data is None else data, "")
        validate(cfg)
    except ConfigError as err:
        raise err.located(source) if source else err from None
    return cfg


def _override_source(key: str, path: str, overrides: Sequence[str]) -> str:
    """Where ``key`` got its value: the file plus the override that set it or its section."""
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key in (item, set_key) or key.startswith((set_key + ".", set_key + "[")):
            return f"{path} --set {item}"
    return path


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, convert and validate it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError("<yaml>", f"not valid YAML: {err}", path) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("<top level>", f"expected a mapping of sections, got {type(data).__name__}", path)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        raise err.located(_override_source(err.key, path, overrides)) from None


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict/list form of ``cfg`` (YAML and JSON ready)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the fully resolved config; ``load_config(path)`` gives back an equal Config."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=None)
