"""Shared renderer helpers: timeline reading, safe text, number formats."""

from __future__ import annotations

import pytest

from exsa_doctor.model import EventKind, TimelineEvent
from exsa_doctor.render.common import (
    KIND_LABELS,
    event_kind,
    percent,
    printable,
    seconds,
    timeline_view,
    weight,
)


def ev(t: float, event: str, kind: EventKind, source: str = "log") -> TimelineEvent:
    return TimelineEvent(t=t, source=source, event=event, kind=kind)


K = EventKind


@pytest.mark.parametrize("kind", list(EventKind))
def test_renderers_read_the_kind_the_maker_gave_never_the_words(kind: EventKind) -> None:
    # words that would once have been read as another milestone do not change the kind
    for words in ("listening on http://127.0.0.1:3000", "bind failed: x", "engine started"):
        assert event_kind(ev(0.0, words, kind)) == kind.value
    assert kind.value in KIND_LABELS


def test_view_starts_at_the_last_start_before_the_failure() -> None:
    events = [
        ev(0.0, "engine started", K.START),
        ev(5.0, "bind failed: x: in use", K.BIND_FAILED),  # an earlier attempt
        ev(
            99.996, "engine process started (PID 7)", K.START, "processes"
        ),  # same start, seen twice
        ev(100.0, "engine started", K.START),
        ev(100.01, "model validated", K.MODEL_VALIDATED),
        ev(112.0, "model loaded (12 s)", K.MODEL_LOADED),
        ev(112.01, "listening on x", K.LISTENING),
        ev(140.0, "health: ready", K.OBSERVATION, "probe"),
    ]
    view = timeline_view(events, failed_at=103.0)
    assert view.earlier == 2
    assert view.t0 == 99.996 and view.events[0].source == "processes"
    assert view.listening_at == 112.01 and view.loaded_at == 112.0
    assert view.load_began == 100.01 and view.fatal_at is None
    assert view.request_vs_ready() == "9.01 s before the engine listened"
    assert [e.event for e in view.events].count("request failed") == 1


def test_request_relations() -> None:
    start = [ev(10.0, "engine started", K.START)]
    assert timeline_view(start, 4.0).request_vs_ready() == ("6.00 s before the engine even started")
    failed = [*start, ev(10.2, "bind failed: x: in use", K.BIND_FAILED)]
    assert timeline_view(failed, 11.0).request_vs_ready() == "after the engine had failed"
    ready = [*start, ev(10.2, "listening on x", K.LISTENING)]
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
