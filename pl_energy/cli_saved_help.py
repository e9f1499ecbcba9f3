"""``pl-energy --help`` in a fraction of a second: importing torch and Lightning to build the parser
takes seconds, so the help of the command and of each subcommand is rendered once by the real
parser (:func:`render`) and saved in ``pl_energy/help/`` with the versions of the packages it is
read from. The saved text answers only where those versions are the installed ones and nothing
else is asked; otherwise the parser answers. ``python -m pl_energy.cli_saved_help`` writes the
texts again, and ``tests/test_cli.py`` checks that they are the real help.

This module imports neither torch nor Lightning."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

FOLDER = Path(__file__).with_name("help")
#: Each saved help and the arguments that ask for it.
HELPS = {"pl-energy": ["--help"], **{name: [name, "--help"] for name in ("fit", "validate", "test", "predict")}}
#: The packages whose code and docstrings the help is read from (besides pl_energy's own).
PACKAGES = ("lightning", "jsonargparse", "docstring-parser", "torch")


def versions() -> dict[str, str]:
    """Python's and :data:`PACKAGES`' versions, which the saved help is valid for."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": "{}.{}".format(*sys.version_info)}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def help_name(args: Sequence[str]) -> str | None:
    """The saved help that answers ``args``, None where they ask for more than a help."""
    args = [*args[:-1], "--help"] if args and args[-1] == "-h" else list(args)
    return next((name for name, asked in HELPS.items() if asked == args), None)


def saved_help(args: Sequence[str]) -> str | None:
    """The help ``args`` ask for, where it is saved for the installed versions (and no
    ``JSONARGPARSE_*`` variable changes what the parser would print)."""
    name = help_name(args)
    if name is None or any(key.startswith("JSONARGPARSE_") for key in os.environ):
        return None
    try:
        if json.loads((FOLDER / "versions.json").read_text()) != versions():
            return None
        return (FOLDER / f"{name}.txt").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def print_saved_help(args: Sequence[str]) -> bool:
    """Print the saved help ``args`` ask for; False where there is none to print."""
    text = saved_help(args)
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
    return text is not None


def render(args: Sequence[str]) -> str:
    """What the ``pl-energy`` parser prints for ``args`` (a help)."""
    import contextlib
    import io

    from .cli import make_cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        make_cli(list(args))
    return printed.getvalue()


def write() -> None:
    """Render every help of :data:`HELPS` and save it with the installed versions."""
    FOLDER.mkdir(exist_ok=True)
    for name, args in HELPS.items():
        (FOLDER / f"{name}.txt").write_text(render(args), encoding="utf-8")
    (FOLDER / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    print(f"pl-energy: {len(HELPS)} help texts saved in {FOLDER}")


if __name__ == "__main__":
    write()
