"""What `hubconf.py` (the repository root) serves through `torch.hub.load`.

    torch.hub.load("OWNER/REPO", "redimnet_mrl", checkpoint="RUN/best.pt" or URL, dim=128)
    torch.hub.load("OWNER/REPO", "redimnet", name="b2", train_type="ft_lm")
    torch.hub.load(".", "redimnet", name="path/to/official.pt", source="local")

Models come back in eval mode; `model(wave [B, T] float32 16 kHz)` gives the raw embedding (not
normalised), as the training code's models do.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..models.checkpoints import model_from_payload
from ..models.loading import CheckpointError, load_pretrained, read_checkpoint
from ..models.mrl import ReDimNetMRL
from ..models.presets import REDIMNET2_PRETRAINED

URL_SCHEMES = ("http", "https", "file")


class MatryoshkaPrefix(nn.Module):
    """A ReDimNetMRL fixed to one of its dims: `forward(wave [B, T]) -> [B, dim]`, the Matryoshka
    prefix (`dim` None: all `max_dim` values). `model` is the full ReDimNetMRL."""

    def __init__(self, model: ReDimNetMRL, dim: int | None = None):
        super().__init__()
        if dim is not None and dim not in model.dims:
            raise ValueError(f"dim={dim}: not one of this MRL checkpoint's dims {model.dims}")
        self.model = model
        self.dim = model.max_dim if dim is None else int(dim)

    @property
    def dims(self) -> list[int]:
        return self.model.dims

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def is_url(text: str) -> bool:
    return urlparse(text).scheme in URL_SCHEMES


def cached_checkpoint(source: str | os.PathLike, progress: bool = True) -> Path:
    """A local path for `source`: a path as given; a URL downloaded once into torch hub's
    `checkpoints/` folder, its file named `{sha256(url)[:8]}-{basename}` so two runs' `best.pt`
    never collide."""
    text = os.fspath(source)
    if not is_url(text):
        return Path(text)
    basename = Path(urlparse(text).path).name or "checkpoint.pt"
    target = Path(torch.hub.get_dir()) / "checkpoints" / f"{hashlib.sha256(text.encode()).hexdigest()[:8]}-{basename}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(text, str(target), progress=progress)
        except Exception as err:  # URLError, HTTPError, socket errors: all mean "could not fetch"
            raise CheckpointError(f"checkpoint {text}: download failed ({type(err).__name__}: {err})") from err
    return target


def load_mrl(checkpoint: str | os.PathLike, dim: int | None = None) -> MatryoshkaPrefix:
    """The eval ReDimNetMRL of an MRL file (path or URL), giving its `dim`-D embedding."""
    path = cached_checkpoint(checkpoint)
    payload = read_checkpoint(path)
    if "mrl_config" not in payload:  # refused before building anything
        raise CheckpointError(
            f"{checkpoint}: not an MRL checkpoint (no mrl_config); an official ReDimNet or "
            "ReDimNet2 file loads with the 'redimnet' entry point"
        )
    model = model_from_payload(payload, path).model
    if not isinstance(model, ReDimNetMRL):  # model_from_payload builds one for every file with mrl_config
        raise CheckpointError(f"{checkpoint}: its mrl_config built a {type(model).__name__}, not a ReDimNetMRL")
    return MatryoshkaPrefix(model, dim).eval()


def load_official(name: str, train_type: str | None = None, dataset: str | None = None) -> nn.Module:
    """`load_pretrained` of a ReDimNet name (`b2`), a ReDimNet2 one (`redimnet2-b3`), or an
    official-format file's path or URL."""
    source = os.fspath(name)
    if is_url(source):
        source = os.fspath(cached_checkpoint(source))
    return load_pretrained(source, train_type=train_type, dataset=dataset)


def redimnet2_name(name: str) -> str:
    """`b3` -> `redimnet2-b3` (a ReDimNet2 name, a path or a URL is kept as it is)."""
    return f"redimnet2-{name}" if f"redimnet2-{name}" in REDIMNET2_PRETRAINED else name
