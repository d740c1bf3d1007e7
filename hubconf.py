"""torch.hub entry points of this repository: ReDimNet, ReDimNet2 and Matryoshka (MRL) models.

    model = torch.hub.load("OWNER/REPO", "redimnet_mrl", checkpoint="RUN/best.pt" or URL, dim=128)
    model = torch.hub.load("OWNER/REPO", "redimnet", name="b2", train_type="ft_lm")
    model = torch.hub.load("OWNER/REPO", "redimnet2", name="b3")  # = redimnet(name="redimnet2-b3")
    model = torch.hub.load("/path/to/checkout", "redimnet", name="official.pt", source="local")

Every model comes back in eval mode: `model(wave [B, T] float32 16 kHz) -> [B, dim]`. The code is
this repository's `mrl_dist` (torch.hub puts the repository first on sys.path while it loads
this file); what the entry points do is in mrl_dist/export/hub.py.
"""

import warnings
from pathlib import Path

dependencies = ["torch"]

import mrl_dist  # noqa: E402  (after `dependencies`, which torch.hub checks first)

_HERE = Path(__file__).resolve().parent
if Path(mrl_dist.__file__).resolve().parent.parent != _HERE:
    warnings.warn(
        f"hubconf.py in {_HERE} runs the mrl_dist already imported from {Path(mrl_dist.__file__).parent} "
        f"(it was imported before torch.hub.load); restart Python to use this repository's code",
        stacklevel=2,
    )


def redimnet_mrl(checkpoint, dim=None):
    """A Matryoshka ReDimNet from an MRL checkpoint (`RUN/best.pt`, a path or an http(s) URL,
    downloaded once into torch hub's cache): `model(wave) -> [B, dim]`, `dim` one of the
    checkpoint's dims (None: the largest). The full ReDimNetMRL is `model.model`."""
    from mrl_dist.export.hub import load_mrl

    return load_mrl(checkpoint, dim)


def redimnet(name="b2", train_type=None, dataset=None):
    """An official ReDimNet or ReDimNet2 model: a name (`b0`..`b6`, `M`, default weights ft_lm on
    vox2; `redimnet2-b0`..`redimnet2-b6`, default lm on vox2), or an official file's path or URL.
    `model(wave) -> [B, 192]`."""
    from mrl_dist.export.hub import load_official

    return load_official(name, train_type=train_type, dataset=dataset)


def redimnet2(name="b3", train_type=None, dataset=None):
    """An official ReDimNet2 model by its size (`b0`..`b6`, default weights lm on vox2), or a path."""
    from mrl_dist.export.hub import load_official, redimnet2_name

    return load_official(redimnet2_name(name), train_type=train_type, dataset=dataset)
