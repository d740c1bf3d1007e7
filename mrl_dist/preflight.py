"""Cheap checks of what a command was given, run before its expensive work (building a model,
caching features, evaluating): files that must be readable, outputs that must be writable, shard
sets, and checkpoints (a path, or an official name that must be found locally when downloads are
off).

Each check returns a problem, one line naming the option or config key, the path, and what to do,
or None; a command gathers every problem and `raise_problems` reports them together as one
InputError (cli_errors.py turns it into `PROG: error: ...`), so one run lists everything to fix.

Nothing here downloads, writes or creates anything. An official checkpoint missing locally is a
problem only with downloads off ($MRL_DIST_OFFLINE=1); otherwise the loader downloads it when the
command gets there, and a failed download is a CheckpointError, reported in one line as well.
Remote shard sets and manifests (http(s)://, pipe:) are not checked: reaching them is the loaders'
job, with retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .cli_errors import InputError, one_line
from .data.remote import local_shard_path


def readable_file_problem(path: str | os.PathLike, what: str) -> str | None:
    """`what PATH: ...` unless `path` is a readable file."""
    path = Path(path)
    if not path.exists():
        return f"{what} {path}: no such file"
    if path.is_dir():
        return f"{what} {path}: is a folder, not a file"
    if not os.access(path, os.R_OK):
        return f"{what} {path}: not readable (file permissions)"
    return None


def readable_folder_problem(path: str | os.PathLike, what: str) -> str | None:
    """`what PATH: ...` unless `path` is a folder whose entries can be listed and read."""
    path = Path(path)
    if not path.exists():
        return f"{what} {path}: no such folder"
    if not path.is_dir():
        return f"{what} {path}: is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{what} {path}: not readable (folder permissions)"
    return None


def writable_output_problem(path: str | os.PathLike, what: str, *, folder: bool = False) -> str | None:
    """`what PATH: ...` unless `path` (a file, or with `folder` a folder) can be written: it exists
    and is writable, or the nearest folder above it that exists is writable (it is made there)."""
    path = Path(path).absolute()
    if path.exists():
        if folder != path.is_dir():
            return f"{what} {path}: is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}"
        if not os.access(path, os.W_OK):
            return f"{what} {path}: not writable (permissions)"
        # files are written to a temporary beside them and renamed, which needs their folder writable
        nearest = path if folder else path.parent
    else:
        nearest = path.parent
        while not nearest.exists():
            nearest = nearest.parent
        if not nearest.is_dir():
            return f"{what} {path}: {nearest} is a file, so no folder can be made there"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"{what} {path}: cannot write into {nearest} (permissions)"
    return None


def shard_source_problems(source: str | os.PathLike, what: str, *, trials_needed: bool = False) -> list[str]:
    """Problems of a shard set (`NAME.manifest.json`, a shard list or a brace pattern): a missing
    or malformed manifest, missing or unreadable local shards, and with `trials_needed` a missing
    trial list."""
    from .data.pipeline import resolve_source

    if local_shard_path(os.fspath(source)) is None:
        return []  # a remote manifest or pattern: reaching it is the loader's job
    try:
        shards = resolve_source(os.fspath(source))
    except ValueError as error:  # ManifestError (missing, not JSON, a field missing) or no shard at all
        return [f"{what}: {one_line(error)}"]
    problems: list[str | None] = []
    local = [path for path in map(local_shard_path, shards.urls) if path is not None]
    missing = [path for path in local if not os.path.isfile(path)]
    if missing:
        problems.append(
            f"{what} {source}: {len(missing)} of {len(shards.urls)} shard(s) not found, e.g. {missing[0]} "
            "(copy them there, or pack the split again with launch/make_shards.py)"
        )
    unreadable = [path for path in local if os.path.isfile(path) and not os.access(path, os.R_OK)]
    if unreadable:
        problems.append(f"{what} {source}: {len(unreadable)} shard(s) not readable (permissions), e.g. {unreadable[0]}")
    if trials_needed:
        if shards.trials_path is None:
            problems.append(
                f"{what} {source}: no trial list (not a manifest, or the split was packed without --trials); "
                "pack it with launch/make_shards.py --trials"
            )
        else:
            problems.append(readable_file_problem(shards.trials_path, f"{what}: trial list"))
    return [problem for problem in problems if problem is not None]


def checkpoint_problem(
    source: str | os.PathLike,
    what: str,
    weights: tuple[str | None, str | None] | None = (None, None),
) -> str | None:
    """A model source as the loaders read it (models/loading.py: `load_model_source`,
    `load_pretrained`): a checkpoint path must be a readable file; with `weights` (train_type,
    dataset) a name must have official weights, found locally unless downloads are allowed;
    `weights=None` (random init) needs only a known preset name."""
    from .models.loading import CheckpointError, downloads_allowed, names_a_file, resolve_checkpoint
    from .models.presets import OFFICIAL_PRESETS, PRESETS, REDIMNET2_PRETRAINED

    text = os.fspath(source)
    if names_a_file(text):
        return readable_file_problem(text, what)
    if weights is None:
        if text in PRESETS:
            return None
        return f"{what}: {text!r} is neither an existing checkpoint file nor a preset ({', '.join(PRESETS)})"
    pretrained = OFFICIAL_PRESETS + REDIMNET2_PRETRAINED
    if text not in pretrained:
        return f"{what}: {text!r} has no official pretrained weights (names: {', '.join(pretrained)}); give a checkpoint file's path"
    train_type, dataset = weights
    try:
        resolve_checkpoint(text, dataset=dataset, train_type=train_type, download=False)
    except CheckpointError as error:
        # Not here: the loader downloads it when the run needs it, unless downloads are off.
        return None if downloads_allowed() else f"{what}: {one_line(error)}"
    return None


def raise_problems(problems: Iterable[str | None], where: str | os.PathLike | None = None) -> None:
    """One InputError listing every problem (None entries are no problem), prefixed by `where`
    (the config file the keys come from); nothing when there is none."""
    found = [problem for problem in problems if problem]
    if not found:
        return
    prefix = f"{os.fspath(where)}: " if where is not None else ""
    if len(found) == 1:
        raise InputError(prefix + found[0])
    listed = "; ".join(f"({number}) {problem.rstrip('.')}" for number, problem in enumerate(found, start=1))
    raise InputError(f"{prefix}{len(found)} problems: {listed}")
