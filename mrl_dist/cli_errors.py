"""How every command reports a problem with what it was given: one line, exit status 2.

    train.py: error: model.backbone: checkpoint b2-vox2-ft_lm.pt not found; searched: ...

the way argparse reports a bad option. A user's error is one of:

* the project's own exceptions (any class defined under `mrl_dist`: CheckpointError,
  ConfigError, ManifestError, PackError, ExportError, ...): their messages already say what was
  wrong, where, and what to do;
* a missing or inaccessible path (FileNotFoundError, PermissionError, ...);
* `InputError`, raised by the cheap checks a command runs before its expensive work
  (mrl_dist/preflight.py) or wrapped around a command's own input errors.

Anything else is a bug and keeps Python's traceback. A user's error shows its traceback too with
`--traceback` on the command line or MRL_DIST_TRACEBACK=1 in the environment (the only way in
for a wrapper that builds the command line itself). A chained error shows the outer, project's
message: a failed download reads "checkpoint ... not found; ... download from URL failed
(URLError: ...)", not the socket error under it.

Under a multi-process launcher every rank reports its own error once, tagged with its rank.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "MRL_DIST_TRACEBACK"
USER_ERROR_STATUS = 2  # argparse's status for a usage error
ERRORS_EPILOG = (
    "A problem with what was given (a missing file or checkpoint, unreadable data, a bad config key) "
    f"is reported as one line 'PROG: error: ...' with exit status {USER_ERROR_STATUS}; add {TRACEBACK_FLAG} "
    f"or set {TRACEBACK_ENV}=1 to see its traceback too."
)
# OSErrors about a path the user named; other OSErrors (a dropped connection, a full disk) are not
# told apart from bugs here: a command that expects them wraps them in InputError.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# torch's DataLoader re-raises a worker's exception with the worker's traceback as its message.
WORKER_TRACEBACK_MARK = "Original Traceback"


class InputError(Exception):
    """Something a command was given (a path, a checkpoint, data, an option's value) cannot be
    used; the message names it and says what to do."""


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is about what the user gave (see the module docstring), not a bug."""
    if isinstance(error, PATH_ERRORS):
        return True
    return any(cls.__module__.partition(".")[0] == "mrl_dist" for cls in type(error).__mro__)


def one_line(error: BaseException) -> str:
    """`error`'s message on one line: a multi-line message (a list of missing utterances) is
    joined, a DataLoader worker's re-raised traceback shrinks to its last line."""
    text = str(error).strip() or type(error).__name__
    if WORKER_TRACEBACK_MARK in text:
        text = text.splitlines()[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = lines[0]
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


def program_name(script: str) -> str:
    """The name errors start with: `script` (train.py) as launch/ runs it, or the console
    script's own name (mrl-dist-train) when started as one."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("mrl-dist-") else script


def rank_tag() -> str:
    """`rank 1/8: ` under a multi-process launcher (every rank reports its own error), else ''."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"rank {os.environ.get('RANK', '?')}/{world_size}: " if world_size > 1 else ""


def traceback_wanted(argv: Sequence[str]) -> bool:
    return TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false", "no")


def report(script: str, error: BaseException, show_traceback: bool = False) -> int:
    """Print `error` as `PROG: error: MESSAGE` on stderr (its traceback first when asked for);
    returns the exit status, 2."""
    sys.stdout.flush()  # what the command printed so far comes before the error
    if show_traceback:
        traceback.print_exception(type(error), error, error.__traceback__)
    # One write with its newline: print() writes the text and the newline separately, and the
    # ranks of `accelerate launch` share a stderr, so two ranks' lines could run into one.
    sys.stderr.write(f"{program_name(script)}: error: {rank_tag()}{one_line(error)}\n")
    sys.stderr.flush()
    return USER_ERROR_STATUS


def add_error_options(parser) -> None:
    """`--traceback` in `parser`'s help and the error convention in its epilog. The flag itself
    is taken off the command line by `command` before the parser sees it (so it works after a
    sub-command too); declaring it here only documents it."""
    parser.add_argument(
        TRACEBACK_FLAG,
        action="store_true",
        help=f"on an error in what was given, print its traceback too (or set {TRACEBACK_ENV}=1)",
    )
    parser.epilog = f"{parser.epilog}\n\n{ERRORS_EPILOG}" if parser.epilog else ERRORS_EPILOG


def command(script: str) -> Callable[[Callable[[list[str]], int]], Callable[..., int]]:
    """Decorator of a command's `main(argv) -> exit status`: a user's error (see
    `is_user_error`) becomes one line on stderr and status 2; any other exception propagates.

        @command("train.py")
        def train_main(argv: list[str]) -> int: ...
    """

    def decorate(main: Callable[[list[str]], int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            given = list(sys.argv[1:] if argv is None else argv)
            show_traceback = traceback_wanted(given)
            try:
                return main([arg for arg in given if arg != TRACEBACK_FLAG])
            except Exception as error:
                if not is_user_error(error):
                    raise
                return report(script, error, show_traceback)

        return run

    return decorate
