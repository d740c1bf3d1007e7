"""The one loader of a checkpoint file of any kind: an MRL checkpoint (`mrl_config` beside the
trunk's `model_config`) or an official ReDimNet, ReDimNet2 or SSRFNet file. The file is read once;
evaluation, export, the hub and enrolment all load through here.

It sits above both `loading` (official files) and `mrl` (ReDimNetMRL), which it joins, so that
neither imports the other's way back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .encoder import SpeakerEncoder
from .families import model_family
from .loading import check_payload, official_model_from_payload, read_checkpoint
from .mrl import ReDimNetMRL


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file's model, in eval mode, and what the file was.

    `kind`: "mrl" (a file with `mrl_config`: a ReDimNetMRL) or "official" (the plain model of
    its `model_config`); `family`: the trunk's family ("redimnet", "redimnet2", "ssrfnet", see
    `model_family`); `description`: one line for logs and reports."""

    model: ReDimNetMRL | SpeakerEncoder
    kind: str
    family: str
    description: str


def model_from_payload(payload: Mapping[str, Any], source: str | os.PathLike) -> LoadedCheckpoint:
    """The model of a checkpoint dict already read (`read_checkpoint`), whatever the kind: an
    MRL file (it has `mrl_config`) gives a ReDimNetMRL, an official ReDimNet, ReDimNet2 or
    SSRFNet file that model. `source` names the file in errors."""
    payload = check_payload(payload, source)
    family = model_family(payload["model_config"])
    if "mrl_config" in payload:
        mrl_model = ReDimNetMRL.from_payload(payload, source)
        native = ", native" if mrl_model.native is not None else ""
        return LoadedCheckpoint(mrl_model, "mrl", family, f"ReDimNetMRL on {family} (dims {mrl_model.dims}{native})")
    model = official_model_from_payload(payload, source)
    description = f"{type(model).__name__} (official file, native embedding of {model.embed_dim})"
    return LoadedCheckpoint(model, "official", family, description)


def load_any_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """The eval model of any checkpoint file, MRL or official (see `model_from_payload`); the
    file is read once. A caller that refuses some kinds before building reads the payload with
    `read_checkpoint`, checks it, and passes it to `model_from_payload`."""
    return model_from_payload(read_checkpoint(path), path)
