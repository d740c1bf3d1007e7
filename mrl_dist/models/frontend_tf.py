"""TF-style log-mel front-end of ReDimNet2 (`feat_type: tf`), numerically matching the official
`TFMelBanks`. It has no STFT operator: frames and the DFT are one strided convolution with a
fixed cosine/sine basis, which exports where `torch.stft` does not.

    [signal normalisation: (x - mean) / (std + eps), per utterance]   spec_params.norm_signal
    -> [pre-emphasis 0.97, reflect-pad one sample on the left]        spec_params.do_preemph
    -> frames of 400 samples every 160, zero padding of 80 on both sides (no centring by
       reflection), Hamming window (symmetric) folded into the DFT basis of n_fft 512, bins 0..255
    -> power |X|^2 clipped to [eps, 1/eps] -> mel weights (20-7600 Hz, the TF/HTK formula, no
       normalisation) clipped to [eps, 1/eps] -> log(x + eps) -> mean normalisation over time

The basis and the mel weights are persistent buffers, as in official files (where they sit at
`spec.torchfbank.2.real_kernel_pt`, `image_kernel_pt` and `melbanks_pt`; loading.py maps them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .frontend import SPEC_PARAM_DEFAULTS, SpecAugment

# The PyTorch front-end's keys less those it alone has (no spectrogram normalisation, one SpecAugment
# pass), plus the log's floor.
TF_SPEC_PARAM_DEFAULTS = {
    **{key: value for key, value in SPEC_PARAM_DEFAULTS.items() if key not in ("spec_norm", "num_apply_spec_aug")},
    "eps": 1e-8,
}


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def tf_mel_weights(n_mels: int, n_bins: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """`[n_mels, n_bins]` triangular weights over `n_bins` bins spread evenly over 0..rate/2
    (bin 0 carries no weight), as the official `get_filterbanks` computes them (float64)."""
    edges = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
        float(_hz_to_mel(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    lower, centre, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    bins = _hz_to_mel(torch.linspace(0.0, sample_rate // 2, n_bins, dtype=torch.float64))[1:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.cat([torch.zeros(1, n_mels, dtype=torch.float64), weights]).T.float()


def windowed_dft_basis(win_length: int, n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) `[n_fft // 2, 1, win_length]`: the first n_fft/2 DFT bins of an n_fft-point DFT
    over the first `win_length` samples, times a symmetric Hamming window."""
    n = torch.arange(win_length, dtype=torch.float64)[:, None]
    k = torch.arange(n_fft // 2, dtype=torch.float64)[None, :]
    angle = 2.0 * math.pi * n * k / n_fft
    window = torch.hamming_window(win_length, periodic=False, dtype=torch.float64)[:, None]
    # The official basis is built in float32 and then windowed; float64 here differs by < 1e-7.
    cos = (torch.cos(angle).float() * window.float()).T[:, None, :]
    sin = (torch.sin(angle).float() * window.float()).T[:, None, :]
    return cos.contiguous(), sin.contiguous()


class TFMelFrontend(nn.Module):
    """`wave [B, T] float 16 kHz` -> `mel [B, n_mels, (T + 2*(hop//2) - win) // hop + 1]` float32."""

    # Buffers (`preemphasis_filter` only with `do_preemph`).
    preemphasis_filter: torch.Tensor
    dft_real: torch.Tensor
    dft_imag: torch.Tensor
    mel_weights: torch.Tensor

    def __init__(self, n_mels: int = 72, hop_length: int = 160, **spec_params):
        super().__init__()
        unknown = sorted(set(spec_params) - set(TF_SPEC_PARAM_DEFAULTS))
        if unknown:
            raise ValueError(
                f"spec_params: unsupported key(s) {unknown} for feat_type 'tf'; "
                f"supported: {sorted(TF_SPEC_PARAM_DEFAULTS)}"
            )
        params = {**TF_SPEC_PARAM_DEFAULTS, **spec_params}
        self.n_mels, self.hop_length = n_mels, hop_length
        self.n_fft, self.win_length = int(params["n_fft"]), int(params["win_length"])
        if self.n_fft < self.win_length:
            raise ValueError(f"spec_params.n_fft={self.n_fft} is shorter than win_length={self.win_length}")
        self.eps = float(params["eps"])
        self.normalize_signal = bool(params["norm_signal"])
        self.do_preemphasis = bool(params["do_preemph"])
        if self.do_preemphasis:
            self.register_buffer("preemphasis_filter", torch.tensor([[[-0.97, 1.0]]]))
        cos, sin = windowed_dft_basis(self.win_length, self.n_fft)
        self.register_buffer("dft_real", cos)
        self.register_buffer("dft_imag", sin)
        weights = tf_mel_weights(
            n_mels, self.n_fft // 2, int(params["sample_rate"]), float(params["f_min"]), float(params["f_max"])
        )
        self.register_buffer("mel_weights", weights[:, :, None].contiguous())  # [n_mels, n_bins, 1]
        self.spec_augment = (
            SpecAugment(params["freq_mask_width"], params["time_mask_width"], params["freq_start_bin"])
            if params["do_spec_aug"]
            else None
        )

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> mel power `[B, n_mels, frames]`, clipped, before the log."""
        x = wave.unsqueeze(1)
        if self.normalize_signal:
            x = (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True, unbiased=False) + self.eps)
        if self.do_preemphasis:
            x = F.conv1d(F.pad(x, (1, 0), mode="reflect"), self.preemphasis_filter)
        pad = self.hop_length // 2
        real = F.conv1d(x, self.dft_real, stride=self.hop_length, padding=pad)
        imag = F.conv1d(x, self.dft_imag, stride=self.hop_length, padding=pad)
        power = (real.square() + imag.square()).clip(self.eps, 1.0 / self.eps)
        return F.conv1d(power, self.mel_weights).clip(self.eps, 1.0 / self.eps)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"TFMelFrontend expects wave [B, T], got shape {tuple(wave.shape)}")
        input_dtype = wave.dtype
        with torch.no_grad(), torch.autocast(device_type=wave.device.type, enabled=False):
            mel = (self.power_mel(wave.float()) + self.eps).log()
            mel = mel - mel.mean(dim=-1, keepdim=True)
            if self.training and self.spec_augment is not None:
                mel = self.spec_augment(mel)
        return mel.to(input_dtype)

    def num_frames(self, num_samples: int) -> int:
        return (num_samples + 2 * (self.hop_length // 2) - self.win_length) // self.hop_length + 1

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, n_fft={self.n_fft}, win_length={self.win_length}, "
            f"hop_length={self.hop_length}, norm_signal={self.normalize_signal}"
        )
