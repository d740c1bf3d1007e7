"""launch/bench_adapt.py's pieces: its variants are valid overrides of the shipped recipe, and
its table reports the references and every variant."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mrl_dist.config import apply_overrides, config_from_dict
from mrl_dist.tools.bench_adapt import VARIANTS, VariantResult, bench_adapt, results_table

REPO = Path(__file__).resolve().parents[1]
RECIPE = yaml.safe_load((REPO / "configs" / "adapt-cpu.yaml").read_text())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_is_a_valid_change_of_the_recipe(name):
    cfg = config_from_dict(apply_overrides(copy.deepcopy(RECIPE), VARIANTS[name][1]))
    assert cfg.training.mode == "mrl"
    assert (cfg.model.adapters is not None) == name.startswith("lora")
    assert cfg.training.freeze_backbone == (name != "full")


def test_the_shipped_recipe_trains_lora_adapters_and_the_head():
    cfg = config_from_dict(copy.deepcopy(RECIPE))
    assert cfg.model.adapters is not None and cfg.model.adapters.rank == 16
    assert cfg.training.freeze_backbone and cfg.data.features is None


def test_the_table_has_the_references_and_a_row_per_variant():
    eer = {"32": 0.2, "64": 0.1, "native": 0.15}
    results = [
        VariantResult("head", "head only", eer, {"32": 0.3, "64": 0.2, "native": 0.15}, 1000, None, 12.0),
        VariantResult("lora-r4", "LoRA r=4 + head", eer, eer, 2000, 4096, 30.0),
    ]
    table = results_table(results).splitlines()
    assert table[0].startswith("| what trains | 32-D | 64-D |")
    assert table[2].startswith("| native embedding (its own size) | 15.00")
    assert table[3] == "| PCA head at step 0 (no training) | 30.00 | 20.00 | 0 | | |"
    assert table[5] == "| LoRA r=4 + head | 20.00 | 10.00 | 2,000 | 4 KB | 30 |"


def test_an_unknown_variant_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        bench_adapt(REPO / "configs" / "adapt-cpu.yaml", tmp_path, ["lora-r99"], [])
