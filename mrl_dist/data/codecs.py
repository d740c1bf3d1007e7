"""How a packed sample stores its audio, chosen per split by `launch/make_shards.py --codec`:

    flac (default)  member `<key>.flac`: 16 kHz mono 16-bit FLAC level 0. A crop seeks to its
                    start and decodes only its own frames (audio.read_flac_window).
    pcm             member `<key>.wav`: the same 16-bit samples behind a 44-byte RIFF/WAVE
                    header. A crop is a slice of the member's bytes: no decoding at all.

Both hold the same int16 samples (audio.to_int16), so a crop, a whole utterance or a feature-cache
crop has the same values whichever codec packed it. Readers never ask the manifest: they take
the sample's audio member by its extension (shard_reader.audio_member) and read it with
`read_member_window`, so splits of either codec (and mixes of both) load the same way.

Why WAV rather than headerless PCM: the header states rate, channels, sample width and length,
so a member cut short or of another format is caught and counted (`truncated`, `undecodable`)
instead of being read as shorter or garbled audio, and an extracted member plays in any tool.
What each costs (crops/s per core, bytes per crop, disk): docs/benchmarks.md, docs/data.md.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import soundfile as sf

from mrl_dist.data.audio import SAMPLE_RATE, AudioError, crop_chooser, read_flac_window

CODECS = ("flac", "pcm")
DEFAULT_CODEC = "flac"
CODEC_MEMBERS = {"flac": "flac", "pcm": "wav"}  # codec -> the extension of its tar member
AUDIO_MEMBERS = tuple(CODEC_MEMBERS.values())  # the audio member extensions readers accept
WAV_HEADER_BYTES = 44
# The fmt chunk of 16 kHz mono 16-bit PCM: format tag 1 (PCM), channels, rate, bytes per second,
# bytes per frame, bits per sample.
_PCM_FORMAT = (1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16)
_INT16_SCALE = np.float32(1.0 / 32768.0)  # what libsndfile divides by: FLAC and WAV reads agree exactly


def codec_member(codec: str) -> str:
    """The member extension of `codec` ("flac" -> "flac", "pcm" -> "wav"); ValueError names the choices."""
    try:
        return CODEC_MEMBERS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}") from None


def member_size(codec: str, frames: int, flac_bytes: int) -> int:
    """Bytes of a sample's audio member: `flac_bytes` for FLAC, header + 2 bytes per frame for PCM."""
    return flac_bytes if codec_member(codec) == "flac" else WAV_HEADER_BYTES + 2 * frames


def encode_wav(pcm: np.ndarray) -> bytes:
    """pcm [T] int16 (16 kHz mono) -> a RIFF/WAVE member: the 44-byte header, then the samples
    little-endian. Same samples, same bytes (no time or tool name in the header)."""
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, *_PCM_FORMAT) + b"data" + struct.pack("<I", len(data))
    return header + data


def flac_to_wav(flac: bytes) -> bytes:
    """A FLAC member's samples as a WAV member (lossless: the same int16 samples)."""
    pcm, _ = sf.read(io.BytesIO(flac), dtype="int16")
    return encode_wav(pcm)


def wav_layout(data: bytes) -> tuple[int, int]:
    """(byte offset of the first sample, frames) of a 16 kHz mono 16-bit PCM WAV member.

    Walks the RIFF chunks (other writers put LIST or fact chunks before the data). Raises
    AudioError `undecodable` for bytes that are not such a WAV, `truncated` when the member
    holds fewer bytes than its data chunk declares.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("undecodable", f"not a RIFF/WAVE member (starts with {bytes(data[:12])!r})")
    fmt = None
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        body = offset + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            fmt = struct.unpack_from("<HHIIHH", data, body)
        elif chunk == b"data":
            if fmt != _PCM_FORMAT:
                raise AudioError("undecodable", f"WAV member is not 16 kHz mono 16-bit PCM (fmt {fmt})")
            if body + size > len(data):
                raise AudioError(
                    "truncated", f"WAV data chunk declares {size} bytes, the member holds {len(data) - body}"
                )
            if size % 2:
                raise AudioError("undecodable", f"WAV data chunk of {size} bytes is not whole 16-bit samples")
            return body, size // 2
        offset = body + size + (size & 1)
    raise AudioError("undecodable", "WAV member has no data chunk")


def read_wav_window(data: bytes, frames: int | None, choose_start: Callable[[int], int]) -> tuple[np.ndarray, int]:
    """read_flac_window's contract for a WAV member, by slicing its bytes (nothing is decoded).

    Returns (wave [frames] float32, start), or the whole (shorter) audio and start 0 when it has
    no more than `frames` samples; frames=None reads everything. Raises AudioError (see wav_layout).
    """
    offset, total = wav_layout(data)
    start = 0
    if frames is None or frames >= total:
        frames = total
    else:
        start = int(choose_start(total))
        if not 0 <= start <= total - frames:
            raise AudioError("undecodable", f"crop of {frames} samples from {start} is outside {total} samples")
    pcm = np.frombuffer(data, dtype="<i2", count=frames, offset=offset + 2 * start)
    wave = pcm.astype(np.float32)
    wave *= _INT16_SCALE  # in place: one array, a third less time than `astype(...) * scale`
    return wave, start


def read_member_window(
    data: bytes, member: str, frames: int | None, choose_start: Callable[[int], int]
) -> tuple[np.ndarray, int]:
    """`frames` samples of an audio member of kind `member` ("flac" or "wav"), starting where
    `choose_start(total_frames)` says: (wave [frames] float32 16 kHz, start); see read_flac_window."""
    if member == "wav":
        return read_wav_window(data, frames, choose_start)
    if member == "flac":
        return read_flac_window(data, frames, choose_start)
    raise ValueError(f"no reader for audio member .{member}; audio members are {', '.join(AUDIO_MEMBERS)}")


def read_member_crop(data: bytes, member: str, start: int | None, frames: int | None, *, rng=None) -> np.ndarray:
    """`frames` samples of an audio member from `start` (None: uniformly random with numpy `rng`)."""
    return read_member_window(data, member, frames, crop_chooser(start, frames, rng))[0]
