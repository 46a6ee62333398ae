"""Write exsa_doctor/signatures/table.json: the signature tables parsed, with each row's gates.

The TOML files under exsa_doctor/signatures/ are the knowledge and the only thing to edit. This
cache lets a run skip parsing them (`load_table` uses it only while the digest of the files
matches; otherwise it reads the TOML, slower but the same table). Run it after editing a table;
`tests/unit/test_signature_cache.py` fails while the cache is stale.

Usage: python scripts/build_signature_cache.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exsa_doctor.signatures import CACHE_NAME, cache_document  # noqa: E402

OUTPUT = REPO / "exsa_doctor" / "signatures" / CACHE_NAME


def render() -> str:
    """The cache file's text for the tables as they are now."""
    return json.dumps(cache_document(), ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the cache is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{CACHE_NAME} is up to date" if same else f"{CACHE_NAME} is stale: run {__file__}")
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
