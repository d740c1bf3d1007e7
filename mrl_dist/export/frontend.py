"""The log-mel front-end of `MelFrontend` in operators that export (ONNX, TorchScript, dynamic T).

`MelFrontend` computes `torch.stft` (complex-valued: the legacy ONNX exporter refuses it; the
dynamo one emits ONNX `STFT`, which onnxruntime runs ~5e-5 away from torch and few other runtimes
run at all) on a reflect-padded wave. Here

    reflect padding  -> concatenation with flipped slices of the wave itself (Slice + Concat)
    framing + |DFT|  -> one strided conv1d whose kernel holds the windowed cosine and sine rows of
                        the n_fft-point DFT (bins 0..n_fft/2), so frames never materialise

and the rest (pre-emphasis, mel filterbank, log, mean/variance normalisation, BatchNorm) is what
`MelFrontend` does, on its own buffers. Outputs equal `MelFrontend`'s within 1e-5 in all but a
few cells (under 0.1%, tests/test_export.py): (frame, mel band) cells with almost no energy, whose
log float32 cannot resolve in either implementation; MelFrontend's FFT itself misses the float64
value there by up to ~1e-4. (A float64 DFT would not change that, and onnxruntime has no
float64 Conv.)

Why the kernel is only `win_length` long: torch.stft zero-pads the window to n_fft, centred, so
frame t's non-zero taps are padded samples `[t*hop + offset, t*hop + offset + win_length)` with
`offset = (n_fft - win_length) // 2`; trimming `offset` samples from both ends of the padded wave
leaves a conv with exactly `T // hop + 1` outputs, as stft gives.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.frontend import MelFrontend


def reflect_pad(wave: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """`wave [B, T]` -> `[B, left + T + right]`, mirrored about the end samples (F.pad "reflect")."""
    parts = []
    if left:
        parts.append(wave[:, 1 : left + 1].flip(-1))
    parts.append(wave)
    if right:
        parts.append(wave[:, -right - 1 : -1].flip(-1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else wave


def stft_power_basis(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """`[2 * (n_fft//2 + 1), 1, win_length]`: cos rows then sin rows of the one-sided DFT, each
    times the window, phased as torch.stft's centred zero-padded window (computed in float64)."""
    win_length = window.shape[-1]
    offset = (n_fft - win_length) // 2
    n = torch.arange(win_length, dtype=torch.float64) + offset
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2.0 * math.pi * k[:, None] * n[None, :] / n_fft
    window = window.detach().to(torch.float64).cpu()
    basis = torch.cat([torch.cos(angle) * window, torch.sin(angle) * window])
    return basis[:, None, :].to(torch.float32).contiguous()


class ExportableMelFrontend(nn.Module):
    """`wave [B, T] float32 16 kHz` -> `mel [B, n_mels, T // hop + 1]`, equal to the eval-mode
    `MelFrontend` it is built from (which it copies: buffers, settings, the BatchNorm spec_norm).
    Needs T > n_fft // 2, as torch.stft's reflect padding does."""

    # Buffers (`preemphasis_filter` only with `do_preemphasis`).
    preemphasis_filter: torch.Tensor
    dft_basis: torch.Tensor
    mel_filterbank: torch.Tensor

    def __init__(self, frontend: MelFrontend):
        super().__init__()
        if not isinstance(frontend, MelFrontend):
            raise TypeError(f"ExportableMelFrontend replaces a MelFrontend, got {type(frontend).__name__}")
        self.n_mels, self.hop_length = frontend.n_mels, frontend.hop_length
        self.n_fft, self.win_length = frontend.n_fft, frontend.win_length
        self.normalize_signal = frontend.normalize_signal
        self.spec_norm = frontend.spec_norm
        self.do_preemphasis = frontend.do_preemphasis
        self.n_freqs = self.n_fft // 2 + 1
        self.trim = (self.n_fft - self.win_length) // 2
        if self.do_preemphasis:
            self.register_buffer("preemphasis_filter", frontend.preemphasis_filter.detach().clone())
        self.register_buffer("dft_basis", stft_power_basis(frontend.window, self.n_fft))
        self.register_buffer("mel_filterbank", frontend.mel_filterbank.detach().clone())
        self.spec_norm_bn = copy.deepcopy(frontend.spec_norm_bn).eval() if frontend.spec_norm_bn is not None else None

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> mel power `[B, n_mels, T // hop + 1]`, before the log."""
        if self.normalize_signal:
            mean = wave.mean(dim=1, keepdim=True)
            std = (wave - mean).square().mean(dim=1, keepdim=True).sqrt()  # unbiased=False
            wave = (wave - mean) / (std + 1e-6)
        if self.do_preemphasis:
            wave = F.conv1d(reflect_pad(wave, 1, 0).unsqueeze(1), self.preemphasis_filter).squeeze(1)
        half = self.n_fft // 2
        padded = reflect_pad(wave, half - self.trim, half - self.trim)  # = stft's padding, trimmed
        spec = F.conv1d(padded.unsqueeze(1), self.dft_basis, stride=self.hop_length)  # [B, 2 * n_freqs, frames]
        power = spec[:, : self.n_freqs].square() + spec[:, self.n_freqs :].square()
        return torch.matmul(power.transpose(1, 2), self.mel_filterbank).transpose(1, 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = (self.power_mel(wave.float()) + 1e-6).log()
        if self.spec_norm == "mn":
            mel = mel - mel.mean(dim=-1, keepdim=True)
        elif self.spec_norm == "mvn":
            centred = mel - mel.mean(dim=-1, keepdim=True)
            # torch.std's default (unbiased) estimate, spelled out so it exports everywhere.
            std = (centred.square().sum(dim=-1, keepdim=True) / (mel.shape[-1] - 1)).sqrt()
            mel = centred / (std + 1e-8)
        if self.spec_norm_bn is not None:
            mel = self.spec_norm_bn(mel)
        return mel

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, n_fft={self.n_fft}, win_length={self.win_length}, "
            f"hop_length={self.hop_length}, spec_norm={self.spec_norm!r}, conv DFT"
        )


def with_exportable_frontend(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode whose `spec` (a `MelFrontend`) is replaced by an equal
    `ExportableMelFrontend`; models with another front-end (ReDimNet2's TF-style one, already
    conv-based) are copied unchanged. `model` itself is never modified."""
    copied = copy.deepcopy(model).eval()
    spec = getattr(copied, "spec", None)
    if isinstance(spec, MelFrontend):
        copied.spec = ExportableMelFrontend(spec)
    return copied
