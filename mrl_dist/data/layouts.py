"""Listing the samples of a corpus (the start of pass 1 of `launch/make_shards.py --layout ...`).

Folder layouts, each walked with symbolic links followed (a link back to a folder above it is a
listed `link-cycle` skip, never a hang) and keyed by its relative path:

    voxceleb     <speaker>/<video>/<utt>.<ext>                  key speaker/video/utt
    cnceleb      [data/]<speaker>/<genre>-<session>-<utt>.flac  key speaker/<file stem>
    librispeech  <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac  key speaker/chapter/<stem>
    folders      <speaker>/**/<name>.<ext>                      key speaker/<relative path, no ext>

A second file with the key of one already listed (another --input, another extension) is a
`duplicate` skip naming the packed one. List layouts (corpus_lists.py): `kaldi` (a data directory:
wav.scp, utt2spk, segments) and `table` (CSV/JSONL); there a clash of keys is an error naming both
lines. Each input's samples, then the whole list, are sorted by key, so the listing depends only on
the inputs, never on the order the file system returns them in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mrl_dist.data.audio import AUDIO_EXTENSIONS
from mrl_dist.data.corpus import SourceFile, skip_entry
from mrl_dist.data.corpus_lists import CorpusError, check_key, list_kaldi_dir, list_table

# What each layout expects, for --help and for the error when nothing valid was found.
LAYOUTS = {
    "voxceleb": "--input DIR of <speaker>/<video>/<utt>.<ext> (VoxCeleb1/2, VoxBlink2); key speaker/video/utt",
    "cnceleb": "--input CN-Celeb root (or its data/) of data/<speaker>/<genre>-<session>-<utt>.flac; "
    "key speaker/<file stem>",
    "librispeech": "--input DIR of <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac (e.g. train-clean-100); "
    "key speaker/chapter/<file stem>",
    "folders": "--input DIR of <speaker>/**/<name>.<ext> (any depth); key speaker/<relative path without extension>",
    "kaldi": "--input Kaldi data DIR with wav.scp (paths or `cmd |` pipes; relative paths against the working "
    "folder), utt2spk and optional segments; key = utterance id",
    "table": "--input FILE.csv or FILE.jsonl with columns path, speaker and optional start, end (seconds), key "
    "(default speaker/<path stem>); relative paths against the table's folder",
}
FOLDER_LAYOUTS = ("voxceleb", "cnceleb", "librispeech", "folders")


def _audio_problem(relative: Path) -> tuple[str, str] | None:
    """(reason, detail) why `relative` cannot be a sample in any folder layout, else None."""
    extension = relative.suffix.lower().lstrip(".")
    if extension not in AUDIO_EXTENSIONS:
        return "not-audio", f"extension {relative.suffix!r} is none of {sorted(AUDIO_EXTENSIONS)}"
    try:
        str(relative).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name cannot be a tar/JSON key
        return "bad-path", "file name is not valid UTF-8"
    stem = relative.name[: -len(relative.suffix)]
    # webdataset ends a key at the first dot of the basename and trial lists split on blanks.
    if not stem or "." in stem or any(c.isspace() for c in str(relative)):
        return "bad-path", "utterance name must be non-empty, without dots or blanks"
    return None


def _levels(relative: Path, expected: int, pattern: str) -> tuple[str, str] | None:
    if len(relative.parts) != expected:
        return "bad-path", f"expected {pattern}, got {len(relative.parts)} path levels"
    return None


def voxceleb_key(relative: Path) -> tuple[str | None, str]:
    """(None, key) for `<speaker>/<video>/<utt>.<ext>`, else (reason, detail)."""
    problem = _levels(relative, 3, "<speaker>/<video>/<utt>.<ext>") or _audio_problem(relative)
    return problem or (None, relative.with_suffix("").as_posix())


def cnceleb_key(relative: Path) -> tuple[str | None, str]:
    """(None, key) for `<speaker>/<genre>-<session>-<utt>.flac` (under data/), else (reason, detail)."""
    problem = _levels(relative, 2, "<speaker>/<genre>-<session>-<utt>.flac") or _audio_problem(relative)
    return problem or (None, relative.with_suffix("").as_posix())


def librispeech_key(relative: Path) -> tuple[str | None, str]:
    """(None, key) for `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`, else (reason, detail)."""
    problem = _levels(relative, 3, "<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac") or _audio_problem(relative)
    if problem is None and not relative.name.startswith(f"{relative.parts[0]}-{relative.parts[1]}-"):
        problem = "bad-path", f"file name should start with {relative.parts[0]}-{relative.parts[1]}-"
    return problem or (None, relative.with_suffix("").as_posix())


def folders_key(relative: Path) -> tuple[str | None, str]:
    """(None, key) for `<speaker>/**/<name>.<ext>`, else (reason, detail)."""
    problem = _audio_problem(relative)
    if problem is None and len(relative.parts) < 2:
        problem = "bad-path", "expected <speaker>/**/<name>.<ext>: a file directly in --input has no speaker"
    return problem or (None, relative.with_suffix("").as_posix())


KEY_RULES: dict[str, Callable[[Path], tuple[str | None, str]]] = {
    "voxceleb": voxceleb_key,
    "cnceleb": cnceleb_key,
    "librispeech": librispeech_key,
    "folders": folders_key,
}


def walk_files(root: Path, skipped: list[dict], exclude: Path | None = None) -> Iterator[Path]:
    """Every file under `root`, following symbolic links to folders and files.

    A link to a folder above itself (a cycle) and a folder that cannot be listed are appended to
    `skipped` with their reason (`link-cycle`, `unreadable`); `exclude` (the output folder) is not
    entered.
    """
    excluded = os.path.realpath(exclude) if exclude is not None else None

    def walk(folder: Path, above: frozenset[str]) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            skipped.append(skip_entry(str(folder), "unreadable", f"{folder}: cannot list: {error}"))
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_folder = False  # stat fails again below and is listed as unreadable
            if not is_folder:
                yield path
                continue
            real = os.path.realpath(path)
            if real == excluded:
                continue
            if real in above:
                skipped.append(skip_entry(str(path), "link-cycle", f"{path} links to {real}, a folder above it"))
                continue
            yield from walk(path, above | {real})

    yield from walk(root, frozenset({os.path.realpath(root)}))


def _cnceleb_root(root: Path) -> Path:
    """CN-Celeb ships `<root>/data/<speaker>/...` (beside eval/ and dev/ lists); either is accepted."""
    return root / "data" if (root / "data").is_dir() else root


def list_folder(root: Path, layout: str, skipped: list[dict], exclude: Path | None = None) -> list[SourceFile]:
    """The samples under one --input folder of a folder layout, in walk order."""
    if layout == "cnceleb":
        root = _cnceleb_root(root)
    rule = KEY_RULES[layout]
    sources = []
    for path in walk_files(root, skipped, exclude):
        reason, key_or_detail = rule(path.relative_to(root))
        if reason is not None:
            skipped.append(skip_entry(str(path), reason, key_or_detail))
            continue
        try:
            stat = path.stat()
        except OSError as error:  # e.g. a dangling symlink
            skipped.append(skip_entry(str(path), "unreadable", f"{path}: {error}"))
            continue
        video = key_or_detail.split("/")[1] if layout == "voxceleb" else None
        sources.append(SourceFile(key_or_detail, str(path), stat.st_size, stat.st_mtime_ns, video=video))
    return sources


def list_sources(inputs: Sequence[str | Path], exclude: Path | None = None, layout: str = "voxceleb"):
    """Lists every sample of the inputs in `layout` (see LAYOUTS), sorted by key (then input order,
    then extension).

    Returns (sources: list[SourceFile], skipped: list[skip_entry]): files that do not fit the layout
    and, in folder layouts, second copies of a key are skipped with a reason, never silently.
    Raises CorpusError for an unusable list (kaldi, table): a malformed line, a clash of keys.
    """
    if layout not in LAYOUTS:
        raise CorpusError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    found: list[tuple[str, int, str, SourceFile]] = []
    skipped: list[dict] = []
    for index, given in enumerate(inputs):
        root = Path(given).absolute()
        if layout == "kaldi":
            listed = list_kaldi_dir(root, skipped)
        elif layout == "table":
            listed = list_table(root, skipped)
        else:
            if not root.is_dir():
                raise FileNotFoundError(f"--input {root} is not a directory")
            listed = list_folder(root, layout, skipped, exclude)
        found += [(source.key, index, Path(source.path).suffix.lower(), source) for source in listed]
    found.sort(key=lambda item: item[:3])
    sources: list[SourceFile] = []
    for key, _, _, source in found:
        if sources and sources[-1].key == key:
            if layout not in FOLDER_LAYOUTS:
                raise CorpusError(
                    f"key {key} is listed twice: {sources[-1].origin or sources[-1].path} and "
                    f"{source.origin or source.path}; keys must be unique"
                )
            skipped.append(
                skip_entry(source.path, "duplicate", f"key {key} is also {sources[-1].path}, which is packed")
            )
            continue
        if layout not in FOLDER_LAYOUTS:
            check_key(key, source.origin)
        sources.append(source)
    return sources, skipped
