"""The pretrained speech model (PTM) of SSRFNet: a Hugging Face `transformers.WavLMModel`, frozen.

    wave [B, T] float32 16 kHz -> hidden states [B, L + 1, frames, D]   (frames ~ T / 320: 50 Hz)

State 0 is the CNN encoder's projected output, states 1..L the transformer layers' (WavLM-Large:
L = 24, D = 1024). `transformers` is an optional extra (`pip install -e ".[ptm]"`); it is
imported only when a PTM is built.

Where the weights come from (`source`):
  - a local folder with `config.json` and the weights (what `save_pretrained` writes);
  - a Hub id such as `microsoft/wavlm-large`, read from the Hugging Face cache
    ($HF_HOME/hub, or $HF_HUB_CACHE); it is downloaded only when $MRL_DIST_OFFLINE and
    $HF_HUB_OFFLINE are unset, and offline a missing model is a `PTMError` naming the model and
    the folders looked in, raised when the model is built (before any training step);
  - `config`: a `WavLMConfig` as a mapping (tests, the `ssrfnet-tiny` preset): random weights
    from `seed`, nothing read or downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn


class PTMError(RuntimeError):
    """A pretrained speech model could not be found, loaded or built."""


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise PTMError(
            'SSRFNet\'s pretrained speech model needs the optional dependency transformers: pip install -e ".[ptm]"'
        ) from err
    return transformers


def _offline() -> bool:
    return any(os.environ.get(name, "") in ("1", "true", "yes") for name in ("MRL_DIST_OFFLINE", "HF_HUB_OFFLINE"))


def _hub_cache_dirs() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return [home / "hub"]


def load_wavlm(source: str | None = None, config: Mapping[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """A `transformers.WavLMModel` in eval mode (see the module docstring for `source`/`config`)."""
    transformers = _transformers()
    if config is not None:
        torch.manual_seed(seed)  # the same random PTM every time it is rebuilt
        return transformers.WavLMModel(transformers.WavLMConfig(**dict(config))).eval()
    if not source:
        raise PTMError("model_config.fusion.ptm: give a source (a folder or a Hub id) or a config")
    local = Path(source).is_dir()
    try:
        model = transformers.WavLMModel.from_pretrained(source, local_files_only=local or _offline())
    except (OSError, ValueError) as err:
        where = str(Path(source).resolve()) if local else ", ".join(str(d) for d in _hub_cache_dirs())
        hint = (
            ""
            if local
            else (
                " (offline: $MRL_DIST_OFFLINE or $HF_HUB_OFFLINE is set; download it once "
                "with network, or pass a local folder)"
                if _offline()
                else ""
            )
        )
        raise PTMError(
            f"pretrained speech model {source!r} could not be loaded; looked in {where}{hint}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    return model.eval()


class _WavLMConfig(Protocol):
    """What is read of a `transformers.WavLMConfig` (transformers is optional: not imported for typing)."""

    num_hidden_layers: int
    hidden_size: int


class FrozenPTM(nn.Module):
    """`wave [B, T]` -> `[B, L + 1, frames, D]` from a WavLM whose weights never train: eval mode
    for good, no gradients, run in float32 under no_grad."""

    def __init__(self, wavlm: nn.Module):
        super().__init__()
        self.wavlm = wavlm.eval().requires_grad_(False)

    def _wavlm_config(self) -> _WavLMConfig:
        # `config` is a plain attribute of `transformers.WavLMModel`, unknown to nn.Module's typing.
        return cast(_WavLMConfig, self.wavlm.config)

    @property
    def num_layers(self) -> int:
        return int(self._wavlm_config().num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self._wavlm_config().hidden_size)

    def train(self, mode: bool = True) -> FrozenPTM:
        return super().train(False)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        outputs = self.wavlm(wave, output_hidden_states=True)
        return torch.stack(outputs.hidden_states, dim=1)


class TrainablePTM(FrozenPTM):
    """The same with `fusion.ptm.freeze: false`: the WavLM trains with the backend."""

    def __init__(self, wavlm: nn.Module):
        nn.Module.__init__(self)
        self.wavlm = wavlm

    def train(self, mode: bool = True) -> TrainablePTM:
        return nn.Module.train(self, mode)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.wavlm(wave, output_hidden_states=True).hidden_states, dim=1)
