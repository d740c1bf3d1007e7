"""Pack a speaker corpus (VoxCeleb layout or another, see layouts.py) into tar shards of 16 kHz mono
FLAC for streaming training: the job behind `launch/make_shards.py`, which runs both passes in
parallel, resumes and writes the manifest. Its steps: layouts.py and corpus_lists.py (listing the
samples), corpus.py (pass 1: decoding them), shard_writer.py (pass 2: planning and writing the tars).

    python launch/make_shards.py --input /data/voxceleb2/dev/aac --output shards --split train
    python launch/make_shards.py --input /data/voxceleb1/test/wav --output shards --split val \
        --trials /data/voxceleb1/veri_test2.txt

Writes `NAME-000000.tar ...`, `NAME.manifest.json` (written last: its presence means the split is
complete) and, with --trials, `NAME.trials.txt`. `--codec pcm` stores each sample's audio as a
16-bit PCM `.wav` member instead of FLAC: crops are sliced, not decoded, for 1.4-1.8x the disk
(codecs.py; docs/data.md "Codecs: FLAC or PCM"). The codec is part of the run's identity.

Two passes. Pass 1 decodes every file (in parallel) to a FLAC cache in `OUTPUT/.NAME.tmp/`, logging
one record per file to `decoded.jsonl` there. Pass 2 shuffles the good files with a fixed seed,
cuts them into shards by size and writes the tars (in parallel), recording each finished shard's
sha256 in `NAME.manifest.partial.json`. Each writer first records its shard's sha256, with a digest
of the shard's plan (run identity, shard name, its samples in order), in
`OUTPUT/.NAME.tmp/shards/NAME-000000.tar.json` and only then renames the tar into place, so a shard
that has its final name is never without a record, even when the run is killed before the main
process notes it. A re-run after an interruption reuses the decode records and the cache and keeps
every shard whose file hashes to the sha256 of the manifest-in-progress (or a finished manifest of
the same input) or of its record for the same plan; a missing, torn or corrupted shard, or one
whose record is for another plan (other input or arguments), is written again. The result equals
an uninterrupted run; the records go with the state folder at the end. Re-running a finished split
whose files are intact only verifies their sha256. The manifest records only what determines the
content (not --workers or --output), so equal inputs give equal manifests.

Disk: once a shard is sealed (recorded and renamed into place) its samples' cache files are
deleted, so each sample is on disk once, in the cache or in its shard, except the samples of the
shards being written: one per pass-2 process, of which there are at most MAX_SHARD_WRITERS (pass 2
only moves bytes, ~180 MB/s per process, so a few fill a disk). The peak is the final size (the
cache is its FLAC part) plus that many shards, 2 GiB at the default 256 MiB, instead of twice the
final size; docs/benchmarks.md measures it. A re-run keeps the decode records of released files;
a shard it must write again (damaged since it was sealed, or planned anew by other arguments)
decodes the sources whose cache files are gone again (deterministic: same audio, same bytes). A
re-run without the state folder decodes every file again, so its cache briefly holds the samples
of the shards it keeps as well.

Decoder processes that die (an FFmpeg crash, the OOM killer) cost only the file being decoded,
which is skipped as `decoder-crashed`; every other bad file is skipped with its reason
(`unreadable`, `truncated`, `empty`, `non-finite`, `too-short`, `bad-path`, `not-audio`,
`duplicate`, `link-cycle`, `missing-file`, `bad-segment`, `pipe-failed`), listed in the manifest and
counted at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from .codecs import CODECS, DEFAULT_CODEC
from .corpus import SourceFile, cache_path, decode_in_processes, decode_to_cache, fingerprint, skip_entry
from .layouts import LAYOUTS, list_sources
from .manifest import MANIFEST_FORMAT, MANIFEST_SUFFIX, write_json_atomic
from .shard_writer import (
    ShardPlan,
    plan_digest,
    plan_shards,
    read_shard_record,
    release_cache,
    sha256_file,
    speaker_of,
    write_shard,
)
from .trials import read_trials, trial_keys

MAX_SHARD_WRITERS = 8  # pass-2 processes: each holds one shard's samples twice until it is sealed


class PackError(RuntimeError):
    """The split cannot be packed as asked (no valid audio, trial utterances missing)."""


def _pool(workers: int):
    return ProcessPoolExecutor(workers) if workers > 1 else None


def _load_records(records_path: Path) -> dict[str, dict]:
    """Decode records of an interrupted run (last record per key wins).

    A record is logged only after its cache file is complete, and is kept when that file is gone:
    a sealed shard released it, and a shard written again decodes the source again
    (shard_writer.write_shard).
    """
    records: dict[str, dict] = {}
    if not records_path.is_file():
        return records
    with open(records_path) as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when the run was killed
            # One copy of each field name, not one per record: halves the memory of a
            # VoxCeleb2-sized log (1.1 GB -> 0.6 GB for 1.09 M records).
            records[record["key"]] = {sys.intern(name): value for name, value in record.items()}
    return records


def decode_all(sources, state_dir: Path, workers: int, progress: bool) -> list[dict]:
    """Pass 1: one decode record per source, in source order (see corpus.decode_to_cache)."""
    cache_dir = state_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    records_path = state_dir / "decoded.jsonl"
    previous = _load_records(records_path)
    done: dict[str, dict] = {}
    todo = []
    for source in sources:
        record = previous.get(source.key)
        if record is not None and all(record.get(name) == value for name, value in source.identity().items()):
            done[source.key] = record
        else:
            todo.append((source, str(cache_path(cache_dir, source.key))))
    bar = tqdm(total=len(sources), initial=len(done), unit="file", desc="decode", disable=not progress, smoothing=0.05)
    hours = sum(r.get("seconds", 0.0) for r in done.values()) / 3600
    try:
        with open(records_path, "a") as log:
            last_flush = time.monotonic()
            for record in decode_in_processes(decode_to_cache, todo, workers):
                log.write(json.dumps(record, sort_keys=True) + "\n")
                if time.monotonic() - last_flush > 1.0:
                    log.flush()
                    last_flush = time.monotonic()
                done[record["key"]] = record
                hours += record.get("seconds", 0.0) / 3600
                bar.set_postfix(hours=f"{hours:.2f}", refresh=False)
                bar.update()
    finally:
        bar.close()
    return [done[source.key] for source in sources]


def _same_identity(payload: dict, identity: dict) -> bool:
    """Whether a manifest (final or in progress) was written by a run of `identity`. Manifests
    written before `--codec` existed name no codec: they hold FLAC."""
    stored = {key: payload.get(key) for key in identity}
    arguments = stored.get("arguments")
    if isinstance(arguments, dict) and "codec" not in arguments:
        stored["arguments"] = {**arguments, "codec": "flac"}
    return stored == identity


def _known_sha256(output: Path, split: str, identity: dict) -> dict[str, tuple[int, str]]:
    """{shard name: (samples, sha256)} from a manifest (in progress or final) of the same input."""
    known = {}
    for path in (output / f"{split}{MANIFEST_SUFFIX}", output / f"{split}.manifest.partial.json"):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not _same_identity(payload, identity):
            continue
        for shard in payload.get("shards", []):
            if shard.get("sha256"):
                known[shard["name"]] = (shard["samples"], shard["sha256"])
    return known


def _finished_manifest(output: Path, split: str, identity: dict, trials) -> dict | None:
    """The manifest of a finished run of the same input whose files are all intact, else None."""
    try:
        manifest = json.loads((output / f"{split}{MANIFEST_SUFFIX}").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not _same_identity(manifest, identity):
        return None
    for shard in manifest["shards"]:
        path = output / shard["name"]
        if not path.is_file() or sha256_file(path) != shard["sha256"]:
            return None
    copy = output / f"{split}.trials.txt"
    if trials and (not copy.is_file() or copy.read_bytes() != Path(trials).read_bytes()):
        return None
    return manifest


def _missing_trial_utterances(trials: Path, packed: set[str], skipped: list[dict]) -> list[str]:
    """`key: why` for each utterance of the trial list that is not in `packed`."""
    try:
        keys = trial_keys(read_trials(trials))
    except (OSError, ValueError) as error:
        raise PackError(f"--trials {trials}: {error}") from error
    reasons = {}
    for entry in skipped:
        parts = Path(entry["path"]).with_suffix("").parts[-3:]
        reasons["/".join(parts)] = f"skipped ({entry['reason']}: {entry['path']})"
    return [f"{key}: {reasons.get(key, 'no such file in --input')}" for key in keys if key not in packed]


def run_identity(
    inputs,
    split: str,
    trials,
    shard_size_mb: float,
    min_seconds: float,
    sources: Sequence[SourceFile],
    skipped: Sequence[dict],
    layout: str = "voxceleb",
    codec: str = DEFAULT_CODEC,
) -> dict:
    """What determines a split's content: format, arguments (the codec among them), input
    fingerprint, version.

    A resume reuses only the work of a run with an equal identity; the manifest starts with it.
    """
    return {
        "format": MANIFEST_FORMAT,
        "arguments": {
            "input": [str(Path(p).absolute()) for p in inputs],
            "layout": layout,
            "split": split,
            "trials": str(Path(trials).absolute()) if trials else None,
            "shard_size_mb": shard_size_mb,
            "min_seconds": min_seconds,
            "codec": codec,
        },
        "inputs_sha256": fingerprint(sources, skipped),
        "version": __version__,
    }


def plan_split(identity: dict, records: Sequence[dict], skipped: Sequence[dict]) -> tuple[list[ShardPlan], dict]:
    """Pass 2's plan: (shard plans, manifest with every sha256 still None).

    records: pass 1's decode records in source order (see decode_all); skipped: the listing's
    skip entries. Bad and too-short records join the skipped ones. Raises PackError when no
    record is valid.
    """
    arguments = identity["arguments"]
    split, min_seconds = arguments["split"], arguments["min_seconds"]
    skipped = list(skipped)
    valid = []
    for record in records:
        if "reason" in record:
            skipped.append(skip_entry(record["path"], record["reason"], record["detail"]))
        elif record["seconds"] < min_seconds:
            skipped.append(
                skip_entry(record["path"], "too-short", f"{record['seconds']:.3f} s < --min-seconds {min_seconds}")
            )
        else:
            valid.append(record)
    skipped.sort(key=lambda entry: entry["path"])
    if not valid:
        counts = dict(Counter(entry["reason"] for entry in skipped))
        raise PackError(
            f"no valid audio file under --input {', '.join(arguments['input'])} "
            f"(--layout {arguments['layout']}: {LAYOUTS[arguments['layout']]}); skipped: {counts}"
        )
    speaker_counts = Counter(speaker_of(record) for record in valid)
    speakers = {name: label for label, name in enumerate(sorted(speaker_counts))}
    codec = arguments.get("codec", DEFAULT_CODEC)
    plans = plan_shards(valid, speakers, split, int(arguments["shard_size_mb"] * 2**20), codec)
    manifest = {
        **identity,
        "split": split,
        "sample_rate": 16000,
        "codec": codec,
        "shards": [{"name": p.name, "samples": len(p.records), "sha256": None} for p in plans],
        "total_samples": len(valid),
        "total_hours": round(sum(r["seconds"] for r in valid) / 3600, 6),
        "num_speakers": len(speakers),
        "speakers": speakers,
        "speaker_counts": dict(sorted(speaker_counts.items())),
        "skipped": skipped,
        "skipped_counts": dict(sorted(Counter(e["reason"] for e in skipped).items())),
        "trials": f"{split}.trials.txt" if arguments["trials"] else None,
    }
    return plans, manifest


def pack_split(
    inputs,
    output,
    split: str,
    *,
    trials=None,
    workers: int | None = None,
    shard_size_mb: float = 256.0,
    min_seconds: float = 0.5,
    progress: bool = True,
    layout: str = "voxceleb",
    codec: str = DEFAULT_CODEC,
) -> dict:
    """Packs the audio of `inputs` (in `layout`, see layouts.LAYOUTS) into `output/split-*.tar`
    with `codec` members (codecs.CODECS); returns the manifest dict.

    Raises PackError when no file is valid, a trial utterance is not in the split or the codec is
    unknown, CorpusError when a corpus list (kaldi, table) cannot be read.
    """
    if codec not in CODECS:
        raise PackError(f"--codec {codec!r}: choose one of {', '.join(CODECS)}")
    output = Path(output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    workers = workers or len(os.sched_getaffinity(0))
    for pattern in (f".{split}-*.tar.tmp.*", f".{split}.manifest*.tmp.*", f".{split}.trials.txt.tmp.*"):
        for stale in output.glob(pattern):
            stale.unlink()  # temporaries of a killed run; never renamed, so never valid
    sources, skipped = list_sources(inputs, exclude=output, layout=layout)
    identity = run_identity(inputs, split, trials, shard_size_mb, min_seconds, sources, skipped, layout, codec)
    if trials:
        missing = _missing_trial_utterances(Path(trials), {s.key for s in sources}, skipped)
        if missing:  # fail before hours of decoding
            raise PackError(_missing_message(trials, missing))
    finished = _finished_manifest(output, split, identity, trials)
    if finished is not None:
        return finished

    state_dir = output / f".{split}.tmp"
    plans, manifest = plan_split(identity, decode_all(sources, state_dir, workers, progress), skipped)
    if trials:
        packed = {record["key"] for plan in plans for record in plan.records}
        missing = _missing_trial_utterances(Path(trials), packed, manifest["skipped"])
        if missing:
            raise PackError(_missing_message(trials, missing))
    _write_shards(manifest, plans, output, state_dir, workers, progress)
    if trials:
        temporary = output / f".{split}.trials.txt.tmp.{os.getpid()}"
        shutil.copyfile(trials, temporary)
        os.replace(temporary, output / f"{split}.trials.txt")
    write_json_atomic(output / f"{split}{MANIFEST_SUFFIX}", manifest)
    (output / f"{split}.manifest.partial.json").unlink(missing_ok=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    return manifest


def _write_shards(manifest, plans, output: Path, state_dir: Path, workers: int, progress: bool):
    """Pass 2: writes every shard not already on disk with a known sha256; fills manifest sha256.

    A shard's sha256 is known from a manifest of the same input (see _known_sha256) or from the
    record its writer left in `state_dir/shards/` for the same plan (see write_shard); either way
    the file on disk is hashed again and kept only when it matches. A kept shard's cache files are
    deleted (a run killed between sealing a shard and deleting them leaves some), and at most
    min(workers, MAX_SHARD_WRITERS) shards are written at once.
    """
    identity_keys = ("format", "arguments", "inputs_sha256", "version")
    identity = {k: manifest[k] for k in identity_keys}
    known = _known_sha256(output, manifest["split"], identity)
    records_dir = state_dir / "shards"
    for stale in records_dir.glob(".*.tmp.*"):
        stale.unlink()  # a record being written when the run was killed
    entries = {entry["name"]: entry for entry in manifest["shards"]}
    todo = []
    for plan in plans:
        digest = plan_digest(identity, plan)
        path = output / plan.name
        claims = {
            claim
            for claim in (known.get(plan.name), read_shard_record(records_dir, plan.name, digest))
            if claim is not None and claim[0] == len(plan.records)
        }
        sha = sha256_file(path) if claims and path.is_file() else None
        if sha is not None and sha in {claimed for _, claimed in claims}:
            entries[plan.name]["sha256"] = sha
            release_cache(plan.records, state_dir / "cache")
        else:
            todo.append((str(output), plan, str(state_dir / "cache"), str(records_dir), digest))
    partial = output / f"{manifest['split']}.manifest.partial.json"
    write_json_atomic(partial, manifest)
    done_samples = sum(e["samples"] for e in entries.values() if e["sha256"])
    bar = tqdm(
        total=manifest["total_samples"],
        initial=done_samples,
        unit="file",
        desc="pack",
        disable=not progress,
        smoothing=0.05,
    )
    hours = sum(r["seconds"] for p in plans if entries[p.name]["sha256"] for r in p.records) / 3600
    pool = _pool(min(workers, MAX_SHARD_WRITERS, len(todo)))
    try:
        seconds = {plan.name: sum(r["seconds"] for r in plan.records) for plan in plans}
        results = (
            map(write_shard, todo)
            if pool is None
            else (future.result() for future in as_completed([pool.submit(write_shard, t) for t in todo]))
        )
        for name, sha, _ in results:
            entries[name]["sha256"] = sha
            hours += seconds[name] / 3600
            bar.set_postfix(hours=f"{hours:.2f}", refresh=False)
            bar.update(entries[name]["samples"])
            write_json_atomic(partial, manifest)  # small: one rewrite per shard is cheap
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        write_json_atomic(partial, manifest)


def _missing_message(trials, missing: list[str]) -> str:
    shown = "\n  ".join(missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    return f"--trials {trials}: {len(missing)} utterance(s) are not in the split:\n  {shown}{more}"


def summary(manifest: dict, output: Path) -> str:
    lines = [
        f"packed {manifest['total_samples']} utterances ({manifest['total_hours']:.2f} h, "
        f"{manifest['num_speakers']} speakers) into {len(manifest['shards'])} shards "
        f"({manifest.get('codec', 'flac')} members): "
        f"{output / (manifest['split'] + MANIFEST_SUFFIX)}"
    ]
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} files (listed in the manifest):")
        lines += [f"  {reason}: {count}" for reason, count in manifest["skipped_counts"].items()]
    return "\n".join(lines)
