"""The reference of every run-config key, rendered from the schema itself (schema.py): dotted
name, type, default and description, one Markdown table per section. docs/configs.md holds it
between two markers; the prose around them is hand-written and left alone.

    python -m mrl_dist.config.reference                          # print the reference
    python -m mrl_dist.config.reference --write docs/configs.md  # refresh the docs' generated block
    python -m mrl_dist.config.reference --check docs/configs.md  # exit 1 if that block is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

from .schema import HELP, Config

BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE (python -m mrl_dist.config.reference --write docs/configs.md) -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"
REGENERATE = "python -m mrl_dist.config.reference --write {path}"
REQUIRED = "*required*"
LIST_ITEM = "[i]"  # a list of sections: `distill.teachers[i].source` is any entry's `source`


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One key: `name` dotted (`data.augment.noise_prob`), `type` and `default` readable
    (`str | None`, `null`), `help` its description from the schema ("" where it has none)."""

    name: str
    type: str
    default: str
    help: str


@dataclasses.dataclass(frozen=True)
class SectionDoc:
    """One dataclass of the schema at dotted `name` ("" for the top level), its docstring and keys."""

    name: str
    summary: str
    keys: list[KeyDoc]


def _section_class(tp: Any) -> tuple[type | None, str]:
    """The dataclass a key's type holds, if any, and the suffix its keys get (`[i]` in a list)."""
    if dataclasses.is_dataclass(tp):
        return typing.cast(type, tp), ""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            cls, suffix = _section_class(arg)
            if cls is not None:
                return cls, suffix
    if origin is list:
        cls, suffix = _section_class(typing.get_args(tp)[0])
        return cls, LIST_ITEM + suffix
    return None, ""


def type_text(tp: Any) -> str:
    """`int`, `list[float]`, `str | None`, `"mrl" | "classifier"`; a section is a `mapping`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(json.dumps(choice) for choice in typing.get_args(tp))
    if origin is list:
        return f"list[{type_text(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "None"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return tp.__name__


def default_text(spec: dataclasses.Field) -> str:
    """The default as YAML accepts it (JSON form: `2.0`, `null`, `[64, 128]`, `"b2"`); `{}` for a
    section whose keys take their own defaults."""
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return REQUIRED
    return "{}" if dataclasses.is_dataclass(value) else json.dumps(value)


def config_sections(cls: type = Config, prefix: str = "") -> list[SectionDoc]:
    """Every section of the schema, depth first from `cls` (the top level first)."""
    hints = typing.get_type_hints(cls)
    keys, nested = [], []
    for spec in dataclasses.fields(cls):
        name = f"{prefix}.{spec.name}" if prefix else spec.name
        keys.append(KeyDoc(name, type_text(hints[spec.name]), default_text(spec), spec.metadata.get(HELP, "")))
        section, suffix = _section_class(hints[spec.name])
        if section is not None:
            nested.extend(config_sections(section, name + suffix))
    summary = inspect.cleandoc(cls.__doc__ or "")
    if summary.startswith(f"{cls.__name__}("):  # no docstring: dataclass wrote the signature there
        summary = ""
    return [SectionDoc(prefix, summary, keys), *nested]


def config_keys(root: type = Config) -> list[KeyDoc]:
    """Every key under `root` (the whole schema), sections included, in the reference's order."""
    return [key for section in config_sections(root) for key in section.keys]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def reference_markdown(root: type = Config) -> str:
    """The generated block for `root` (the whole schema): a table per section, the top level
    first. Every key needs a description; a key without one is a ValueError naming it."""
    undocumented = [key.name for key in config_keys(root) if not key.help.strip()]
    if undocumented:
        raise ValueError(
            f"mrl_dist/config/schema.py: no description for {', '.join(undocumented)}; "
            'declare each with option(..., help="...")'
        )
    lines = [
        "Generated from `mrl_dist/config/schema.py`: edit the descriptions there, then run",
        f"`{REGENERATE.format(path='docs/configs.md')}`. Defaults are as YAML reads them (`null`: none);",
        f"a section's default `{{}}` means its keys take their own defaults; {REQUIRED}: no default.",
    ]
    described = {key.name: key.help for key in config_keys(root)}
    for section in config_sections(root):
        title = f"`{section.name}`" if section.name else "Top level"
        lines += ["", f"### {title}", ""]
        # The docstring, unless the section's own row above already says the same.
        if section.summary and section.summary != described.get(section.name.removesuffix(LIST_ITEM)):
            lines += [section.summary, ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key in section.keys:
            default = key.default if key.default == REQUIRED else _code(key.default)
            lines.append(f"| {_code(key.name)} | {_code(key.type)} | {default} | {_cell(key.help)} |")
    return "\n".join(lines) + "\n"


def _block_bounds(text: str, path: str | Path) -> tuple[int, int]:
    """Offsets of the generated block's body: just after BEGIN's line, at the start of END."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(
            f"{path}: expected one line {BEGIN!r} followed by one line {END!r} around the generated "
            "config reference; put them back where the reference belongs"
        )
    return text.index("\n", text.index(BEGIN)) + 1, text.index(END)


def generated_block(text: str, path: str | Path) -> str:
    """The body of the generated block in the document `text` (read from `path`)."""
    start, end = _block_bounds(text, path)
    return text[start:end]


def with_reference(text: str, path: str | Path) -> str:
    """`text` with its generated block replaced by the reference of the schema as it is now."""
    start, end = _block_bounds(text, path)
    return text[:start] + reference_markdown() + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The run-config reference, generated from the schema.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="DOC", help="replace the generated block of DOC (docs/configs.md)")
    action.add_argument("--check", metavar="DOC", help="exit 1 if the generated block of DOC is out of date")
    args = parser.parse_args(argv)
    if args.write is None and args.check is None:
        sys.stdout.write(reference_markdown())
        return 0
    path = Path(args.write or args.check)
    text = path.read_text(encoding="utf-8")
    updated = with_reference(text, path)
    if args.check is not None:
        if updated != text:
            print(f"{path}: the config reference is out of date; run {REGENERATE.format(path=path)}", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    print(f"{path}: config reference {'updated' if updated != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
