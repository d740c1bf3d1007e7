"""ReDimNetMRL: one ReDimNet trunk, one Matryoshka head whose output prefixes are the embeddings.

    wave [B, T] -> spec -> backbone -> pool -> pooled [B, P]
                -> head: BatchNorm(P) -> Linear(P -> max_dim) -> emb [B, max_dim]
    emb[:, :d] is the d-dimensional embedding for every d in `dims` (e.g. 64, 128, 192, 256).

Why the head initialisation matters: the previous attempt trained this projection from scratch
and lost most of the pretrained accuracy (0.57% -> 5.6-7.2% EER). Here the head starts from the
pretrained embedding layer:
  - "pretrained": rows [0, embed_dim) are the pretrained BatchNorm + Linear, so the 192-D prefix
    *is* the native embedding before any training; extra rows start small and random.
  - "pca": the same layer rotated so its principal directions (over pooled features of real
    batches) come first; every prefix is then the best linear truncation of the native
    embedding, and the full embed_dim prefix is an exact rotation of it (same cosine scores).
    The rotation is uncentred (principal axes of E[e e^T]) by default: removing a mean
    estimated from a few batches shifted the cosine geometry and cost accuracy on the demo
    (192-D: 6.00% vs 5.47% EER; 32-D: 6.26% vs 5.63%).
  - "random": a fresh head, for training from scratch.
The pretrained embedding layer also stays as `native` (frozen) so validation can report it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HEAD_INITS, HEAD_TYPES
from .adapters import (
    adapter_record,
    has_adapters,
    mark_merged,
    merge_adapters,
    merged_provenance,
    set_adapter_training,
)
from .encoder import SpeakerEncoder, Trunk
from .heads import MatryoshkaHead, NativeHead
from .loading import (
    OFFICIAL_KEYS,
    atomic_save,
    build_model,
    check_payload,
    official_state_dict,
    official_to_local,
    read_checkpoint,
)
from .rotation_head import RotationHead

MRL_CHECKPOINT_KEYS = (*OFFICIAL_KEYS, "mrl_config")  # what `save_checkpoint` writes


class ReDimNetMRL(nn.Module):
    # The trunk's modules, taken over from a SpeakerEncoder (see __init__).
    spec: nn.Module
    backbone: Trunk
    pool: nn.Module
    native: NativeHead | None
    head: MatryoshkaHead | RotationHead  # a RotationHead with `head_type: rotation` (from_redimnet)

    def __init__(
        self,
        model_config: dict[str, Any],
        dims: Sequence[int] = (64, 128, 192, 256),
        keep_native: bool = True,
        head_init: str = "random",
        *,
        trunk: SpeakerEncoder | None = None,
    ):
        """Architecture only (random weights); use `from_redimnet` / `from_checkpoint` to fill it.

        `trunk`: a built model of `model_config` (ReDimNet, ReDimNet2 or SSRFNet) whose front-end,
        backbone, pooling and embedding layer this model takes over (shared, not copied) instead
        of building random ones; its parameters' requires_grad flags are taken as the design's."""
        super().__init__()
        redimnet = build_model(model_config) if trunk is None else trunk
        self.model_config = redimnet.model_config
        self.embed_dim = redimnet.embed_dim
        self.spec, self.backbone, self.pool = redimnet.spec, redimnet.backbone, redimnet.pool
        self.native = NativeHead(redimnet) if keep_native else None
        self.head = MatryoshkaHead(redimnet.pool_out_dim, dims)
        self.head_init = head_init
        # Parameters the official design keeps fixed (single-input layer mixes) stay fixed
        # whatever is frozen or unfrozen later.
        self._trainable_by_design = {n for n, p in self.named_parameters() if p.requires_grad}
        self._frozen: set[str] = set()

    @property
    def dims(self) -> list[int]:
        return self.head.dims

    @property
    def max_dim(self) -> int:
        return self.head.dims[-1]

    @property
    def mrl_config(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "head_init": self.head_init, "keep_native": self.native is not None}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_redimnet(
        cls,
        redimnet: SpeakerEncoder,
        dims: Sequence[int] = (64, 128, 192, 256),
        head_init: str = "pca",
        pooled_features: torch.Tensor | None = None,
        keep_native: bool = True,
        pca_center: bool = False,
        seed: int = 0,
        head_type: str = "linear",
        train_extra_dims: bool = False,
        weights_arrive_later: bool = False,
    ) -> ReDimNetMRL:
        """Wrap a (pretrained) ReDimNet, ReDimNet2 or SSRFNet; `pooled_features [N, P]` are needed
        for `head_init="pca"`.

        The model takes over `redimnet`'s own modules (front-end, backbone, pooling and, with
        `keep_native`, its embedding layer), where they are, without copying them: training or
        freezing the one changes the other, so pass `copy.deepcopy(redimnet)` to keep the
        original apart. Only the Matryoshka head is new; a `cls_head` of `redimnet` is left out.

        `head_type`: "linear" (BatchNorm + Linear, every weight trained) or "rotation" (the native
        embedding rotated by a trained orthogonal matrix, plus trained extra dims; needs a
        pretrained start, head_init "pca" or "pretrained").
        `weights_arrive_later`: the head's weights are about to be overwritten (a checkpoint, or
        rank 0's PCA head broadcast): build its structure without fitting it; `head_init` is
        still what the model records. Training decides it (and the rest) in train.modes.HeadPlan."""
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init: unknown value {head_init!r}; expected one of {HEAD_INITS}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type: unknown value {head_type!r}; expected one of {HEAD_TYPES}")
        if head_type == "rotation" and head_init == "random":
            raise ValueError(
                "head_type 'rotation' rotates the pretrained embedding: use head_init 'pca' or "
                "'pretrained', or head_type 'linear' for a random head"
            )
        model = cls(redimnet.model_config, dims, keep_native=keep_native, head_init=head_init, trunk=redimnet)
        generator = torch.Generator().manual_seed(seed)
        # Weights arriving later: the structure alone (a rotation head's comes from the native layer below).
        fit = "random" if weights_arrive_later else head_init
        if fit == "pretrained":
            model._init_head_from_native(redimnet, rotation=None, generator=generator)
        elif fit == "pca":
            if pooled_features is None:
                raise ValueError("head_init='pca' needs pooled_features [N, P] from a few training batches")
            rotation, mean = pca_rotation(NativeHead(redimnet), pooled_features, center=pca_center)
            model._init_head_from_native(redimnet, rotation=rotation, mean=mean, generator=generator)
        if head_type == "rotation":
            model.head = model._rotation_head(redimnet, rotation if fit == "pca" else None, generator, train_extra_dims)
        return model.train(redimnet.training)

    def _rotation_head(
        self,
        redimnet: SpeakerEncoder,
        rotation: torch.Tensor | None,
        generator: torch.Generator,
        train_extra_dims: bool,
    ) -> RotationHead:
        native = NativeHead(redimnet)
        weight, bias = native.folded_linear()
        # Extra dims start quiet, as for the linear head (see _init_head_from_native).
        return RotationHead(
            native.bn,
            weight,
            bias,
            self.dims,
            rotation=rotation,
            extra_std=0.1 * float(weight.std()),
            generator=generator,
            train_extra=train_extra_dims,
        )

    @torch.no_grad()
    def _init_head_from_native(
        self,
        redimnet: SpeakerEncoder,
        rotation: torch.Tensor | None,
        generator: torch.Generator,
        mean: torch.Tensor | None = None,
    ) -> None:
        head = self.head
        if not isinstance(head, MatryoshkaHead):
            raise TypeError(
                f"_init_head_from_native fits a MatryoshkaHead (BatchNorm + Linear), not a {type(head).__name__}"
            )
        native = NativeHead(redimnet)
        weight, bias = native.folded_linear()  # [E, P], [E]
        if mean is not None:
            bias = bias - mean
        if rotation is not None:  # rows become principal directions, strongest first
            weight, bias = rotation.T @ weight, rotation.T @ bias
        head.bn.load_state_dict(redimnet.bn.state_dict())
        rows = min(self.max_dim, weight.shape[0])
        head.linear.weight[:rows] = weight[:rows].to(head.linear.weight.dtype)
        head.linear.bias[:rows] = bias[:rows].to(head.linear.bias.dtype)
        if self.max_dim > rows:
            # New dimensions start an order of magnitude quieter than the pretrained ones, so
            # they add little to cosine scores until training makes them useful.
            extra = self.max_dim - rows
            std = 0.1 * float(weight.std())
            head.linear.weight[rows:] = torch.randn(extra, weight.shape[1], generator=generator) * std
            head.linear.bias[rows:] = 0.0

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        head: str | os.PathLike | None = None,
    ) -> ReDimNetMRL:
        """Load an MRL inference checkpoint written by `save_checkpoint` (eval mode).

        `adapter`: an adapter file (`RUN/adapter.pt`) applied, unmerged, onto the trunk of `path`,
        which must be its base (an MRL checkpoint, or the official-format backbone its run named);
        `head`: the MRL checkpoint whose head to use (the adapter run's `best.pt`; needed with an
        official base). See models/adapter_files.py."""
        if adapter is None and head is None:
            return cls.from_payload(read_checkpoint(path, required=MRL_CHECKPOINT_KEYS), path)
        if adapter is None:
            raise ValueError("from_checkpoint: `head` replaces an adapted model's head; pass `adapter` too")
        from .adapter_files import load_adapted_model  # it builds on this class: imported when used

        return load_adapted_model(path, adapter, head)

    def load_head_from(self, path: str | os.PathLike) -> None:
        """Start this model's Matryoshka head from the head of the MRL checkpoint `path` (a run on
        the same trunk: a head-only run before adapters, LMFT after a run). Refuses another
        trunk (naming the first weight that differs) or other dims."""
        payload = read_checkpoint(path, required=MRL_CHECKPOINT_KEYS)
        dims = list(payload["mrl_config"].get("dims", []))
        if dims != list(self.dims):
            raise ValueError(f"model.head_from: {path} has dims {dims}; this model's are {list(self.dims)}")
        state = official_to_local(payload["state_dict"])
        mine = self.state_dict()
        for key, value in state.items():
            if key.startswith(("head.", "native.")) or key not in mine:
                continue
            if mine[key].shape != value.shape or not torch.equal(mine[key].cpu(), value.cpu().to(mine[key].dtype)):
                raise ValueError(
                    f"model.head_from: {path} was trained on another trunk than model.backbone "
                    f"({key} differs); its head only fits its own trunk"
                )
        head = {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")}
        self.head.load_state_dict(head)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], source: str | os.PathLike = "checkpoint") -> ReDimNetMRL:
        """The eval model of an MRL checkpoint dict already read (`read_checkpoint`): what
        `checkpoint_payload` wrote. `source` names the file in errors."""
        payload = check_payload(payload, source, required=MRL_CHECKPOINT_KEYS)
        mrl = payload["mrl_config"]
        model = cls(
            payload["model_config"],
            mrl["dims"],
            keep_native=mrl.get("keep_native", True),
            head_init=mrl.get("head_init", "random"),
        )
        model.load_state_dict(official_to_local(payload["state_dict"]))
        if "adapter" in payload:  # adapters merged into its trunk (models/adapter_files.py)
            mark_merged(model, payload["adapter"])
        return model.eval()

    def checkpoint_payload(self) -> dict[str, Any]:
        """A rotation head is written as the linear head it equals, and adapters merged into the
        trunk's weights (what they were under `adapter`): the files load everywhere."""
        if has_adapters(self):
            merged = copy.deepcopy(self)
            merge_adapters(merged)
            return merged.checkpoint_payload()
        state = official_state_dict(self)
        if isinstance(self.head, RotationHead):
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            state.update({f"head.{k}": v.cpu() for k, v in self.head.materialise().state_dict().items()})
        payload = {"model_config": self.model_config, "mrl_config": self.mrl_config, "state_dict": state}
        if adapter_record(self) is not None:
            payload["adapter"] = merged_provenance(self)
        return payload

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write `{"model_config", "mrl_config", "state_dict"}` atomically (official key names)."""
        atomic_save(self.checkpoint_payload(), path)

    # ------------------------------------------------------------------ freezing
    def trunk_module_names(self) -> list[str]:
        names = [*[f"backbone.{part}" for part in self.backbone.part_names()], "pool"]
        if getattr(self.spec, "spec_norm_bn", None) is not None:
            names.insert(0, "spec.spec_norm_bn")
        if self.native is not None:
            names.append("native")
        return names

    def freeze_backbone(self) -> None:
        """Freeze front-end, backbone, pooling (and the native head): only `head` trains."""
        self.freeze(*self.trunk_module_names())

    def freeze(self, *names: str) -> None:
        for name in self._expand(names):
            self._frozen.add(name)
            for param in self.get_submodule(name).parameters():
                param.requires_grad_(False)
        self.train(self.training)

    def unfreeze(self, *names: str) -> None:
        """Unfreeze by name: `"stage5"`, `"backbone.stage5"`, `"pool"`, `"backbone"` or `"all"`."""
        for name in self._expand(names):
            self._frozen.discard(name)
            for param_name, param in self.get_submodule(name).named_parameters(prefix=name):
                param.requires_grad_(param_name in self._trainable_by_design)
        self.train(self.training)

    def _expand(self, names: Iterable[str]) -> list[str]:
        trunk = self.trunk_module_names()
        expanded = []
        for name in names:
            if name == "all":
                expanded += trunk
            elif name == "backbone":
                expanded += [n for n in trunk if n.startswith("backbone.")]
            elif name in trunk:
                expanded.append(name)
            elif f"backbone.{name}" in trunk:
                expanded.append(f"backbone.{name}")
            else:
                raise ValueError(
                    f"unknown part to (un)freeze: {name!r}; parts: all, backbone, "
                    f"{', '.join(n.removeprefix('backbone.') for n in trunk)}"
                )
        return expanded

    @property
    def frozen_parts(self) -> list[str]:
        return sorted(self._frozen)

    @property
    def trunk_frozen(self) -> bool:
        """Whether the trunk's output cannot change: frozen, and no unmerged adapters on it."""
        return not has_adapters(self) and all(
            name in self._frozen for name in self.trunk_module_names() if name != "native"
        )

    def train(self, mode: bool = True) -> ReDimNetMRL:
        super().train(mode)
        # Frozen parts keep their BatchNorm statistics and dropout off, whatever the mode.
        for name in self._frozen:
            self.get_submodule(name).eval()
        # The backbone container applies feature-aggregation dropout itself.
        if all(n in self._frozen for n in self.trunk_module_names() if n.startswith("backbone.")):
            self.backbone.eval()
        set_adapter_training(self, mode)  # adapters inside frozen parts still train (models/adapters.py)
        return self

    # ------------------------------------------------------------------ inference
    def pooled(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> `[B, P]`; without autograd when the whole trunk is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            return self.pool(self.backbone.features(self.spec, wave))

    def forward(self, wave: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """`wave [B, T]` float32 16 kHz -> `[B, dim or max_dim]`."""
        embedding = self.head(self.pooled(wave))
        return embedding if dim is None else embedding[:, : self._check_dim(dim)]

    def forward_all(self, wave: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every MRL prefix from one pass: `{dim: [B, dim]}`."""
        embedding = self.head(self.pooled(wave))
        return {d: embedding[:, :d] for d in self.dims}

    def native_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.native is None:
            raise RuntimeError("this model keeps no native embedding layer (keep_native=False)")
        return self.native(pooled)

    def _check_dim(self, dim: int) -> int:
        if not 0 < dim <= self.max_dim:
            raise ValueError(f"dim must be in 1..{self.max_dim}, got {dim}")
        return dim


@torch.no_grad()
def pca_rotation(native: NativeHead, pooled: torch.Tensor, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of the native embeddings of `pooled [N, P]`.

    Returns `rotation [E, E]` (columns = directions, by decreasing energy, sign fixed so the
    largest entry is positive) and the embedding mean `[E]` (zeros unless `center`).
    """
    weight, bias = native.folded_linear()
    bn = native.bn  # eval-mode arithmetic without switching anyone's module to eval and back
    normalised = F.batch_norm(
        pooled.to(bn.weight.dtype), bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
    )
    embeddings = normalised.double() @ weight.T + bias
    mean = embeddings.mean(dim=0) if center else torch.zeros(embeddings.shape[1], dtype=torch.float64)
    centred = embeddings - mean
    covariance = centred.T @ centred / max(1, centred.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, descending=True)
    rotation = eigenvectors[:, order]
    signs = torch.sign(rotation.gather(0, rotation.abs().argmax(dim=0, keepdim=True)))
    return rotation * signs, mean


@torch.no_grad()
def collect_pooled(
    redimnet: SpeakerEncoder | ReDimNetMRL, waves: Iterable[torch.Tensor], max_batches: int
) -> torch.Tensor:
    """Pooled features `[N, P]` of up to `max_batches` batches `wave [B, T]`, in eval mode."""
    was_training = redimnet.training
    redimnet.eval()
    device = next(redimnet.parameters()).device
    chunks = []
    for index, wave in enumerate(waves):
        if index >= max_batches:
            break
        chunks.append(redimnet.pooled(wave.to(device)).float().cpu())
    redimnet.train(was_training)
    if not chunks:
        raise ValueError("collect_pooled: no batches to compute pooled features from")
    return torch.cat(chunks)
