"""ggufmake against the reference: the `gguf` package (llama.cpp's own gguf-py).

ggufmake packs GGUF bytes itself with `struct` (no numpy, no gguf at run time). Here every file
it writes is (1) read back with gguf's `GGUFReader` and compared with what was meant, field by
field and tensor by tensor, and (2) compared byte for byte with the file gguf's `GGUFWriter`
makes from the same content.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exsa_doctor.demo.standin.ggufmake import TENSOR_TYPES, write_gguf

gguf = pytest.importorskip("gguf")  # a dev dependency; the differential test needs it
np = pytest.importorskip("numpy")

CASES: list[dict[str, Any]] = [
    {},
    {"n_tensors": 0},
    {
        "n_tensors": 3,
        "tensor_elems": 512,
        "architecture": "qwen2",
        "tensor_types": ("Q8_0", "F16"),
        "alignment": 64,
        "extra_kv": {
            "x.s": "hi",
            "x.b": True,
            "x.i": 7,
            "x.f": 1.5,
            "x.big": 2**40,
            "x.arr": ["a", "b"],
        },
    },
    {"n_tensors": 3, "tensor_elems": 1024, "tensor_types": ("Q4_K", "Q6_K", "Q4_0"), "name": None},
    {
        "n_tensors": 1,
        "tensor_elems": 64,
        "extra_kv": {"a.ints": [1, -2, 3], "a.floats": [1.5, 2.5], "a.bools": [True, False]},
    },
]


def meant_metadata(case: dict[str, Any]) -> dict[str, Any]:
    """The key/value pairs a call means, in order."""
    arch = case.get("architecture", "llama")
    out: dict[str, Any] = {"general.architecture": arch}
    if case.get("name", "exsa-doctor test model"):
        out["general.name"] = case.get("name", "exsa-doctor test model")
    if case.get("alignment") is not None:
        out["general.alignment"] = case["alignment"]
    out[f"{arch}.block_count"] = max(case.get("n_tensors", 2), 1)
    out[f"{arch}.context_length"] = 2048
    out.update(case.get("extra_kv", {}))
    return out


def meant_tensors(case: dict[str, Any]) -> list[tuple[str, str, int, Any]]:
    """(name, type, elements, numpy data) of each tensor a call means."""
    types = case.get("tensor_types", ("F32",))
    elems = case.get("tensor_elems", 256 * 1024)
    out = []
    for i in range(case.get("n_tensors", 2)):
        kind = types[i % len(types)]
        if kind == "F32":
            data = np.arange(elems, dtype=np.float32) * np.float32(i + 1)
        elif kind == "F16":
            data = np.ones(elems, dtype=np.float16) * np.float16(i + 1)
        else:
            _id, block, size = TENSOR_TYPES[kind]
            data = np.zeros((elems // block) * size, dtype=np.uint8)
        out.append((f"blk.{i}.weight", kind, elems, data))
    return out


def reference_file(case: dict[str, Any], path: Path) -> bytes:
    """The same content written by gguf's own GGUFWriter."""
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    meta = meant_metadata(case)
    writer = gguf.GGUFWriter(str(path), meta.pop("general.architecture"))
    for key, value in meta.items():
        if key == "general.alignment":
            writer.add_custom_alignment(value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            (writer.add_uint32 if 0 <= value < 2**32 else writer.add_int64)(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    for name, kind, _elems, data in meant_tensors(case):
        raw = None if kind in ("F32", "F16") else getattr(gguf.GGMLQuantizationType, kind)
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_the_reference_reader_finds_what_was_meant(case: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ours.gguf"
    write_gguf(path, **case)
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    meant = meant_metadata(case)
    assert list(fields) == list(meant)
    for key, value in meant.items():
        if isinstance(value, float) or (isinstance(value, list) and isinstance(value[0], float)):
            assert fields[key] == pytest.approx(value), key
        else:
            assert fields[key] == value, key
    tensors = meant_tensors(case)
    assert [t.name for t in reader.tensors] == [name for name, *_ in tensors]
    for got, (_name, kind, elems, data) in zip(reader.tensors, tensors, strict=True):
        assert got.tensor_type.name == kind
        assert int(got.n_elements) == elems
        assert np.asarray(got.data).tobytes() == data.tobytes()


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bytes_equal_the_reference_writers(case: dict[str, Any], tmp_path: Path) -> None:
    write_gguf(tmp_path / "ours.gguf", **case)
    assert (tmp_path / "ours.gguf").read_bytes() == reference_file(case, tmp_path / "ref.gguf")


def test_writing_a_model_needs_neither_numpy_nor_gguf(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from exsa_doctor.demo.standin.ggufmake import write_gguf\n"
        f"write_gguf({str(tmp_path / 'm.gguf')!r}, tensor_types=('F32', 'F16', 'Q8_0'), "
        "n_tensors=3, tensor_elems=256)\n"
        "loaded = sorted(m for m in ('numpy', 'gguf') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"
