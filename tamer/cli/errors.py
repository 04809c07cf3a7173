"""How the ``tamer`` command reports a failure: one line naming the input and what to do; a traceback only with
``--debug`` (or ``TAMER_DEBUG=1``).

tamer's own errors (``CheckpointError``, ``ConfigError``, ``ImageError``, ``InputError``, ...) already name their
input and are printed as they are. Anything else is a fault tamer did not foresee: it is still one line (its type,
its first line, and the file it concerns when the exception knows it), with the hint to rerun with ``--debug``.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

from tamer.checkpoints import CheckpointError
from tamer.config import ConfigError
from tamer.imageio import ImageError

#: errors whose message was written for the user; ValueError and FileNotFoundError are raised that way throughout
FOR_USERS = (CheckpointError, ConfigError, ImageError, FileNotFoundError, ValueError)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere on the command line (it is taken out), or ``TAMER_DEBUG=1``."""
    debug = "--debug" in argv or os.environ.get("TAMER_DEBUG", "") not in ("", "0")
    return debug, [arg for arg in argv if arg != "--debug"]


def one_line(error: BaseException, foreseen: tuple[type, ...] = FOR_USERS) -> str:
    """The message of ``error`` as one line, naming its file when an OSError carries one."""
    if isinstance(error, OSError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        hint = "; free some space or write elsewhere" if error.errno == errno.ENOSPC else ""
        return f"{where}{error.strerror or error}{hint}"
    lines = [line for line in str(error).splitlines() if line.strip()]
    first = lines[0].strip() if lines else type(error).__name__
    return first if isinstance(error, foreseen) else f"{type(error).__name__}: {first}"


def run_reporting(command: str, run: Callable[[], int | None], debug: bool, also: tuple[type, ...] = ()) -> int:
    """Call ``run``; an exception becomes one line on stderr and exit status 1 (130 for an interrupt).

    ``also``: more exception types whose messages were written for users."""
    foreseen_types = FOR_USERS + also
    try:
        return run() or 0
    except KeyboardInterrupt:
        print(f"tamer {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (every failure is reported, none is swallowed: exit status 1)
        if debug:
            traceback.print_exc()
        foreseen = isinstance(error, foreseen_types) or (isinstance(error, OSError) and error.errno is not None)
        hint = "" if debug or foreseen else " (an unexpected error: run with --debug for the traceback)"
        print(f"tamer {command}: error: {one_line(error, foreseen_types)}{hint}", file=sys.stderr)
        return 1
