"""The bounded SSE parser and the per-engine token counting, on fixed and arbitrary input."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exsa_doctor.parsers.sse import (
    GenerationDecoder,
    SSEEvent,
    SSEParser,
    TokenTally,
)


def parse_all(raw: bytes, **kw: int) -> list[SSEEvent]:
    p = SSEParser(**kw)
    return p.feed(raw) + p.close()


def parse_chunked(chunks: list[bytes], **kw: int) -> list[SSEEvent]:
    p = SSEParser(**kw)
    events: list[SSEEvent] = []
    for c in chunks:
        events += p.feed(c)
    return events + p.close()


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(raw[last:p])
        last = p
    pieces.append(raw[last:])
    return pieces


# --- the event-stream format ------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_line_endings(eol: bytes) -> None:
    raw = eol.join([b"data: one", b"", b"data: two", b"data: lines", b"", b""])
    assert [e.data for e in parse_all(raw)] == ["one", "two\nlines"]


def test_fields_comments_and_ids() -> None:
    raw = b": keep-alive\nevent: token\nid: 7\ndata:no-space\ndata\nretry: 10\nbogus: x\n\n"
    (ev,) = parse_all(raw)
    assert ev == SSEEvent(data="no-space\n", event="token", id="7")


def test_events_without_data_are_not_dispatched_and_type_resets() -> None:
    raw = b"event: ping\n\ndata: x\n\n"
    assert parse_all(raw) == [SSEEvent(data="x", event="message")]


def test_partial_event_at_eof_is_kept_and_marked() -> None:
    (ev,) = parse_all(b'data: {"token": "a"}')
    assert ev.partial and ev.data == '{"token": "a"}'
    (done,) = parse_all(b"data: x\n\n")
    assert not done.partial


def test_bom_at_the_start_is_ignored_even_when_split() -> None:
    assert [e.data for e in parse_chunked([b"\xef", b"\xbb\xbfdata: a\n\n"])] == ["a"]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    events = parse_chunked([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert [e.data for e in events] == ["a\nb"]


def test_oversized_event_is_truncated_not_buffered() -> None:
    p = SSEParser(max_event_bytes=100)
    events = p.feed(b"data: " + b"x" * 10_000 + b"\ndata: more\n\n")
    (ev,) = events
    assert ev.truncated and len(ev.data) <= 100
    assert p.buffered == 0


def test_event_count_is_capped() -> None:
    p = SSEParser(max_events=5)
    events = p.feed(b"data: x\n\n" * 100)
    assert len(events) == 5 and p.overflowed
    assert p.feed(b"data: y\n\n") == [] and p.close() == []


def test_invalid_utf8_is_replaced() -> None:
    (ev,) = parse_all(b"data: \xff\xfe ok\n\n")
    assert ev.data == "\ufffd\ufffd ok"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_gives_the_same_events(raw: bytes, cuts: list[int]) -> None:
    assert parse_chunked(split_at(raw, cuts), max_event_bytes=64) == parse_all(
        raw, max_event_bytes=64
    )


_sse_alphabet = st.sampled_from(
    [b"data:", b"data: ", b"event: e", b"id: 1", b":c", b"x", b"\n", b"\r", b"\r\n", b" ", b"{}"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_sse_alphabet, max_size=80), st.lists(st.integers(min_value=0), max_size=12))
def test_sse_shaped_chunking_gives_the_same_events(parts: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(parts)
    assert parse_chunked(split_at(raw, cuts), max_events=7) == parse_all(raw, max_events=7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_arbitrary_bytes_stay_bounded(chunks: list[bytes]) -> None:
    p = SSEParser(max_event_bytes=128, max_events=10)
    total = 0
    for c in chunks:
        total += len(p.feed(c))
        assert p.buffered <= 128 + 64 + 128
    total += len(p.close())
    assert total <= 10
    for e in parse_chunked(chunks, max_event_bytes=128):
        assert len(e.data) <= 128


def endless(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


@pytest.mark.parametrize(
    "piece",
    [b"data: " + b"z" * 500, b"data: tok\n\n", b"\n", b": comment without end " * 20],
    ids=["one-endless-line", "endless-events", "blank-lines", "endless-comment"],
)
def test_an_endless_stream_is_bounded(piece: bytes) -> None:
    p = SSEParser(max_event_bytes=1024, max_events=50)
    events = 0
    for i, chunk in enumerate(endless(piece)):
        events += len(p.feed(chunk))
        assert p.buffered <= 1024 + 64 + 1024
        if i >= 5000:
            break
    assert events <= 50


# --- token counting -----------------------------------------------------------------------------


def decode(kind: str, ctype: str, body: bytes, cuts: list[int] | None = None) -> TokenTally:
    d = GenerationDecoder(kind, ctype)
    for chunk in split_at(body, cuts or []):
        d.feed(chunk)
    d.close()
    return d.tally


def exsa_stream(tokens: list[str]) -> bytes:
    events = [json.dumps({"token": t, "done": False}) for t in tokens]
    events.append(json.dumps({"token": "", "done": True}))
    return b"".join(f"data: {e}\n\n".encode() for e in events)


def test_exsa_tokens_are_counted_and_done_seen() -> None:
    t = decode("exsa-sse", "text/event-stream", exsa_stream(["Hel", "lo", "!"]))
    assert (t.tokens, t.done, t.error, t.events) == (3, True, None, 4)


def test_exsa_zero_tokens() -> None:
    t = decode("exsa-sse", "text/event-stream", exsa_stream([]))
    assert (t.tokens, t.done) == (0, True)


def test_exsa_error_event() -> None:
    t = decode("exsa-sse", "text/event-stream", b'data: {"error": "Server is at capacity"}\n\n')
    assert t.error == "Server is at capacity" and t.tokens == 0


def test_feed_reports_new_tokens_for_time_to_first_token() -> None:
    d = GenerationDecoder("exsa-sse", "text/event-stream")
    assert d.feed(b'data: {"token": "a", "done": fal') == 0
    assert d.feed(b"se}\n\n") == 1


def test_llama_completion_json_uses_tokens_predicted() -> None:
    body = json.dumps({"content": " world, hi", "tokens_predicted": 8, "stop": True}).encode()
    t = decode("llama-completion", "application/json; charset=utf-8", body)
    assert (t.tokens, t.done, t.framing) == (8, True, "json")
    zero = json.dumps({"content": "", "tokens_predicted": 0, "stop": True}).encode()
    assert decode("llama-completion", "application/json", zero).tokens == 0


def test_llama_completion_stream() -> None:
    body = b"".join(
        f"data: {json.dumps(o)}\n\n".encode()
        for o in [
            {"content": "a", "stop": False},
            {"content": "b", "stop": False},
            {"content": "", "stop": True, "tokens_predicted": 2},
        ]
    )
    t = decode("llama-completion", "text/event-stream", body)
    assert (t.tokens, t.done) == (2, True)


def test_llama_error_object() -> None:
    body = json.dumps({"error": {"message": "Loading model", "code": 503}}).encode()
    assert decode("llama-completion", "application/json", body).error == "Loading model"


def test_ollama_single_json_and_ndjson() -> None:
    one = json.dumps({"response": "Hi there", "done": True, "eval_count": 3}).encode()
    assert decode("ollama", "application/json", one).tokens == 3
    lines = b"".join(
        json.dumps(o).encode() + b"\n"
        for o in [
            {"response": "a", "done": False},
            {"response": "b", "done": False},
            {"response": "", "done": True, "eval_count": 2},
        ]
    )
    t = decode("ollama", "application/x-ndjson", lines, cuts=[3, 17, 40])
    assert (t.tokens, t.done, t.events) == (2, True, 3)


def test_openai_completion_json_and_stream() -> None:
    body = json.dumps(
        {
            "choices": [{"text": "hello", "finish_reason": "length"}],
            "usage": {"completion_tokens": 8},
        }
    ).encode()
    assert decode("openai-completion", "application/json", body).tokens == 8
    stream = (
        b'data: {"choices": [{"text": "a", "finish_reason": null}]}\n\n'
        b'data: {"choices": [{"delta": {"content": "b"}, "finish_reason": null}]}\n\n'
        b"data: [DONE]\n\n"
    )
    t = decode("openai-completion", "text/event-stream", stream)
    assert (t.tokens, t.done) == (2, True)


def test_framing_is_sniffed_without_a_content_type() -> None:
    assert decode("exsa-sse", "", exsa_stream(["x"])).framing == "sse"
    assert decode("exsa-sse", "", exsa_stream(["x"])).tokens == 1
    pretty = json.dumps({"content": "x", "tokens_predicted": 4}, indent=2).encode()
    t = decode("llama-completion", "", pretty)
    assert (t.framing, t.tokens) == ("json", 4)


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown generation kind"):
        GenerationDecoder("nope")


def test_garbage_in_a_stream_is_counted_not_raised() -> None:
    t = decode("exsa-sse", "text/event-stream", b"data: not json\n\ndata: [1,2]\n\n")
    assert (t.tokens, t.bad_events) == (0, 2)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=5), max_size=20),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_token_count_does_not_depend_on_chunking(tokens: list[str], cuts: list[int]) -> None:
    body = exsa_stream(tokens)
    whole = decode("exsa-sse", "text/event-stream", body)
    assert whole.tokens == len(tokens)
    assert decode("exsa-sse", "", body, cuts) == whole


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["exsa-sse", "llama-completion", "ollama", "openai-completion"]),
    st.sampled_from(["", "text/event-stream", "application/json", "application/x-ndjson"]),
    st.lists(st.binary(max_size=200), max_size=20),
)
def test_decoder_never_raises_on_arbitrary_bytes(
    kind: str, ctype: str, chunks: list[bytes]
) -> None:
    d = GenerationDecoder(kind, ctype)
    for c in chunks:
        d.feed(c)
    d.close()
    assert d.tally.tokens >= 0
