"""`python -m exsa_doctor.standin`: run the stand-in exsa-engine (see `engine.py`)."""

from __future__ import annotations

import sys

from exsa_doctor.standin.engine import main

if __name__ == "__main__":
    sys.exit(main())
