"""Where the official-format parity fixtures live, in two tiers.

* In the repository, always there: `tests/fixtures/micro/` holds four micro official checkpoints
  (b-series and M-series ReDimNet blocks, ReDimNet2 with the TF and with the torch front-end)
  and the official code's outputs for them; `tests/fixtures/official_state_dict_shapes.json`
  holds the official key set and shapes of every b0-b6 and M preset. A fresh clone checks
  official parity with these alone.
* The extended tier, beside the checkout: `../shared/fixtures/{redimnet,redimnet2}/` (or the
  folder `$MRL_DIST_FIXTURES` names) holds the larger b0/b2 and ReDimNet2 b3/small/tiny
  fixtures. A test that needs one is skipped, with a one-line reason, where the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures"
MICRO_FIXTURES = REPO_FIXTURES / "micro"
OFFICIAL_SHAPES = REPO_FIXTURES / "official_state_dict_shapes.json"
SHARED_FIXTURES = Path(os.environ.get("MRL_DIST_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))

MICRO_REDIMNET = ["micro-b", "micro-m"]  # ReDimNet: b-series blocks, M-series blocks
MICRO_REDIMNET2 = ["micro2-tf", "micro2-pt"]  # ReDimNet2: TF front-end, torch front-end


def fixture_file(model: str, outputs: bool = False) -> Path:
    """`MODEL-random.pt`, or with `outputs` its reference outputs `MODEL-random.io.pt`.

    `micro-*` names are the repository's own; `b0`, `b2` (ReDimNet) and `v2*` (ReDimNet2) are the
    extended tier's, and the calling test is skipped where that folder is absent.
    """
    filename = f"{model}-random{'.io' if outputs else ''}.pt"
    if model.startswith("micro"):
        path = MICRO_FIXTURES / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the repository (tests/fixtures/micro/README.md)")
        return path
    return shared_fixture("redimnet2" if model.startswith("v2") else "redimnet", filename)


def shared_fixture(family: str, filename: str) -> Path:
    """A file of the extended tier, `../shared/fixtures/FAMILY/FILENAME`; skips the test if absent."""
    path = SHARED_FIXTURES / family / filename
    if not path.is_file():
        pytest.skip(f"extended parity tier: {path} is absent (../shared/fixtures or $MRL_DIST_FIXTURES)")
    return path


def redimnet_fixture(filename: str) -> Path:
    return shared_fixture("redimnet", filename)


def redimnet2_fixture(filename: str) -> Path:
    return shared_fixture("redimnet2", filename)
