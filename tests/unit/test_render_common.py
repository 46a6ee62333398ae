"""Shared renderer helpers: timeline reading, safe text, number formats."""

from __future__ import annotations

import pytest

from exsa_doctor.model import TimelineEvent
from exsa_doctor.render.common import (
    event_kind,
    percent,
    printable,
    seconds,
    timeline_view,
    weight,
)


def ev(t: float, event: str, source: str = "log") -> TimelineEvent:
    return TimelineEvent(t=t, source=source, event=event)


@pytest.mark.parametrize(
    ("source", "event", "kind"),
    [
        # as the logs probe words them
        ("log", "engine started (version 0.1.0)", "start"),
        ("log", "model validated", "model-validated"),
        ("log", "loading model /models/failing-error.gguf", "model-loading"),
        ("log", "model loaded (12.08 s)", "model-loaded"),
        ("log", "starting HTTP server on 127.0.0.1:3000", "http-starting"),
        ("log", "listening on http://127.0.0.1:3000", "listening"),
        ("log", "bind failed: 127.0.0.1:3000: Address already in use (os error 98)", "bind-failed"),
        ("log", "model error: llama_model_load: error loading model", "model-error"),
        ("log", "model path unset: MODEL_PATH environment variable must be set", "model-error"),
        ("log", "mmap failed: failed to mmap", "error"),
        ("log", "oom: out of memory", "error"),
        ("log", "panic: thread 'main' panicked", "error"),
        ("log", "shut down", "shutdown"),
        # other probes and the client
        ("processes", "engine process started (PID 17939)", "start"),
        (
            "port",
            "PID 4242 (exsa-engine) started; it listens on 127.0.0.1:3000",
            "port-holder",
        ),  # issue 9: the port holder is its own kind
        ("probe", "health: refused", "observation"),
        ("probe", "health: http_error", "observation"),
        ("probe", "progress: refused -> listening", "listening"),
        ("probe", "progress: listening -> healthy", "observation"),
        ("client", "request failed", "failed-request"),
        # other engines' wording, by keyword
        ("log", "main: server is listening on http://127.0.0.1:8080", "listening"),
        ("log", "couldn't bind HTTP server socket", "bind-failed"),
        ("log", "something else", "other"),
    ],
)
def test_event_kind(source: str, event: str, kind: str) -> None:
    assert event_kind(ev(0.0, event, source)) == kind


def test_view_starts_at_the_last_start_before_the_failure() -> None:
    events = [
        ev(0.0, "engine started"),
        ev(5.0, "bind failed: x: in use"),  # an earlier attempt
        ev(99.996, "engine process started (PID 7)", "processes"),  # same start, seen twice
        ev(100.0, "engine started"),
        ev(100.01, "model validated"),
        ev(112.0, "model loaded (12 s)"),
        ev(112.01, "listening on x"),
        ev(140.0, "health: ready", "probe"),
    ]
    view = timeline_view(events, failed_at=103.0)
    assert view.earlier == 2
    assert view.t0 == 99.996 and view.events[0].source == "processes"
    assert view.listening_at == 112.01 and view.loaded_at == 112.0
    assert view.load_began == 100.01 and view.fatal_at is None
    assert view.request_vs_ready() == "9.01 s before the engine listened"
    assert [e.event for e in view.events].count("request failed") == 1


def test_request_relations() -> None:
    start = [ev(10.0, "engine started")]
    assert timeline_view(start, 4.0).request_vs_ready() == ("6.00 s before the engine even started")
    failed = [*start, ev(10.2, "bind failed: x: in use")]
    assert timeline_view(failed, 11.0).request_vs_ready() == "after the engine had failed"
    ready = [*start, ev(10.2, "listening on x")]
    assert timeline_view(ready, 11.0).request_vs_ready() == "800 ms after the engine listened"
    assert timeline_view(start, 12.0).request_vs_ready() == (
        "while the engine was not listening (it never did)"
    )
    assert timeline_view(start, None).request_vs_ready() == ""
    assert timeline_view([], float("nan")).events == ()


def test_formats() -> None:
    assert seconds(0.0042) == "4 ms" and seconds(12.08) == "12.1 s" and seconds(3.0) == "3.00 s"
    assert seconds(200) == "3 min 20 s" and seconds(float("inf")) == "?"
    assert percent(0.9701) == "97%" and percent(0.9999) == ">99%" and percent(0.001) == "<1%"
    assert weight(60.0) == "\u00d760" and weight(0.06) == "\u00d70.06"
    assert printable("a\x1b[2Jb\x00\nc") == "a\ufffd[2Jb\ufffd c"
    assert printable("a\nb\x07", keep_newlines=True, replacement="") == "a\nb"
