"""Log-mel front-end in plain torch, numerically matching the official ReDimNet `MelBanks`.

The official model builds its features with torchaudio's `MelSpectrogram`; PyPI's torchaudio
does not load on CPU-only torch, so this module recomputes the same arithmetic:

    pre-emphasis 0.97 (reflect-pad one sample on the left)
    -> |STFT|^2: n_fft 512, Hamming window of 400 (periodic, zero-padded to n_fft), hop 160,
       centred with reflect padding
    -> HTK mel filterbank, f_min 20 Hz, f_max 7600 Hz, no filter normalisation
    -> log(x + 1e-6) -> mean normalisation over time per mel bin
    -> (training only, when enabled) time and frequency masks

The three constant tensors (pre-emphasis filter, window, filterbank) are persistent buffers so
that official checkpoints, which carry them, load with no missing or unexpected keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Keyword arguments of the official `MelBanks` that a checkpoint's `spec_params` may set.
SPEC_PARAM_DEFAULTS = {
    "sample_rate": 16000,
    "n_fft": 512,
    "win_length": 400,
    "f_min": 20.0,
    "f_max": 7600.0,
    "do_spec_aug": False,
    "norm_signal": False,
    "do_preemph": True,
    "spec_norm": "mn",
    "freq_start_bin": 0,
    "num_apply_spec_aug": 1,
    "freq_mask_width": (0, 8),
    "time_mask_width": (0, 10),
}


def hz_to_mel_htk(freq: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK mel filters, unnormalised: `[n_freqs, n_mels]` float32."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(
        float(hz_to_mel_htk(f_min)), float(hz_to_mel_htk(f_max)), n_mels + 2, dtype=torch.float64
    )
    hz_points = mel_to_hz_htk(mel_points)
    widths = hz_points[1:] - hz_points[:-1]  # [n_mels + 1]
    offsets = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class SpecAugment(nn.Module):
    """Random time and frequency masks on `mel [B, F, T]`, one band of each per utterance."""

    def __init__(
        self,
        freq_mask_width: Sequence[int] = (0, 8),
        time_mask_width: Sequence[int] = (0, 10),
        freq_start_bin: int = 0,
    ):
        super().__init__()
        self.freq_mask_width = tuple(int(w) for w in freq_mask_width)
        self.time_mask_width = tuple(int(w) for w in time_mask_width)
        self.freq_start_bin = int(freq_start_bin)

    def _mask(self, mel: torch.Tensor, axis: int, width_range: tuple[int, ...]) -> torch.Tensor:
        batch, size = mel.shape[0], mel.shape[axis]
        low, high = width_range
        if high <= low:
            return mel
        width = torch.randint(low, high, (batch, 1), device=mel.device)
        start_high = max(self.freq_start_bin + 1, size - int(width.max()))
        start = torch.randint(self.freq_start_bin, start_high, (batch, 1), device=mel.device)
        positions = torch.arange(size, device=mel.device).unsqueeze(0)
        band = (positions >= start) & (positions < start + width)  # [B, size]
        band = band.unsqueeze(2) if axis == 1 else band.unsqueeze(1)
        return mel.masked_fill(band, 0.0)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = self._mask(mel, axis=2, width_range=self.time_mask_width)
        return self._mask(mel, axis=1, width_range=self.freq_mask_width)


class MelFrontend(nn.Module):
    """`wave [B, T] float 16 kHz` -> `mel [B, n_mels, T // hop + 1]` float32 log-mel features."""

    # Buffers (`preemphasis_filter` only with `do_preemph`).
    preemphasis_filter: torch.Tensor
    window: torch.Tensor
    mel_filterbank: torch.Tensor

    def __init__(self, n_mels: int = 72, hop_length: int = 160, **spec_params):
        super().__init__()
        unknown = sorted(set(spec_params) - set(SPEC_PARAM_DEFAULTS))
        if unknown:
            raise ValueError(f"spec_params: unsupported key(s) {unknown}; supported: {sorted(SPEC_PARAM_DEFAULTS)}")
        params = {**SPEC_PARAM_DEFAULTS, **spec_params}
        if params["spec_norm"] not in ("mn", "mvn", "bn", None):
            raise ValueError(
                f"spec_params.spec_norm: unsupported value {params['spec_norm']!r} (expected 'mn', 'mvn', 'bn' or null)"
            )
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.n_fft = int(params["n_fft"])
        self.win_length = int(params["win_length"])
        self.normalize_signal = bool(params["norm_signal"])
        self.spec_norm = params["spec_norm"]
        self.num_apply_spec_aug = int(params["num_apply_spec_aug"])
        self.do_preemphasis = bool(params["do_preemph"])

        if self.do_preemphasis:
            self.register_buffer("preemphasis_filter", torch.tensor([[[-0.97, 1.0]]]))
        self.register_buffer("window", torch.hamming_window(self.win_length, periodic=True))
        self.register_buffer(
            "mel_filterbank",
            htk_mel_filterbank(
                self.n_fft // 2 + 1,
                float(params["f_min"]),
                float(params["f_max"]),
                n_mels,
                int(params["sample_rate"]),
            ),
        )
        # Official 'bn' normalisation is a trainable BatchNorm over mel bins.
        self.spec_norm_bn = nn.BatchNorm1d(n_mels) if self.spec_norm == "bn" else None
        self.spec_augment = (
            SpecAugment(params["freq_mask_width"], params["time_mask_width"], params["freq_start_bin"])
            if params["do_spec_aug"]
            else None
        )

    def power_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> mel power `[B, n_mels, frames]`, before the log."""
        if self.normalize_signal:
            mean = wave.mean(dim=1, keepdim=True)
            std = wave.std(dim=1, keepdim=True, unbiased=False)
            wave = (wave - mean) / (std + 1e-6)
        if self.do_preemphasis:
            wave = self.preemphasise(wave)
        spec = torch.stft(
            wave,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [B, n_freqs, frames]
        return torch.matmul(power.transpose(1, 2), self.mel_filterbank).transpose(1, 2)

    def preemphasise(self, wave: torch.Tensor) -> torch.Tensor:
        """`wave [B, T]` -> the same length through the 2-tap pre-emphasis filter (reflect padding)."""
        padded = F.pad(wave.unsqueeze(1), (1, 0), mode="reflect")
        return F.conv1d(padded, self.preemphasis_filter).squeeze(1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"MelFrontend expects wave [B, T], got shape {tuple(wave.shape)}")
        input_dtype = wave.dtype
        # Features are always computed in float32 without gradients, as the official model
        # does: bf16 log-mels lose the low-energy bins the network relies on.
        with torch.no_grad(), torch.autocast(device_type=wave.device.type, enabled=False):
            mel = (self.power_mel(wave.float()) + 1e-6).log()
            if self.spec_norm == "mn":
                mel = mel - mel.mean(dim=-1, keepdim=True)
            elif self.spec_norm == "mvn":
                mel = (mel - mel.mean(dim=-1, keepdim=True)) / (mel.std(dim=-1, keepdim=True) + 1e-8)
            if self.spec_norm_bn is not None:
                mel = self.spec_norm_bn(mel)
            if self.training and self.spec_augment is not None:
                for _ in range(self.num_apply_spec_aug):
                    mel = self.spec_augment(mel)
        return mel.to(input_dtype)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, n_fft={self.n_fft}, win_length={self.win_length}, "
            f"hop_length={self.hop_length}, spec_norm={self.spec_norm!r}, "
            f"spec_augment={self.spec_augment is not None}"
        )
