"""Hostile input: every parser returns a result or its documented error, bounded in memory.

The corpus in `fixtures/hostile/` (made by `fixtures/hostile/make_corpus.py`, listed with its
expectations in `manifest.json`) is replayed on every run: logs through `parsers.logs`, health
bodies through `parsers.health.classify_health`, SSE/JSON generation answers through
`parsers.sse`, GGUF headers through `parsers.gguf`. Cases too big to keep in git (a 20 MB line,
an endless stream, a 50 MB body) are generated here; hypothesis adds arbitrary bytes.

The documented outcomes: `parse_log` never raises on content (`read_log` raises OSError /
`LogReadError` only for unreadable paths); `classify_health` always classifies; `SSEParser` and
`GenerationDecoder` never raise on content; `parse_gguf` returns a header or raises `GGUFError`
with a `kind`. Each call runs under tracemalloc (peak < 64 MiB) and a hang guard: a thread join
with a generous limit that only a parser stuck in a loop would reach (not a speed claim).
"""

from __future__ import annotations

import json
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exsa_doctor.parsers import logs as logparse
from exsa_doctor.parsers.gguf import GGUFError, GGUFHeader, parse_gguf_bytes, read_gguf_header
from exsa_doctor.parsers.health import MAX_BODY_BYTES, HealthAnswer, HealthState, classify_health
from exsa_doctor.parsers.sse import (
    KINDS,
    MAX_EVENT_BYTES,
    MAX_EVENTS,
    GenerationDecoder,
    SSEEvent,
    SSEParser,
    TokenTally,
)
from exsa_doctor.profiles import all_builtin, load_builtin

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "hostile"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
PEAK_LIMIT_BYTES = 64 << 20
HANG_GUARD_S = 60.0
GGUF_KINDS = {"empty", "bad_magic", "invalid", "cut", "limit", "unreadable"}
# 1990 .. now + 2 days: what `parsers.logs` accepts as a real time (anything else is no time)
PLAUSIBLE_FROM = 631152000.0
FUTURE_SLACK_S = 2 * 86400.0

T = TypeVar("T")


def bounded(fn: Callable[[], T]) -> T:
    """Run `fn` in a thread under tracemalloc; fail on a hang or a peak above the limit."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread below
            box["error"] = exc

    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    _, peak = tracemalloc.get_traced_memory()
    if not was_tracing:
        tracemalloc.stop()
    assert not thread.is_alive(), f"the parser did not return within {HANG_GUARD_S:g} s"
    assert peak < PEAK_LIMIT_BYTES, f"peak memory {peak / 2**20:.1f} MiB"
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def entries(prefix: str) -> list[str]:
    return sorted(rel for rel in MANIFEST if rel.startswith(prefix + "/"))


# ------------------------------------------------------------------------------ the corpus


def test_manifest_lists_every_corpus_file_and_the_corpus_is_small() -> None:
    on_disk = {
        str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.parent != CORPUS
    }
    assert on_disk == set(MANIFEST), on_disk ^ set(MANIFEST)
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 1 << 20, f"the hostile corpus is {total} bytes; generate big cases in tests"
    for kind in ("logs", "health", "sse", "gguf"):
        assert entries(kind), f"no {kind} in the corpus"


def _check_log_report(report: logparse.LogReport, meta: dict[str, Any], now: float) -> None:
    assert isinstance(report, logparse.LogReport)
    assert len(report.runs) <= logparse.MAX_RUNS
    for event in report.events:
        assert len(event.line) <= logparse.EVENT_LINE_CHARS
        if event.t is not None:
            assert PLAUSIBLE_FROM <= event.t <= now + FUTURE_SLACK_S, event
    markers = {e.marker for e in report.events}
    for wanted in meta.get("expect_markers", []):
        assert wanted in markers, (wanted, sorted(markers))
    if "expect_listening" in meta:
        assert report.listening_address == meta["expect_listening"]
    # the durations never come out negative, whatever order the stamps were in
    for run in report.runs:
        assert all(v >= 0 for v in run.durations.values()), run.durations


@pytest.mark.parametrize("rel", entries("logs"))
def test_log_corpus(rel: str) -> None:
    meta = MANIFEST[rel]
    profile = load_builtin(meta["profile"])
    path = CORPUS / rel
    now = time.time()
    from_file = bounded(lambda: logparse.parse_file(path, profile, now=now))
    _check_log_report(from_file, meta, now)
    # the same bytes in memory, in every profile's format: a result, never an exception
    data = path.read_bytes()
    for other in all_builtin():
        report = bounded(partial(logparse.parse_log, data, other, now=now))
        _check_log_report(report, {}, now)
    assert from_file.bytes_parsed <= logparse.MAX_TAIL_BYTES + logparse.HEAD_BYTES


@pytest.mark.parametrize("rel", entries("health"))
def test_health_corpus(rel: str) -> None:
    meta = MANIFEST[rel]
    spec = load_builtin(meta["profile"]).health
    body = (CORPUS / rel).read_bytes()
    answer = bounded(lambda: classify_health(spec, meta["status"], body))
    assert isinstance(answer, HealthAnswer)
    assert isinstance(answer.state, HealthState)
    assert (answer.state is HealthState.READY) is meta["ready"], answer
    assert answer.status_code == meta["status"]
    assert len(answer.reason) < 4096
    for value in answer.fields.values():
        assert isinstance(value, (str, int, float, bool))


def _decode(data: bytes, kind: str, ctype: str, step: int) -> TokenTally:
    decoder = GenerationDecoder(kind, ctype)
    for i in range(0, len(data), step):
        decoder.feed(data[i : i + step])
    decoder.close()
    return decoder.tally


def _parse_sse(data: bytes, step: int) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    most = 0
    for i in range(0, len(data), step):
        events += parser.feed(data[i : i + step])
        most = max(most, parser.buffered)
    events += parser.close()
    # never more than one capped line and one capped event held at a time
    assert most <= 2 * MAX_EVENT_BYTES + 64, most
    return events, parser


@pytest.mark.parametrize("rel", entries("sse"))
def test_sse_corpus(rel: str) -> None:
    meta = MANIFEST[rel]
    data = (CORPUS / rel).read_bytes()
    steps = [len(data) or 1, 4096, 7] + ([1] if len(data) <= 20_000 else [])
    tallies = [
        bounded(partial(_decode, data, meta["kind"], meta["content_type"], step)) for step in steps
    ]
    whole = tallies[0]
    for tally, step in zip(tallies[1:], steps[1:], strict=True):
        # chunking never changes the answer: a stream parsed in pieces is the stream parsed whole
        assert tally == whole, (step, tally, whole)
    assert whole.events + whole.bad_events <= MAX_EVENTS + 1
    if "tokens" in meta:
        assert whole.tokens == meta["tokens"], whole
    if "done" in meta:
        assert whole.done is meta["done"], whole
    if meta.get("error"):
        assert whole.error, whole
    # the raw event-stream view of the same bytes
    events, parser = bounded(lambda: _parse_sse(data, 4096))
    assert len(events) == parser.events <= MAX_EVENTS
    for event in events:
        assert len(event.data) <= MAX_EVENT_BYTES


@pytest.mark.parametrize("rel", entries("gguf"))
def test_gguf_corpus(rel: str) -> None:
    expect = MANIFEST[rel]["expect"]
    path = CORPUS / rel

    def outcome(parse: Callable[[], GGUFHeader]) -> str:
        try:
            header = parse()
        except GGUFError as exc:
            assert exc.kind in GGUF_KINDS, exc.kind
            assert exc.reason and len(exc.reason) < 1024, exc.reason
            return exc.kind
        assert header.tensor_count >= 0 and header.kv_count >= 0
        assert header.architecture is None or len(header.architecture) <= 1024
        return "truncated" if header.truncated else "ok"

    from_file = bounded(lambda: outcome(lambda: read_gguf_header(str(path))))
    in_memory = bounded(lambda: outcome(lambda: parse_gguf_bytes(path.read_bytes())))
    assert from_file == in_memory
    if expect == "error":
        assert from_file in GGUF_KINDS, from_file
    else:
        assert from_file == expect, from_file


# ------------------------------------------------------------------ big cases, made here


def _write_chunked(path: Path, chunk: bytes, total: int, tail: bytes = b"") -> None:
    with path.open("wb") as fh:
        written = 0
        while written < total:
            fh.write(chunk)
            written += len(chunk)
        fh.write(tail)


def test_log_20mb_single_line_then_a_start(tmp_path: Path) -> None:
    path = tmp_path / "giant.log"
    start = b"\n2025-11-23T16:55:50Z  INFO exsa_engine: Starting Exsa-Engine v9.9.9\n"
    _write_chunked(path, b"\xff\xfeA" * (1 << 18), 20 << 20, tail=start)
    profile = load_builtin("exsa-engine")
    report = bounded(lambda: logparse.parse_file(path, profile))
    assert report.bytes_parsed <= logparse.MAX_TAIL_BYTES + logparse.HEAD_BYTES
    assert report.skipped_bytes > 0
    assert report.last_run is not None and report.last_run.version == "9.9.9"


def test_log_30mb_of_request_lines_keeps_events_bounded(tmp_path: Path) -> None:
    path = tmp_path / "busy.log"
    line = b"2025-11-23T16:55:52Z  INFO exsa_engine: Received generation request\n"
    _write_chunked(path, line * 4096, 30 << 20)
    report = bounded(lambda: logparse.parse_file(path, load_builtin("exsa-engine")))
    assert len(report.events) <= logparse.MAX_EVENTS_PER_MARKER * len(report.runs or [None])
    assert report.last_run is not None
    assert report.last_run.counts["generation_request"] > logparse.MAX_EVENTS_PER_MARKER


def test_health_50mb_body_is_classified_from_a_bounded_prefix() -> None:
    body = b'{"status": "healthy", "pad": "' + b"p" * (50 << 20) + b'"}'
    spec = load_builtin("exsa-engine").health
    answer = bounded(lambda: classify_health(spec, 200, body))
    assert answer.state is HealthState.BAD_BODY, answer


def _endless(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def test_endless_event_stream_stops_at_the_event_cap() -> None:
    def consume() -> tuple[int, int, bool]:
        parser = SSEParser()
        fed = events = 0
        for piece in _endless(b'data: {"token": "t"}\n\n' * 2048):
            events += len(parser.feed(piece))
            fed += len(piece)
            assert parser.buffered <= 2 * MAX_EVENT_BYTES + 64
            if parser.stopped or fed > 64 << 20:
                break
        return events, fed, parser.stopped

    events, fed, stopped = bounded(consume)
    assert stopped and events == MAX_EVENTS, (events, fed)


def test_endless_line_and_endless_comments_stay_bounded() -> None:
    def consume(piece: bytes) -> int:
        parser = SSEParser()
        most = 0
        for i, chunk in enumerate(_endless(piece)):
            parser.feed(chunk)
            most = max(most, parser.buffered)
            if i >= (16 << 20) // len(piece):  # 16 MiB fed
                break
        parser.close()
        return most

    assert bounded(lambda: consume(b"data: " + b"x" * 65536)) <= 2 * MAX_EVENT_BYTES + 64
    assert bounded(lambda: consume(b": ping\n" * 8192)) <= 2 * MAX_EVENT_BYTES + 64


def test_endless_token_stream_through_the_decoder() -> None:
    def consume() -> TokenTally:
        decoder = GenerationDecoder("exsa-sse", "text/event-stream")
        fed = 0
        for piece in _endless(b'data: {"token": "t", "done": false}\n\n' * 1024):
            decoder.feed(piece)
            fed += len(piece)
            if fed > 32 << 20:
                break
        decoder.close()
        return decoder.tally

    tally = bounded(consume)
    assert tally.tokens <= MAX_EVENTS and tally.pieces == MAX_EVENTS


def test_gguf_with_65536_metadata_pairs_parses_in_bounds() -> None:
    pairs = b"".join(
        struct.pack("<Q", 8) + b"k.%06d" % i + struct.pack("<II", 4, i) for i in range(1 << 16)
    )
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 16) + pairs
    header = bounded(lambda: parse_gguf_bytes(data))
    assert header.kv_count == 1 << 16 and not header.truncated


# ------------------------------------------------------------------- hypothesis: any bytes

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILES = {p.name: p for p in all_builtin()}


@PROPERTY
@given(data=st.binary(max_size=4096), profile=st.sampled_from(sorted(PROFILES)))
def test_any_bytes_parse_as_a_log(data: bytes, profile: str) -> None:
    now = time.time()
    report = logparse.parse_log(data, PROFILES[profile], now=now, file_mtime=now)
    _check_log_report(report, {}, now)


@PROPERTY
@given(
    body=st.binary(max_size=2048),
    status=st.integers(min_value=100, max_value=999),
    profile=st.sampled_from(sorted(PROFILES)),
)
def test_any_health_body_is_classified(body: bytes, status: int, profile: str) -> None:
    spec = PROFILES[profile].health
    answer = classify_health(spec, status, body)
    assert isinstance(answer.state, HealthState)
    if answer.state is HealthState.READY:
        assert status in spec.ready_status
        if spec.status_key:  # ready by the body's word: it must be a JSON object saying so
            obj = json.loads(body[:MAX_BODY_BYTES].decode())
            assert obj[spec.status_key] in spec.ready_values


@PROPERTY
@given(data=st.binary(max_size=4096), cut=st.integers(min_value=0, max_value=4096))
def test_any_event_stream_parses_the_same_in_two_pieces(data: bytes, cut: int) -> None:
    whole = SSEParser()
    expected = whole.feed(data) + whole.close()
    split = SSEParser()
    got = split.feed(data[:cut]) + split.feed(data[cut:]) + split.close()
    assert got == expected


@PROPERTY
@given(
    data=st.binary(max_size=4096),
    kind=st.sampled_from(KINDS),
    ctype=st.sampled_from(["", "text/event-stream", "application/json", "application/x-ndjson"]),
    cut=st.integers(min_value=0, max_value=4096),
)
def test_any_generation_answer_decodes_the_same_in_two_pieces(
    data: bytes, kind: str, ctype: str, cut: int
) -> None:
    one = GenerationDecoder(kind, ctype)
    one.feed(data)
    one.close()
    two = GenerationDecoder(kind, ctype)
    two.feed(data[:cut])
    two.feed(data[cut:])
    two.close()
    assert two.tally == one.tally


@PROPERTY
@given(
    version=st.sampled_from([1, 2, 3]),
    order=st.sampled_from(["<", ">"]),
    tail=st.binary(max_size=4096),
)
def test_any_bytes_after_a_valid_gguf_magic(version: int, order: str, tail: bytes) -> None:
    data = b"GGUF" + struct.pack(order + "I", version) + tail
    try:
        header = parse_gguf_bytes(data)
    except GGUFError as exc:
        assert exc.kind in GGUF_KINDS, exc.kind
        return
    assert header.version == version
    assert header.file_size == len(data)
    assert header.header_end <= len(data)
