"""Which model family a `model_config` describes, and building it: ReDimNet, ReDimNet2, SSRFNet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .encoder import SpeakerEncoder
from .redimnet import ReDimNet
from .redimnet2 import REDIMNET2_ONLY_KEYS, ReDimNet2


def model_family(model_config: Mapping[str, Any]) -> str:
    """ "ssrfnet", "redimnet2" or "redimnet": which model a `model_config` belongs to. SSRFNet's
    say so (`family: ssrfnet`, this project's format). ReDimNet2's
    carry keys ReDimNet's never do (`causal`, `dual_agg`, `agg_gnorm`, ...) and give each stage a
    (frequency, time) stride pair where ReDimNet gives one number."""
    if model_config.get("family") == "ssrfnet":
        return "ssrfnet"
    stages = model_config.get("stages_setup") or [[None]]
    if REDIMNET2_ONLY_KEYS & set(model_config) or isinstance(stages[0][0], (list, tuple)):
        return "redimnet2"
    return "redimnet"


def build_model(model_config: Mapping[str, Any]) -> SpeakerEncoder:
    """The randomly initialised model of the family `model_config` describes."""
    family = model_family(model_config)
    if family == "ssrfnet":
        from .ssrfnet import SSRFNet  # transformers is needed only when its PTM is built

        return SSRFNet(**model_config)
    return (ReDimNet2 if family == "redimnet2" else ReDimNet)(**model_config)
