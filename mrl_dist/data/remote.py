"""Shards and manifests over the network: HTTP(S) with retries and back-off, `pipe:` commands.

    http://host/shards/train-000000.tar      streamed with urllib; a failed connection, a 5xx
                                             answer or a stream cut mid-way is retried (the
                                             download resumes at the byte it reached, with a
                                             Range request, or by skipping when the server
                                             ignores ranges); 4xx answers are final
    pipe:aws s3 cp s3://bucket/shard.tar -   any command that writes the shard to stdout
    pipe:gsutil cat gs://bucket/shard.tar    (object storage without adding its tools as
                                             dependencies; webdataset's `gopen` runs them)
    path or file://path                      local files

A shard that stays unreachable after the retries raises here; the loaders then skip it and
count it (`unreadable-shard`), like a corrupt one. Every request has a timeout
($MRL_DIST_HTTP_TIMEOUT seconds, default 30): a dead server is an error, not a stall.
Retries: $MRL_DIST_HTTP_RETRIES (default 4), back-off 0.5 s doubling.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

log = logging.getLogger(__name__)

BACKOFF_SECONDS = 0.5


def is_url(source: str | os.PathLike) -> bool:
    return str(source).startswith(("http://", "https://"))


def local_shard_path(url: str) -> str | None:
    """The file a shard URL reads, or None for a remote one (http(s)://, pipe:)."""
    if is_url(url) or url.startswith("pipe:"):
        return None
    return url.removeprefix("file://") if url.startswith("file://") else url.removeprefix("file:")


def _settings() -> tuple[float, int]:
    return float(os.environ.get("MRL_DIST_HTTP_TIMEOUT", "30")), int(os.environ.get("MRL_DIST_HTTP_RETRIES", "4"))


TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


def _transient(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code == 429
    return isinstance(error, TRANSIENT)


def _with_retries(action, url: str, what: str):
    timeout, retries = _settings()
    for attempt in range(retries + 1):
        try:
            return action(timeout)
        except Exception as error:  # noqa: BLE001 - classified just below
            if not _transient(error) or attempt == retries:
                raise OSError(
                    f"{what} {url} failed after {attempt + 1} attempt(s): {type(error).__name__}: {error}"
                ) from error
            delay = BACKOFF_SECONDS * 2**attempt
            log.warning(
                "%s %s: %s: %s; retrying in %.1f s (%d of %d)",
                what,
                url,
                type(error).__name__,
                error,
                delay,
                attempt + 1,
                retries,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class HTTPStream(io.RawIOBase):
    """A read-only stream of one URL that reconnects where it broke off (see the module docstring)."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.position = 0
        self.response = _with_retries(lambda timeout: self._connect(timeout), url, "opening")

    def _connect(self, timeout: float):
        request = urllib.request.Request(
            self.url, headers={"Range": f"bytes={self.position}-"} if self.position else {}
        )
        response = urllib.request.urlopen(request, timeout=timeout)
        if self.position and response.status != 206:  # the server ignored the range: skip ahead
            remaining = self.position
            while remaining:
                chunk = response.read(min(remaining, 1 << 20))
                if not chunk:
                    raise http.client.IncompleteRead(b"", remaining)
                remaining -= len(chunk)
        return response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        _, retries = _settings()
        for attempt in range(retries + 1):
            try:
                count = self.response.readinto(buffer)
                if count == 0 and len(buffer) and (self.response.length or 0) > 0:
                    # http.client returns 0, not an error, when the server closes before
                    # Content-Length bytes: a cut stream.
                    raise http.client.IncompleteRead(b"", self.response.length)
                self.position += count
                return count
            except TRANSIENT as error:
                if attempt == retries:
                    raise OSError(f"reading {self.url} at byte {self.position} failed: {error}") from error
                log.warning("reading %s at byte %d: %s; reconnecting", self.url, self.position, error)
                time.sleep(BACKOFF_SECONDS * 2**attempt)
                self.response.close()
                self.response = _with_retries(lambda timeout: self._connect(timeout), self.url, "reopening")
        return 0

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


def open_stream(url: str):
    """A binary read stream of a shard (HTTP with retries, `pipe:`, file:, a local path)."""
    if is_url(url):
        return io.BufferedReader(HTTPStream(url), buffer_size=1 << 20)
    from webdataset.gopen import gopen  # local paths, file: and pipe:

    return gopen(url, "rb")


def fetch_bytes(url: str) -> bytes:
    """The whole body of a small file (a manifest, a trial list), with retries."""

    def read(timeout: float) -> bytes:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()

    return _with_retries(read, url, "fetching")


def resolve(base_url: str, name: str) -> str:
    """`name` relative to the folder of `base_url` (shards beside their manifest)."""
    return urljoin(base_url, name)
