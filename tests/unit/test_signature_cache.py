"""The shipped signature cache (exsa_doctor/signatures/table.json) is the TOML tables as they are.

The TOML files are the knowledge; the cache only spares a run their parsing. It must hold exactly
the table the TOML gives (rows, order, gates, prefilter, hints), it is used only while the files'
digest matches, and a stale or broken cache is ignored rather than believed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exsa_doctor import signatures
from exsa_doctor.signatures import (
    CACHE_NAME,
    Table,
    build_table,
    cache_document,
    cache_for,
    load_table,
    read_tables,
    table_texts,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "exsa_doctor" / "signatures" / CACHE_NAME


def _shape(table: Table) -> list[tuple[object, ...]]:
    rows = [*table.signatures, *table.hints]
    return [
        (s.id, s.family, s.regex, s.finding, s.stage, s.kind, s.summary, s.example, s.data, s.gates)
        for s in rows
    ] + [("prefilter", table.prefilter)]


def test_the_shipped_cache_is_up_to_date() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_signature_cache.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_table_from_the_cache_is_the_table_from_the_toml() -> None:
    doc = json.loads(SHIPPED.read_text(encoding="utf-8"))
    cached = build_table(doc["tables"], strict=False, gates_of=doc["gates"])
    fresh = build_table(read_tables(), strict=False)
    assert _shape(cached) == _shape(fresh)
    load_table.cache_clear()
    try:
        assert _shape(load_table()) == _shape(fresh)
    finally:
        load_table.cache_clear()


@pytest.mark.parametrize("broken", ["stale digest", "not json", "not a table"])
def test_a_stale_or_broken_cache_is_ignored(broken: str) -> None:
    texts = table_texts()
    doc = cache_document(texts)
    assert cache_for(json.dumps(doc).encode(), texts) == doc
    # a cache whose rows say something else: believed only if its digest matched
    doc["tables"]["llamacpp"] = {"signature": []}
    raw = {
        "stale digest": json.dumps({**doc, "digest": "0" * 64}).encode(),
        "not json": b"{ not json",
        "not a table": b"[1, 2]",
    }[broken]
    assert cache_for(raw, texts) is None
    # and an edited TOML file makes the shipped cache stale
    edited = {**texts, "ollama": texts["ollama"] + b"\n# edited\n"}
    assert cache_for(SHIPPED.read_bytes(), edited) is None


def test_a_matching_cache_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # read_tables (the TOML parser) is not called when the shipped cache matches
    load_table.cache_clear()
    monkeypatch.setattr(signatures, "read_tables", _refuse)
    try:
        assert load_table().signatures
    finally:
        load_table.cache_clear()


def _refuse(*_a: object) -> dict[str, object]:
    raise AssertionError("the TOML was parsed although the cache matched")
