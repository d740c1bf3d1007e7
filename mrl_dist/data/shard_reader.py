"""Reading tar shards: URL lists and brace patterns, a resampled shard order, the samples of each
tar stream, and a count of every sample skipped on the way.

Shards may be local, on an HTTP(S) server or behind a `pipe:` command (remote.py). Each sample
is two tar members: its audio, `<speaker>/<video>/<utt>.flac` (16 kHz mono 16-bit FLAC) or, in a
split packed with `--codec pcm`, `<speaker>/<video>/<utt>.wav` (the same samples as 16-bit PCM;
codecs.py), and `<speaker>/<video>/<utt>.json` (speaker, label, video, seconds, frames, source,
original_sample_rate, original_channels). The split's index of its shards: manifest.py; writing
shards: shard_writer.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from .codecs import AUDIO_MEMBERS
from .remote import open_stream

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# In iter_tar_samples' `want`: the sample's audio member, whichever codec wrote it (AUDIO_MEMBERS).
AUDIO = "audio"


def audio_member(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes) of a sample's audio member: ("flac", ...) or ("wav", ...).

    Raises KeyError naming the sample when it has none (iter_tar_samples with AUDIO in `want`
    never yields such a sample)."""
    for extension in AUDIO_MEMBERS:
        if extension in sample:
            return extension, sample[extension]
    raise KeyError(f"sample {sample.get('key')} has no audio member ({', '.join(AUDIO_MEMBERS)})")


def expand_urls(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """A brace pattern (`shards/train-{000000..000099}.tar`, `::` joins patterns) or a list -> URLs."""
    if isinstance(source, (str, os.PathLike)):
        import braceexpand  # a webdataset dependency

        urls: list[str] = []
        for pattern in str(source).split("::"):
            urls.extend(braceexpand.braceexpand(pattern))
        return urls
    return [str(url) for url in source]


class SkipCounter:
    """Counts samples skipped in one worker, by reason, and logs them rate-limited.

    Logs the first 10 skips and then every power of two, so a badly broken shard set is loud at
    first without flooding the log. `take()` returns the count since the previous call, which
    the batcher puts into each batch for the trainer to sum.
    """

    def __init__(self, where: str = "loader"):
        self.where = where
        self.by_reason: dict[str, int] = {}
        self.total = 0
        self._taken = 0

    def skip(self, reason: str, url: str, key: str | None, detail: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        self.total += 1
        if self.total <= 10 or (self.total & (self.total - 1)) == 0:
            log.warning(
                "%s: skipped %d samples so far %s; latest: %s in shard %s (key %s): %s",
                self.where,
                self.total,
                self.by_reason,
                reason,
                url,
                key,
                detail,
            )

    def take(self) -> int:
        new = self.total - self._taken
        self._taken = self.total
        return new


def _split_member_name(name: str) -> tuple[str, str]:
    """`spk/vid/utt.flac` -> (`spk/vid/utt`, `flac`): the key ends at the first dot of the basename,
    the rule webdataset uses, so both readers agree on keys."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower() if dot else ""


def _open_url(url: str):
    stream = open_stream(url)  # local paths, file:, pipe: and http(s) with retries (remote.py)
    if url.endswith((".tar.gz", ".tgz")):
        import gzip

        stream = gzip.GzipFile(fileobj=stream)
    return stream


class TarFormatError(ValueError):
    """A tar stream that ends early or holds a damaged header."""


def _read_exact(stream, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size:  # raw pipes may return short reads before EOF
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    field = field.rstrip(b"\0 ").lstrip(b" ")
    return int(field, 8) if field else 0


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in a tar stream, read in one pass.

    A minimal reader (ustar, GNU long names, pax paths) instead of `tarfile`'s stream mode,
    which costs about as much per member as decoding a 2 s crop. Headers are checksummed, so
    damage is an error rather than garbage data. Raises TarFormatError on a truncated or
    damaged stream.
    """
    long_name = None
    while True:
        header = _read_exact(stream, 512)
        if not header or header == bytes(512):
            return  # end of archive (tar writers end with zero blocks; tarfile accepts none)
        if len(header) < 512:
            raise TarFormatError("stream ends inside a member header")
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError("member header checksum mismatch (damaged or not a tar)")
        size = _octal(header[124:136])
        data = _read_exact(stream, size)
        padding = _read_exact(stream, -size % 512)
        if len(data) < size or len(padding) < -size % 512:
            raise TarFormatError(f"stream ends inside member data ({len(data)} of {size} bytes)")
        kind = header[156:157]
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8")
        elif kind == b"x":
            for record in data.decode("utf-8").splitlines():
                if " path=" in record:
                    long_name = record.split(" path=", 1)[1]
        elif kind in (b"0", b"\0"):
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
            if long_name is None and prefix and header[257:262] == b"ustar":
                name = f"{prefix}/{name}"
            yield long_name or name, data
            long_name = None
        else:
            long_name = None  # directories, links, global pax headers: not samples


def resampled_shards(urls: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Stage: an endless stream of shard URLs drawn uniformly with replacement (training crops,
    noise clips)."""
    while True:
        yield urls[int(rng.integers(len(urls)))]


def iter_tar_samples(
    urls: Iterable[str],
    skips: SkipCounter,
    want: frozenset[str] = frozenset({AUDIO, "json"}),
    max_empty_shards: int | None = None,
) -> Iterator[dict]:
    """Stage: shard URLs -> raw samples, streaming each tar once.

    Before: url strings. After: {"key": str, "url": str, "flac" or "wav": bytes, "json": bytes}
    (the member extensions in `want`; AUDIO there stands for whichever audio member the sample
    has, read it with `audio_member`). A shard that cannot be opened or is truncated, and a sample
    that lacks one of its members, is skipped and counted in `skips`; iteration goes on with the
    rest of the shard or the next shard. With `max_empty_shards`, that many shards in a row
    without a good sample raise RuntimeError: an endless resampled stream over broken shards
    would otherwise spin forever.
    """
    keep = (want - {AUDIO}) | (frozenset(AUDIO_MEMBERS) if AUDIO in want else frozenset())
    empty_in_row = 0
    for url in urls:
        if max_empty_shards is not None and empty_in_row >= max_empty_shards:
            raise RuntimeError(
                f"{empty_in_row} shards in a row gave no usable sample (last: {url}); skipped so "
                f"far: {skips.by_reason}. Check the shard URLs and re-pack broken shards."
            )
        empty_in_row += 1
        current: dict | None = None
        try:
            stream = _open_url(url)
        except Exception as error:  # missing file, failed pipe/http: counted, not fatal
            skips.skip("unreadable-shard", url, None, f"{type(error).__name__}: {error}")
            continue
        try:
            for name, data in tar_members(stream):
                key, extension = _split_member_name(name)
                if current is not None and key != current["key"]:
                    if _complete(current, want, skips):
                        empty_in_row = 0
                        yield current
                    current = None
                if extension not in keep:
                    continue
                if current is None:
                    current = {"key": key, "url": url}
                current[extension] = data
            if current is not None and _complete(current, want, skips):
                empty_in_row = 0
                yield current
        except (OSError, EOFError, ValueError) as error:  # TarFormatError, gzip/IO errors
            where = f"after {current['key']}" if current else None
            skips.skip("truncated-shard", url, where, f"{type(error).__name__}: {error}")
            # tar_members only hands over fully read members: a sample whose members all
            # arrived before the damage is intact.
            if current is not None and not _missing(current, want):
                empty_in_row = 0
                yield current
        finally:
            try:
                stream.close()
            except Exception as error:  # a failed `pipe:` command reports here
                skips.skip("unreadable-shard", url, None, f"{type(error).__name__}: {error}")


def _missing(sample: dict, want: frozenset[str]) -> list[str]:
    """The members of `want` the sample lacks, sorted (AUDIO: it has no audio member of any kind)."""
    missing = [extension for extension in want - {AUDIO} if extension not in sample]
    if AUDIO in want and not any(extension in sample for extension in AUDIO_MEMBERS):
        missing.append(AUDIO)
    return sorted(missing)


def _complete(sample: dict, want: frozenset[str], skips: SkipCounter) -> bool:
    missing = _missing(sample, want)
    if missing:
        skips.skip("incomplete-sample", sample["url"], sample["key"], f"no {missing} member")
    return not missing
