"""pytest plugin (entry point `pytest11`): the `exsa_engine` fixture and a report on failure.

Loaded in every pytest run of an environment where exsa-doctor is installed, so it imports
nothing heavy at module level and does nothing unless `--exsa-engine` is given or the fixture used.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("exsa-doctor")
    group.addoption(
        "--exsa-engine",
        action="store",
        default=None,
        metavar="CMD",
        help="Command that starts the engine for the exsa_engine fixture (e.g. 'exsa-engine').",
    )
