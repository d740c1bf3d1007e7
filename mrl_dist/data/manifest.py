"""The manifest of a packed split: `NAME.manifest.json`, the JSON index `launch/make_shards.py`
writes beside `NAME-000000.tar ...` (shards with sample counts and sha256, speaker labels, skipped
files, the trial list). Reading and checking it, and writing JSON atomically.

A manifest may be local or on an HTTP(S) server (remote.py); its shards are resolved against its
folder. Reading the shards themselves: shard_reader.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .remote import fetch_bytes, is_url, resolve

MANIFEST_FORMAT = "mrl-dist-shards/1"
MANIFEST_SUFFIX = ".manifest.json"


class ManifestError(ValueError):
    """A manifest that is missing or does not describe a shard set; the message names the file."""


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the manifest's folder
    url: str  # path or URL the loaders open
    samples: int
    sha256: str | None


@dataclass(frozen=True)
class Manifest:
    """A packed split as described by `NAME.manifest.json`."""

    path: Path | str  # a local file, or the URL it was read from
    split: str
    shards: list[ShardInfo]
    speakers: dict[str, int]  # speaker id -> label, labels 0..num_speakers-1 in sorted order
    speaker_counts: dict[str, int]
    total_samples: int
    total_hours: float
    trials_path: Path | None
    skipped: list[dict] = field(default_factory=list)
    version: str = ""
    codec: str = "flac"  # how its samples store audio (data/codecs.py); manifests without one are FLAC

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    @property
    def urls(self) -> list[str]:
        return [shard.url for shard in self.shards]


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes JSON (sorted keys, so equal content gives equal bytes) via a temporary name + rename."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _remote_copy(url: str) -> Path:
    """A local copy of a small remote file (a trial list), in $MRL_DIST_CACHE (default
    ~/.cache/mrl-dist)/remote/, fetched once per URL."""
    root = Path(os.environ.get("MRL_DIST_CACHE", Path.home() / ".cache" / "mrl-dist")) / "remote"
    target = root / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        temporary.write_bytes(fetch_bytes(url))
        os.replace(temporary, target)
    return target


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Reads `NAME.manifest.json` (a path or an http(s) URL); shard URLs are resolved against the
    manifest's folder, so shards served beside their manifest are read from the same server.

    Raises ManifestError naming the file when it is missing, not JSON, or lacks a field.
    """
    remote = is_url(path)
    # A URL stays the string it was given; a local manifest becomes a Path.
    where: Path | str = str(path) if remote else Path(path)
    if isinstance(where, Path) and not where.is_file():
        raise ManifestError(f"manifest {where} not found: pack the split with launch/make_shards.py")
    try:
        payload = json.loads(where.read_text() if isinstance(where, Path) else fetch_bytes(where))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"manifest {where} is not readable JSON: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"manifest {where}: 'format' is not {MANIFEST_FORMAT!r}; "
            "is this a shard manifest written by launch/make_shards.py?"
        )
    try:

        def beside(name: str) -> str:
            return resolve(str(where), name) if remote else str(Path(where).parent / name)

        shards = [
            ShardInfo(s["name"], beside(s["name"]), int(s["samples"]), s.get("sha256")) for s in payload["shards"]
        ]
        trials = payload.get("trials")
        trials_path = (_remote_copy(beside(trials)) if remote else Path(beside(trials))) if trials else None
        return Manifest(
            path=where,
            split=str(payload["split"]),
            shards=shards,
            speakers={str(k): int(v) for k, v in payload["speakers"].items()},
            speaker_counts={str(k): int(v) for k, v in payload.get("speaker_counts", {}).items()},
            total_samples=int(payload["total_samples"]),
            total_hours=float(payload["total_hours"]),
            trials_path=trials_path,
            skipped=list(payload.get("skipped", [])),
            version=str(payload.get("version", "")),
            codec=str(payload.get("codec", "flac")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"manifest {where}: missing or invalid field {error}") from error
