"""``python -m pl_energy``: the ``pl-energy`` command (``pl_energy.cli``)."""

from .cli import main

if __name__ == "__main__":
    main()
