"""Writing tar shards (pass 2 of `launch/make_shards.py`): plan shards from the decode records,
write each as a deterministic tar from the FLAC cache, record its sha256, release its cache files.
With `--codec pcm` each sample's FLAC is turned into a `.wav` member here (lossless, codecs.py);
pass 1 and its cache are the same for both codecs.

Determinism: the shard plan depends only on the sorted source list and each file's FLAC bytes
(reproducible: same audio, same bytes), never on worker count or completion order; tar headers
carry no time, owner or permissions of this machine. So any `--workers` gives byte-identical
shards, and an interrupted run can keep the shards it finished.

Pass 1 (listing and decoding the sources into the cache): corpus.py; the job that runs both
passes, resumes and writes the manifest: packing.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrl_dist.data.audio import decode_file, encode_flac
from mrl_dist.data.codecs import DEFAULT_CODEC, codec_member, flac_to_wav, member_size
from mrl_dist.data.corpus import SourceFile, cache_path, decode_source

SHUFFLE_SEED = 0
TAR_BLOCK = 512
# json.dumps(meta, sort_keys=True, separators=(",", ":")) without building an encoder per call:
# planning calls it once per utterance (a million for VoxCeleb2).
_SAMPLE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def encode_sample_json(meta: dict) -> bytes:
    """A sample's `.json` member as the packer writes it: compact, keys sorted (equal input, equal bytes)."""
    return _SAMPLE_JSON.encode(meta).encode()


def speaker_of(record: dict) -> str:
    """A decode record's speaker (records without one are keyed `<speaker>/...`)."""
    return record.get("speaker") or record["key"].split("/", 1)[0]


def sample_json(record: dict, label: int) -> bytes:
    """The `.json` member of a sample: compact, sorted keys (part of the byte-identical promise).

    Holds speaker, label, seconds, frames, source (file or pipe command), original_sample_rate,
    original_channels, and where the layout has them: video (VoxCeleb), start and end (seconds of
    a segment of its source).
    """
    meta = {
        "speaker": speaker_of(record),
        "label": label,
        "seconds": record["seconds"],
        "frames": record["frames"],
        "source": record["path"],
        "original_sample_rate": record["original_sample_rate"],
        "original_channels": record["original_channels"],
    }
    meta.update({name: record[name] for name in ("video", "start", "end") if record.get(name) is not None})
    return encode_sample_json(meta)


def _member_bytes(name: str, size: int) -> int:
    header = TAR_BLOCK * (1 if len(name) < 100 else 4)  # GNU long names take extra blocks
    return header + -(-size // TAR_BLOCK) * TAR_BLOCK


@dataclass
class ShardPlan:
    name: str
    records: list[dict]  # decode records in write order, each with "label"
    codec: str = DEFAULT_CODEC  # how the samples store audio (codecs.CODECS)


def plan_shards(
    records: Sequence[dict], labels: dict[str, int], split: str, shard_bytes: int, codec: str = DEFAULT_CODEC
) -> list[ShardPlan]:
    """Cuts the valid records, in a fixed-seed shuffled order, into shards of about `shard_bytes`
    of `codec` members.

    records must be sorted by key; the shuffle mixes speakers in every shard and depends only on
    the record list, so any worker count gives the same plan.
    """
    member = codec_member(codec)
    # RandomState's stream is frozen by NumPy's compatibility policy: the plan stays the same
    # across NumPy versions, unlike Generator methods.
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(records))
    shards: list[ShardPlan] = []
    current: list[dict] = []
    size = 0
    for index in order:
        record = {**records[index], "label": labels[speaker_of(records[index])]}
        audio_bytes = member_size(codec, record["frames"], record["bytes"])
        cost = _member_bytes(f"{record['key']}.{member}", audio_bytes) + _member_bytes(
            record["key"] + ".json", len(sample_json(record, record["label"]))
        )
        if current and size + cost > shard_bytes:
            shards.append(ShardPlan(f"{split}-{len(shards):06d}.tar", current, codec))
            current, size = [], 0
        current.append(record)
        size += cost
    if current:
        shards.append(ShardPlan(f"{split}-{len(shards):06d}.tar", current, codec))
    return shards


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with no time, owner or permissions of this machine: equal input, equal bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_digest(identity: dict, plan: ShardPlan) -> str:
    """sha256 naming what determines a shard's bytes: the run's identity (format, arguments,
    input fingerprint, version), the shard name and its records (keys, sources, labels) in order.

    A shard record (see write_shard) only vouches for a shard of the plan with this digest.
    """
    payload = {"identity": identity, "name": plan.name, "records": plan.records}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shard_record_path(records_dir: str | Path, name: str) -> Path:
    return Path(records_dir) / f"{name}.json"


def read_shard_record(records_dir: str | Path, name: str, digest: str) -> tuple[int, str] | None:
    """(samples, sha256) from the record write_shard left for shard `name` of the plan with
    `digest`; None when there is none, it is unreadable or it was written for another plan."""
    try:
        record = json.loads(shard_record_path(records_dir, name).read_text())
        if record["name"] == name and record["plan"] == digest:
            return int(record["samples"]), str(record["sha256"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def write_shard(task: tuple) -> tuple[str, str, int]:
    """Pass-2 worker: writes one shard atomically from the cache; returns (name, sha256, bytes).

    task = (output folder, plan, cache folder[, records folder, plan digest]). Members per sample,
    in plan order: `<key>.flac` (`<key>.wav` when plan.codec is "pcm"), `<key>.json`. A cache file
    that went missing is decoded again from its source (same audio, same bytes).

    With a records folder, the sha256 of the finished temporary is first recorded there, in
    `NAME.tar.json` with the plan digest (see plan_digest), and only then is the temporary renamed
    into place: a shard that is on disk under its final name always has a record, so a run killed
    before it noted the shard's sha256 can verify and keep it on resume. Once the shard is sealed
    (recorded and renamed) its samples' cache files are deleted: each sample is then on disk once,
    in its shard.
    """
    output, plan, cache_dir, *recording = task
    target = Path(output) / plan.name
    member = codec_member(plan.codec)
    temporary = target.with_name(f".{plan.name}.tmp.{os.getpid()}")
    with open(temporary, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for record in plan.records:
                audio = _cached_flac(record, Path(cache_dir))
                if member == "wav":
                    audio = flac_to_wav(audio)
                meta = sample_json(record, record["label"])
                for extension, data in ((member, audio), ("json", meta)):
                    tar.addfile(tar_member(f"{record['key']}.{extension}", len(data)), io.BytesIO(data))
        handle.flush()
        os.fsync(handle.fileno())
    sha = sha256_file(temporary)
    if recording:
        records_dir, digest = recording
        path = shard_record_path(records_dir, plan.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        written.write_text(
            json.dumps({"name": plan.name, "plan": digest, "samples": len(plan.records), "sha256": sha}, sort_keys=True)
            + "\n"
        )
        os.replace(written, path)  # atomic: a record is whole or absent
    os.replace(temporary, target)
    release_cache(plan.records, Path(cache_dir))
    return plan.name, sha, target.stat().st_size


def release_cache(records: Iterable[dict], cache_dir: Path) -> None:
    """Deletes the cache files of `records` (those already gone are fine): call it only for the
    records of a sealed shard, which from then on is their only copy."""
    for record in records:
        cache_path(cache_dir, record["key"]).unlink(missing_ok=True)


def _cached_flac(record: dict, cache_dir: Path) -> bytes:
    path = cache_path(cache_dir, record["key"])
    if path.is_file() and path.stat().st_size == record["bytes"]:
        return path.read_bytes()
    data = encode_flac(decode_source(SourceFile.from_record(record), decode_file).wave)
    if len(data) != record["bytes"]:
        raise RuntimeError(
            f"{record['path']} decodes differently than in pass 1 "
            "(was it changed during the run?); delete the output and re-run"
        )
    return data
