"""The `exsa-doctor` program's entry point: `--version` answered before any framework loads.

Importing Typer (with its Click and parts of Rich) costs 40-60 ms on two cores, the whole
budget of `exsa-doctor --version`; so this module imports nothing but `sys`, answers
`--version` itself, and hands everything else to the Typer app in `cli.py`.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:] == ["--version"]:
        from exsa_doctor import __version__

        sys.stdout.write(f"exsa-doctor {__version__}\n")
        return
    from exsa_doctor.cli import main as cli_main

    cli_main()
