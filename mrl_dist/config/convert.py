"""YAML mapping -> dataclasses, driven by the schema's type hints, and `--set key=value` overrides.

Every unknown key, wrong type or missing value is a `ConfigError` naming the dotted key (and,
once located, the file or override), e.g. ``configs/a100.yaml: training.batch_sise: unknown
key (did you mean training.batch_size?)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

import yaml

from .schema import Config


class ConfigError(ValueError):
    """A config problem at dotted ``key``; ``source`` is the file or ``--set`` override."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message, self.source = key, message, source
        super().__init__(f"{source}: {key}: {message}" if source else f"{key}: {message}")

    def located(self, source: str) -> ConfigError:
        return ConfigError(self.key, self.message, source)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; a
    learning rate silently loaded as the string '1e-4' is a classic mistake)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _optional_inner(tp: Any) -> Any | None:
    """``X | None -> X``; None for a type that is not optional."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(choice) for choice in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is Literal:
        return "one of " + " | ".join(typing.get_args(tp))
    return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__


def _fits(tp: Any, value: Any) -> bool:
    """Whether `value` has the outer shape of `tp` (a union picks its alternative by this; the
    chosen one then checks the value in depth)."""
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, origin) and not (isinstance(value, bool) and origin is not bool)


def _unknown_key(key: str, valid: Sequence[str], prefix: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {_join(prefix, close[0])}?" if close else f"valid keys here: {', '.join(valid)}"
    return ConfigError(key, f"unknown key ({hint})")


def _convert(tp: Any, value: Any, key: str) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _convert(inner, value, key)
    if typing.get_origin(tp) in (Union, types.UnionType):  # e.g. `str | list[...]`: the first that fits
        for choice in typing.get_args(tp):
            if _fits(choice, value):
                return _convert(choice, value, key)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise ConfigError(key, f"must be {_type_name(tp)}, got {value!r}")
    if typing.get_origin(tp) is list and isinstance(value, list):
        item_type = typing.get_args(tp)[0]
        return [_convert(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
    # bool is a subclass of int, but `batch_size: true` is a mistake, not 1.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``data`` found at dotted ``prefix``."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<top level>", f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise _unknown_key(_join(prefix, str(name)), list(fields), prefix)
    values = {}
    for name, spec in fields.items():
        key = _join(prefix, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "missing required key")
    return cls(**values)


def _check_override_key(parts: list[str], source: str) -> None:
    """Walk the schema along ``parts``; ConfigError if a part is not a field there."""
    cls: Any = Config
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if cls is None:
            raise ConfigError(".".join(parts), f"{prefix} is a value, not a section", source)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown_key(_join(prefix, part), names, prefix).located(source)
        hint = typing.get_type_hints(cls)[part]
        hint = _optional_inner(hint) or hint
        cls = hint if dataclasses.is_dataclass(hint) else None


def apply_overrides(cfg_dict: dict | None, overrides: Sequence[str]) -> dict:
    """Return a copy of ``cfg_dict`` with ``key=value`` overrides applied, in order.

    Values are parsed as YAML (``64``, ``[32,64]``, ``null``, ``true``, ``{a: 1}``).
    A section set as a whole replaces that section (keys it leaves out take defaults).
    Keys are checked against the schema: an unknown key is a ConfigError.
    """
    result = copy.deepcopy(cfg_dict) if cfg_dict else {}
    for item in overrides:
        source = f"--set {item}"
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ConfigError(item, "expected key=value, e.g. training.batch_size=64", source)
        if not text:
            raise ConfigError(key, "empty value; write key=null for null or key='' for an empty string", source)
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            raise ConfigError(key, f"value is not valid YAML: {err}", source) from None
        parts = key.split(".")
        _check_override_key(parts, source)
        node = result
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent or null section: start from its defaults
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(".".join(parts[: depth + 1]), f"expected a mapping, got {node[part]!r}", source)
            node = node[part]
        node[parts[-1]] = value
    return result
