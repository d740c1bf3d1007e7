"""Rendering a synthetic utterance: phone plan, f0 contour, glottal source and frame-by-frame
spectral filtering (the voice model: voices.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .voices import CONSONANT_SEQUENCES, PHONE_INDEX, PHONES, VOWELS, Session, SpeakerVoice, frame_geometry

_PAUSE = PHONE_INDEX["pause"]
_VOICING = np.array([p.voicing for p in PHONES])
_FRICATION = np.array([p.frication for p in PHONES])
_DURATION_MS = np.array([p.duration_ms for p in PHONES])
# Pauses and closures carry no spectral target of their own; the envelope glides across them.
_HAS_TARGET = np.array([p.kind not in ("pause", "closure") for p in PHONES])


@dataclass(frozen=True)
class PhonePlan:
    """One utterance as S segments: ``phones``, ``lengths`` (samples), ``stressed``, ``phrase``."""

    phones: np.ndarray
    lengths: np.ndarray
    stressed: np.ndarray
    phrase: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths


def plan_phones(rng: np.random.Generator, voice: SpeakerVoice, n_samples: int) -> PhonePlan:
    """Silence, phrases of (C)V(C) syllables separated by pauses, silence; exactly ``n_samples``."""
    sr = voice.sample_rate
    rate = voice.rate * np.exp(rng.normal(0.0, 0.08))
    lead_ms, trail_ms = rng.uniform(80.0, 300.0, size=2)
    speech_ms = max(n_samples * 1000 / sr - lead_ms - trail_ms, 1.0)
    # Draw everything up front in bulk; a syllable lasts at least ~30 ms even at the fastest rate.
    n_syllables = int(speech_ms / 30) + 8
    vowels = rng.choice(VOWELS, size=n_syllables, p=voice.vowel_weights)
    consonants = rng.choice(len(CONSONANT_SEQUENCES), size=(n_syllables, 2), p=voice.consonant_weights)
    has_consonant = rng.random((n_syllables, 2)) < (0.8, 0.35)  # onset, coda
    stress = rng.random(n_syllables) < 0.35
    draws = iter(rng.random(6 * n_syllables).tolist())
    phrase_lengths = iter(rng.integers(4, 13, size=n_syllables).tolist())

    phones, durations, stressed, phrase = [_PAUSE], [lead_ms], [False], [0]

    def add(phone: int, factor: float, is_stressed: bool, phrase_id: int) -> None:
        low, high = _DURATION_MS[phone]
        phones.append(phone)
        durations.append((low + (high - low) * next(draws)) * factor)
        stressed.append(is_stressed)
        phrase.append(phrase_id)

    total_ms, phrase_id, left_in_phrase = 0.0, 0, next(phrase_lengths)
    for s in range(n_syllables):
        if total_ms >= speech_ms:
            break
        start = len(durations)
        if has_consonant[s, 0]:
            for phone in CONSONANT_SEQUENCES[consonants[s, 0]]:
                add(phone, 1 / rate, False, phrase_id)
        add(int(vowels[s]), (1.35 if stress[s] else 1.0) / rate, bool(stress[s]), phrase_id)
        vowel_position = len(durations) - 1
        if has_consonant[s, 1]:
            for phone in CONSONANT_SEQUENCES[consonants[s, 1]]:
                add(phone, 1 / rate, False, phrase_id)
        left_in_phrase -= 1
        if left_in_phrase == 0:  # phrase-final lengthening, then a breath pause
            durations[vowel_position] *= 1.4
            add(_PAUSE, 1.0, False, phrase_id)
            phrase_id, left_in_phrase = phrase_id + 1, next(phrase_lengths)
        total_ms += sum(durations[start:])

    lengths = np.round(np.array(durations) * sr / 1000).astype(np.int64)
    speech_end = max(n_samples - int(round(trail_ms * sr / 1000)), 0)
    ends = np.cumsum(lengths)
    keep = max(int(np.searchsorted(ends, speech_end, side="left")) + 1, 1)
    lengths = lengths[:keep]
    lengths[-1] -= max(int(lengths.sum()) - speech_end, 0)
    tail = n_samples - int(lengths.sum())
    kept_phones, kept_stressed, kept_phrase = (np.array(x[:keep]) for x in (phones, stressed, phrase))
    if tail > 0:
        kept_phones, lengths = np.append(kept_phones, _PAUSE), np.append(lengths, tail)
        kept_stressed, kept_phrase = np.append(kept_stressed, False), np.append(kept_phrase, kept_phrase[-1])
    valid = lengths > 0
    return PhonePlan(kept_phones[valid], lengths[valid], kept_stressed[valid], kept_phrase[valid])


F0_GRID_SECONDS = 0.001  # f0 and pulse timing are planned on a 1 ms grid, not per sample


def f0_contour(rng, voice: SpeakerVoice, session: Session, plan: PhonePlan, n: int) -> np.ndarray:
    """f0 [ceil(n / step) + 1] Hz on the 1 ms grid: an accent target per vowel (stress raises
    it), declining through each phrase, smoothed over 50 ms."""
    sr = voice.sample_rate
    step = sr * F0_GRID_SECONDS
    grid = np.arange(int(np.ceil(n / step)) + 1) * step
    base = voice.f0_hz * session.f0_factor * np.exp(rng.normal(0.0, 0.04))
    starts = plan.starts
    vowel = np.isin(plan.phones, VOWELS)
    if not vowel.any():
        return np.full(len(grid), base)
    centres = starts[vowel] + plan.lengths[vowel] / 2
    phrases, first = np.unique(plan.phrase, return_index=True)
    phrase_start = starts[first[np.searchsorted(phrases, plan.phrase[vowel])]]
    spread = voice.f0_spread_semitones
    semitones = (
        rng.normal(0.0, 0.5 * spread, size=len(centres))
        + plan.stressed[vowel] * rng.uniform(0.5, 1.0, size=len(centres)) * spread
        - rng.uniform(0.8, 2.5) * (centres - phrase_start) / sr
    )
    contour = _moving_average(np.interp(grid, centres, semitones), 50)
    return base * 2 ** (contour / 12)


def glottal_pulses(rng, f0_grid: np.ndarray, n: int, voice: SpeakerVoice) -> np.ndarray:
    """Impulse train [n] float32 of unit mean power, one pulse per f0 cycle with jitter/shimmer.

    Pulse k sits where the accumulated phase of the 1 ms f0 grid crosses k, so the cost is per
    pulse rather than per sample.
    """
    sr = voice.sample_rate
    step = sr * F0_GRID_SECONDS
    phase = np.concatenate([[0.0], np.cumsum(f0_grid[:-1] * F0_GRID_SECONDS)])
    times = np.interp(np.arange(1, int(phase[-1]) + 1), phase, np.arange(len(f0_grid)) * step)
    period = sr / np.interp(times, np.arange(len(f0_grid)) * step, f0_grid)
    where = np.round(times + rng.normal(0.0, voice.jitter * period)).astype(np.int64)
    inside = (where >= 0) & (where < n)
    pulses = np.zeros(n, dtype=np.float32)
    # Amplitude sqrt(period) gives unit power whatever the pitch; shimmer is log-normal.
    amplitude = np.sqrt(period) * np.exp(rng.normal(0.0, voice.shimmer, size=len(period)))
    pulses[where[inside]] = amplitude[inside]
    return pulses


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average [T] -> [T] with edge padding."""
    if width <= 1:
        return x
    padded = np.pad(np.asarray(x, dtype=np.float64), (width // 2, width - 1 - width // 2), mode="edge")
    total = np.concatenate([[0.0], np.cumsum(padded)])
    return (total[width:] - total[:-width]) / width


def _interpolate_rows(positions, rows, at) -> np.ndarray:
    """Linear interpolation of rows [K, B] placed at ``positions`` [K] to ``at`` [F] -> [F, B]."""
    right = np.minimum(np.searchsorted(positions, at), len(positions) - 1)
    left = np.maximum(right - 1, 0)
    span = positions[right] - positions[left]
    weight = np.clip((at - positions[left]) / np.where(span > 0, span, 1), 0.0, 1.0)
    weight = weight.astype(np.float32)[:, None]
    return rows[left] * (1 - weight) + rows[right] * weight


def _white_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise [n] float32 from uniform draws (5x cheaper than Gaussian here;
    every use is spectrally filtered, which makes it Gaussian anyway)."""
    noise = rng.random(n, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(np.sqrt(12.0))
    return noise


def _segment_gains(values, lengths, ramp: int, positions: np.ndarray) -> np.ndarray:
    """Piecewise-constant gain per segment with linear ramps of up to ``ramp`` samples between
    segments (no clicks) -> [T] float32, evaluated at sample ``positions`` [T]."""
    starts = np.cumsum(lengths) - lengths
    # Ramps eat at most a quarter of a segment, which keeps the knots strictly increasing.
    half = np.minimum(ramp / 2, lengths / 4)
    knots = np.stack([starts + half, starts + lengths - half], axis=1).reshape(-1)
    return np.interp(positions, knots, np.repeat(values, 2)).astype(np.float32)


def render(rng, source, knot_positions, knot_envelopes, session: Session, hop: int, nfft: int):
    """Filter ``source`` [T] by the phone envelopes and mix in background noise -> [T] float32.

    knot_envelopes [K, nfft/2+1] are log-amplitudes at sample ``knot_positions`` [K]. Both signals
    share 2*hop Hann frames: the speech spectrum of each frame is multiplied by the envelope
    interpolated there plus the channel, the noise spectrum by the session's noise colour, and
    the SNR is set from frame energies, so one inverse FFT + overlap-add yields the mix. The
    filter is zero-phase: each output frame is read as if rolled by ``hop``, so its pre-ringing
    (wrapped to the end of the buffer) lands before the frame and its post-ringing after it.
    """
    n, window = len(source), 2 * hop
    n_frames = (n - 1) // hop + 2  # every sample is covered by two half-overlapping frames
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)).astype(np.float32)

    def frame_spectra(signal):
        padded = np.zeros(n_frames * hop + window, dtype=np.float32)
        padded[hop : hop + n] = signal
        frames = np.lib.stride_tricks.sliding_window_view(padded, window)[::hop][:n_frames]
        spectra = np.empty((n_frames, nfft // 2 + 1), dtype=np.complex64)
        # Blocks of 32 frames: one big float32 rfft measured 3x slower here (cache/allocation).
        for i in range(0, n_frames, 32):
            spectra[i : i + 32] = np.fft.rfft(frames[i : i + 32] * hann, n=nfft)
        return spectra

    speech = frame_spectra(source)
    log_gain = _interpolate_rows(knot_positions, knot_envelopes, np.arange(n_frames) * hop)
    speech *= np.exp(log_gain + session.channel_log)
    noise = frame_spectra(_white_noise(rng, n))
    noise *= np.exp(session.noise_log)
    if session.noise_modulation > 0:  # slow level changes: a random knot every 25 frames (0.5 s)
        knots = rng.normal(0.0, session.noise_modulation, size=n_frames // 25 + 2)
        level = np.exp(np.interp(np.arange(n_frames), np.arange(len(knots)) * 25, knots))
        noise *= level.astype(np.float32)[:, None]
    snr_db = session.snr_db + rng.normal(0.0, 2.0)
    energy_ratio = np.vdot(speech, speech).real / max(np.vdot(noise, noise).real, 1e-20)
    speech += noise * np.float32(np.sqrt(energy_ratio / 10 ** (snr_db / 10)))

    blocks = np.fft.irfft(speech, n=nfft).reshape(n_frames, 4, hop)
    out = np.zeros((n_frames + 3, hop), dtype=np.float32)
    for j in range(4):  # block j of the rolled frame is block j-1 (mod 4) of the raw one
        out[j : j + n_frames] += blocks[:, (j - 1) % 4]
    return out.reshape(-1)[2 * hop : 2 * hop + n]


def synthesize_utterance(rng: np.random.Generator, voice: SpeakerVoice, session: Session, seconds: float) -> np.ndarray:
    """One utterance of ``voice`` recorded in ``session``: wave [round(seconds * sr)] float32.

    Level is -32..-20 dBFS RMS, peaks kept below 0.97 so 16-bit PCM never clips.
    """
    sr = voice.sample_rate
    n = int(round(seconds * sr))
    plan = plan_phones(rng, voice, n)
    hop, nfft, _ = frame_geometry(sr)
    voicing = _VOICING[plan.phones] * np.where(plan.stressed, 1.25, 1.0)
    # Breathy speakers leak aspiration noise wherever they voice.
    frication = _FRICATION[plan.phones] + voice.breathiness * voicing
    positions = np.arange(n, dtype=np.float64)
    ramp = int(0.008 * sr)
    source = _segment_gains(voicing, plan.lengths, ramp, positions)
    source *= glottal_pulses(rng, f0_contour(rng, voice, session, plan, n), n, voice)
    noise = _white_noise(rng, n)
    noise *= _segment_gains(frication, plan.lengths, ramp, positions)
    source += noise
    # Two targets per phone (at 1/4 and 3/4 of it) hold a steady state between the glides.
    targets = _HAS_TARGET[plan.phones]
    starts, lengths = plan.starts[targets], plan.lengths[targets]
    knots = np.stack([starts + lengths / 4, starts + 3 * lengths / 4], axis=1).reshape(-1)
    envelopes = np.repeat(voice.envelopes[plan.phones[targets]], 2, axis=0)
    if len(knots) == 0:  # an utterance too short for any phone: keep it silent but valid
        knots, envelopes = np.zeros(1), voice.envelopes[[_PAUSE]]
    wave = render(rng, source, knots, envelopes, session, hop, nfft)
    wave *= np.float32(10 ** (rng.uniform(-32.0, -20.0) / 20) / max(float(np.sqrt(np.mean(wave**2))), 1e-12))
    peak = float(np.max(np.abs(wave)))
    if peak > 0.97:
        wave *= np.float32(0.97 / peak)
    return wave
