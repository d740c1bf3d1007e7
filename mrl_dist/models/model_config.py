"""What the `model_config` dataclasses of every family share (ReDimNet, ReDimNet2, SSRFNet):
building from a checkpoint's plain dict with unknown keys refused, the dict back, and the error
for a value a family does not support."""

from __future__ import annotations

import copy
from dataclasses import Field, asdict, fields
from typing import Any, ClassVar, TypeVar


def as_list(value: Any) -> Any:
    """Tuples -> lists, recursively, so configs compare and serialise the same way."""
    if isinstance(value, (list, tuple)):
        return [as_list(v) for v in value]
    if isinstance(value, dict):
        return {k: as_list(v) for k, v in value.items()}
    return value


_ConfigT = TypeVar("_ConfigT", bound="ModelConfigMixin")


class ModelConfigMixin:
    """Mixed into a family's `model_config` dataclass; `family` names it in errors."""

    family = "model"
    # Set by @dataclass on every family's class; declared so `fields` and `asdict` type-check here.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    # Fields every family's dataclass has.
    stages_setup: list
    spec_params: dict

    @classmethod
    def from_dict(cls: type[_ConfigT], config: dict[str, Any]) -> _ConfigT:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{cls.family} model_config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        result = cls(**copy.deepcopy(dict(config)))
        result.stages_setup = as_list(result.stages_setup)
        result.spec_params = as_list(dict(result.spec_params))
        result.complete()
        result.validate()
        return result

    def complete(self) -> None:
        """Fill nested defaults after construction (SSRFNet's fusion block); nothing by default."""

    def validate(self) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the official format (lists, not tuples), safe for `weights_only` loading."""
        return copy.deepcopy(asdict(self))

    def unsupported(self, key: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"{self.family} model_config: {key}={value!r} is not supported ({expected})")
