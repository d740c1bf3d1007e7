"""Building blocks of ReDimNet.

Attribute names (`conv1pw`, `dwconvs`, `exitation`, `feed_forward.intermediate_dense`, ...) are
those of the official implementation on purpose: they are the state-dict keys of every
published checkpoint, and keeping them lets official files load without a translation table.
Class names, in contrast, say what each block does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of `x [B, C, ...]` (ConvNeXt's channels_first variant)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class ToSequence(nn.Module):
    """`[B, C, F, T]` -> `[B, F*C, T]`: ReDimNet's 2D-to-1D reshape (frequency-major)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, freqs, frames = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, channels * freqs, frames)


class ToImage(nn.Module):
    """`[B, F*C, T]` -> `[B, C, F, T]`, the inverse of `ToSequence`."""

    def __init__(self, freqs: int, channels: int):
        super().__init__()
        self.freqs = freqs
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames = x.shape
        return x.reshape(batch, self.freqs, self.channels, frames).permute(0, 2, 1, 3)

    def extra_repr(self) -> str:
        return f"freqs={self.freqs}, channels={self.channels}"


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of earlier stage outputs, each `[B, C, T]` (ReDimNet's skip fusion).

    `w [1, N, C or 1, 1]` holds one logit per (earlier output, channel).
    """

    def __init__(self, num_inputs: int, channels: int, requires_grad: bool = True):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, num_inputs, channels, 1), requires_grad=requires_grad)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = F.softmax(self.w, dim=1)
        return (weights * torch.stack(list(inputs), dim=1)).sum(dim=1)

    def extra_repr(self) -> str:
        return f"w={tuple(self.w.shape)}"


class ConvNeXtLikeBlock(nn.Module):
    """Residual block: parallel depthwise convs -> BN -> GELU/ReLU -> pointwise conv (1D or 2D)."""

    def __init__(
        self,
        channels: int,
        dim: int = 2,
        kernel_sizes: Sequence = ((3, 3),),
        group_divisor: int | None = 1,
        activation: str = "gelu",
    ):
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        groups = channels // group_divisor if group_divisor is not None else 1
        self.dwconvs = nn.ModuleList(
            conv(channels, channels, kernel_size=ks, padding="same", groups=groups) for ks in kernel_sizes
        )
        self.norm: nn.Module = norm(channels * len(kernel_sizes))  # the inference form folds it: nn.Identity
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.pwconv1 = conv(channels * len(kernel_sizes), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([dwconv(x) for dwconv in self.dwconvs], dim=1)
        return x + self.pwconv1(self.act(self.norm(y)))


class FrequencySqueezeExcitation(nn.Module):
    """Frequency-wise squeeze-and-excitation: rescales each frequency bin of `[B, C, F, T]`."""

    def __init__(self, num_freqs: int, hidden: int = 64):
        super().__init__()
        self.squeeze = nn.Linear(num_freqs, hidden)
        self.exitation = nn.Linear(hidden, num_freqs)  # (sic) official key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.exitation(F.relu(self.squeeze(x.mean(dim=(1, 3))))))
        return x * gate[:, None, :, None]


class ResidualBasicBlock(nn.Module):
    """ResNet basic block with grouped 3x3 + pointwise convs, optional frequency-wise SE."""

    def __init__(
        self,
        channels: int,
        num_freqs: int,
        se_channels: int = 64,
        group_divisor: int | None = 4,
        frequency_se: bool = False,
    ):
        super().__init__()
        grouped = group_divisor is not None
        groups = channels // group_divisor if group_divisor is not None else 1
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv1pw = nn.Conv2d(channels, channels, 1) if grouped else nn.Identity()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=groups)
        self.conv2pw = nn.Conv2d(channels, channels, 1) if grouped else nn.Identity()
        self.bn2: nn.Module = nn.BatchNorm2d(channels)  # the inference form folds it: nn.Identity
        self.se = FrequencySqueezeExcitation(num_freqs, se_channels) if frequency_se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU before BN in the first half is the official order; kept for checkpoint parity.
        out = self.bn1(F.relu(self.conv1pw(self.conv1(x))))
        out = self.se(self.bn2(self.conv2pw(self.conv2(out))))
        return F.relu(out + x)


class MultiHeadSelfAttention(nn.Module):
    """Self-attention over `x [B, T, C]` with separate q/k/v/out projections."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"attention width {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.num_heads, width // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, width))


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer on channels-first input `x [B, C, T]`."""

    def __init__(self, width: int, mlp_width: int, num_heads: int = 4, eps: float = 1e-6):
        super().__init__()
        self.attention = MultiHeadSelfAttention(width, num_heads)
        self.layer_norm = nn.LayerNorm(width, eps=eps)
        self.feed_forward = FeedForward(width, mlp_width)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        x = self.layer_norm(x + self.attention(x))
        x = self.final_layer_norm(x + self.feed_forward(x))
        return x.transpose(1, 2)


class ConvPositionalEncoding(nn.Module):
    """Residual depthwise conv + LayerNorm that injects position into `x [B, C, T]`."""

    def __init__(self, channels: int, kernel_size: int, groups: int | None = None):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"positional conv kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=channels if groups is None else groups,
        )
        self.norm = ChannelsFirstLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv(x))
