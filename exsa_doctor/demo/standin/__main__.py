"""`python -m exsa_doctor.demo.standin`: run the stand-in exsa-engine (see `engine.py`).

The stand-in first takes on the engine's name: it executes itself again, in the same process
(same PID, same start time), with `exsa-engine` as argv[0]. Profiles identify an engine by the
name it runs under (argv[0], the process name or the executable), so the exsa-engine profile
knows the stand-in exactly as it knows the real engine, and knows nothing about the stand-in.
"""

from __future__ import annotations

import os
import sys

ENGINE_NAME = "exsa-engine"


def take_the_engines_name() -> None:
    """Execute the same command line again with argv[0] `<interpreter's folder>/exsa-engine`.

    The folder is the interpreter's own, so Python still finds its installation (a venv's
    `pyvenv.cfg`) from argv[0]. Where that cannot be done, the stand-in runs under its own name.
    """
    argv = list(getattr(sys, "orig_argv", []))
    if not argv or os.path.basename(argv[0]) == ENGINE_NAME or not sys.executable:
        return
    name = os.path.join(os.path.dirname(sys.executable), ENGINE_NAME)
    try:
        os.execv(sys.executable, [name, *argv[1:]])
    except OSError:
        return


if __name__ == "__main__":
    take_the_engines_name()
    from exsa_doctor.demo.standin.engine import main

    sys.exit(main())
