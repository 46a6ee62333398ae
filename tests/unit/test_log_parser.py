"""parsers.logs on real engine log formats (fixtures/logs, fixtures/engines) and hostile bytes."""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exsa_doctor.parsers.logs import (
    EVENT_LINE_CHARS,
    HEAD_BYTES,
    MAX_EVENTS_PER_MARKER,
    MAX_LINE_BYTES,
    MAX_RUNS,
    LogBytes,
    LogReadError,
    LogReport,
    _union,
    clean_line,
    parse_elapsed,
    parse_file,
    parse_iso_stamp,
    parse_log,
    parse_vllm_stamp,
    read_log,
    split_address,
)
from exsa_doctor.profiles import Profile, all_builtin, load_builtin

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "fixtures" / "logs"
ENGINES = ROOT / "fixtures" / "engines"
NOW = 1.9e9  # 2030: every fixture lies before it
EXSA = load_builtin("exsa-engine")
LLAMA = load_builtin("llama-server")
VLLM = load_builtin("vllm")
OLLAMA = load_builtin("ollama")


def utc(y: int, mo: int, d: int, h: int, mi: int, s: float) -> float:
    return calendar.timegm((y, mo, d, h, mi, 0, 0, 0, 0)) + s


def exsa(name: str) -> LogReport:
    return parse_file(LOGS / "exsa-engine" / name, EXSA, now=NOW)


@pytest.fixture
def utc_tz() -> Iterator[None]:
    """Local time = UTC for formats without a zone (vLLM, Go's log, naive ISO)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


# ------------------------------------------------------------------------------ exsa-engine


def test_healthy_run_phases_and_clean_shutdown() -> None:
    report = exsa("healthy.log")
    assert [r.index for r in report.runs] == [0]
    run = report.last_run
    assert run is not None and run.version == "0.1.0"
    markers = [e.marker for e in run.events]
    assert markers == [
        "start",
        "model_path",
        "model_validated",
        "model_loaded",
        "binding",
        "listening",
        "generation_request",
        "generation_complete",
        "shutdown",
    ]
    assert run.first("model_path") is not None
    assert run.first("model_path").groups["path"] == "/tmp/b1cap/model.gguf"  # type: ignore[union-attr]
    assert report.started_at == pytest.approx(utc(2026, 11, 26, 17, 24, 6.128613), abs=1e-6)
    assert report.listening_address == "127.0.0.1:32841"
    assert run.load_s == pytest.approx(6.429368 - 6.128766, abs=1e-5)
    assert report.shutdown is not None and report.fatal == ()
    d = report.durations
    assert set(d) == {
        "started_to_validated",
        "validated_to_loaded",
        "loaded_to_listening",
        "started_to_listening",
    }
    assert all(v >= 0 for v in d.values())


def test_race_fixture_has_the_seed_timeline() -> None:
    report = exsa("race.log")
    assert report.started_at == pytest.approx(utc(2025, 11, 23, 23, 41, 53.120))
    assert report.validated_at == pytest.approx(utc(2025, 11, 23, 23, 41, 53.131))
    assert report.loaded_at == pytest.approx(utc(2025, 11, 23, 23, 42, 5.209))
    assert report.listening_at == pytest.approx(utc(2025, 11, 23, 23, 42, 5.214))
    assert report.durations["validated_to_loaded"] == pytest.approx(12.078)
    assert report.shutdown is None


def test_bind_failure_address_errno_port() -> None:
    report = exsa("bind-failed.log")
    failure = report.bind_failure
    assert failure is not None
    assert (failure.address, failure.host, failure.port, failure.errno) == (
        "127.0.0.1:47051",
        "127.0.0.1",
        47051,
        98,
    )
    assert failure.reason == "Address already in use"
    assert [e.marker for e in report.fatal] == ["bind_failed"]
    assert report.listening_at is None and report.loaded_at is not None


def test_model_missing_reason() -> None:
    run = exsa("model-missing.log").last_run
    assert run is not None
    error = run.first("model_error")
    assert error is not None
    assert error.groups["reason"] == "Model error: Model file not found: /tmp/b1cap/nope.gguf"
    assert run.first("model_validated") is None


def test_model_path_unset() -> None:
    run = exsa("model-path-unset.log").last_run
    assert run is not None
    assert [e.marker for e in run.fatal] == ["model_path_unset"]


def test_llama_error_line_without_timestamp_inherits_the_previous_time() -> None:
    run = exsa("model-error.log").last_run
    assert run is not None
    first = run.first("model_error")
    assert first is not None
    assert first.groups["reason"].startswith("tensor 'blk.1.weight' data is not within")
    assert first.t_exact is False
    assert first.t == pytest.approx(utc(2026, 11, 26, 17, 24, 7.128766), abs=1e-6)
    last = [e for e in run.events if e.marker == "model_error"][-1]
    assert last.t_exact and last.line.startswith("2026-11-26T17:24:07.128888Z ERROR")


def test_mmap_failure_is_not_also_out_of_memory() -> None:
    run = exsa("mmap-failed.log").last_run
    assert run is not None
    assert run.counts.get("mmap_failed") == 2
    assert "oom" not in run.counts
    assert run.first("model_error") is not None


def test_out_of_memory() -> None:
    run = exsa("oom.log").last_run
    assert run is not None
    assert run.counts["oom"] >= 2 and "mmap_failed" not in run.counts


def test_ansi_colours_are_stripped_and_change_nothing() -> None:
    plain = exsa("healthy.log")
    coloured = exsa("ansi.log")
    assert b"\x1b[" in (LOGS / "exsa-engine" / "ansi.log").read_bytes()
    assert [(e.marker, e.t, dict(e.groups)) for e in coloured.events] == [
        (e.marker, e.t, dict(e.groups)) for e in plain.events
    ]
    assert all("\x1b" not in e.line for e in coloured.events)


def test_several_runs_last_one_decides() -> None:
    report = exsa("restarts.log")
    assert report.start_count == 3 and len(report.runs) == 3
    first, second, last = report.runs
    assert first.listening_at is not None and first.shutdown is not None
    assert second.bind_failure is not None
    assert last.validated_at is not None and last.loaded_at is None and last.fatal == ()
    assert report.listening_at is None  # the newest run's, not the first one's
    assert report.run_at(second.started_at + 0.1) is second  # type: ignore[operator]
    assert report.run_at(0.0) is first  # before every start: the first run


# ------------------------------------------------------------------------------ llama-server


def test_elapsed_stamps_anchor_only_the_newest_process() -> None:
    data = (LOGS / "llama-server" / "two-runs-loading.log").read_bytes()
    anchor = utc(2026, 1, 2, 3, 4, 5.0)
    report = parse_log(data, LLAMA, anchor=anchor, now=NOW)
    assert report.start_count == 2
    old, new = report.runs
    assert old.listening_address == "127.0.0.1:45411" and old.started_at is None
    assert new.started_at == pytest.approx(anchor + 0.000890)
    assert new.loading_at == pytest.approx(anchor + 0.003743)
    assert new.loaded_at is None
    assert report.last_elapsed == pytest.approx(0.366828)


def test_elapsed_anchor_falls_back_to_file_mtime() -> None:
    data = (LOGS / "llama-server" / "two-runs-loading.log").read_bytes()
    mtime = utc(2026, 1, 2, 3, 4, 10.0)
    report = parse_log(LogBytes(data=data, size=len(data), skipped=0, mtime=mtime), LLAMA, now=NOW)
    assert report.anchor == pytest.approx(mtime - 0.366828)
    assert report.started_at == pytest.approx(mtime - 0.366828 + 0.000890)


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("healthy.log", {"listening": "127.0.0.1:45411", "loaded": True, "shutdown": True}),
        ("bind-failed.log", {"bind": ("127.0.0.1", 44519), "shutdown": False}),
        (
            "model-missing.log",
            {
                "error": "llama_model_loader: failed to load model from /tmp/nonexistent.gguf",
                "shutdown": False,
            },
        ),
        (
            "model-truncated.log",
            {
                "error": "tensor 'token_embd.weight' data is not within the "
                "file bounds, model is corrupted or incomplete"
            },
        ),
    ],
)
def test_live_llama_server_captures(name: str, expect: dict[str, object]) -> None:
    path = ENGINES / "llama-server" / name
    if not path.exists():
        pytest.skip("live llama-server captures not present")
    report = parse_file(path, LLAMA, now=NOW)
    assert report.start_count == 1  # "initializing" once; no second start from other lines
    run = report.last_run
    assert run is not None and run.started_at is not None
    if "listening" in expect:
        assert run.listening_address == expect["listening"]
        assert run.loaded_at is not None and run.loaded_at <= run.listening_at  # type: ignore[operator]
    if "bind" in expect:
        failure = run.bind_failure
        assert failure is not None and (failure.host, failure.port) == expect["bind"]
    if "error" in expect:
        error = run.first("model_error")
        assert error is not None and error.groups.get("reason") == expect["error"]
    if "shutdown" in expect:
        assert (run.shutdown is not None) == expect["shutdown"]


def test_old_llama_server_without_timestamps() -> None:
    report = parse_file(LOGS / "llama-server" / "old-build.log", LLAMA, now=NOW)
    assert report.start_count == 1  # "build:" and "system info:" are one start
    run = report.last_run
    assert run is not None
    assert run.version == "4179"
    assert [e.marker for e in run.events] == ["start", "model_loading", "model_loaded", "listening"]
    assert run.listening_address == "127.0.0.1:8080"  # the "- starting the main loop" line
    assert all(e.t is None for e in run.events) and report.stamped_lines == 0
    bind = parse_file(LOGS / "llama-server" / "old-build-bind-failed.log", LLAMA, now=NOW)
    failure = bind.bind_failure
    assert failure is not None and (failure.address, failure.port) == ("127.0.0.1:8080", 8080)


def test_coloured_llama_lines() -> None:
    line = (
        "\x1b[34m0.00.008.159\x1b[0m \x1b[32mI \x1b[0msrv    load_model: loading model "
        "'/tmp/tiny.gguf'\n"
    )
    report = parse_log(line.encode(), LLAMA, anchor=1.7e9, now=NOW)
    event = report.events[0]
    assert event.marker == "model_loading" and event.groups["path"] == "/tmp/tiny.gguf"
    assert event.t == pytest.approx(1.7e9 + 0.008159)


# ------------------------------------------------------------------------------ Ollama, vLLM


def test_ollama_slog_lines() -> None:
    report = parse_file(LOGS / "ollama" / "recorded.log", OLLAMA, now=NOW)
    run = report.last_run
    assert run is not None
    assert run.started_at == pytest.approx(utc(2025, 7, 2, 19, 22, 50.440))
    assert run.listening_address == "127.0.0.1:11434"
    assert run.listening is not None and run.listening.groups["version"] == "0.9.3"
    assert run.loaded_at == pytest.approx(utc(2025, 7, 2, 19, 23, 35.096))


def test_ollama_go_log_format_and_bind_error(utc_tz: None) -> None:
    report = parse_file(LOGS / "ollama" / "go-log-format.log", OLLAMA, now=NOW)
    assert report.started_at == pytest.approx(utc(2024, 7, 5, 2, 36, 47))
    assert report.listening_address == "[::]:11434"
    bind = parse_file(LOGS / "ollama" / "bind-failed.log", OLLAMA, now=NOW).bind_failure
    assert bind is not None and (bind.host, bind.port) == ("127.0.0.1", 11434)


def test_vllm_old_and_new_layouts(utc_tz: None) -> None:
    reference = utc(2025, 6, 1, 0, 0, 0)
    old = parse_log(
        (LOGS / "vllm" / "recorded-old.log").read_bytes(), VLLM, file_mtime=reference, now=NOW
    )
    run = old.last_run
    assert run is not None and run.version == "0.6.4.post1"
    assert run.started_at == pytest.approx(utc(2025, 4, 9, 0, 47, 12))
    assert run.listening_address == "0.0.0.0:8688"  # "Starting vLLM API server on ..." listens
    assert old.start_count == 1
    assert run.load_s == pytest.approx(40.0)
    new = parse_log(
        (LOGS / "vllm" / "recorded-new.log").read_bytes(), VLLM, file_mtime=reference, now=NOW
    )
    assert new.last_run is not None and new.last_run.version == "0.8.3"
    assert new.listening_at == pytest.approx(utc(2025, 4, 10, 11, 11, 21))


def test_vllm_year_is_the_one_before_the_reference(utc_tz: None) -> None:
    line = "INFO 12-31 23:59:58 [api_server.py:1] vLLM API server version 0.9.0"
    jan = utc(2026, 1, 1, 0, 0, 5)
    assert parse_vllm_stamp(line, jan, NOW) == pytest.approx(utc(2025, 12, 31, 23, 59, 58))
    leap = "INFO 02-29 10:00:00 [x.py:1] y"
    assert parse_vllm_stamp(leap, utc(2025, 3, 1, 0, 0, 0), NOW) == pytest.approx(
        utc(2024, 2, 29, 10, 0, 0)
    )


def test_every_recorded_engine_fixture_parses() -> None:
    paths = sorted(ENGINES.glob("*/*.log")) + sorted(LOGS.glob("*/*.log"))
    assert paths
    for path in paths:
        profile = load_builtin(path.parent.name)
        report = parse_file(path, profile, now=NOW)
        assert report.events, path  # every fixture shows at least one engine marker


# ------------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2025-11-23T16:55:52.938526Z  INFO x: y", utc(2025, 11, 23, 16, 55, 52.938526)),
        ("2025-11-23T16:55:52.938526123Z INFO", utc(2025, 11, 23, 16, 55, 52.938526123)),
        ("2025-11-23T17:55:52+01:00 INFO", utc(2025, 11, 23, 16, 55, 52)),
        ("2025-11-23T11:25:52.5-0530 INFO", utc(2025, 11, 23, 16, 55, 52.5)),
        ("time=2025-11-23T16:55:52.938Z level=INFO", utc(2025, 11, 23, 16, 55, 52.938)),
        ("[2025-11-23 16:55:52,100 UTC] x", utc(2025, 11, 23, 16, 55, 52.1)),
        ("2025-13-23T16:55:52Z month 13", None),
        ("0000-01-01T00:00:00Z year 0", None),
        ("2025-02-30T10:00:00Z Feb 30", None),
        ("2025-11-23T25:00:00Z hour 25", None),
        ("2025-11-23T10:00:00+25:00 offset 25 h", None),
        ("9999-12-31T23:59:59Z far future", None),
        ("1969-12-31T23:59:59Z before the epoch", None),
        ("no stamp here at all", None),
        ("x" * 200 + " 2025-11-23T16:55:52Z late in the line", None),
    ],
)
def test_iso_stamps(line: str, expected: float | None) -> None:
    got = parse_iso_stamp(line, NOW)
    assert got == (pytest.approx(expected, abs=1e-6) if expected is not None else None)


def test_naive_iso_is_local_time(utc_tz: None) -> None:
    assert parse_iso_stamp("2025-11-23 16:55:52 INFO", NOW) == utc(2025, 11, 23, 16, 55, 52)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.00.088.063 I srv x", 0.088063),
        ("12.34.567.890 W x", 12 * 60 + 34.567890),
        ("180.05.123.456 I long uptime", 180 * 60 + 5.123456),
        ("[ 8080] 0.00.001.000 I router child", 0.001),
        ("0.61.000.000 I seconds 61", None),
        ("1.2.3 not a stamp", None),
    ],
)
def test_elapsed_stamps(line: str, expected: float | None) -> None:
    got = parse_elapsed(line)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_impossible_stamps_in_a_log_give_no_time_never_an_error() -> None:
    data = (
        b"2025-13-45T99:99:99Z  INFO exsa_engine: Starting Exsa-Engine v1\n"
        b"0000-00-00T00:00:00Z  INFO exsa_engine: Model validation passed: /m\n"
        b"9999-01-01T00:00:00Z  INFO exsa_engine: Server listening on http://h:1\n"
    )
    run = parse_log(data, EXSA, now=NOW).last_run
    assert run is not None
    assert [e.t for e in run.events] == [None, None, None]
    assert run.durations == {} and run.load_s is None


def test_out_of_order_stamps_give_no_negative_durations() -> None:
    data = (
        b"2025-11-23T10:00:10Z  INFO exsa_engine: Starting Exsa-Engine v1\n"
        b"2025-11-23T10:00:05Z  INFO exsa_engine: Model validation passed: /m\n"
        b"2025-11-23T10:00:01Z  INFO exsa_engine: Model loaded successfully\n"
        b"2025-11-23T10:00:20Z  INFO exsa_engine: Server listening on http://h:1\n"
    )
    run = parse_log(data, EXSA, now=NOW).last_run
    assert run is not None
    assert all(v >= 0 for v in run.durations.values())
    assert run.load_s is None  # loaded before validated: no length to report


# ------------------------------------------------------------------------------ reading


def test_read_log_keeps_head_and_tail_only(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    head = b"2025-11-23T10:00:00Z  INFO exsa_engine: Starting Exsa-Engine v9\n"
    filler = b"2025-11-23T10:00:01Z  INFO tower_http: request done status=200 latency=1ms\n"
    tail = b"2025-11-23T10:00:09Z  INFO exsa_engine: Server listening on http://127.0.0.1:3000\n"
    with path.open("wb") as fh:
        fh.write(head)
        fh.write(filler * ((8 << 20) // len(filler)))
        fh.write(tail)
    size = path.stat().st_size
    raw = read_log(path, max_bytes=1 << 20)
    assert raw.size == size and len(raw.data) <= HEAD_BYTES + (1 << 20) + 1
    assert raw.skipped == size - len(raw.data) > 6 << 20
    assert raw.data.startswith(head) and raw.data.endswith(tail)
    # every line in the joined text is whole: the cut in the middle left no fragment
    assert all(
        line == b"" or line in (head.rstrip(b"\n"), filler.rstrip(b"\n"), tail.rstrip(b"\n"))
        for line in raw.data.split(b"\n")
    )
    report = parse_log(raw, EXSA, now=NOW)
    assert report.started_at is not None and report.listening_address == "127.0.0.1:3000"
    assert report.skipped_bytes == raw.skipped and report.notes


def test_read_log_cut_on_a_line_boundary_keeps_that_line(tmp_path: Path) -> None:
    path = tmp_path / "lines.log"
    path.write_bytes(b"".join(b"line%05d\n" % i for i in range(100)))  # 10 bytes a line
    raw = read_log(path, max_bytes=30, head_bytes=25)
    assert raw.data == b"line00000\nline00001\nline00097\nline00098\nline00099\n"
    assert raw.skipped == 950 and raw.size == 1000


def test_read_log_refuses_directories_and_fifos(tmp_path: Path) -> None:
    with pytest.raises(LogReadError, match="directory"):
        read_log(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(LogReadError, match="regular file"):
        read_log(fifo)  # non-blocking open: no writer needed, no hang
    with pytest.raises(FileNotFoundError):
        read_log(tmp_path / "absent.log")


def test_giant_single_line_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "one-line.log"
    path.write_bytes(b"Starting Exsa-Engine v1 " + b"A" * (20 << 20))
    raw = read_log(path)
    assert len(raw.data) <= HEAD_BYTES + (1 << 20) + 1
    report = parse_log(raw, EXSA, now=NOW)
    assert report.start_count == 1  # found in the kept head
    assert all(len(e.line) <= EVENT_LINE_CHARS for e in report.events)
    assert len(clean_line(b"x" * (20 << 20))) == MAX_LINE_BYTES


def test_clean_line() -> None:
    assert clean_line(b"\x1b[2m2025\x1b[0m \x1b[32m INFO\x1b[0m ok\r") == "2025  INFO ok"
    assert clean_line(b"caf\xe9 \xff\xfe bytes\x00\x07") == "caf\ufffd \ufffd\ufffd bytes"
    assert clean_line("naïve ✅".encode()) == "naïve ✅"
    assert clean_line(b"\x1b]0;title\x07visible") == "visible"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:3000", ("127.0.0.1", 3000)),
        ("http://127.0.0.1:3000", ("127.0.0.1", 3000)),
        ("http://[::1]:8080/", ("::1", 8080)),
        ("[::]:11434", ("::", 11434)),
        ("0.0.0.0:8000,", ("0.0.0.0", 8000)),
        ("unix:///tmp/x.sock", (None, None)),  # a socket file: no host, no port
        ("localhost:99999", ("localhost", None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_split_address(address: str | None, expected: tuple[str | None, int | None]) -> None:
    assert split_address(address) == expected


def test_chatty_markers_are_counted_not_kept() -> None:
    line = b"2025-11-23T10:00:01Z  INFO exsa_engine: Received generation request with prompt\n"
    data = b"2025-11-23T10:00:00Z  INFO exsa_engine: Starting Exsa-Engine v1\n" + line * 10_000
    report = parse_log(data, EXSA, now=NOW)
    run = report.last_run
    assert run is not None and run.counts["generation_request"] == 10_000
    assert len(run.events) == 1 + MAX_EVENTS_PER_MARKER
    assert run.last_event is not None and run.last_event.lineno == 10_000


def test_runs_are_bounded() -> None:
    data = b"".join(
        b"Starting Exsa-Engine v%d\nMODEL_PATH environment variable must be set\n" % i
        for i in range(MAX_RUNS + 50)
    )
    report = parse_log(data, EXSA, now=NOW)
    assert len(report.runs) == MAX_RUNS and report.start_count == MAX_RUNS + 50
    assert report.last_run is not None and report.last_run.version == str(MAX_RUNS + 49)


# ------------------------------------------------------------------------------ properties

PROFILES = all_builtin()
MARKER_LINES = [
    b"2025-11-23T16:55:52.938526Z  INFO exsa_engine: Starting Exsa-Engine v0.1.0",
    b"2025-11-23T16:55:53Z ERROR exsa_engine: Failed to bind to 127.0.0.1:3000: "
    b"Address already in use (os error 98)",
    b"0.00.000.844 I srv  llama_server: initializing ...",
    b"0.01.227.813 I srv  llama_server: listening on http://127.0.0.1:45411",
    b"INFO 04-10 11:11:21 [api_server.py:1081] Starting vLLM API server on http://0.0.0.0:8000",
    b'time=2025-07-02T12:22:50.442-07:00 level=INFO msg="Listening on 127.0.0.1:11434 '
    b'(version 0.9.3)"',
]


def _bounded(report: LogReport) -> None:
    assert len(report.runs) <= MAX_RUNS
    for run in report.runs:
        assert all(
            n <= MAX_EVENTS_PER_MARKER
            for n in (sum(1 for e in run.events if e.marker == m) for m in run.counts)
        )
    assert all(len(e.line) <= EVENT_LINE_CHARS for e in report.events)
    assert all(e.t is None or 631152000 <= e.t <= NOW + 2 * 86400 for e in report.events)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4096), profile=st.sampled_from(PROFILES))
def test_arbitrary_bytes_always_give_a_bounded_report(data: bytes, profile: Profile) -> None:
    _bounded(parse_log(data, profile, now=NOW, file_mtime=NOW - 10))


@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.sampled_from(MARKER_LINES),
            st.binary(max_size=300),
            st.text(max_size=200).map(lambda t: t.encode("latin-1", "replace")),
            st.text(max_size=200).map(lambda t: t.encode("utf-16", "replace")),
        ).map(lambda b: b.replace(b"\n", b"")),
        max_size=30,
    ),
    profile=st.sampled_from(PROFILES),
)
def test_mixed_encodings_keep_the_marker_lines(chunks: list[bytes], profile: Profile) -> None:
    report = parse_log(b"\n".join(chunks), profile, now=NOW, anchor=NOW - 100)
    _bounded(report)
    markers = {n: rx for n, rx in profile.compiled_markers().items() if n != "start"}
    seen = {e.lineno for e in report.events}
    for i, chunk in enumerate(chunks):
        # a marker line among junk in other encodings is still found, on its own line number
        if chunk in MARKER_LINES and any(rx.search(chunk.decode()) for rx in markers.values()):
            assert i in seen, chunk


@settings(max_examples=100, deadline=None)
@given(stamps=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
def test_out_of_order_timestamps_never_break(stamps: list[int]) -> None:
    names = [
        "Starting Exsa-Engine v1",
        "Model validation passed: /m",
        "Model loaded successfully",
        "Server listening on http://127.0.0.1:3000",
        "Server shut down gracefully",
    ]
    lines = []
    for i, s in enumerate(stamps):
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1.7e9 + s))
        lines.append(f"{t}.{i:06d}Z  INFO exsa_engine: {names[i % len(names)]}")
    report = parse_log("\n".join(lines).encode(), EXSA, now=NOW)
    _bounded(report)
    for run in report.runs:
        assert all(v >= 0 for v in run.durations.values())
        assert run.load_s is None or run.load_s >= 0


@settings(max_examples=300, deadline=None)
@given(
    line=st.one_of(st.sampled_from([m.decode() for m in MARKER_LINES]), st.text(max_size=120)),
    profile=st.sampled_from(PROFILES),
)
def test_first_pass_never_hides_a_marker(line: str, profile: Profile) -> None:
    line = line.replace("\n", " ")
    markers = profile.compiled_markers()
    union = _union(markers)
    assert union is not None  # every built-in profile's markers can be merged
    if any(rx.search(line) for rx in markers.values()):
        assert union.search(line) is not None


def test_first_pass_is_skipped_for_patterns_it_cannot_merge() -> None:
    markers = {"start": re.compile(r"(a)\1"), "panic": re.compile("x")}
    assert _union(markers) is None
    assert _union({"start": re.compile(r"foo(?!bar)")}) is None


@settings(max_examples=40, deadline=None)
@given(
    pad=st.integers(min_value=0, max_value=3 * MAX_LINE_BYTES),
    fill=st.sampled_from([b"a", b"\xff", b"\xc3\xa9", b"\x1b[0m", b" "]),
)
def test_giant_lines_are_capped_where_the_marker_sits(pad: int, fill: bytes) -> None:
    marker = b"Starting Exsa-Engine v1"
    line = b"2025-01-01T00:00:00Z  INFO " + fill * (pad // len(fill)) + marker
    # a minute apart: two starts, not one start printed twice
    second = b"2025-01-01T00:01:00Z  INFO " + marker.replace(b"v1", b"v2")
    report = parse_log(line + b"\n" + second + b"\n", EXSA, now=NOW)
    _bounded(report)
    versions = [r.version for r in report.runs]
    if len(line) <= MAX_LINE_BYTES:
        assert versions == ["1", "2"]
    else:  # the end of a line past the cap is never searched
        assert versions == ["2"]
