"""The bounded GGUF header parser: real files from the gguf writer, hostile headers, fuzzing."""

from __future__ import annotations

import functools
import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exsa_doctor.demo.standin.ggufmake import write_gguf, write_not_gguf
from exsa_doctor.parsers.gguf import (
    GGML_TYPES,
    GGUFError,
    GGUFHeader,
    parse_gguf_bytes,
    read_gguf_header,
)

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "gguf"


def outcome(parse: object) -> str:
    """'ok' / 'truncated' for a header, the error kind for a GGUFError."""
    try:
        header = parse() if callable(parse) else parse
    except GGUFError as exc:
        return exc.kind
    assert isinstance(header, GGUFHeader)
    return "truncated" if header.truncated else "ok"


@pytest.mark.parametrize(
    "types",
    [
        ("F32",),
        ("F16",),
        ("Q8_0",),
        ("Q4_0",),
        ("Q4_K",),
        ("Q6_K",),
        ("F32", "F16", "Q8_0", "Q4_K"),
    ],
)
def test_files_from_the_gguf_writer(tmp_path: Path, types: tuple[str, ...]) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    size = write_gguf(
        path,
        n_tensors=4,
        tensor_elems=4096,
        tensor_types=types,
        architecture="qwen2",
        extra_kv={"tokenizer.ggml.tokens": ["a", "b c", "d"]},
    )
    h = read_gguf_header(str(path))
    ref = gguf.GGUFReader(str(path))  # the reference reader, in tests only
    assert h.version == 3 and h.byte_order == "little"
    assert h.tensor_count == len(ref.tensors) == 4
    assert h.kv_count == len(ref.fields) - 3  # the reader adds 3 pseudo-fields (header counts)
    assert h.architecture == "qwen2"
    assert h.name == "exsa-doctor test model"
    assert h.alignment == 32
    assert h.data_offset == ref.data_offset
    last = max(ref.tensors, key=lambda t: t.data_offset)
    assert h.declared_end == last.data_offset + last.n_bytes
    assert h.file_size == size and not h.truncated and h.missing_bytes == 0
    assert dict(h.tensor_types) == {
        name: sum(1 for i in range(4) if types[i % len(types)] == name) for name in set(types)
    }


def test_custom_alignment(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, n_tensors=2, tensor_elems=1024, alignment=256)
    h = read_gguf_header(str(path))
    assert h.alignment == 256 and h.data_offset % 256 == 0
    assert h.data_offset >= h.header_end


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    full = write_gguf(tmp_path / "full.gguf", n_tensors=2, tensor_elems=256 * 1024)
    size = write_gguf(path, n_tensors=2, tensor_elems=256 * 1024, truncate_to=full - 12345)
    h = read_gguf_header(str(path))
    assert h.truncated
    assert h.declared_end == full and h.file_size == size == full - 12345
    assert h.missing_bytes == 12345


def test_file_cut_inside_the_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, n_tensors=2, tensor_elems=1024, truncate_to=100)
    with pytest.raises(GGUFError) as info:
        read_gguf_header(str(path))
    assert info.value.kind == "cut"


def test_empty_and_bad_magic(tmp_path: Path) -> None:
    empty = tmp_path / "e.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError) as info:
        read_gguf_header(str(empty))
    assert info.value.kind == "empty"
    other = tmp_path / "o.gguf"
    write_not_gguf(other)
    with pytest.raises(GGUFError) as info:
        read_gguf_header(str(other))
    assert info.value.kind == "bad_magic" and info.value.magic == b"PK\x03\x04"


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_gguf_header(str(tmp_path / "absent.gguf"))


def test_large_vocabulary_is_skipped_not_materialised(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    tokens = [f"token{i}" for i in range(150_000)]
    write_gguf(
        path,
        tensor_elems=1024,
        extra_kv={"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": [0.0] * 150_000},
    )
    tracemalloc.start()
    try:
        h = read_gguf_header(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.kv_count >= 6 and not h.truncated
    assert peak < 4 * 1024 * 1024  # a window or two, never the vocabulary


def test_header_limit(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    write_gguf(path, tensor_elems=1024, extra_kv={"x.tokens": [f"t{i}" for i in range(5000)]})
    with pytest.raises(GGUFError) as info:
        read_gguf_header(str(path), max_header_bytes=4096)
    assert info.value.kind == "limit"


def test_type_table_matches_the_reference() -> None:
    import gguf

    for type_id, (name, block, nbytes) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(type_id)
        assert qtype.name == name
        assert gguf.GGML_QUANT_SIZES[qtype] == (block, nbytes)


def _corpus() -> list[tuple[str, str]]:
    manifest = json.loads((CORPUS / "corpus.json").read_text())
    return sorted(manifest.items())


@pytest.mark.parametrize(("name", "expected"), _corpus())
def test_hostile_corpus(name: str, expected: str) -> None:
    path = CORPUS / name
    assert outcome(lambda: read_gguf_header(str(path))) == expected
    # the in-memory entry point agrees with the file one
    assert outcome(lambda: parse_gguf_bytes(path.read_bytes())) == expected


def test_corpus_is_not_trivial() -> None:
    kinds = {expected for _, expected in _corpus()}
    assert {"invalid", "cut", "bad_magic", "empty", "ok", "truncated"} <= kinds
    assert len(_corpus()) >= 20


# --------------------------------------------------------------------------- property tests

_SMALL_LIMIT = 1 << 16  # keeps every fuzz case cheap whatever the counts say


def _check(data: bytes) -> None:
    try:
        h = parse_gguf_bytes(data, max_header_bytes=_SMALL_LIMIT)
    except GGUFError as exc:
        assert exc.kind in {"empty", "bad_magic", "invalid", "cut", "limit"}
        assert exc.reason
        return
    assert 1 <= h.version <= 3
    assert h.header_end <= len(data)
    assert h.data_offset % h.alignment == 0 and h.data_offset >= h.header_end
    assert h.missing_bytes == max(0, h.declared_end - len(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 3]), st.binary(max_size=4096))
def test_arbitrary_bytes_after_a_valid_magic(version: int, rest: bytes) -> None:
    _check(b"GGUF" + struct.pack("<I", version) + rest)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.binary(max_size=512))
def test_arbitrary_counts(tensors: int, kvs: int, rest: bytes) -> None:
    _check(b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + rest)


@functools.lru_cache(maxsize=1)
def _valid_bytes() -> bytes:
    return (CORPUS / "ok_writer_le.gguf").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 639), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_file(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_valid_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    tracemalloc.start()
    try:
        _check(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
