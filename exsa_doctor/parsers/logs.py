"""Engine logs: a bounded read of a log file, and a pure parser from its bytes to a `LogReport`.

The reader never takes a big file whole: it keeps the first `HEAD_BYTES` (the first start marker
of a long single run lives there) and the last `max_bytes` (the newest state), joined at line
boundaries. The parser caps every line (`MAX_LINE_BYTES`: one 20 MB line costs 8 KiB), decodes
UTF-8 with replacement (binary junk and Latin-1 become U+FFFD, never an exception), strips the
ANSI colours that tracing and llama.cpp print on a TTY, reads each line's timestamp in the
profile's format and searches the profile's marker regexes.

Timestamp formats (`Profile.timestamp_format`):
- `iso8601`: `2025-11-23T16:55:52.938526Z  INFO ...` (tracing), `time=2025-...+01:00` (Go slog),
  nanoseconds and offsets allowed; naive times are local; Go's `2024/05/01 12:00:00` too.
- `elapsed`: llama.cpp's `M.SS.mmm.uuu` since the start of the process (`0.00.088.063 I srv ...`);
  made absolute with an anchor the caller knows (the engine's create time), else the file's
  modification time minus the last elapsed value. Only the newest run can be anchored.
- `vllm`: `INFO 11-23 16:55:52 [file.py:12]`, local time without a year: the year is the one that
  puts the stamp closest before the reference time.
- `none`: no timestamps.
An impossible stamp (month 13, year 0, far future) gives no time, never an exception.

A line without a time of its own takes the time of the nearest stamped line before it in the same
run (`LogEvent.t_exact` is then False): llama.cpp writes raw lines between stamped ones.

Marker regexes may name groups with a numeric suffix (`reason2`, `version2`): Python forbids a
repeated group name, so such a group fills the base name (`reason`) when that one is empty.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import io
import itertools
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from exsa_doctor.profiles import Profile
from exsa_doctor.signatures import Hit, Table
from exsa_doctor.signatures import load_table as load_table  # noqa: PLC0414 (re-exported: the corpus tools swap it)

MAX_TAIL_BYTES = 1 << 20
HEAD_BYTES = 64 << 10
MAX_LINE_BYTES = 8 << 10
EVENT_LINE_CHARS = 400
# Per run and marker, events kept in order (the rest are only counted): a server that logs every
# request would otherwise turn 1 MiB into 100 000 events.
MAX_EVENTS_PER_MARKER = 32
MAX_RUNS = 256

FATAL_MARKERS = ("model_path_unset", "model_error", "mmap_failed", "oom", "bind_failed", "panic")
# A line that matches the key is not also counted as the values: "mmap failed: Cannot allocate
# memory" is an mmap failure (ENOMEM from mmap), not the process running out of memory.
_SUPERSEDES: Mapping[str, tuple[str, ...]] = {"mmap_failed": ("oom",)}

_MIN_EPOCH = 631152000.0  # 1990-01-01: nothing we diagnose logged earlier
_FUTURE_SLACK_S = 2 * 86400.0
_ELAPSED_RESET_S = 0.001  # an elapsed stamp this much below the previous one: a new process
# A start marker right after another one, with no other event between and within this many seconds
# (or without times), is the same start: llama-server prints "build: N" and "system info:".
_SAME_START_S = 10.0

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# C0 controls but tab and newline; a CR before a newline goes too
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ISO = re.compile(
    r"(?:^|[\s\[=\"])(?P<Y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})[T ]"
    r"(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"
    r"(?:[.,](?P<f>\d{1,9}))?\s?(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?|UTC)?"
)
_GO = re.compile(
    r"^(?P<Y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2}) (?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"
    r"(?:\.(?P<f>\d{1,9}))?"
)
# an optional `[ port]` prefix: llama-server's router forwards its children's lines that way
_ELAPSED = re.compile(
    r"^(?:\[\s*\d+\]\s*)?(?P<m>\d{1,7})\.(?P<s>\d{2})\.(?P<ms>\d{3})\.(?P<us>\d{3})(?:\s|$)"
)
_VLLM = re.compile(
    r"(?:^|[\s)])(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(?P<m>\d{2})-(?P<d>\d{2}) "
    r"(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:[.,](?P<f>\d{1,6}))?"
)
_ELAPSED_ALL = re.compile(
    r"^(?:\[\s*\d+\]\s*)?(?P<m>\d{1,7})\.(?P<s>\d{2})\.(?P<ms>\d{3})\.(?P<us>\d{3})(?=\s|$)",
    re.MULTILINE,
)
_LOOKBACK_LINES = 200  # how far back a line without a time looks for one
_ALIAS = re.compile(r"^(?P<base>[A-Za-z_]+?)\d+$")
_STAMP_WINDOW = 96  # a line's own timestamp is near its start; later ones belong to the message


class LogReadError(OSError):
    """A log path that exists but cannot be read as a log (a directory, a FIFO, a device)."""


@dataclass(frozen=True)
class LogBytes:
    """What was read of a log file: head and tail joined, and how much was left out between."""

    data: bytes
    size: int
    skipped: int
    mtime: float


@dataclass(frozen=True)
class LogEvent:
    """One marker seen on one line."""

    t: float | None
    marker: str
    groups: Mapping[str, str]
    line: str
    lineno: int
    t_exact: bool = True


@dataclass(frozen=True)
class BindFailure:
    """A bind failure line, with what it says about the address."""

    t: float | None
    address: str | None
    host: str | None
    port: int | None
    errno: int | None
    reason: str
    line: str


@dataclass(frozen=True)
class Run:
    """One run of the engine: the events from one start marker to the next."""

    index: int
    start: LogEvent | None
    events: tuple[LogEvent, ...]
    counts: Mapping[str, int]
    last_event: LogEvent | None
    start_line: int = 0

    def first(self, marker: str) -> LogEvent | None:
        for e in self.events:
            if e.marker == marker:
                return e
        return None

    def t_of(self, marker: str) -> float | None:
        event = self.first(marker)
        return event.t if event else None

    @property
    def started_at(self) -> float | None:
        return self.start.t if self.start else None

    @property
    def version(self) -> str | None:
        return self.start.groups.get("version") if self.start else None

    @property
    def validated_at(self) -> float | None:
        return self.t_of("model_validated")

    @property
    def loading_at(self) -> float | None:
        return self.t_of("model_loading")

    @property
    def loaded_at(self) -> float | None:
        return self.t_of("model_loaded")

    @property
    def listening(self) -> LogEvent | None:
        return self.first("listening")

    @property
    def listening_at(self) -> float | None:
        return self.t_of("listening")

    @property
    def listening_address(self) -> str | None:
        event = self.first("listening")
        return event.groups.get("address") if event else None

    @property
    def bind_failure(self) -> BindFailure | None:
        event = self.first("bind_failed")
        if event is None:
            return None
        return bind_failure_of(event)

    @property
    def fatal(self) -> tuple[LogEvent, ...]:
        return tuple(e for e in self.events if e.marker in FATAL_MARKERS)

    @property
    def shutdown(self) -> LogEvent | None:
        """The shutdown line, only when it is the run's last event (a clean exit)."""
        last = self.last_event
        return last if last is not None and last.marker == "shutdown" else None

    @property
    def load_s(self) -> float | None:
        loaded = self.loaded_at
        begin = next(
            (t for t in (self.loading_at, self.validated_at, self.started_at) if t is not None),
            None,
        )
        if loaded is None or begin is None or loaded < begin:
            return None
        return loaded - begin

    @property
    def durations(self) -> dict[str, float]:
        """Phase lengths in seconds: start -> validated -> loaded -> listening (known ones)."""
        points = [
            ("started", self.started_at),
            ("validated", self.validated_at),
            ("loaded", self.loaded_at),
            ("listening", self.listening_at),
        ]
        known = [(name, t) for name, t in points if t is not None]
        out: dict[str, float] = {}
        for (a, ta), (b, tb) in itertools.pairwise(known):
            if tb >= ta:
                out[f"{a}_to_{b}"] = round(tb - ta, 6)
        if self.started_at is not None and self.listening_at is not None:
            total = self.listening_at - self.started_at
            if total >= 0:
                out["started_to_listening"] = round(total, 6)
        return out


@dataclass(frozen=True)
class LogReport:
    """Everything read from one log: the events, the runs, and how the reading went."""

    timestamp_format: str
    events: tuple[LogEvent, ...]
    runs: tuple[Run, ...]
    lines: int
    bytes_parsed: int
    skipped_bytes: int = 0
    runs_dropped: int = 0
    anchor: float | None = None  # wall time of elapsed zero for the newest run
    last_elapsed: float | None = None
    stamped_lines: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # signature hits in the newest run (see exsa_doctor.signatures), in line order
    hits: tuple[Hit, ...] = ()
    # the wall time of each hit's line, where known (same order as `hits`)
    hit_times: tuple[float | None, ...] = ()
    # when no row matched a line of the newest run: the first line each hint row matched
    # (signatures/hints.toml); a pasted fragment may still say what it is about
    quiet_hints: tuple[Hit, ...] = ()

    @property
    def starts(self) -> tuple[Run, ...]:
        """The runs that begin with a start marker (a file appended to by several runs)."""
        return tuple(r for r in self.runs if r.start is not None)

    @property
    def start_count(self) -> int:
        return len(self.starts) + self.runs_dropped

    @property
    def last_run(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    @property
    def started_at(self) -> float | None:
        run = self.last_run
        return run.started_at if run else None

    @property
    def validated_at(self) -> float | None:
        run = self.last_run
        return run.validated_at if run else None

    @property
    def loaded_at(self) -> float | None:
        run = self.last_run
        return run.loaded_at if run else None

    @property
    def listening_at(self) -> float | None:
        run = self.last_run
        return run.listening_at if run else None

    @property
    def listening_address(self) -> str | None:
        run = self.last_run
        return run.listening_address if run else None

    @property
    def bind_failure(self) -> BindFailure | None:
        run = self.last_run
        return run.bind_failure if run else None

    @property
    def fatal(self) -> tuple[LogEvent, ...]:
        run = self.last_run
        return run.fatal if run else ()

    @property
    def shutdown(self) -> LogEvent | None:
        run = self.last_run
        return run.shutdown if run else None

    @property
    def durations(self) -> dict[str, float]:
        run = self.last_run
        return run.durations if run else {}

    def run_at(self, when: float) -> Run | None:
        """The run live at `when`: the newest started at or before it, else the first one."""
        timed = [r for r in self.runs if r.started_at is not None]
        if not timed:
            return None
        before = [r for r in timed if r.started_at is not None and r.started_at <= when]
        return before[-1] if before else timed[0]


# ------------------------------------------------------------------------------------ reading


def read_log(
    path: Path | str, max_bytes: int = MAX_TAIL_BYTES, head_bytes: int = HEAD_BYTES
) -> LogBytes:
    """Head and tail of a regular file, never more than `head_bytes + max_bytes` bytes.

    Raises OSError (missing, permission) or LogReadError (not a regular file). The open is
    non-blocking so that a FIFO given as a log cannot hang the caller.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise LogReadError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise LogReadError("not a regular file (a FIFO, socket or device)")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb", buffering=0) as fh:
        size = st.st_size
        max_bytes = max(0, max_bytes)
        head_bytes = max(0, head_bytes)
        if size <= max_bytes + head_bytes:
            data = _read_at(fh, 0, size)
            return LogBytes(data=data, size=size, skipped=0, mtime=st.st_mtime)
        head = _read_at(fh, 0, head_bytes)
        cut = head.rfind(b"\n")
        if cut >= 0:
            head = head[: cut + 1]
        # one byte more, before the tail: it tells whether the tail begins a line
        tail = _read_at(fh, size - max_bytes - 1, max_bytes + 1)
        nl = tail.find(b"\n")
        # drop the line fragment before the first newline (nothing when the cut is at a line);
        # with no newline at all (one giant line) keep its end, capped later
        tail = tail[nl + 1 :] if 0 <= nl < len(tail) - 1 else tail[1:]
        skipped = max(0, size - len(head) - len(tail))
        joined = head if head.endswith(b"\n") or not head else head + b"\n"
        return LogBytes(data=joined + tail, size=size, skipped=skipped, mtime=st.st_mtime)


def read_stream(
    stream: io.RawIOBase | io.BufferedIOBase | IO[bytes],
    max_bytes: int = MAX_TAIL_BYTES,
    head_bytes: int = HEAD_BYTES,
) -> LogBytes:
    """Head and tail of a stream (a pasted log on standard input), bounded like `read_log`."""
    head = b""
    tail = bytearray()
    size = 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if len(head) < head_bytes:
            take = head_bytes - len(head)
            head += chunk[:take]
            chunk = chunk[take:]
        tail += chunk
        if len(tail) > max_bytes:
            del tail[: len(tail) - max_bytes]
    skipped = max(0, size - len(head) - len(tail))
    data = head + bytes(tail)
    if skipped:
        nl = data.find(b"\n", len(head))
        data = head + b"\n" + data[nl + 1 :] if nl >= 0 else data
    return LogBytes(data=data, size=size, skipped=skipped, mtime=time.time())


def read_tail(path: Path | str, max_bytes: int = MAX_TAIL_BYTES) -> bytes:
    """The last `max_bytes` of a log plus its first lines (see `read_log`)."""
    return read_log(path, max_bytes).data


def _read_at(fh: io.FileIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------ lines


def clean_line(raw: bytes) -> str:
    """One raw line -> text: capped, decoded with replacement, ANSI and control codes removed."""
    return clean_text(raw[:MAX_LINE_BYTES])


def clean_text(data: bytes) -> str:
    """Bytes -> text with every line capped, decoded with replacement, ANSI and controls removed.

    Done on the whole text at once (C-speed regexes), not line by line: a 1 MiB log of
    two-byte lines is half a million lines.
    """
    parts = data.split(b"\n")
    if any(len(p) > MAX_LINE_BYTES for p in parts):
        data = b"\n".join(p[:MAX_LINE_BYTES] for p in parts)
    text = data.decode("utf-8", errors="replace")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return _CONTROL.sub("", text)


def split_lines(data: bytes) -> list[str]:
    return clean_text(data).split("\n")


# ------------------------------------------------------------------------------------ timestamps


def _frac(text: str | None) -> float:
    return int(text) / 10 ** len(text) if text else 0.0


def _plausible(t: float, now: float) -> float | None:
    return t if _MIN_EPOCH <= t <= now + _FUTURE_SLACK_S else None


def _civil(ymdhm: tuple[int, int, int, int, int], second: float, tz: str | None) -> float | None:
    """Epoch seconds of a civil time; tz None means local time. None when impossible."""
    year, month, day, hour, minute = ymdhm
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second < 61):
        return None
    if not 1970 <= year <= 9999:
        return None
    try:
        whole = int(second)
        if tz is None:
            naive = dt.datetime(year, month, day, hour, minute, min(whole, 59))
            return naive.timestamp() + (second - min(whole, 59))
        base = calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0))
        dt.date(year, month, day)  # rejects Feb 30
    except (ValueError, OverflowError, OSError):
        return None
    offset = 0
    if tz not in ("Z", "z", "UTC"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        hours = int(digits[:2])
        minutes = int(digits[2:4]) if len(digits) >= 4 else 0
        if hours > 23 or minutes > 59:
            return None
        offset = sign * (hours * 3600 + minutes * 60)
    return base + second - offset


def parse_iso_stamp(line: str, now: float) -> float | None:
    """The ISO 8601 (or Go log) timestamp near the start of a line, as epoch seconds."""
    head = line[:_STAMP_WINDOW]
    m = _ISO.search(head) or _GO.match(head)
    if m is None:
        return None
    g = m.groupdict()
    t = _civil(
        (int(g["Y"]), int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"])),
        int(g["S"]) + _frac(g.get("f")),
        g.get("tz"),
    )
    return _plausible(t, now) if t is not None else None


def parse_elapsed(line: str) -> float | None:
    """llama.cpp's `M.SS.mmm.uuu` elapsed stamp at the start of a line, in seconds."""
    m = _ELAPSED.match(line)
    if m is None:
        return None
    seconds = int(m["s"])
    if seconds > 59:
        return None
    return int(m["m"]) * 60 + seconds + int(m["ms"]) / 1e3 + int(m["us"]) / 1e6


def parse_vllm_stamp(line: str, reference: float, now: float) -> float | None:
    """vLLM's `LEVEL MM-DD HH:MM:SS` (local, no year); the year puts it just before `reference`."""
    m = _VLLM.search(line[:_STAMP_WINDOW])
    if m is None:
        return None
    try:
        year = time.localtime(reference).tm_year
    except (OverflowError, OSError, ValueError):
        return None
    second = int(m["S"]) + _frac(m["f"])
    for candidate in (year, year - 1):
        t = _civil((candidate, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"])), second, None)
        if t is None:
            continue  # Feb 29 in a year without it: try the year before
        if t <= reference + _FUTURE_SLACK_S:
            return _plausible(t, now)
    return None


# ------------------------------------------------------------------------------------ markers


def _union(markers: Mapping[str, re.Pattern[str]]) -> re.Pattern[str] | None:
    """One regex matching wherever any marker matches: a fast first pass over ordinary lines.

    Named groups become plain groups and leading inline flags become scoped ones; a pattern with
    a back reference cannot be merged safely, so then there is no first pass.
    """
    parts: list[str] = []
    for rx in markers.values():
        pattern = rx.pattern
        # back references, lookarounds and whole-text anchors do not survive the merge unchanged
        if re.search(r"\\\d|\(\?P=|\(\?<?[!=]|\\[AZ]", pattern):
            return None
        pattern = re.sub(r"\(\?P<[A-Za-z_]\w*>", "(?:", pattern)
        flags = ""
        lead = re.match(r"\(\?([aiLmsux]+)\)", pattern)
        if lead:
            flags, pattern = lead.group(1), pattern[lead.end() :]
        if "(?" in pattern and re.search(r"\(\?[aiLmsux]+\)", pattern):
            return None
        parts.append(f"(?{flags}:{pattern})" if flags else f"(?:{pattern})")
    if not parts:
        return None
    try:
        return re.compile("|".join(parts), re.MULTILINE)
    except re.error:
        return None


def _groups(m: re.Match[str]) -> dict[str, str]:
    found = {k: v.strip() for k, v in m.groupdict().items() if v is not None and v.strip()}
    for name in list(found):
        alias = _ALIAS.match(name)
        if alias and alias["base"] not in found:
            found[alias["base"]] = found[name]
    return found


def split_address(address: str | None) -> tuple[str | None, int | None]:
    """`127.0.0.1:3000`, `http://[::1]:3000/`, `0.0.0.0:8000,` -> (host, port)."""
    if not address:
        return None, None
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", address.strip().strip("'\"(),."))
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else None
    return (host or None), port


def bind_failure_of(event: LogEvent) -> BindFailure:
    g = event.groups
    address = g.get("address")
    host, port = split_address(address)
    if g.get("host"):
        host = g["host"]
    if g.get("port", "").isdigit():
        port = int(g["port"])
    if address is None and host is not None:
        address = f"[{host}]:{port}" if ":" in host and port else f"{host}:{port}" if port else host
    errno_text = g.get("errno") or ""
    if not errno_text:
        m = re.search(r"(?:os error|Errno)\s*(\d+)", event.line)
        errno_text = m.group(1) if m else ""
    errno = int(errno_text) if errno_text.isdigit() and len(errno_text) < 6 else None
    return BindFailure(
        t=event.t,
        address=address,
        host=host,
        port=port,
        errno=errno,
        reason=g.get("reason") or event.line,
        line=event.line,
    )


# ------------------------------------------------------------------------------------ parsing


@dataclass
class _RunBuilder:
    index: int
    start: LogEvent | None = None
    start_line: int = 0
    events: list[LogEvent] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    last_event: LogEvent | None = None

    def add(self, event: LogEvent) -> bool:
        """Record an event; False when only counted (the marker's quota is used up)."""
        n = self.counts.get(event.marker, 0)
        self.counts[event.marker] = n + 1
        self.last_event = event
        if n < MAX_EVENTS_PER_MARKER:
            self.events.append(event)
            return True
        return False

    def build(self) -> Run:
        return Run(
            index=self.index,
            start=self.start,
            events=tuple(self.events),
            counts=dict(self.counts),
            last_event=self.last_event,
            start_line=self.start_line,
        )


def _same_start(run: _RunBuilder, t: float | None) -> bool:
    """Whether a start marker only repeats the run's own start (nothing else happened since)."""
    if run.start is None or set(run.counts) != {"start"}:
        return False
    if t is None or run.start.t is None:
        return True
    return abs(t - run.start.t) <= _SAME_START_S


class _Clock:
    """Timestamps of lines, in one format, computed on demand."""

    def __init__(
        self,
        fmt: str,
        lines: list[str],
        text: str,
        offsets: list[int],
        *,
        now: float,
        anchor: float | None,
        file_mtime: float | None,
    ) -> None:
        self.fmt = fmt
        self.lines = lines
        self.now = now
        self.anchor = anchor
        self.notes: list[str] = []
        self.elapsed: dict[int, float] = {}
        self.epoch_from = 0
        self.last_elapsed: float | None = None
        self.reference = now
        if fmt == "elapsed":
            self._scan_elapsed(text, offsets, file_mtime)
        elif fmt == "vllm":
            self.reference = max(file_mtime or now, anchor or 0.0)

    def _scan_elapsed(self, text: str, offsets: list[int], file_mtime: float | None) -> None:
        # A new process restarts the clock: any drop of the stamp is a boundary. Start markers
        # are not used here, because one llama-server run prints several of them.
        previous: float | None = None
        for m in _ELAPSED_ALL.finditer(text):
            seconds = int(m["s"])
            if seconds > 59:
                continue
            value = int(m["m"]) * 60 + seconds + int(m["ms"]) / 1e3 + int(m["us"]) / 1e6
            idx = bisect.bisect_right(offsets, m.start()) - 1
            self.elapsed[idx] = value
            if previous is not None and value < previous - _ELAPSED_RESET_S:
                self.epoch_from = idx
            previous = value
        self.last_elapsed = previous
        if self.anchor is None and file_mtime is not None and previous is not None:
            self.anchor = file_mtime - previous
        if (
            self.anchor is not None
            and previous is not None
            and not (_MIN_EPOCH <= self.anchor + previous <= self.now + _FUTURE_SLACK_S)
        ):
            self.notes.append("the anchor for elapsed timestamps is implausible; times left out")
            self.anchor = None

    def at(self, idx: int) -> float | None:
        if self.fmt == "iso8601":
            return parse_iso_stamp(self.lines[idx], self.now)
        if self.fmt == "elapsed":
            value = self.elapsed.get(idx)
            if value is None or self.anchor is None or idx < self.epoch_from:
                return None
            return _plausible(self.anchor + value, self.now)
        if self.fmt == "vllm":
            return parse_vllm_stamp(self.lines[idx], self.reference, self.now)
        return None


def _candidates(text: str, offsets: list[int], first_pass: re.Pattern[str] | None) -> list[int]:
    """Indexes of the lines where some marker may match (all lines without a first pass)."""
    if first_pass is None:
        return list(range(len(offsets) - 1))
    found: list[int] = []
    pos = 0
    end = len(text)
    while pos <= end:
        m = first_pass.search(text, pos)
        if m is None:
            break
        idx = bisect.bisect_right(offsets, m.start()) - 1
        found.append(idx)
        pos = offsets[idx + 1]  # resume at the next line: one visit per line
    return found


def parse_log(
    data: bytes | LogBytes,
    profile: Profile,
    *,
    anchor: float | None = None,
    file_mtime: float | None = None,
    now: float | None = None,
    signatures: Table | None = None,
) -> LogReport:
    """Parse log bytes with a profile's timestamp format and markers. Pure; never raises on content.

    The newest run's lines are also read against the signature tables (`signatures`, default the
    shipped ones): `LogReport.hits`. A pasted log that was flattened, JSON-wrapped or escaped is
    put back into lines first (`unmangle`).

    `anchor` is the wall time of elapsed zero for the newest run (`elapsed` format only); without
    it, `file_mtime` minus the last elapsed stamp stands in.
    """
    skipped = 0
    if isinstance(data, LogBytes):
        skipped = data.skipped
        if file_mtime is None:
            file_mtime = data.mtime
        data = data.data
    now = time.time() if now is None else now
    fmt = profile.timestamp_format
    markers = profile.compiled_markers()
    if len(data) > MAX_LINE_BYTES and data.count(b"\n") < len(data) // MAX_LINE_BYTES + 3:
        # a paste flattened onto a few huge lines: split it before the per-line cap cuts it off
        data = unmangle(data.decode("utf-8", errors="replace")).encode("utf-8")
    text = unmangle(clean_text(data))
    lines = text.split("\n")
    offsets = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))
    clock = _Clock(fmt, lines, text, offsets, now=now, anchor=anchor, file_mtime=file_mtime)
    notes = list(clock.notes)
    if skipped:
        notes.append(f"{skipped} bytes in the middle of the file were not read")

    all_events: list[LogEvent] = []
    builders: list[_RunBuilder] = [_RunBuilder(index=0)]
    runs_dropped = 0
    stamped = 0
    start_rx = markers.get("start")
    # the newest stamped line seen so far, for lines without a time of their own
    known_idx: int = -1
    known_t: float | None = None
    scanned_to = 0
    for idx in _candidates(text, offsets, _union(markers)):
        line = lines[idx]
        matched = [(name, m) for name, rx in markers.items() if (m := rx.search(line))]
        if not matched:
            continue
        t = clock.at(idx)
        current = builders[-1]
        is_start = start_rx is not None and any(name == "start" for name, _ in matched)
        if is_start and _same_start(current, t):
            is_start = False
            matched = [(name, m) for name, m in matched if name != "start"]
            if not matched:
                continue
        if is_start:
            builder = _RunBuilder(index=current.index + 1, start_line=idx)
            if not current.events and current.start is None:
                builder.index = current.index
                builders[-1] = builder
            else:
                builders.append(builder)
            if len(builders) > MAX_RUNS:
                gone = builders.pop(0)
                runs_dropped += 1 if gone.start is not None else 0
            current = builder
        when: float | None = t
        if t is not None:
            stamped += 1
            known_idx, known_t = idx, t
        else:
            floor = max(current.start_line, scanned_to, idx - _LOOKBACK_LINES)
            for j in range(idx - 1, floor - 1, -1):
                tj = clock.at(j)
                if tj is not None:
                    known_idx, known_t = j, tj
                    break
            when = known_t if known_idx >= current.start_line else None
        scanned_to = idx
        text_of_line = line[:EVENT_LINE_CHARS]
        names = {n for n, _ in matched}
        dropped = {d for n in names for d in _SUPERSEDES.get(n, ())}
        # the start marker first, then the others in the profile's order
        matched.sort(key=lambda nm: nm[0] != "start")
        for name, m in matched:
            if name in dropped:
                continue
            event = LogEvent(
                t=when,
                marker=name,
                groups=_groups(m),
                line=text_of_line,
                lineno=idx,
                t_exact=t is not None,
            )
            if name == "start":
                current.start = event
            if current.add(event):
                all_events.append(event)

    runs = [b.build() for b in builders if b.events or b.start is not None]
    table = signatures if signatures is not None else load_table()
    # the newest run's lines; with one run, also what the engine printed before its start line
    # (llama.cpp reports bad flags and a missing GPU backend before `build:`)
    first = runs[-1].start_line if len(runs) > 1 else 0
    hits = table.scan(lines, start=first)
    hit_times = tuple(_time_near(clock, h.lineno, first) for h in hits)
    quiet = () if hits else tuple(table.hint_scan(lines, start=first))
    return LogReport(
        timestamp_format=fmt,
        events=tuple(all_events),
        runs=tuple(runs),
        lines=len(lines),
        bytes_parsed=len(data),
        skipped_bytes=skipped,
        runs_dropped=runs_dropped,
        anchor=clock.anchor if fmt == "elapsed" else None,
        last_elapsed=clock.last_elapsed,
        stamped_lines=stamped,
        notes=tuple(notes),
        hits=tuple(hits),
        hit_times=hit_times,
        quiet_hints=quiet,
    )


def _time_near(clock: _Clock, idx: int, floor: int) -> float | None:
    """A line's own time, else that of the nearest stamped line before it in the same run."""
    for j in range(idx, max(floor, idx - _LOOKBACK_LINES) - 1, -1):
        t = clock.at(j)
        if t is not None:
            return t
    return None


# A pasted log comes mangled: JSON-wrapped by a GUI, with escaped newlines, or flattened onto one
# line. These put the lines back; an ordinary log passes through untouched.
_ESCAPED_NL = re.compile(r"(?:\\r)?\\n")
_FLAT_SPLIT = re.compile(
    r"(?<=\S)\s{1,4}(?="
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}"  # ISO stamps
    r"|\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}"  # Go log stamps
    r"|time=\d{4}-"  # slog
    r"|\d{1,4}\.\d{2}\.\d{3}\.\d{3} [IWED] "  # llama.cpp elapsed stamps
    r"|(?:INFO|WARNING|ERROR|DEBUG|CRITICAL) \d{2}-\d{2} "  # vLLM
    r"|(?:llama|llm|load|gguf|ggml|print|srv|main|common|system)_?[a-z_]{0,40}: "  # llama.cpp
    r"|(?:Traceback|ERROR:|INFO:|WARNING:) "
    r")"
)
_FLAT_LINE = 300  # a line this long with several stamps or prefixes in it was flattened
# A console copy (Windows' conhost, a fixed-width terminal) hard-wraps every line at its width:
# the lines that reached the width go on in the next line, which starts in the middle of a
# sentence. Only the usual widths are taken, only when no line is longer and at least two lines
# reached it, and a next line that starts like a record of its own is never joined.
_CONSOLE_WIDTHS = frozenset({80, 100, 120})
_CONTINUES = re.compile(r"[a-z',)\]}:.]| \S")  # not an indented line of its own


def _unwrap_console(lines: list[str]) -> list[str]:
    width = max((len(line) for line in lines), default=0)
    if width not in _CONSOLE_WIDTHS or sum(len(line) == width for line in lines) < 2:
        return lines
    out: list[str] = []
    joining = False
    for line in lines:
        if joining and line and _CONTINUES.match(line):
            out[-1] += line
        else:
            out.append(line)
        # a full-width rule of one repeated character ("=====") is a separator, not a wrap
        joining = len(line) == width and bool(line.strip(line[0]))
    return out


def unmangle(text: str) -> str:
    """Lines back from a JSON-wrapped, escaped, flattened or console-wrapped paste; other text
    unchanged."""
    if text.count("\n") <= 2 and "\\n" in text:
        # a log inside a JSON string: its newlines, quotes and tabs are escaped
        text = _ESCAPED_NL.sub("\n", text).replace('\\"', '"').replace("\\t", "\t")
    lines = text.split("\n")
    unwrapped = _unwrap_console(lines)
    if not any(len(line) > _FLAT_LINE for line in unwrapped):
        return text if unwrapped is lines else "\n".join(unwrapped)
    out: list[str] = []
    for line in unwrapped:
        if len(line) > _FLAT_LINE:
            pieces = _FLAT_SPLIT.split(line)
            if len(pieces) >= 3:
                out.extend(pieces)
                continue
        out.append(line)
    return "\n".join(out)


def parse_file(
    path: Path | str,
    profile: Profile,
    *,
    anchor: float | None = None,
    now: float | None = None,
    max_bytes: int = MAX_TAIL_BYTES,
) -> LogReport:
    """Read (bounded) and parse one log file. Raises OSError/LogReadError when it cannot be read."""
    return parse_log(read_log(path, max_bytes), profile, anchor=anchor, now=now)


def newest_start(reports: Sequence[LogReport]) -> float | None:
    """The newest start-marker time across several logs."""
    times = [r.started_at for report in reports for r in report.runs if r.started_at is not None]
    return max(times) if times else None
