"""Server-sent events and generation answers, parsed incrementally and within fixed bounds.

`SSEParser` follows the WHATWG event-stream rules (`data:`, `event:`, `id:`, comments, CRLF/LF/CR
line endings, multi-line data) and is fed arbitrary chunks: parsing a stream in pieces gives the
same events as parsing it whole. It never holds more than one capped line and one capped event,
and stops after a maximum number of events, so an endless or hostile stream cannot exhaust memory.

`GenerationDecoder` counts generated tokens the way each engine kind reports them:
- `exsa-sse`: SSE `data: {"token": "...", "done": false}` ... `{"token": "", "done": true}`,
  errors as `{"error": "..."}`;
- `llama-completion`: JSON (or SSE with `"stream": true`): `content`, `tokens_predicted`, `stop`;
- `ollama`: one JSON or NDJSON lines with `response`, `eval_count`, `done`;
- `openai-completion`: `choices[0].text` (or `.delta.content`), `usage.completion_tokens`,
  `data: [DONE]`.
The framing (SSE, JSON lines or one JSON document) comes from the Content-Type, or is sniffed from
the first bytes when the server does not say. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_EVENT_BYTES = 64 * 1024
MAX_EVENTS = 10_000
MAX_DOCUMENT_BYTES = 256 * 1024
KINDS = ("exsa-sse", "llama-completion", "ollama", "openai-completion")

_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event. `truncated`: its data was cut at the size cap; `partial`: the stream
    ended before the blank line that closes it (kept, because some servers omit it)."""

    data: str
    event: str = "message"
    id: str | None = None
    truncated: bool = False
    partial: bool = False


class SSEParser:
    """Incremental, bounded event-stream parser: `feed(bytes)` and finally `close()`."""

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES, max_events: int = MAX_EVENTS):
        if max_event_bytes < 1 or max_events < 1:
            raise ValueError("max_event_bytes and max_events must be positive")
        self.max_event_bytes = max_event_bytes
        self.max_events = max_events
        # a line longer than an event could ever be is cut (the field name needs a little room)
        self._max_line = max_event_bytes + 64
        self._line = bytearray()
        self._line_cut = False
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._data_len = 0
        self._event_type = ""
        self._last_id: str | None = None
        self._truncated = False
        self._closed = False
        self.events = 0
        self.comments = 0
        self.overflowed = False  # max_events reached: further input is ignored

    @property
    def buffered(self) -> int:
        """Bytes (or characters) held right now: the pending line plus the pending event."""
        return len(self._line) + self._data_len

    @property
    def stopped(self) -> bool:
        return self.overflowed or self._closed

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self.stopped or not chunk:
            return out
        i = 0
        n = len(chunk)
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                i = 1
        while i < n:
            match = _EOL.search(chunk, i)
            if match is None:
                self._keep(chunk[i:])
                break
            j = match.start()
            self._keep(chunk[i:j])
            if chunk[j] == 0x0D:
                if j + 1 < n:
                    if chunk[j + 1] == 0x0A:
                        j += 1
                else:
                    # CR at the end of a chunk: a LF opening the next chunk belongs to it
                    self._skip_lf = True
            i = j + 1
            event = self._end_of_line()
            if event is not None:
                out.append(event)
                if self.overflowed:
                    break
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: a last unterminated line is processed, a pending event kept (partial)."""
        if self.stopped:
            return []
        out: list[SSEEvent] = []
        if self._line or self._line_cut:
            event = self._end_of_line()
            if event is not None:
                out.append(event)
        if not self.overflowed and self._data:
            event = self._dispatch(partial=True)
            if event is not None:
                out.append(event)
        self._closed = True
        return out

    def _keep(self, piece: bytes) -> None:
        room = self._max_line - len(self._line)
        if len(piece) > room:
            self._line += piece[: max(0, room)]
            self._line_cut = True
        else:
            self._line += piece

    def _end_of_line(self) -> SSEEvent | None:
        raw = bytes(self._line)
        cut = self._line_cut
        self._line.clear()
        self._line_cut = False
        if self._first_line:
            self._first_line = False
            if raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
        if not raw and not cut:
            return self._dispatch(partial=False)
        text = raw.decode("utf-8", errors="replace")
        if text.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._add_data(value, cut)
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _add_data(self, value: str, cut: bool) -> None:
        room = self.max_event_bytes - self._data_len
        piece = value + "\n"
        if len(piece) > room or cut:
            piece = piece[: max(0, room)]
            self._truncated = True
        if piece:
            self._data.append(piece)
            self._data_len += len(piece)
        elif not self._data:
            # an empty data field still makes the event exist (spec: buffer "" + LF)
            self._data.append("")

    def _dispatch(self, *, partial: bool) -> SSEEvent | None:
        if not self._data:
            self._event_type = ""
            self._truncated = False
            return None
        data = "".join(self._data)
        if data.endswith("\n"):
            data = data[:-1]
        event = SSEEvent(
            data=data,
            event=self._event_type or "message",
            id=self._last_id,
            truncated=self._truncated,
            partial=partial,
        )
        self._data = []
        self._data_len = 0
        self._event_type = ""
        self._truncated = False
        self.events += 1
        if self.events >= self.max_events:
            self.overflowed = True
        return event


# --- token counting -------------------------------------------------------------------------


@dataclass
class TokenTally:
    """What a generation answer said so far: pieces streamed, the engine's own count, errors."""

    kind: str
    pieces: int = 0  # events/objects that carried generated text
    reported: int | None = None  # tokens_predicted / eval_count / usage.completion_tokens
    events: int = 0  # events or JSON objects seen
    done: bool = False
    error: str | None = None
    text_chars: int = 0
    bad_events: int = 0  # events whose data is not a JSON object
    framing: str = ""

    @property
    def tokens(self) -> int:
        return max(self.pieces, self.reported or 0)


def _error_text(value: Any) -> str:
    if isinstance(value, dict):
        msg = value.get("message")
        return msg if isinstance(msg, str) else json.dumps(value)[:500]
    return str(value)[:500]


def _nonneg_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def tally_object(tally: TokenTally, obj: dict[str, Any]) -> int:
    """Count one decoded JSON object of a generation answer; returns the new pieces it carried."""
    tally.events += 1
    if obj.get("error"):
        tally.error = _error_text(obj["error"])
        return 0
    text: Any = None
    kind = tally.kind
    if kind == "exsa-sse":
        text = obj.get("token")
        if obj.get("done") is True:
            tally.done = True
    elif kind == "llama-completion":
        text = obj.get("content")
        reported = _nonneg_int(obj.get("tokens_predicted"))
        if reported is not None:
            tally.reported = reported
        if obj.get("stop") is True:
            tally.done = True
    elif kind == "ollama":
        text = obj.get("response")
        reported = _nonneg_int(obj.get("eval_count"))
        if reported is not None:
            tally.reported = reported
        if obj.get("done") is True:
            tally.done = True
    elif kind == "openai-completion":
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            first = choices[0]
            text = first.get("text")
            delta = first.get("delta")
            if text is None and isinstance(delta, dict):
                text = delta.get("content")
            if first.get("finish_reason"):
                tally.done = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            reported = _nonneg_int(usage.get("completion_tokens"))
            if reported is not None:
                tally.reported = reported
    else:
        raise ValueError(f"unknown generation kind {kind!r} (known: {', '.join(KINDS)})")
    if isinstance(text, str) and text:
        tally.pieces += 1
        tally.text_chars += len(text)
        return 1
    return 0


def _json_object(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class GenerationDecoder:
    """Feed the raw body of a generation answer; read `tally` for tokens, errors and `done`.

    `feed` and `close` return how many new token pieces arrived, so a caller can time the first.
    """

    def __init__(self, kind: str, content_type: str = "", *, max_events: int = MAX_EVENTS):
        if kind not in KINDS:
            raise ValueError(f"unknown generation kind {kind!r} (known: {', '.join(KINDS)})")
        self.tally = TokenTally(kind=kind)
        ctype = content_type.lower()
        self._framing = ""
        if "event-stream" in ctype:
            self._framing = "sse"
        elif "json" in ctype:
            self._framing = "json"
        self._max_events = max_events
        self._sse = SSEParser(max_events=max_events)
        self._pending = bytearray()  # bytes before the framing is known, or the current JSON line
        self._line_cut = False
        self._document = bytearray()  # the first MAX_DOCUMENT_BYTES, for a pretty-printed JSON
        self._objects = 0
        self.bytes_seen = 0

    def feed(self, chunk: bytes) -> int:
        self.bytes_seen += len(chunk)
        if not self._framing:
            self._pending += chunk[: MAX_DOCUMENT_BYTES - len(self._pending)]
            head = bytes(self._pending).lstrip(b"\xef\xbb\xbf \t\r\n")
            if not head:
                # only blank lines so far: meaningless in either framing, and must not pile up
                self._pending.clear()
                return 0
            self._framing = "json" if head[:1] in (b"{", b"[") else "sse"
            chunk = bytes(self._pending)
            self._pending.clear()
        return self._framed(chunk)

    def _framed(self, chunk: bytes) -> int:
        self.tally.framing = self._framing
        if self._framing == "sse":
            return sum(self._event(e.data) for e in self._sse.feed(chunk))
        return self._json_feed(chunk)

    def close(self) -> int:
        if not self._framing:
            self._framing = "sse"
            chunk = bytes(self._pending)
            self._pending.clear()
            new = self._framed(chunk)
        else:
            new = 0
        self.tally.framing = self._framing
        if self._framing == "sse":
            return new + sum(self._event(e.data) for e in self._sse.close())
        return new + self._json_close()

    def _event(self, data: str) -> int:
        if self.tally.events + self.tally.bad_events >= self._max_events:
            return 0
        if data.strip() == "[DONE]":
            self.tally.done = True
            return 0
        obj = _json_object(data)
        if obj is None:
            self.tally.bad_events += 1
            return 0
        return tally_object(self.tally, obj)

    def _json_feed(self, chunk: bytes) -> int:
        room = MAX_DOCUMENT_BYTES - len(self._document)
        if room > 0:
            self._document += chunk[:room]
        new = 0
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._keep_line(chunk[start:])
                break
            self._keep_line(chunk[start:nl])
            new += self._json_line()
            start = nl + 1
        return new

    def _keep_line(self, piece: bytes) -> None:
        room = MAX_DOCUMENT_BYTES - len(self._pending)
        if len(piece) > room:
            self._pending += piece[: max(0, room)]
            self._line_cut = True
        else:
            self._pending += piece

    def _json_line(self) -> int:
        line = bytes(self._pending).strip()
        cut = self._line_cut
        self._pending.clear()
        self._line_cut = False
        if not line or cut or self._objects >= self._max_events:
            return 0
        obj = _json_object(line)
        if obj is None:
            return 0  # a line of a pretty-printed document; close() parses the whole
        self._objects += 1
        return tally_object(self.tally, obj)

    def _json_close(self) -> int:
        new = self._json_line()
        if self._objects == 0:
            obj = _json_object(bytes(self._document))
            if obj is None:
                if self._document.strip():
                    self.tally.bad_events += 1
                return new
            self._objects += 1
            new += tally_object(self.tally, obj)
        return new
