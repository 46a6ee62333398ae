"""A bounded GGUF header parser: is this a GGUF file, and does it hold all its tensor data?

GGUF layout (ggml docs/gguf.md): magic "GGUF", u32 version, tensor count and KV count (u32 in
version 1, u64 since 2), then KV pairs (string key, u32 value type, typed value; arrays carry an
element type and a count), then one info record per tensor (name, u32 n_dims, dims, u32 ggml
type, u64 offset relative to the data section). The data section starts at the end of the tensor
infos rounded up to `general.alignment` (default 32).

Why not `gguf.GGUFReader`: it memory-maps the file and trusts every count it reads, so a hostile
or damaged header can make it allocate gigabytes or spin for minutes. This parser reads at most
`max_header_bytes` through a small window, caps every count against the bytes that could back
it, skips arrays (a tokenizer vocabulary is ~10^5 strings) without materialising them, and ends
with a `GGUFHeader` or a `GGUFError` whatever the input.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
DEFAULT_MAX_HEADER_BYTES = 32 * 1024 * 1024
_WINDOW = 1 << 20  # bytes read per refill of the parse window

# Hard caps; real models stay far below them (~1-3k tensors, ~50 KV pairs, 4 dims).
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_DIMS = 8  # ggml uses 4; leave room, anything bigger is garbage
MAX_KEY_BYTES = 1 << 16
MAX_NAME_BYTES = 1 << 16
MAX_ARRAY_DEPTH = 4
_KEEP_STRING_BYTES = 512  # longest string value we keep (architecture, name)

# ggml type id -> (name, elements per block, bytes per block). From ggml.h / ggml.c type traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# GGUF metadata value types: id -> fixed size in bytes (None: string / array).
_T_STRING = 8
_T_ARRAY = 9
_VALUE_SIZES: dict[int, int | None] = {
    0: 1,
    1: 1,
    2: 2,
    3: 2,
    4: 4,
    5: 4,
    6: 4,
    7: 1,
    8: None,
    9: None,
    10: 8,
    11: 8,
    12: 8,
}
_INT_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 10: "Q", 11: "q"}


class GGUFError(Exception):
    """The file is not a usable GGUF file. `kind` says how, for the probe to pick a finding.

    kinds: "empty", "bad_magic", "invalid" (absurd value), "cut" (file ends inside the header),
    "limit" (header larger than we are willing to read), "unreadable" (not a regular file / I/O).
    """

    def __init__(self, kind: str, reason: str, magic: bytes | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.magic = magic


@dataclass(frozen=True)
class GGUFHeader:
    """What the header says, and whether the file is long enough to hold it."""

    version: int
    byte_order: str  # "little" | "big"
    tensor_count: int
    kv_count: int
    architecture: str | None
    name: str | None
    alignment: int
    header_end: int  # end of the tensor infos
    data_offset: int  # start of the tensor data (header_end aligned)
    declared_end: int  # byte the tensor table says the data runs to
    file_size: int
    tensor_types: tuple[tuple[str, int], ...]  # (ggml type name, tensor count), sorted by name
    unknown_types: tuple[int, ...] = ()  # type ids we have no size for (ignored in declared_end)
    split_count: int = 0  # `split.count` of a model split into shards (0: not split)

    @property
    def truncated(self) -> bool:
        return self.declared_end > self.file_size

    @property
    def missing_bytes(self) -> int:
        return max(0, self.declared_end - self.file_size)


class _Cursor:
    """Sequential reads over a file through a bounded window; never reads past `limit`."""

    def __init__(self, fh: BinaryIO, file_size: int, limit: int) -> None:
        self.fh = fh
        self.file_size = file_size
        self.limit = limit
        self.pos = 0
        self.buf = b""
        self.buf_start = 0
        self.fmt_prefix = "<"

    def _need(self, n: int) -> int:
        """Make n bytes at pos available; return their offset in buf."""
        end = self.pos + n
        if end > self.file_size:
            raise GGUFError(
                "cut", f"file ends inside the header (needs byte {end}, file has {self.file_size})"
            )
        if end > self.limit:
            raise GGUFError("limit", f"header is larger than the {self.limit} bytes we read")
        off = self.pos - self.buf_start
        if off < 0 or off + n > len(self.buf):
            want = min(max(n, _WINDOW), self.limit - self.pos)
            try:
                self.fh.seek(self.pos)
                self.buf = self.fh.read(want)
            except OSError as exc:
                raise GGUFError("unreadable", f"read failed: {exc}") from exc
            self.buf_start = self.pos
            off = 0
            if len(self.buf) < n:  # the file shrank under us, or a short read at EOF
                at = self.pos + len(self.buf)
                raise GGUFError("cut", f"file ends inside the header at byte {at}")
        return off

    def read(self, n: int) -> bytes:
        off = self._need(n)
        self.pos += n
        return self.buf[off : off + n]

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        off = self._need(size)
        self.pos += size
        value: int = struct.unpack_from(self.fmt_prefix + fmt, self.buf, off)[0]
        return value

    def skip(self, n: int) -> None:
        """Move past n bytes without reading them, still bounded by file size and limit."""
        end = self.pos + n
        if end > self.file_size:
            raise GGUFError(
                "cut", f"file ends inside the header (needs byte {end}, file has {self.file_size})"
            )
        if end > self.limit:
            raise GGUFError("limit", f"header is larger than the {self.limit} bytes we read")
        self.pos = end

    def remaining(self) -> int:
        return min(self.file_size, self.limit) - self.pos


class _Parser:
    def __init__(self, cur: _Cursor, version: int) -> None:
        self.cur = cur
        self.version = version
        # version 1 used 32-bit counts and lengths everywhere
        self.len_fmt = "I" if version == 1 else "Q"
        self.len_size = 4 if version == 1 else 8

    def length(self, what: str, cap: int | None = None) -> int:
        n = self.cur.unpack(self.len_fmt)
        if cap is not None and n > cap:
            raise GGUFError("invalid", f"{what} is {n}, more than the limit {cap}")
        return n

    def string(self, what: str, cap: int) -> bytes:
        """A string we need to look at (key, tensor name); bounded by cap."""
        n = self.length(f"{what} length", cap)
        return self.cur.read(n)

    def skip_string(self, keep: bool) -> str | None:
        n = self.length("string length")
        if n > self.cur.remaining():
            self.cur.skip(n)  # raises cut/limit with a precise message
        if keep and n <= _KEEP_STRING_BYTES:
            return self.cur.read(n).decode("utf-8", errors="replace")
        self.cur.skip(n)
        return None

    def value(self, vtype: int, depth: int, keep: bool) -> int | str | None:
        """Read or skip one typed value; return it when it is a scalar int or a kept string."""
        if vtype == _T_STRING:
            return self.skip_string(keep)
        if vtype == _T_ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise GGUFError("invalid", f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
            etype = self.cur.unpack("I")
            count = self.length("array length")
            self.skip_array(etype, count, depth + 1)
            return None
        size = _VALUE_SIZES.get(vtype)
        if size is None:
            raise GGUFError("invalid", f"unknown metadata value type {vtype}")
        if vtype in _INT_FORMATS:
            return self.cur.unpack(_INT_FORMATS[vtype])
        self.cur.skip(size)
        return None

    def skip_array(self, etype: int, count: int, depth: int) -> None:
        if etype in _VALUE_SIZES and _VALUE_SIZES[etype] is not None:
            size = _VALUE_SIZES[etype]
            assert size is not None
            self.cur.skip(count * size)  # one bounds check, no loop: count may be absurd
            return
        if etype not in _VALUE_SIZES:
            raise GGUFError("invalid", f"unknown array element type {etype}")
        # strings or arrays: each element takes at least a length field, so a count larger than
        # the bytes left is impossible; refuse it before looping.
        if count * self.len_size > self.cur.remaining():
            if self.cur.remaining() >= self.cur.file_size - self.cur.pos:
                raise GGUFError("cut", f"array of {count} elements does not fit in the file")
            raise GGUFError("limit", f"array of {count} elements exceeds the header limit")
        if etype == _T_STRING:
            self._skip_strings(count)
        else:
            for _ in range(count):
                self.value(etype, depth, keep=False)

    def _skip_strings(self, count: int) -> None:
        """Skip `count` length-prefixed strings: the hot loop for tokenizer vocabularies."""
        cur = self.cur
        fmt = cur.fmt_prefix + self.len_fmt
        unpack_from = struct.unpack_from
        lsize = self.len_size
        for _ in range(count):
            off = cur._need(lsize)
            n = unpack_from(fmt, cur.buf, off)[0]
            cur.pos += lsize
            cur.skip(n)


def _detect_version(raw: bytes) -> tuple[int, str]:
    le = struct.unpack("<I", raw)[0]
    if 1 <= le <= 3:
        return le, "little"
    be = struct.unpack(">I", raw)[0]
    if 1 <= be <= 3:
        return be, "big"
    raise GGUFError("invalid", f"unsupported GGUF version {le} (known: 1, 2, 3)")


def parse_gguf(
    fh: BinaryIO, file_size: int | None = None, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> GGUFHeader:
    """Parse the GGUF header from a seekable binary file handle (positioned anywhere)."""
    if file_size is None:
        try:
            file_size = fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise GGUFError("unreadable", f"cannot seek: {exc}") from exc
    if file_size == 0:
        raise GGUFError("empty", "the file is empty (0 bytes)")
    cur = _Cursor(fh, file_size, max(64, max_header_bytes))
    magic = cur.read(min(4, file_size))
    if magic != GGUF_MAGIC:
        raise GGUFError("bad_magic", f"not a GGUF file (starts with {magic!r})", magic=magic)
    version, byte_order = _detect_version(cur.read(4))
    cur.fmt_prefix = "<" if byte_order == "little" else ">"
    p = _Parser(cur, version)

    tensor_count = p.length("tensor count", MAX_TENSORS)
    kv_count = p.length("metadata count", MAX_KV)
    # Each KV pair takes >= len+type+1 bytes and each tensor info >= len+4+4+8. Counts within
    # the caps that the file cannot hold mean the file was cut, found before any loop runs.
    min_bytes = kv_count * (p.len_size + 5) + tensor_count * (p.len_size + 16)
    if min_bytes > file_size - cur.pos:
        raise GGUFError(
            "cut",
            f"header declares {tensor_count} tensors and {kv_count} metadata pairs, which need "
            f"at least {cur.pos + min_bytes} bytes; the file has {file_size}",
        )

    architecture: str | None = None
    name: str | None = None
    alignment = DEFAULT_ALIGNMENT
    split_count = 0
    for _ in range(kv_count):
        key = p.string("key", MAX_KEY_BYTES)
        vtype = cur.unpack("I")
        wanted = key in (
            b"general.architecture",
            b"general.name",
            b"general.alignment",
            b"split.count",
        )
        value = p.value(vtype, 0, keep=wanted)
        if key == b"split.count" and isinstance(value, int) and 0 < value < 10_000:
            split_count = value
        if key == b"general.architecture" and isinstance(value, str):
            architecture = value
        elif key == b"general.name" and isinstance(value, str):
            name = value
        elif key == b"general.alignment":
            if not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise GGUFError("invalid", f"general.alignment {value!r} is not a power of two")
            alignment = value

    type_counts: dict[str, int] = {}
    unknown: set[int] = set()
    data_extent = 0
    for _ in range(tensor_count):
        tname = p.string("tensor name", MAX_NAME_BYTES)
        n_dims = cur.unpack("I")
        if n_dims > MAX_DIMS:
            raise GGUFError("invalid", f"tensor {_show(tname)} has {n_dims} dimensions")
        elems = 1
        for _ in range(n_dims):
            elems *= cur.unpack(p.len_fmt)
        if elems >= 1 << 63:
            raise GGUFError("invalid", f"tensor {_show(tname)} declares {elems} elements")
        ttype = cur.unpack("I")
        offset = cur.unpack("Q")
        info = GGML_TYPES.get(ttype)
        if info is None:
            unknown.add(ttype)
            type_counts[f"type{ttype}"] = type_counts.get(f"type{ttype}", 0) + 1
            continue
        tname_s, block, block_bytes = info
        type_counts[tname_s] = type_counts.get(tname_s, 0) + 1
        nbytes = -(-elems // block) * block_bytes
        if offset + nbytes >= 1 << 63:
            raise GGUFError("invalid", f"tensor {_show(tname)} data ends past 2^63 bytes")
        data_extent = max(data_extent, offset + nbytes)

    header_end = cur.pos
    data_offset = -(-header_end // alignment) * alignment
    declared_end = data_offset + data_extent if tensor_count else header_end
    return GGUFHeader(
        version=version,
        byte_order=byte_order,
        tensor_count=tensor_count,
        kv_count=kv_count,
        split_count=split_count,
        architecture=architecture,
        name=name,
        alignment=alignment,
        header_end=header_end,
        data_offset=data_offset,
        declared_end=declared_end,
        file_size=file_size,
        tensor_types=tuple(sorted(type_counts.items())),
        unknown_types=tuple(sorted(unknown)),
    )


def _show(raw: bytes) -> str:
    return repr(raw[:64].decode("utf-8", errors="replace"))


def parse_gguf_bytes(
    data: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> GGUFHeader:
    """Parse a header held in memory (tests, fuzzing)."""
    import io

    return parse_gguf(io.BytesIO(data), len(data), max_header_bytes=max_header_bytes)


def read_gguf_header(path: str, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> GGUFHeader:
    """Open `path` and parse its header. OSError propagates (missing, permission denied).

    Opened non-blocking so a FIFO at the model path cannot hang the probe; only regular files
    are parsed.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError("unreadable", "not a regular file")
        return parse_gguf(fh, st.st_size, max_header_bytes=max_header_bytes)
