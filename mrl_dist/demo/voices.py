"""Synthetic speakers for the demo corpus: the phone inventory, and the traits of a speaker
(fixed) and of a recording session (per video). synthetic_voice.py renders them.

Synthetic voices for the demo corpus: a source-filter speech model in numpy.

Voice model (source-filter, all in numpy; scipy is not a dependency):

* speaker (fixed): f0 and its spread, vocal-tract scale with per-formant and per-vowel
  offsets, formant bandwidths, spectral tilt, breathiness, jitter/shimmer, speaking rate and a
  mild preference over phones;
* video (a recording session): channel EQ and band limits, background-noise colour, level and
  modulation, a small shift of f0 and vocal effort;
* utterance: phone sequence (CV syllables, stress, phrases and pauses), f0 contour with
  declination and accents, SNR and gain.

A glottal pulse train plus aspiration/frication noise is filtered frame by frame (40 ms Hann
windows, 20 ms hop) by multiplying its spectrum with the phone's formant envelope interpolated
between phones, so formant transitions come for free and no per-sample IIR loop is needed.
Identity lives in f0, formant positions (especially F3-F5), bandwidths and tilt; the per-video
channel and noise make same-speaker pairs from different videos realistically harder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phone:
    """Acoustic target of one phone for the reference vocal tract (formant scale 1.0)."""

    name: str
    kind: str  # vowel | sonorant | fricative | closure | burst | pause
    formants: tuple[float, ...] = ()  # Hz; vowels and sonorants get the speaker's F4, F5 too
    bandwidths: tuple[float, ...] = ()  # Hz, only for fricatives/bursts (voiced use defaults)
    voicing: float = 0.0  # glottal pulse gain
    frication: float = 0.0  # noise gain
    duration_ms: tuple[float, float] = (50.0, 100.0)
    antiformant: tuple[float, float] | None = None  # (Hz, bandwidth) of a nasal zero
    highpass_hz: float = 0.0


def _vowel(name, f1, f2, f3):
    return Phone(name, "vowel", (f1, f2, f3), voicing=1.0, duration_ms=(60.0, 160.0))


def _sonorant(name, formants, voicing, antiformant=None):
    return Phone(name, "sonorant", formants, voicing=voicing, duration_ms=(40.0, 85.0), antiformant=antiformant)


# Reference formants: classic adult-male vowel measurements (rounded).
PHONES: tuple[Phone, ...] = (
    Phone("pause", "pause", duration_ms=(150.0, 450.0)),
    _vowel("i", 280, 2250, 2890),
    _vowel("I", 400, 1920, 2560),
    _vowel("E", 550, 1770, 2490),
    _vowel("ae", 690, 1660, 2490),
    _vowel("a", 710, 1100, 2540),
    _vowel("O", 590, 880, 2540),
    _vowel("U", 450, 1030, 2380),
    _vowel("u", 310, 870, 2250),
    _vowel("V", 640, 1190, 2390),
    _vowel("@", 500, 1400, 2450),
    _vowel("3", 490, 1350, 1690),
    _sonorant("l", (360, 1300, 2700), 0.6),
    _sonorant("r", (380, 1100, 1600), 0.6),
    _sonorant("w", (300, 700, 2200), 0.6),
    _sonorant("j", (280, 2200, 3000), 0.6),
    _sonorant("m", (270, 1100, 2200), 0.45, antiformant=(1000, 150)),
    _sonorant("n", (270, 1500, 2500), 0.45, antiformant=(1800, 200)),
    Phone("s", "fricative", (5200,), (1500,), frication=0.35, duration_ms=(70, 140), highpass_hz=3500),
    Phone("S", "fricative", (2700, 4000), (500, 1000), frication=0.4, duration_ms=(70, 140), highpass_hz=1800),
    Phone("f", "fricative", (5000,), (4000,), frication=0.12, duration_ms=(60, 120), highpass_hz=600),
    Phone("h", "fricative", (500, 1400, 2450), (180, 270, 360), frication=0.15, duration_ms=(40, 80)),
    Phone("closure", "closure", duration_ms=(40, 80)),
    Phone("voiced_closure", "closure", voicing=0.12, duration_ms=(35, 70)),
    Phone("p_burst", "burst", (1000,), (2000,), frication=0.3, duration_ms=(10, 20)),
    Phone("t_burst", "burst", (4500,), (2000,), frication=0.4, duration_ms=(10, 20), highpass_hz=2500),
    Phone("k_burst", "burst", (2200,), (700,), frication=0.4, duration_ms=(12, 25)),
)
PHONE_INDEX = {phone.name: i for i, phone in enumerate(PHONES)}
VOWELS = [i for i, phone in enumerate(PHONES) if phone.kind == "vowel"]
# Consonant -> the phones it is made of (stops are a closure then a burst).
CONSONANTS: dict[str, tuple[str, ...]] = {
    "l": ("l",),
    "r": ("r",),
    "w": ("w",),
    "j": ("j",),
    "m": ("m",),
    "n": ("n",),
    "s": ("s",),
    "S": ("S",),
    "f": ("f",),
    "h": ("h",),
    "p": ("closure", "p_burst"),
    "t": ("closure", "t_burst"),
    "k": ("closure", "k_burst"),
    "b": ("voiced_closure", "p_burst"),
    "d": ("voiced_closure", "t_burst"),
    "g": ("voiced_closure", "k_burst"),
}
CONSONANT_SEQUENCES = [tuple(PHONE_INDEX[p] for p in seq) for seq in CONSONANTS.values()]
HIGHER_FORMANTS_HZ = (3400.0, 4300.0)
VOICED_BANDWIDTHS_HZ = (60.0, 90.0, 130.0, 180.0, 250.0)


@dataclass(frozen=True)
class SpeakerVoice:
    """Fixed traits of one synthetic speaker.

    ``envelopes`` [len(PHONES), nfft/2+1] float32 holds each phone's log-amplitude envelope with
    the speaker's formants, bandwidths and tilt baked in; the scalar traits are kept for
    inspection and drive the source (f0, jitter, shimmer, breathiness) and timing (rate).
    """

    sample_rate: int
    f0_hz: float
    f0_spread_semitones: float
    formant_scale: float
    tilt_db_per_octave: float
    breathiness: float
    jitter: float  # std of pulse timing, fraction of the period
    shimmer: float  # std of log pulse amplitude
    rate: float  # speaking-rate multiplier (>1 = faster)
    vowel_weights: np.ndarray  # [n_vowels] phone preference, sums to 1
    consonant_weights: np.ndarray  # [n_consonants]
    envelopes: np.ndarray


@dataclass(frozen=True)
class Session:
    """One video: ``channel_log`` and ``noise_log`` [n_bins] log-amplitude gains."""

    channel_log: np.ndarray
    noise_log: np.ndarray
    snr_db: float
    noise_modulation: float  # std of slow log-level changes of the background
    f0_factor: float


def frame_geometry(sample_rate: int) -> tuple[int, int, np.ndarray]:
    """(hop, nfft, bin_freqs [nfft/2+1] Hz): 20 ms hop, 40 ms Hann window, 4x hop FFT."""
    hop = round(0.02 * sample_rate)
    nfft = 4 * hop  # room on both sides of the window for the formant ringing
    return hop, nfft, np.arange(nfft // 2 + 1) * sample_rate / nfft


def _resonance_log_gain(freqs, centres, bandwidths, sample_rate) -> np.ndarray:
    """log|H| [K] of a cascade of DC-normalised two-pole resonators, at ``freqs`` [K] Hz."""
    centres = np.asarray(centres, dtype=np.float64)[:, None]
    radius = np.exp(-np.pi * np.asarray(bandwidths, dtype=np.float64)[:, None] / sample_rate)
    theta = 2 * np.pi * centres / sample_rate
    omega = 2 * np.pi * freqs[None, :] / sample_rate
    dc = 1 - 2 * radius * np.cos(theta) + radius**2
    below = 1 - 2 * radius * np.cos(omega - theta) + radius**2
    above = 1 - 2 * radius * np.cos(omega + theta) + radius**2
    return np.sum(np.log(dc) - 0.5 * (np.log(below) + np.log(above)), axis=0)


def _octaves_tilt(freqs, db_per_octave, corner_hz=200.0) -> np.ndarray:
    """Natural-log gain of a smooth tilt: flat below ``corner_hz``, ``db_per_octave`` above."""
    return db_per_octave * np.log2(np.hypot(1.0, freqs / corner_hz)) * (np.log(10) / 20)


def _phone_envelope(phone, freqs, sample_rate, scale, offsets, vowel_offset, bw_scale, tilt):
    """log-amplitude envelope [n_bins] of ``phone`` for one speaker, with unit mean power.

    Voiced phones: F1-F3 from the table plus F4, F5, all times the speaker's tract ``scale``
    and per-formant ``offsets`` [5]; F1, F2 also move by the speaker's ``vowel_offset`` [2] for
    this phone (an accent). Noise phones keep their own resonances.
    """
    nyquist_guard = 0.45 * sample_rate
    if phone.kind in ("vowel", "sonorant"):
        centres = np.array(phone.formants + HIGHER_FORMANTS_HZ) * scale * (1 + offsets)
        centres[:2] *= 1 + vowel_offset
        widths = np.array(VOICED_BANDWIDTHS_HZ) * bw_scale
    else:
        # Frication is shaped in front of the tongue, so it follows tract size only half way.
        centres = np.array(phone.formants, dtype=float) * (1 + 0.5 * (scale - 1))
        widths = np.array(phone.bandwidths, dtype=float) * bw_scale
    keep = centres < nyquist_guard
    log_env = _resonance_log_gain(freqs, centres[keep], widths[keep], sample_rate)
    if phone.antiformant is not None:
        zero_hz, zero_bw = phone.antiformant
        log_env -= _resonance_log_gain(freqs, [zero_hz * scale], [zero_bw], sample_rate)
    if phone.highpass_hz:
        ratio = (np.maximum(freqs, 1.0) / phone.highpass_hz) ** 4
        log_env += 0.5 * np.log(ratio / (1 + ratio))
    if phone.kind in ("vowel", "sonorant", "pause", "closure") or phone.name == "h":
        log_env += _octaves_tilt(freqs, tilt)
    # Unit mean power, so loudness is set by the time-domain gains alone.
    return log_env - 0.5 * np.log(np.mean(np.exp(2 * log_env)))


def sample_speaker(rng: np.random.Generator, sample_rate: int = 16_000) -> SpeakerVoice:
    """Draw one speaker's traits and precompute its phone envelopes."""
    female = rng.random() < 0.5
    f0_low, f0_high = (165.0, 255.0) if female else (85.0, 155.0)
    scale = rng.uniform(1.06, 1.24) if female else rng.uniform(0.90, 1.06)
    offsets = rng.normal(0.0, [0.03, 0.04, 0.05, 0.06, 0.07])
    vowel_offsets = rng.normal(0.0, 0.04, size=(len(PHONES), 2))
    bw_scale = float(np.exp(rng.uniform(np.log(0.7), np.log(1.8))))
    tilt = rng.uniform(-10.0, -2.0)
    _, _, freqs = frame_geometry(sample_rate)
    envelopes = np.stack(
        [
            _phone_envelope(p, freqs, sample_rate, scale, offsets, vowel_offsets[i], bw_scale, tilt)
            for i, p in enumerate(PHONES)
        ]
    ).astype(np.float32)
    return SpeakerVoice(
        sample_rate=sample_rate,
        f0_hz=float(np.exp(rng.uniform(np.log(f0_low), np.log(f0_high)))),
        f0_spread_semitones=rng.uniform(1.0, 3.5),
        formant_scale=float(scale),
        tilt_db_per_octave=float(tilt),
        breathiness=rng.uniform(0.03, 0.3),
        jitter=rng.uniform(0.003, 0.02),
        shimmer=rng.uniform(0.02, 0.1),
        rate=rng.uniform(0.8, 1.25),
        vowel_weights=rng.dirichlet(np.full(len(VOWELS), 8.0)),
        consonant_weights=rng.dirichlet(np.full(len(CONSONANTS), 8.0)),
        envelopes=envelopes,
    )


def _random_curve_db(rng, freqs, sample_rate, depth_db) -> np.ndarray:
    """A smooth random EQ curve [n_bins] dB over log frequency (a few cosine ripples)."""
    position = np.log(np.maximum(freqs, 50.0) / 50.0) / np.log(sample_rate / 2 / 50.0)
    curve = np.zeros_like(freqs)
    for k in range(1, 5):
        curve += rng.normal(0.0, depth_db / np.sqrt(k)) * np.cos(np.pi * k * position + rng.uniform(0, 2 * np.pi))
    return curve


def sample_session(rng: np.random.Generator, sample_rate: int = 16_000) -> Session:
    """Draw one video's channel (mic EQ, band limits, effort) and background noise."""
    _, _, freqs = frame_geometry(sample_rate)
    to_log = np.log(10) / 20
    highpass = (np.maximum(freqs, 1.0) / rng.uniform(50.0, 250.0)) ** 4
    # Wideband, band-limited, or telephone-like; capped below Nyquist for low sample rates.
    lowpass_hz = [rng.uniform(6000, 7800), rng.uniform(4000, 6000), rng.uniform(3300, 3800)][
        rng.choice(3, p=[0.6, 0.3, 0.1])
    ]
    effort = rng.normal(0.0, 0.5) * np.log2(np.maximum(freqs, 50.0) / 1000.0)
    channel_log = (
        (_random_curve_db(rng, freqs, sample_rate, 2.0) + effort) * to_log
        + 0.5 * np.log(highpass / (1 + highpass))
        - 0.5 * np.log1p((freqs / min(lowpass_hz, 0.49 * sample_rate)) ** 8)
    )
    colour_db = rng.uniform(-9.0, -2.0) * np.log2(np.maximum(freqs, 50.0) / 1000.0) + _random_curve_db(
        rng, freqs, sample_rate, 3.0
    )
    return Session(
        channel_log=channel_log.astype(np.float32),
        noise_log=(channel_log + colour_db * to_log).astype(np.float32),
        snr_db=rng.uniform(15.0, 40.0),
        noise_modulation=rng.uniform(0.0, 0.8) if rng.random() < 0.5 else 0.0,
        f0_factor=float(np.exp(rng.normal(0.0, 0.04))),
    )
