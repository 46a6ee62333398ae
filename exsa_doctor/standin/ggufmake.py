"""Write small, real GGUF files (and broken ones) for the stand-in engine, the demo and tests.

The bytes come from the `gguf` package's `GGUFWriter` (the reference writer that ships with
llama.cpp), never from a hand-rolled encoder: a file this module writes is a GGUF file by the
format's own definition, so the doctor's parser is checked against the real thing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TENSOR_ELEMS = 256 * 1024  # float32 -> 1 MiB per tensor, 2 MiB for the default two

# Tensor types this helper can write. Float/int types carry real numbers; quantized types are
# written as zeroed blocks of the right byte size (a valid encoding: every block decodes to 0).
SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")

NOT_GGUF_BYTES = b"PK\x03\x04 this is a zip header, not a GGUF model\n" + bytes(4096)


def _add_kv(writer: Any, key: str, value: object) -> None:
    """Add one metadata pair, choosing the GGUF value type from the Python type."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        writer.add_bool(key, value)
    elif isinstance(value, int):
        if 0 <= value < 2**32:
            writer.add_uint32(key, value)
        else:
            writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"unsupported GGUF metadata value for {key!r}: {type(value).__name__}")


def _tensor_for(gguf: Any, np: Any, type_name: str, elems: int, index: int) -> tuple[Any, Any]:
    """Return (array, raw_dtype) for one tensor of `elems` elements of the given ggml type."""
    if type_name == "F32":
        return np.arange(elems, dtype=np.float32) * np.float32(index + 1), None
    if type_name == "F16":
        return np.ones(elems, dtype=np.float16) * np.float16(index + 1), None
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if elems % block_size:
        raise ValueError(f"{type_name} needs a multiple of {block_size} elements, got {elems}")
    return np.zeros((elems // block_size) * type_size, dtype=np.uint8), qtype


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
    import gguf  # imported here: the product's own code paths never need numpy/gguf
    import numpy as np

    # GGUFWriter logs an info line per file; keep test and demo output quiet.
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=".ggufmake-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, architecture)
        if name:
            writer.add_name(name)
        if alignment is not None:
            writer.add_custom_alignment(alignment)
        writer.add_uint32(f"{architecture}.block_count", max(n_tensors, 1))
        writer.add_uint32(f"{architecture}.context_length", 2048)
        for key, value in (extra_kv or {}).items():
            _add_kv(writer, key, value)
        for i in range(n_tensors):
            type_name = tensor_types[i % len(tensor_types)] if tensor_types else "F32"
            array, raw_dtype = _tensor_for(gguf, np, type_name, tensor_elems, i)
            writer.add_tensor(f"blk.{i}.weight", array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
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
