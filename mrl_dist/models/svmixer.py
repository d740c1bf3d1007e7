"""SV-Mixer, SSRFNet's student speech model, and the layer-prediction loss that distils a PTM into it.

    wave [B, T] -> WavLM-style CNN encoder (7 convs, 320x down: 50 Hz) -> LayerNorm -> Linear(-> D)
      -> L mixer blocks, each: token mixing (depthwise convs k7, k3 + an MLP across `seq_len`
         frames) then channel mixing (grouped 1x1 convs at full and half frame rate, a grouped
         k3 conv, a 1x1 conv), both residual
      -> states [B, L + 1, frames, D]: the input of every block, then the final LayerNorm's output

The token-mixing MLP acts on a fixed number of frames (149 for the public code's 3 s crops).
The public code only ever runs such crops; here longer or shorter inputs are cut into windows of
`seq_len` frames (the last zero-padded) that run as a batch and are joined again (our extension,
so that validation on whole utterances works).

`LayerPredictionLoss` (DistilHuBERT's): one Linear-GELU-Linear head per target teacher layer on
the student's last state; per head mean |pred - teacher| minus `cos_lambda` x the sum over frames
of log sigmoid(cos(pred, teacher)); heads summed, batch averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TokenMixing(nn.Module):
    def __init__(self, dim: int, seq_len: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.local_mix1 = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.local_mix2 = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.linear1 = nn.Linear(seq_len, hidden)
        self.linear2 = nn.Linear(hidden, seq_len)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, seq_len, D]
        y = self.norm(x).transpose(1, 2)
        local = self.local_mix2(F.gelu(self.local_mix1(y)))
        across = self.linear2(F.gelu(self.linear1(y)))
        return x + self.dropout(local + across).transpose(1, 2)


class ChannelMixing(nn.Module):
    def __init__(self, dim: int, seq_len: int, hidden: int, group_dim: int, dropout: float):
        super().__init__()
        groups = dim // group_dim
        self.norm1 = nn.LayerNorm(dim)
        self.downsample = nn.AvgPool1d(kernel_size=2, stride=2)
        self.fc1 = nn.Conv1d(dim, hidden, 1, groups=groups)
        self.fc2 = nn.Conv1d(hidden, dim, 1, groups=groups)
        self.upsample = nn.Upsample(size=seq_len, mode="linear", align_corners=False)
        self.fc3 = nn.Conv1d(dim, hidden, 1, groups=groups)
        self.fc4 = nn.Conv1d(hidden, dim, 1, groups=groups)
        self.fc5 = nn.Conv1d(dim, dim, 3, padding=1, groups=groups)
        self.fc6 = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, seq_len, D]
        y = self.norm1(x).transpose(1, 2)
        half_rate = self.upsample(self.fc2(F.gelu(self.fc1(self.downsample(y)))))
        full_rate = self.fc4(F.gelu(self.fc3(y)))
        mixed = self.fc6(F.gelu(self.fc5(half_rate + full_rate)))
        return x + self.dropout(mixed).transpose(1, 2)


class MixerBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int, group_dim: int, dropout: float):
        super().__init__()
        self.token_mixing = TokenMixing(dim, seq_len, 4 * seq_len, dropout)
        self.channel_mixing = ChannelMixing(dim, seq_len, 4 * dim, group_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixing(self.token_mixing(x))


class ConvEncoder(nn.Module):
    """WavLM's CNN feature encoder: `wave [B, T]` -> `[B, frames, conv_dims[-1]]` (GroupNorm on the first)."""

    def __init__(self, dims: Sequence[int], kernels: Sequence[int], strides: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for index, (dim, kernel, stride) in enumerate(zip(dims, kernels, strides)):
            layers.append(nn.Conv1d(channels, dim, kernel, stride=stride, bias=False))
            if index == 0:
                layers.append(nn.GroupNorm(dim, dim))
            layers.append(nn.GELU())
            channels = dim
        self.layers = nn.Sequential(*layers)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.layers(wave.unsqueeze(1)).transpose(1, 2)


class SVMixer(nn.Module):
    """`wave [B, T]` -> states `[B, num_layers + 1, frames, hidden_size]` (module docstring)."""

    def __init__(
        self,
        hidden_size: int = 1024,
        num_layers: int = 12,
        seq_len: int = 149,
        group_dim: int = 128,
        conv_dims: Sequence[int] = (512,) * 7,
        conv_kernels: Sequence[int] = (10, 3, 3, 3, 3, 2, 2),
        conv_strides: Sequence[int] = (5, 2, 2, 2, 2, 2, 2),
        dropout: float = 0.1,
    ):
        super().__init__()
        if hidden_size % group_dim:
            raise ValueError(f"svmixer.group_dim={group_dim} must divide hidden_size={hidden_size}")
        self.seq_len = seq_len
        self.encoder = ConvEncoder(conv_dims, conv_kernels, conv_strides)
        self.projection_norm = nn.LayerNorm(conv_dims[-1], eps=1e-5)
        self.projection = nn.Linear(conv_dims[-1], hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            MixerBlock(hidden_size, seq_len, group_dim, 0.0 if i == num_layers - 1 else dropout)
            for i in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.projection(self.projection_norm(self.encoder(wave))))
        batch, frames, dim = x.shape
        windows = -(-frames // self.seq_len)
        x = F.pad(x, (0, 0, 0, windows * self.seq_len - frames)).reshape(batch * windows, self.seq_len, dim)
        states = []
        for block in self.blocks:
            states.append(x)
            x = block(x)
        states.append(self.final_norm(x))
        stacked = torch.stack(states, dim=1)  # [B * windows, L + 1, seq_len, D]
        stacked = stacked.reshape(batch, windows, len(states), self.seq_len, dim).transpose(1, 2)
        return stacked.reshape(batch, len(states), windows * self.seq_len, dim)[:, :, :frames]


class LayerPredictionLoss(nn.Module):
    """Predict teacher layers `target_layers` (indices into its L + 1 states) from the student's last state."""

    def __init__(self, student_dim: int, teacher_dim: int, target_layers: Sequence[int], cos_lambda: float = 1.0):
        super().__init__()
        self.target_layers = [int(i) for i in target_layers]
        self.cos_lambda = cos_lambda
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.GELU(), nn.Linear(teacher_dim, teacher_dim))
            for _ in self.target_layers
        )

    def forward(self, student_states: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
        frames = min(student_states.shape[2], teacher_states.shape[2])
        last = student_states[:, -1, :frames]
        predicted = torch.stack([head(last) for head in self.heads], dim=1).float()  # [B, H, T, Dt]
        target = teacher_states[:, self.target_layers, :frames].float()
        l1 = (predicted - target).abs().flatten(2).mean(dim=2)  # [B, H]
        cosine = F.logsigmoid(F.cosine_similarity(predicted, target, dim=-1)).sum(dim=2)  # [B, H]
        return (l1 - self.cos_lambda * cosine).sum(dim=1).mean()
