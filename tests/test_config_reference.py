"""Specification of the config reference (mrl_dist.config.reference): every key of the schema is
described there, and docs/configs.md shows exactly what the schema says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mrl_dist.config.reference import (
    BEGIN,
    END,
    REGENERATE,
    config_keys,
    config_sections,
    default_text,
    generated_block,
    main,
    reference_markdown,
    type_text,
    with_reference,
)
from mrl_dist.config.schema import Config, option

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configs.md"
STALE = f"docs/configs.md's config reference is out of date: run {REGENERATE.format(path='docs/configs.md')}"


def test_every_schema_key_has_a_one_line_description():
    undocumented = [key.name for key in config_keys() if not key.help.strip()]
    assert not undocumented, f"keys without a description in mrl_dist/config/schema.py: {undocumented}"
    multi_line = [key.name for key in config_keys() if "\n" in key.help]
    assert not multi_line, f"descriptions that are not one line: {multi_line}"


def test_docs_generated_block_matches_the_schema():
    assert generated_block(DOCS.read_text(encoding="utf-8"), DOCS) == reference_markdown(), STALE


def test_every_dotted_key_appears_in_the_docs():
    text = DOCS.read_text(encoding="utf-8")
    missing = [key.name for key in config_keys() if f"`{key.name}`" not in text]
    assert not missing, f"keys missing from docs/configs.md: {missing}; {STALE}"


def test_keys_are_dotted_names_down_to_list_entries():
    names = [key.name for key in config_keys()]
    for name in ("run_dir", "data.crop_seconds", "data.augment.noise_snr.speech", "distill.losses.aam"):
        assert name in names
    assert "distill.teachers[i].source" in names
    assert "model.fusion.ptm.freeze" in names  # a section that may be null is walked too
    assert len(names) == len(set(names))


def test_types_and_defaults_read_as_written_in_yaml():
    keys = {key.name: key for key in config_keys()}
    assert (keys["data.crop_seconds"].type, keys["data.crop_seconds"].default) == ("float", "2.0")
    assert (keys["model.mrl_dims"].type, keys["model.mrl_dims"].default) == ("list[int]", "[64, 128, 192, 256]")
    assert (keys["data.features"].type, keys["data.features"].default) == ("str | None", "null")
    assert keys["training.mode"].type == '"mrl" | "classifier" | "distill"'
    assert keys["model.fusion.student"].type == '"svmixer" | "none" | None'
    assert (keys["model.pretrained"].type, keys["model.pretrained"].default) == ("mapping | None", "{}")
    assert (keys["distill.teachers"].type, keys["distill.teachers"].default) == ("list[mapping]", "[]")
    assert keys["distill.teachers[i].source"].default == "*required*"
    assert keys["logging.tensorboard"].default == "true"


def test_every_key_of_a_default_config_is_listed():
    """The walk and the dataclasses agree: each leaf of Config() has its row."""

    def leaves(value, prefix=""):
        for spec in dataclasses.fields(value):
            name = f"{prefix}.{spec.name}" if prefix else spec.name
            yield name
            child = getattr(value, spec.name)
            if dataclasses.is_dataclass(child):
                yield from leaves(child, name)

    assert set(leaves(Config())) <= {key.name for key in config_keys()}


def test_pipes_in_a_table_cell_are_escaped():
    text = reference_markdown()
    assert '| `training.mode` | `"mrl" \\| "classifier" \\| "distill"` |' in text


def test_write_replaces_only_the_generated_block(tmp_path):
    doc = tmp_path / "configs.md"
    doc.write_text(f"# Hand-written\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n", encoding="utf-8")
    assert main(["--check", str(doc)]) == 1
    assert main(["--write", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Hand-written\n\nprose before\n\n" + BEGIN + "\n")
    assert text.endswith(END + "\n\nprose after\n")
    assert generated_block(text, doc) == reference_markdown()
    assert main(["--check", str(doc)]) == 0


def test_check_names_the_command_that_regenerates(tmp_path, capsys):
    doc = tmp_path / "configs.md"
    doc.write_text(f"{BEGIN}\n{END}\n", encoding="utf-8")
    assert main(["--check", str(doc)]) == 1
    assert f"python -m mrl_dist.config.reference --write {doc}" in capsys.readouterr().err


def test_a_document_without_the_markers_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="notes.md.*BEGIN GENERATED CONFIG REFERENCE"):
        with_reference("no markers here\n", tmp_path / "notes.md")


def test_an_undescribed_key_stops_the_generator():
    @dataclasses.dataclass
    class Tiny:
        size: int = option(3, help="Described.")
        depth: int = 2

    with pytest.raises(ValueError, match="no description for depth"):
        reference_markdown(Tiny)


def test_type_and_default_helpers_on_plain_fields():
    @dataclasses.dataclass
    class Plain:
        ratio: float | None = 0.5
        names: list[str] = dataclasses.field(default_factory=lambda: ["a"])

    first, second = dataclasses.fields(Plain)
    assert type_text(float | None) == "float | None"
    assert (default_text(first), default_text(second)) == ("0.5", '["a"]')


def test_a_section_without_a_docstring_gets_no_summary():
    @dataclasses.dataclass
    class Bare:
        size: int = option(3, help="Described.")

    assert config_sections(Bare)[0].summary == ""
