"""Write small, real GGUF files (and broken ones) for the stand-in engine, the demo and tests.

The bytes are packed here with `struct`, following the format's definition (ggml docs/gguf.md,
version 3): magic, version, counts, typed key/value pairs, tensor infos, then the tensor data
aligned to `general.alignment` (32 unless set). No numpy, no `gguf`: the demo runs from a plain
`pip install`. A differential test (tests/unit/test_ggufmake.py) reads every file this module
writes with the `gguf` package's reader, the reference that ships with llama.cpp, and checks it
holds exactly what was meant.
"""

from __future__ import annotations

import array
import contextlib
import os
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_TENSOR_ELEMS = 256 * 1024  # float32 -> 1 MiB per tensor, 2 MiB for the default two
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# Tensor types this helper can write: ggml type id, elements per block, bytes per block.
# Float types carry real numbers; quantized types are written as zeroed blocks of the right byte
# size (a valid encoding: every block decodes to 0).
TENSOR_TYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144),
    "Q6_K": (14, 256, 210),
}
SUPPORTED_TYPES = tuple(TENSOR_TYPES)

# GGUF metadata value types (gguf.md: gguf_metadata_value_type)
_UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _INT64 = 4, 5, 6, 7, 8, 9, 11

NOT_GGUF_BYTES = b"PK\x03\x04 this is a zip header, not a GGUF model\n" + bytes(4096)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _scalar(value: object) -> tuple[int, bytes]:
    """(value type, packed value) for one metadata value, its type chosen from the Python type."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return _BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return _UINT32, struct.pack("<I", value)
        return _INT64, struct.pack("<q", value)
    if isinstance(value, float):
        return _FLOAT32, struct.pack("<f", value)
    if isinstance(value, str):
        return _STRING, _string(value)
    raise TypeError(type(value).__name__)


def _array_item(value: object) -> tuple[int, bytes]:
    """An array element: ints are INT32 in arrays, as llama.cpp's own writer stores them."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**31) <= value < 2**31:
            return _INT32, struct.pack("<i", value)
        return _INT64, struct.pack("<q", value)
    return _scalar(value)


def _kv(key: str, value: object) -> bytes:
    """One key/value pair, packed."""
    try:
        if isinstance(value, (list, tuple)):
            items = [_array_item(v) for v in value]
            kinds = {kind for kind, _ in items}
            if len(kinds) > 1:
                raise TypeError("an array of mixed types")
            kind = kinds.pop() if kinds else _INT32
            body = struct.pack("<IQ", kind, len(items)) + b"".join(b for _, b in items)
            return _string(key) + struct.pack("<I", _ARRAY) + body
        kind, body = _scalar(value)
    except TypeError as exc:
        raise TypeError(f"unsupported GGUF metadata value for {key!r}: {exc}") from None
    return _string(key) + struct.pack("<I", kind) + body


def _tensor_data(type_name: str, elems: int, index: int) -> bytes:
    """The bytes of one tensor of `elems` elements: index * (i + 1) for F32, i + 1 for F16."""
    if type_name == "F32":
        scale = float(index + 1)
        values = array.array("f", (i * scale for i in range(elems)))
        if sys.byteorder == "big":
            values.byteswap()
        return values.tobytes()
    if type_name == "F16":
        return struct.pack("<e", float(index + 1)) * elems
    _type_id, block_elems, block_bytes = TENSOR_TYPES[type_name]
    if elems % block_elems:
        raise ValueError(f"{type_name} needs a multiple of {block_elems} elements, got {elems}")
    return bytes((elems // block_elems) * block_bytes)


def _padding(size: int, alignment: int) -> bytes:
    return bytes(-size % alignment)


def gguf_bytes(
    metadata: Mapping[str, object], tensors: Sequence[tuple[str, str, int, bytes]], alignment: int
) -> bytes:
    """A whole GGUF v3 file: `metadata` in order, then (name, type, elements, data) tensors."""
    parts = [b"GGUF", struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata))]
    parts += [_kv(key, value) for key, value in metadata.items()]
    offset = 0
    for name, type_name, elems, data in tensors:
        type_id = TENSOR_TYPES[type_name][0]
        # one dimension, as ggml stores a 1-D tensor: ne[0] = elements
        parts.append(_string(name) + struct.pack("<IQIQ", 1, elems, type_id, offset))
        offset += len(data) + len(_padding(len(data), alignment))
    head = b"".join(parts)
    body = [head, _padding(len(head), alignment)]
    for _name, _type, _elems, data in tensors:
        body += [data, _padding(len(data), alignment)]
    return b"".join(body)


def write_gguf(
    path: str | os.PathLike[str],
    *,
    n_tensors: int = 2,
    tensor_elems: int = DEFAULT_TENSOR_ELEMS,
    architecture: str = "llama",
    truncate_to: int | None = None,
    extra_kv: Mapping[str, object] | None = None,
    tensor_types: Sequence[str] = ("F32",),
    name: str | None = "exsa-doctor test model",
    alignment: int | None = None,
) -> int:
    """Write a valid GGUF file at `path` and return its size in bytes.

    `tensor_types` is cycled over the tensors (e.g. ("F32", "Q8_0")). With `truncate_to`, the
    file is cut to that many bytes afterwards, so the tensor table declares more data than the
    file holds: the shape of a half-finished download. The file is written beside its final
    name and renamed into place, so a watcher never sees a half-written good file.
    """
    if n_tensors < 0 or tensor_elems <= 0:
        raise ValueError("n_tensors must be >= 0 and tensor_elems > 0")
    for type_name in tensor_types:
        if type_name not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported tensor type {type_name!r}; use one of {SUPPORTED_TYPES}")
    metadata: dict[str, object] = {"general.architecture": architecture}
    if name:
        metadata["general.name"] = name
    if alignment is not None:
        if alignment <= 0 or alignment % 8:
            raise ValueError(f"alignment must be a positive multiple of 8, got {alignment}")
        metadata["general.alignment"] = alignment
    metadata[f"{architecture}.block_count"] = max(n_tensors, 1)
    metadata[f"{architecture}.context_length"] = 2048
    metadata.update(extra_kv or {})
    tensors = []
    for i in range(n_tensors):
        type_name = tensor_types[i % len(tensor_types)] if tensor_types else "F32"
        data = _tensor_data(type_name, tensor_elems, i)
        tensors.append((f"blk.{i}.weight", type_name, tensor_elems, data))
    content = gguf_bytes(metadata, tensors, alignment or DEFAULT_ALIGNMENT)
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=".ggufmake-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        if truncate_to is not None:
            full = os.path.getsize(tmp_name)
            if not 0 <= truncate_to < full:
                raise ValueError(f"truncate_to must be in [0, {full}), got {truncate_to}")
            os.truncate(tmp_name, truncate_to)
        # mkstemp makes 0600 files; a model file is normally world-readable, and tests read it
        # as an unprivileged user.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return os.path.getsize(target)


def write_not_gguf(path: str | os.PathLike[str]) -> int:
    """Write a file that is plainly not GGUF (a zip-like header) and return its size."""
    Path(path).write_bytes(NOT_GGUF_BYTES)
    return len(NOT_GGUF_BYTES)
