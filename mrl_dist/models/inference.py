"""The trunk's inference form: a frozen, eval-only copy of ReDimNet / ReDimNet2 / ReDimNetMRL
that runs faster (ReDimNet2 gets the same rewrites; its GroupNorms, upsampling and TF-style
front-end stay as they are).

Everything that only reads the trunk (validation, pooled-feature caching, evaluation, teachers in
distillation, embedding extraction) can run `inference_form(model)` instead of `model.eval()`:

    fast = inference_form(model)              # a new module; `model` is not touched
    with inference_context():                 # = torch.inference_mode()
        pooled = fast.pooled(wave)            # equal to model.eval().pooled(wave) within 1e-5

The copy keeps the class and the interface the evaluation code duck-types (`pooled`, `head`,
`native`, `native_embedding`, `embed_pooled`, `dims`, `trunk_frozen`, `forward`, `forward_all`,
`extract`), is in eval mode for good (`train(True)` keeps it in eval mode, so a teacher held inside
a training module never turns dropout or SpecAugment on), and no parameter requires grad. Its
state dict is *not* a checkpoint (folded values, BatchNorms gone): save the training form.

What changes, and why each change is exact (in real arithmetic; float32 results differ from the
plain form by rounding only, well inside 1e-5, checked by tests/test_inference_form.py):

1. BatchNorm folding. In eval mode a BatchNorm is the per-channel affine map
   `y = (x - mean) * g / sqrt(var + eps) + b`; when its input is a convolution's (or a Linear's)
   output *directly*, the map is folded into that layer's weight (rows scaled) and bias, and the
   BatchNorm becomes `nn.Identity`. Folded pairs, read from the forward code, not from names:
     - `ConvNeXtLikeBlock`: `norm(cat(dwconvs(x)))`; each depthwise conv takes its slice of `norm`;
     - `ResidualBasicBlock`: `bn2(conv2pw(conv2(x)))` into `conv2pw` (into `conv2` when `conv2pw`
       is the Identity of ungrouped blocks);
     - any `nn.Sequential` whose child *i* is a conv and child *i+1* a BatchNorm: the stage
       squeeze `(Conv2d, BatchNorm2d, act, Conv2d)` and `mfa = (Conv1d, BatchNorm1d)`;
     - the embedding layer's `bn2` after `linear` (ReDimNet and the MRL `native` head; `emb_bn`).
   Not folded, because it would not be exact or not be "preceding": `ResidualBasicBlock.bn1`
   (it follows a ReLU, and folding it into the next conv would change that conv's zero padding at
   the borders), the input BatchNorm of the embedding layers (`bn` before `linear`; it costs
   nothing at [B, P]), and the front-end's optional `spec_norm_bn` (after the log).
2. Layer mixes (`WeightedLayerSum`): the softmax of the fixed logits is computed once, and the
   weighted sum is accumulated input by input instead of stacking every earlier stage output into
   one [B, N, C*F, T] tensor; the single-input mix of stage 0 (weight softmax([0]) = 1) is the
   identity.
3. Attentive pooling with global context: `linear1(cat([x, mean, std]))` is split into
   `W_x x + (W_m mean + W_s std)`; the context half is computed once per utterance on [B, 2D]
   instead of on the T-times repeated [B, 2D, T] copy (2/3 of the layer's work and its 3x input);
   the utterance std uses the two-pass variance (torch.var's one-pass kernel is several times slower).
4. Front-end: the 2-tap pre-emphasis `conv1d` over a 1-channel signal (most of the front-end's
   time) becomes one multiply-add of shifted slices, with the filter's own taps
   (the log-mels came out bit-identical on the CPU measured).
5. Layouts (`channels_last=True`): the 2D part runs in channels-last memory (its grouped 3x3 and
   1x1 convolutions are several times faster in oneDNN that way), and inside each 1D
   `TimeContextBlock` the hidden features stay time-major ([B, T, C] in memory), so the depthwise
   convolutions run as channels-last 2D convolutions, the transformer's transposes are free and
   the LayerNorms are `F.layer_norm` (same formula); the 1x1 convolutions of the 1D part and of
   the pooling are matrix products. Only memory layouts and kernels change, not the formulas.
6. `compile=True` additionally wraps the backbone and the pooling in `torch.compile` (the first
   call per input length compiles); it was no faster on the CPU measured, so it is off by
   default.

Speed-ups, the machine and the command that measured them: docs/benchmarks.md, "Trunk inference
form (CPU)".
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Callable, Iterator
from typing import TypeGuard, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import has_adapters, merge_adapters
from .frontend import MelFrontend
from .heads import NativeHead
from .layers import (
    ChannelsFirstLayerNorm,
    ConvNeXtLikeBlock,
    ResidualBasicBlock,
    ToImage,
    WeightedLayerSum,
)
from .mrl import ReDimNetMRL
from .pooling import AttentiveStatsPooling
from .redimnet import ReDimNet, TimeContextBlock
from .redimnet2 import ReDimNet2
from .ssrfnet import SSRFNet, SSRFNetTrunk

_CONVS = (nn.Conv1d, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

__all__ = ["inference_context", "inference_form", "is_inference_form", "unfolded_batchnorms"]


@contextlib.contextmanager
def inference_context() -> Iterator[None]:
    """Where an inference form runs: `torch.inference_mode()` (no autograd, no version counters)."""
    with torch.inference_mode():
        yield


_Model = TypeVar("_Model", bound=nn.Module)


def inference_form(model: _Model, *, channels_last: bool = True, compile: bool = False) -> _Model:
    """A new, eval-only, faster copy of a ReDimNet or ReDimNetMRL (see the module docstring).

    `model` is deep-copied first and never modified (it may be in training, on any device). The
    result has the same class and interface, equal outputs within 1e-5 (float32), is in eval mode
    for good and requires no grad. `trunk_frozen` (ReDimNetMRL) keeps the value of `model`, except
    that adapters are merged into the copy's weights (the copy's trunk is then frozen).
    `channels_last=False` keeps the plain layouts (folding and the other rewrites still apply);
    `compile=True` wraps the backbone and the pooling in `torch.compile`.
    """
    if not isinstance(model, (ReDimNet, ReDimNet2, SSRFNet, ReDimNetMRL)):
        raise TypeError(
            f"inference_form: expected a ReDimNet, ReDimNet2, SSRFNet or ReDimNetMRL, got {type(model).__name__}"
        )
    form = copy.deepcopy(model)
    if has_adapters(form):  # LoRA wrappers (models/adapters.py) become the plain layers they equal
        merge_adapters(form)
    form.eval()
    for param in form.parameters():
        param.grad = None
    form.requires_grad_(False)
    with torch.no_grad():
        if type(form.spec) is MelFrontend:
            form.spec.__class__ = _FastMelFrontend
        _fold_batchnorms(form)
        _replace(form, WeightedLayerSum, _FixedWeightedSum)
        _replace(form, AttentiveStatsPooling, _SplitContextAttentiveStatsPooling)
        if channels_last and not isinstance(form.backbone, SSRFNetTrunk):  # SSRFNet: folding only
            _to_fast_layouts(form)
    form.requires_grad_(False)
    form.eval()
    # Eval for good: `Module.train` of a parent calls `child.train(mode)`, which lands here.
    # A per-instance override on purpose (the copy keeps its class), which mypy forbids for methods.
    form.train = types.MethodType(stay_in_eval, form)  # type: ignore[method-assign]
    # nn.Module.__setattr__ takes any value; torch's annotation says Tensor | Module.
    form._inference_form = True  # type: ignore[assignment]
    if compile:
        if not hasattr(nn.Module, "compile"):
            raise RuntimeError(
                f"inference_form(compile=True) needs torch >= 2.2 (nn.Module.compile); "
                f"this is torch {torch.__version__}"
            )
        form.get_submodule("backbone").compile()
        form.get_submodule("pool").compile()
    return form


def is_inference_form(model: nn.Module) -> bool:
    return bool(getattr(model, "_inference_form", False))


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules still in `model` (those folding leaves, see the docstring)."""
    return [name for name, module in model.named_modules() if isinstance(module, _BATCHNORMS)]


def stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a module pinned to eval mode (bound with `types.MethodType`): whatever `mode`."""
    return nn.Module.train(self, False)


# ---------------------------------------------------------------------------- BatchNorm folding
def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) float64 of an eval-mode BatchNorm: bn(x) = x * scale + shift per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _fold_into(layer: nn.Conv1d | nn.Conv2d | nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """layer(x) * scale + shift (per output channel) -> one layer (Conv*d or Linear)."""
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.ndim - 1)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_weight = (weight.double() * scale.view(shape)).to(weight.dtype)
    new_bias = (bias * scale + shift).to(weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=False)
    layer.bias = nn.Parameter(new_bias, requires_grad=False)


def _fold_batchnorms(model: nn.Module) -> None:
    for module in list(model.modules()):
        if isinstance(module, ConvNeXtLikeBlock) and isinstance(module.norm, _BATCHNORMS):
            scale, shift = _bn_affine(module.norm)
            start = 0
            for conv in module.dwconvs:
                conv = cast(nn.Conv1d | nn.Conv2d, conv)  # ConvNeXtLikeBlock builds dwconvs of ConvNd only
                stop = start + conv.out_channels
                _fold_into(conv, scale[start:stop], shift[start:stop])
                start = stop
            module.norm = nn.Identity()
        elif isinstance(module, ResidualBasicBlock) and isinstance(module.bn2, _BATCHNORMS):
            target = module.conv2pw if isinstance(module.conv2pw, _CONVS) else module.conv2
            _fold_into(target, *_bn_affine(module.bn2))
            module.bn2 = nn.Identity()
        elif isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (_, first), (name, second) in zip(children, children[1:]):
                if isinstance(first, _CONVS) and isinstance(second, _BATCHNORMS):
                    _fold_into(first, *_bn_affine(second))
                    module._modules[name] = nn.Identity()
        elif isinstance(module, (ReDimNet, ReDimNet2, NativeHead)) and isinstance(module.bn2, nn.BatchNorm1d):
            _fold_into(module.linear, *_bn_affine(module.bn2))
            module.bn2 = nn.Identity()


# ---------------------------------------------------------------------------- module rewrites
class _FastMelFrontend(MelFrontend):
    """`MelFrontend` with the pre-emphasis as one multiply-add of shifted slices instead of a
    2-tap `conv1d` over a 1-channel signal (oneDNN's slowest case: most of the front-end's time)."""

    def preemphasise(self, wave: torch.Tensor) -> torch.Tensor:
        # conv1d(reflect_pad(x, (1, 0)), [w0, w1])[t] = w0 * x[t - 1] + w1 * x[t], x[-1] = x[1]
        previous = torch.cat([wave[:, 1:2], wave[:, :-1]], dim=1)
        w0, w1 = self.preemphasis_filter[0, 0, 0], self.preemphasis_filter[0, 0, 1]
        return torch.addcmul(previous * w0, wave, w1)


_Kind = TypeVar("_Kind", bound=nn.Module)


def _replace(model: nn.Module, kind: type[_Kind], factory: Callable[[_Kind], nn.Module | None]) -> None:
    """Replace every submodule of type `kind` by `factory(submodule)` (None: keep it)."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is kind:
                new = factory(child)
                if new is not None:
                    parent._modules[name] = new


class _FixedWeightedSum(nn.Module):
    """`WeightedLayerSum` with its softmax precomputed and no stacked copy of the inputs."""

    weights: torch.Tensor  # buffer [N, C or 1, 1]

    def __init__(self, source: WeightedLayerSum):
        super().__init__()
        weights = F.softmax(source.w.detach(), dim=1)[0]  # [N, C or 1, 1], as the original computes it
        self.register_buffer("weights", weights.clone())
        self.identity = weights.shape[0] == 1 and bool((weights == 1).all())

    def forward(self, inputs) -> torch.Tensor:
        if self.identity:
            return inputs[0]
        out = inputs[0] * self.weights[0]
        for x, w in zip(inputs[1:], self.weights[1:]):
            out.addcmul_(x, w)
        return out


class _SplitContextAttentiveStatsPooling(nn.Module):
    """`AttentiveStatsPooling` whose global-context half of `linear1` runs on [B, 2D], not [B, 2D, T]."""

    context_weight: torch.Tensor  # buffer [H, 2D], with global_context_att only

    def __init__(self, source: AttentiveStatsPooling):
        super().__init__()
        self.in_dim = source.in_dim
        self.global_context_att = source.global_context_att
        self.linear1 = source.linear1
        self.linear2 = source.linear2
        if self.global_context_att:
            if source.linear1.bias is None:  # AttentiveStatsPooling builds linear1 with a bias
                raise ValueError("cannot split the attentive pooling: its linear1 has no bias")
            weight = source.linear1.weight.detach()[:, :, 0]  # [H, 3D]
            self.register_buffer("context_weight", weight[:, self.in_dim :].clone())  # [H, 2D]
            self.linear1 = nn.Conv1d(self.in_dim, weight.shape[0], 1).to(weight)
            self.linear1.weight = nn.Parameter(
                source.linear1.weight.detach()[:, : self.in_dim].clone(), requires_grad=False
            )
            self.linear1.bias = nn.Parameter(source.linear1.bias.detach().clone(), requires_grad=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
        hidden = self.linear1(x)
        if self.global_context_att:
            # torch.var's one-pass (Welford) kernel is several times slower than the two-pass formula.
            frame_mean = x.mean(dim=-1, keepdim=True)
            frame_var = (x - frame_mean).square_().sum(dim=-1) / (x.shape[-1] - 1)
            context = torch.cat([frame_mean.squeeze(-1), torch.sqrt(frame_var + 1e-7)], dim=1)  # [B, 2D]
            hidden = hidden + (context @ self.context_weight.T).unsqueeze(-1)
        alpha = torch.softmax(self.linear2(torch.tanh(hidden)), dim=2)
        weighted = alpha * x
        mean = torch.sum(weighted, dim=2)
        var = torch.sum(weighted.mul_(x), dim=2) - mean.square()
        return torch.cat([mean, torch.sqrt(var.clamp(min=1e-7))], dim=1)


# ---------------------------------------------------------------------------- layouts
class _ChannelsLastToImage(nn.Module):
    """`ToImage` whose output `[B, C, F, T]` is channels-last in memory."""

    def __init__(self, source: ToImage):
        super().__init__()
        self.freqs, self.channels = source.freqs, source.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames = x.shape
        image = x.reshape(batch, self.freqs, self.channels, frames).permute(0, 2, 1, 3)
        return image.contiguous(memory_format=torch.channels_last)


class _TimeMajorLayerNorm(nn.Module):
    """`ChannelsFirstLayerNorm` as `F.layer_norm` over the channels moved last (same formula);
    the output is channels-last (time-major) in memory."""

    def __init__(self, source: ChannelsFirstLayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = source.weight, source.bias, source.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, *range(2, x.ndim), 1)
        inverse = (0, x.ndim - 1, *range(1, x.ndim - 1))
        out = F.layer_norm(x.permute(dims), (x.shape[1],), self.weight, self.bias, self.eps)
        return out.permute(inverse)


class _PointwiseConv1d(nn.Module):
    """A 1x1 `Conv1d` as a matrix product, `[B, Cin, T]` (any layout) -> `[B, Cout, T]`,
    time-major (`[B, T, Cout]` in memory) or contiguous."""

    def __init__(self, source: nn.Conv1d, time_major: bool):
        super().__init__()
        self.weight = nn.Parameter(source.weight.detach()[:, :, 0].clone(), requires_grad=False)
        bias = source.bias.detach().clone() if source.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.time_major = time_major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_major:
            return F.linear(x.transpose(1, 2), self.weight, self.bias).transpose(1, 2)
        out = torch.matmul(self.weight, x)
        return out if self.bias is None else out.add_(self.bias.unsqueeze(-1))


class _ChannelsLastConv1d(nn.Module):
    """A `Conv1d` run as a channels-last `Conv2d` on `[B, C, 1, T]` (oneDNN's fast depthwise path);
    the output is time-major in memory."""

    def __init__(self, source: nn.Conv1d):
        super().__init__()
        self.weight = nn.Parameter(
            source.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last), requires_grad=False
        )
        self.bias = nn.Parameter(source.bias.detach().clone(), requires_grad=False) if source.bias is not None else None
        padding = source.padding
        self.padding = padding if isinstance(padding, str) else (0, padding[0])
        self.stride, self.dilation, self.groups = (1, source.stride[0]), (1, source.dilation[0]), source.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = F.conv2d(image, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return out.squeeze(2)


class _FastConvNeXtLikeBlock(nn.Module):
    """`ConvNeXtLikeBlock` (norm folded) without the copy `cat` makes of a single branch."""

    def __init__(self, source: ConvNeXtLikeBlock):
        super().__init__()
        self.dwconvs, self.norm, self.act, self.pwconv1 = source.dwconvs, source.norm, source.act, source.pwconv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.dwconvs) == 1:
            y = self.dwconvs[0](x)
        else:
            y = torch.cat([dwconv(x) for dwconv in self.dwconvs], dim=1)
        return x + self.pwconv1(self.act(self.norm(y)))


def _pointwise(conv: nn.Module | None) -> TypeGuard[nn.Conv1d]:
    return (
        isinstance(conv, nn.Conv1d)
        and conv.kernel_size == (1,)
        and conv.groups == 1
        and conv.stride == (1,)
        and conv.padding in ((0,), "valid", "same")
    )


def _zero_padded(conv: nn.Module | None) -> TypeGuard[nn.Conv1d]:
    return isinstance(conv, nn.Conv1d) and conv.padding_mode == "zeros"


def _to_fast_layouts(form: nn.Module) -> None:
    # 2D part: channels-last images, channels-last weights.
    _replace(form, ToImage, _ChannelsLastToImage)
    for module in form.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    _replace(form, ConvNeXtLikeBlock, _FastConvNeXtLikeBlock)
    # Stem LayerNorm [B, C, F, T]: its output goes to ToSequence, which copies anyway.
    _replace(form.get_submodule("backbone.stem"), ChannelsFirstLayerNorm, _TimeMajorLayerNorm)
    # 1D blocks: time-major inside; the block's output (x + exp_dim_conv(...)) is contiguous.
    for block in form.modules():
        if not isinstance(block, TimeContextBlock):
            continue
        if _pointwise(block.exp_dim_conv):
            block.exp_dim_conv = _PointwiseConv1d(block.exp_dim_conv, time_major=False)
        for parent in [block.red_dim_conv, block.tcm, *block.tcm.modules()]:
            for name, child in list(parent._modules.items()):
                if isinstance(child, ChannelsFirstLayerNorm):
                    parent._modules[name] = _TimeMajorLayerNorm(child)
                elif _pointwise(child):
                    parent._modules[name] = _PointwiseConv1d(child, time_major=True)
                elif _zero_padded(child):
                    parent._modules[name] = _ChannelsLastConv1d(child)
    # Pooling and ReDimNet's mfa: 1x1 convolutions as matrix products, contiguous output.
    mfa = getattr(form.backbone, "mfa", nn.Identity())
    for parent in [form.pool, mfa, *mfa.modules()]:
        for name, child in list(parent._modules.items()):
            if _pointwise(child):
                parent._modules[name] = _PointwiseConv1d(child, time_major=False)
