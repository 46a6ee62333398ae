"""ggufmake writes files the reference gguf reader accepts, and cuts them when asked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from exsa_doctor.demo.standin.ggufmake import (
    DEFAULT_TENSOR_ELEMS,
    NOT_GGUF_BYTES,
    write_gguf,
    write_not_gguf,
)


def _field(reader: object, key: str) -> object:
    import gguf

    assert isinstance(reader, gguf.GGUFReader)
    f = reader.fields[key]
    return f.contents()


def test_default_file_is_valid_gguf(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    size = write_gguf(path)
    assert size == os.path.getsize(path)
    r = gguf.GGUFReader(str(path))
    assert [t.name for t in r.tensors] == ["blk.0.weight", "blk.1.weight"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    assert all(int(t.n_elements) == DEFAULT_TENSOR_ELEMS for t in r.tensors)
    assert _field(r, "general.architecture") == "llama"
    # 2 MiB of float32 data plus a small header
    assert 2 * DEFAULT_TENSOR_ELEMS * 4 < size < 2 * DEFAULT_TENSOR_ELEMS * 4 + 4096
    assert r.tensors[1].data[10] == pytest.approx(20.0)  # real numbers: index * (i + 1)


def test_options_round_trip(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "m.gguf"
    write_gguf(
        path,
        n_tensors=3,
        tensor_elems=512,
        architecture="qwen2",
        tensor_types=("Q8_0", "F16"),
        alignment=64,
        extra_kv={
            "x.s": "hi",
            "x.b": True,
            "x.i": 7,
            "x.f": 1.5,
            "x.big": 2**40,
            "x.arr": ["a", "b"],
        },
    )
    r = gguf.GGUFReader(str(path))
    assert [t.tensor_type.name for t in r.tensors] == ["Q8_0", "F16", "Q8_0"]
    assert _field(r, "general.architecture") == "qwen2"
    assert _field(r, "general.alignment") == 64
    assert _field(r, "x.s") == "hi"
    assert _field(r, "x.b") is True
    assert _field(r, "x.i") == 7
    assert _field(r, "x.f") == pytest.approx(1.5)
    assert _field(r, "x.big") == 2**40
    assert _field(r, "x.arr") == ["a", "b"]


def test_truncate_to(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "full.gguf")
    path = tmp_path / "cut.gguf"
    assert write_gguf(path, truncate_to=full // 3) == full // 3 == os.path.getsize(path)
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("bad", [-1, 10**12])
def test_truncate_to_outside_the_file_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="truncate_to"):
        write_gguf(tmp_path / "m.gguf", tensor_elems=64, truncate_to=bad)
    assert list(tmp_path.iterdir()) == []  # no half-written file or temp file left behind


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported tensor type"):
        write_gguf(tmp_path / "m.gguf", tensor_types=("Q9_9",))
    with pytest.raises(ValueError, match="multiple of 32"):
        write_gguf(tmp_path / "m.gguf", tensor_elems=33, tensor_types=("Q8_0",))
    with pytest.raises(TypeError, match="unsupported GGUF metadata"):
        write_gguf(tmp_path / "m.gguf", tensor_elems=64, extra_kv={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_replaces_atomically_and_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    write_gguf(path, tensor_elems=64)
    assert path.read_bytes()[:4] == b"GGUF"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    assert write_not_gguf(path) == len(NOT_GGUF_BYTES)
    assert path.read_bytes()[:4] != b"GGUF"
