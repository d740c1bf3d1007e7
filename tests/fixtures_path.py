"""Where the official-format ReDimNet parity fixtures live (`../shared/fixtures/redimnet/`)."""

import os
from pathlib import Path

REDIMNET_FIXTURES = Path(
    os.environ.get("MRL_DIST_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "redimnet")
)


def redimnet_fixture(name: str) -> Path:
    path = REDIMNET_FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(
            f"parity fixture {path} is missing: the repository expects ../shared/fixtures/redimnet/ beside "
            "its checkout (or set MRL_DIST_FIXTURES to that folder)"
        )
    return path


REDIMNET2_FIXTURES = REDIMNET_FIXTURES.parent / "redimnet2"


def redimnet2_fixture(name: str) -> Path:
    """A file of `../shared/fixtures/redimnet2/` (official ReDimNet2 format, reference outputs)."""
    path = REDIMNET2_FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(
            f"parity fixture {path} is missing: the repository expects "
            "../shared/fixtures/redimnet2/ beside its checkout"
        )
    return path
