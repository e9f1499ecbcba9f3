"""``python -m pl_energy`` and the ``pl-energy`` command: the saved help where only a help is asked
(:mod:`pl_energy.cli_saved_help`, without importing torch or Lightning), the LightningCLI of
:mod:`pl_energy.cli` otherwise."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``pl-energy`` command."""
    from .cli_saved_help import print_saved_help

    if not print_saved_help(sys.argv[1:] if args is None else args):
        from .cli import main as run

        run(args)


if __name__ == "__main__":
    main()
