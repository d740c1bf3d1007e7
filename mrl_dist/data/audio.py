"""Audio decoding, down-mixing, resampling and FLAC coding for the data pipeline.

Everything the project stores is 16 kHz mono 16-bit FLAC. Sources come in whatever VoxCeleb and
the noise corpora ship: wav/flac (read with soundfile) and m4a/aac/mp3/ogg (read with PyAV).

Decoding problems raise `AudioError` with a short fixed `reason` (`unreadable`, `empty`,
`non-finite`) so callers can count skips per reason; the message names the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .crops import random_crop_start

SAMPLE_RATE = 16000
# Extensions soundfile decodes natively; everything else goes through PyAV (FFmpeg).
SOUNDFILE_EXTENSIONS = frozenset({"wav", "flac"})
AUDIO_EXTENSIONS = frozenset({"wav", "flac", "m4a", "aac", "mp3", "ogg"})
FLAC_COMPRESSION_LEVEL = 0.0  # soundfile's 0..1 scale; 0 is FLAC level 0 (see encode_flac)


def seconds_to_samples(seconds: float) -> int:
    """Samples in `seconds` of 16 kHz audio, rounded to the nearest sample (Python's `round`, ties
    to even), never truncated: a float product of 31999.999... is 32000 samples."""
    return round(seconds * SAMPLE_RATE)


class AudioError(Exception):
    """An audio file or member that cannot be used, with a short fixed `reason` for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedAudio:
    """One utterance after conversion.

    wave: [T] float32 16 kHz mono in [-1, 1]; original_sample_rate / original_channels describe
    the source before conversion.
    """

    wave: np.ndarray
    original_sample_rate: int
    original_channels: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Returns (wave [T, C] float32, sample_rate)."""
    if path.suffix.lower() == ".wav":
        _check_wav_complete(path)
    wave, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return wave, int(sample_rate)


def _check_wav_complete(path: Path) -> None:
    """Raises AudioError(`truncated`) for a RIFF wav whose data chunk is cut short.

    libsndfile quietly reads whatever part of the data is there, but a cut file is a broken
    download or copy and must be reported rather than packed as a shorter utterance.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(12)[8:12] != b"WAVE":
            return  # not RIFF/WAVE (e.g. RF64): libsndfile judges it
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk = handle.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF mean "unknown length" (files written as a stream).
                if length not in (0, 0xFFFFFFFF) and offset + 8 + length > size:
                    raise AudioError(
                        "truncated", f"{path}: data chunk declares {length} bytes, the file holds {size - offset - 8}"
                    )
                return
            offset += 8 + length + (length & 1)


def _read_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    """Returns (wave [T, C] float32, sample_rate) for any container/codec FFmpeg knows."""
    import av  # imported lazily: the streaming side never needs FFmpeg

    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams:
            raise AudioError("unreadable", f"{path}: no audio stream in container")
        stream = streams[0]
        # Converting every frame to planar float keeps one code path for s16/fltp/s32 codecs.
        to_float = av.AudioResampler(format="fltp")
        chunks = []
        for frame in container.decode(stream):
            for converted in to_float.resample(frame):
                chunks.append(converted.to_ndarray())
        for converted in to_float.resample(None):
            chunks.append(converted.to_ndarray())
        sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.layout.nb_channels)
    if not chunks:
        return np.zeros((0, channels), dtype=np.float32), sample_rate
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), sample_rate


def to_mono_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Down-mixes [T, C] (or [T]) audio by channel mean and resamples to 16 kHz with soxr.

    Returns wave [T'] float32 16 kHz.
    """
    if wave.ndim == 2:
        wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if sample_rate != SAMPLE_RATE and len(wave) > 0:
        wave = soxr.resample(wave, sample_rate, SAMPLE_RATE).astype(np.float32, copy=False)
    return wave


def decode_file(path: str | Path) -> DecodedAudio:
    """Decodes any supported file to 16 kHz mono float32.

    Raises AudioError with reason `unreadable` (cannot open/decode), `truncated` (a wav cut
    short), `empty` (no samples) or `non-finite` (NaN/inf samples, e.g. a broken float wav).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise AudioError("empty", f"{path}: zero-byte file")
        extension = path.suffix.lower().lstrip(".")
        if extension in SOUNDFILE_EXTENSIONS:
            wave, sample_rate = _read_with_soundfile(path)
        else:
            wave, sample_rate = _read_with_pyav(path)
    except AudioError:
        raise
    except Exception as error:  # soundfile/PyAV raise many types; all mean "cannot decode"
        raise AudioError("unreadable", f"{path}: {type(error).__name__}: {error}") from error
    if wave.shape[0] == 0 or sample_rate <= 0:
        raise AudioError("empty", f"{path}: no audio samples")
    if not np.isfinite(wave).all():
        raise AudioError("non-finite", f"{path}: NaN or infinite samples")
    channels = int(wave.shape[1])
    return DecodedAudio(to_mono_16k(wave, sample_rate), sample_rate, channels)


def to_int16(wave: np.ndarray) -> np.ndarray:
    """wave [T] float32 in [-1, 1] -> [T] int16, rounded and clipped (resampling can overshoot 1.0):
    the one quantisation every stored sample goes through (FLAC and PCM members alike)."""
    return np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_flac(wave: np.ndarray) -> bytes:
    """Encodes wave [T] float32 16 kHz as 16-bit mono FLAC bytes.

    Quantisation is done here rather than by libsndfile so clipping is explicit (resampling can
    overshoot 1.0) and the bytes are reproducible: same wave, same bytes. FLAC level 0 uses
    1152-sample blocks instead of 4096: a seek lands closer to the crop start, so random 2 s crops
    decode about 20 % faster, for files about 5 % larger than the default level.
    """
    pcm = to_int16(wave)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=FLAC_COMPRESSION_LEVEL)
    return buffer.getvalue()


def read_flac_window(data: bytes, frames: int | None, choose_start) -> tuple[np.ndarray, int]:
    """Decodes only `frames` samples of FLAC bytes: seeks, never decodes the rest.

    `choose_start(total_frames) -> start` picks where the window begins. Returns (wave [frames]
    float32, start), or the whole (shorter) audio and start 0 when it has no more than `frames`
    samples (callers tile short utterances); frames=None reads everything. Raises
    AudioError(`undecodable`) on bad bytes.
    """
    start = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            total = int(audio.frames)
            if frames is None or frames >= total:
                return audio.read(dtype="float32"), 0
            start = int(choose_start(total))
            audio.seek(start)
            wave = audio.read(frames, dtype="float32")
    except AudioError:
        raise
    except Exception as error:
        raise AudioError("undecodable", f"{type(error).__name__}: {error}") from error
    if len(wave) < frames:
        # libsndfile returns short reads for FLAC whose frames are cut off rather than failing.
        raise AudioError("undecodable", f"read {len(wave)} of {frames} samples from {start}")
    return wave, start


def crop_chooser(start: int | None, frames: int | None, rng=None):
    """A `choose_start(total_frames) -> start` for the window readers: `start` as given, or (None)
    uniformly random with numpy `rng`."""

    def choose(total: int) -> int:
        if start is not None:
            return start
        if frames is None:  # the window readers read the whole audio then and never ask for a start
            raise ValueError("a random crop start needs a crop length (frames)")
        return random_crop_start(rng, total, frames)

    return choose


def read_flac_crop(data: bytes, start: int | None, frames: int | None, *, rng=None) -> np.ndarray:
    """`frames` samples of FLAC bytes from `start` (None: uniformly random with numpy `rng`)."""
    return read_flac_window(data, frames, crop_chooser(start, frames, rng))[0]


def repeat_to_length(wave: np.ndarray, frames: int) -> np.ndarray:
    """Tiles wave [T] (T > 0) to exactly [frames], so short utterances fill a whole crop."""
    if len(wave) == frames:
        return wave
    return np.resize(wave, frames)
