"""Corpora described by list files (`launch/make_shards.py --layout kaldi|table`): the samples of a
Kaldi data directory and of a CSV/JSONL table. Folder layouts and the dispatcher: layouts.py.

A line that cannot be read (wrong number of fields, a time that is no number, an utterance whose
recording or speaker is not listed, a key given twice) is a CorpusError naming `file:line`: the
list itself is wrong and must be fixed. A sample whose audio is missing, or whose segment is empty
or reversed, is a skip entry naming `file:line` and the reason; one whose segment ends past its
recording, or whose pipe command fails, is skipped when it is decoded (corpus.decode_source).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from mrl_dist.data.corpus import SourceFile, skip_entry


class CorpusError(ValueError):
    """A corpus list that cannot be packed (malformed line, unknown recording, clashing keys);
    the message names file:line and what to fix."""


def check_key(key: str, origin: str) -> None:
    """Raises CorpusError unless `key` can name a sample in a tar shard and a trial list."""
    parts = key.split("/")
    problem = None
    if any(c.isspace() for c in key):
        problem = "has blanks"
    elif any(part in ("", ".", "..") for part in parts):
        problem = "has an empty, '.' or '..' path part"
    elif "." in parts[-1]:
        problem = "has a dot in its last part (webdataset ends a key at the first dot of its file name)"
    if problem is not None:
        raise CorpusError(f"{origin}: sample key {key!r} {problem}; give the sample another key")


def _stat_or_skip(path: Path, origin: str, skipped: list[dict], what: str) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError as error:
        skipped.append(skip_entry(str(path), "missing-file", f"{origin}: {what}: {error.strerror}: {path}"))
        return None


def _segment_problem(start: float | None, end: float | None) -> str | None:
    if start is not None and start < 0:
        return f"start {start} s is negative"
    if end is not None and end <= (start or 0.0):
        return f"end {end} s is not after start {start or 0.0} s"
    return None


def _read_lines(path: Path) -> list[tuple[str, list[str]]]:
    """(`path:line`, whitespace-separated fields) of each non-blank line; CorpusError if missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CorpusError(f"{path}: cannot read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text ({error})") from error
    return [(f"{path}:{number}", line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _seconds(text: str, origin: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CorpusError(f"{origin}: {what} {text!r} is not a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise CorpusError(f"{origin}: {what} {text!r} is not a finite number of seconds")
    return value


def _read_wav_scp(path: Path) -> dict[str, tuple[str, str, bool]]:
    """recording id -> (`wav.scp:line`, path or command, is a pipe)."""
    recordings: dict[str, tuple[str, str, bool]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CorpusError(f"{path}: cannot read: {error.strerror} (a Kaldi data directory has wav.scp)") from error
    for number, line in enumerate(text.splitlines(), 1):
        origin = f"{path}:{number}"
        fields = line.strip().split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2:
            raise CorpusError(f"{origin}: expected `<recording-id> <path>` or `<recording-id> <command> |`")
        recording, rest = fields[0], fields[1].strip()
        if recording in recordings:
            raise CorpusError(f"{origin}: recording {recording} is also {recordings[recording][0]}")
        pipe = rest.endswith("|")
        recordings[recording] = (origin, rest[:-1].strip() if pipe else rest, pipe)
    return recordings


def list_kaldi_dir(folder: Path, skipped: list[dict]) -> list[SourceFile]:
    """The utterances of a Kaldi data directory: `wav.scp` (`recid path` or `recid cmd ... |`),
    `utt2spk` (`uttid speaker`) and, when present, `segments` (`uttid recid start end`, seconds).

    Relative paths (and pipe commands) are taken from the current working folder, as in Kaldi
    recipes. Key = utterance id. Missing audio and empty segments are appended to `skipped`.
    """
    if not folder.is_dir():
        raise CorpusError(f"--input {folder}: not a folder (--layout kaldi takes a data directory with wav.scp)")
    recordings = _read_wav_scp(folder / "wav.scp")
    speakers: dict[str, tuple[str, str]] = {}
    for origin, fields in _read_lines(folder / "utt2spk"):
        if len(fields) != 2:
            raise CorpusError(f"{origin}: expected `<utterance-id> <speaker>`, got {len(fields)} fields")
        if fields[0] in speakers:
            raise CorpusError(f"{origin}: utterance {fields[0]} is also {speakers[fields[0]][0]}")
        speakers[fields[0]] = (origin, fields[1])
    # utterance -> (origin, recording, start, end); without segments each recording is one utterance.
    utterances: dict[str, tuple[str, str, float | None, float | None]] = {}
    if (folder / "segments").exists():
        for origin, fields in _read_lines(folder / "segments"):
            if len(fields) != 4:
                raise CorpusError(f"{origin}: expected `<utterance-id> <recording-id> <start> <end>`")
            utterance, recording = fields[0], fields[1]
            if utterance in utterances:
                raise CorpusError(f"{origin}: utterance {utterance} is also {utterances[utterance][0]}")
            if recording not in recordings:
                raise CorpusError(f"{origin}: recording {recording} of utterance {utterance} is not in wav.scp")
            utterances[utterance] = (
                origin,
                recording,
                _seconds(fields[2], origin, "start"),
                _seconds(fields[3], origin, "end"),
            )
    else:
        utterances = {recording: (origin, recording, None, None) for recording, (origin, _, _) in recordings.items()}
    for utterance, (origin, _) in speakers.items():
        if utterance not in utterances:
            where = "segments" if (folder / "segments").exists() else "wav.scp"
            raise CorpusError(f"{origin}: utterance {utterance} is not in {where} (its recording is not listed)")
    cwd = os.getcwd()
    sources = []
    for utterance, (origin, recording, start, end) in utterances.items():
        if utterance not in speakers:
            raise CorpusError(f"{origin}: utterance {utterance} has no speaker in {folder / 'utt2spk'}")
        scp_origin, location, pipe = recordings[recording]
        where = origin if origin == scp_origin else f"{origin} ({scp_origin})"
        problem = _segment_problem(start, end)
        if problem is not None:
            skipped.append(skip_entry(location, "bad-segment", f"{where}: utterance {utterance}: {problem}"))
            continue
        speaker = speakers[utterance][1]
        if pipe:
            sources.append(SourceFile(utterance, location, 0, 0, speaker, None, start, end, True, cwd, origin=where))
            continue
        path = Path(cwd, location)
        stat = _stat_or_skip(path, where, skipped, f"utterance {utterance}")
        if stat is not None:
            sources.append(
                SourceFile(
                    utterance, str(path), stat.st_size, stat.st_mtime_ns, speaker, None, start, end, origin=where
                )
            )
    return sources


def _table_rows(path: Path) -> list[tuple[str, dict]]:
    """(`file:line`, row) of a CSV (with a header) or JSONL table."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CorpusError(f"--input {path}: cannot read: {error.strerror}") from error
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{path}:{number}: not a JSON object: {error.msg}") from None
            if not isinstance(row, dict):
                raise CorpusError(f"{path}:{number}: not a JSON object")
            rows.append((f"{path}:{number}", row))
        return rows
    if path.suffix.lower() != ".csv":
        raise CorpusError(f"--input {path}: --layout table reads a .csv or .jsonl file")
    reader = csv.DictReader(text.splitlines())
    missing = {"path", "speaker"} - set(reader.fieldnames or [])
    if missing:
        raise CorpusError(f"{path}:1: the header has no column {', '.join(sorted(missing))} (needs path, speaker)")
    rows = []
    for row in reader:
        if None in row:
            raise CorpusError(f"{path}:{reader.line_num}: more fields than the header has columns")
        rows.append((f"{path}:{reader.line_num}", row))
    return rows


def _optional(row: dict, column: str, origin: str) -> float | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    return _seconds(str(value), origin, column)


def list_table(path: Path, skipped: list[dict]) -> list[SourceFile]:
    """The samples of a CSV/JSONL table: columns path, speaker, optional start, end (seconds) and
    key (default `speaker/<path stem>`); a relative path is taken from the table's folder."""
    sources = []
    for origin, row in _table_rows(path):
        audio, speaker = str(row.get("path") or "").strip(), str(row.get("speaker") or "").strip()
        if not audio or not speaker:
            raise CorpusError(f"{origin}: path and speaker must both be given")
        if "/" in speaker or any(c.isspace() for c in speaker):
            raise CorpusError(f"{origin}: speaker {speaker!r} must not contain '/' or blanks")
        start, end = _optional(row, "start", origin), _optional(row, "end", origin)
        file = path.parent / audio
        key = str(row.get("key") or "").strip() or f"{speaker}/{Path(audio).stem}"
        problem = _segment_problem(start, end)
        if problem is not None:
            skipped.append(skip_entry(str(file), "bad-segment", f"{origin}: {problem}"))
            continue
        stat = _stat_or_skip(file, origin, skipped, "path")
        if stat is not None:
            sources.append(
                SourceFile(key, str(file), stat.st_size, stat.st_mtime_ns, speaker, None, start, end, origin=origin)
            )
    return sources
