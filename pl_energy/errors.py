"""Refusals: the one-line errors pl_energy raises at the edges of a run (files, checkpoints,
folders, data, batches, precision, a model that does not fit its data).

Each message names the thing refused and what to do instead, on one line. The ``pl-energy``
command prints that line (``pl-energy: <message>``) to stderr and exits with status 2 instead of
showing a traceback; ``PL_ENERGY_TRACEBACK=1`` shows the traceback as well, for debugging.
Each refusal is also the built-in exception it stands for (``RefusedValue`` is a ``ValueError``,
``MissingFile`` a ``FileNotFoundError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

#: Set to 1 to see the traceback behind a refusal the command prints as one line.
TRACEBACK_VARIABLE = "PL_ENERGY_TRACEBACK"
#: The exit status of a refused run (argparse's for a usage error).
REFUSED_STATUS = 2


class Refusal(Exception):
    """An input pl_energy refuses, with one line naming it and the fix."""


class RefusedValue(Refusal, ValueError):
    """A value that does not fit (a shape, a label, a setting)."""


class RefusedType(Refusal, TypeError):
    """A type or dtype that does not fit (e.g. half-precision parameters)."""


class MissingFile(Refusal, FileNotFoundError):
    """A file or folder that is not where it should be."""


class UnusableFile(Refusal, OSError):
    """A file or folder that is there but cannot be used (truncated, corrupt, a file where a
    folder should be)."""


T = TypeVar("T")


def one_line(error: BaseException) -> str | None:
    """The line to print for ``error`` instead of its traceback, or None when it is not one of
    the errors pl_energy explains (a bug, or an error from a library, keeps its traceback).

    Refusals, and ``OSError`` s that name a file (``NotADirectoryError``, ``PermissionError``,
    ``IsADirectoryError``, no space left...) are explained: the latter come from the folders a
    run writes (``--trainer.default_root_dir``, the logger's ``save_dir``)."""
    if isinstance(error, Refusal):
        return " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}: choose a writable folder (--trainer.default_root_dir)" \
            if isinstance(error, (NotADirectoryError, PermissionError, FileExistsError, IsADirectoryError)) \
            else f"{error.strerror}: {error.filename}"
    return None


def run_refusing_in_one_line(entry: Callable[[], T], program: str = "pl-energy") -> T:
    """``entry()``; a refusal it raises is printed as ``<program>: <line>`` to stderr and ends
    the process with status 2 (its traceback too when ``PL_ENERGY_TRACEBACK=1``)."""
    try:
        return entry()
    except Exception as error:  # noqa: BLE001 - only the errors one_line explains are caught
        line = one_line(error)
        if line is None:
            raise
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            traceback.print_exc()
        print(f"{program}: {line}", file=sys.stderr)
        raise SystemExit(REFUSED_STATUS) from None
