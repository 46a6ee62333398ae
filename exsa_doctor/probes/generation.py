"""The generation probe: one tiny streamed request (8 tokens), timed and counted.

Symptom: "Zero Tokens Generated", "requests completed in ~0.007 s". A health endpoint can say
"healthy" while generation returns nothing; only a real request tells. The request is the
profile's own (`[generation]` path and body, e.g. exsa's `{"max_tokens": 8}`), read as a stream
within a time and byte bound, and its tokens counted by `parsers.sse.GenerationDecoder`.

By default it runs only when the health endpoint said ready (`--generate` forces it, `--no-generate`
turns it off), so a loading engine is not loaded further.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

from exsa_doctor.context import Context
from exsa_doctor.facts import health
from exsa_doctor.httpcheck import (
    CONNECT_TIMEOUT_S,
    BoundedExchange,
    HTTPFailure,
    request_path,
)
from exsa_doctor.model import EventKind, Level
from exsa_doctor.parsers.sse import GenerationDecoder
from exsa_doctor.probes.base import Probe, ProbeOutput
from exsa_doctor.target import Target

MAX_STREAM_BYTES = 4 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
# Time kept back from the probe's own timeout for building the findings.
_MARGIN_S = 0.4


@dataclass(frozen=True)
class GenerationResult:
    """One generation request: outcome ok, zero_tokens, capacity, no_model, http_error or
    stalled, with the numbers that back it."""

    url: str
    t: float  # wall-clock start
    outcome: str
    status_code: int | None = None
    error: str = ""
    tokens: int = 0
    events: int = 0
    ttft_ms: float | None = None
    total_ms: float = 0.0
    done: bool = False
    framing: str = ""
    bytes_read: int = 0
    ended: str = ""  # how the stream ended: done, eof, deadline, size cap, closed


def _error_of(body: bytes) -> str:
    text = body[:MAX_ERROR_BODY].decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return text[:300]
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("message"))
        if isinstance(err, dict):
            msg = err.get("message")
            return msg if isinstance(msg, str) else json.dumps(err)[:300]
        if isinstance(err, str):
            return err
    return text[:300]


def _error_outcome(status: int | None, error: str) -> str:
    low = error.lower()
    if status in (401, 403):
        return "auth_required"  # the engine wants a key (llama-server/vLLM --api-key)
    if "no model" in low:
        return "no_model"
    if (status == 503 or status is None or status < 300) and "capacity" in low:
        return "capacity"
    return "http_error"


def generate_once(
    target: Target, deadline: float, *, connect_s: float, read_s: float
) -> GenerationResult:
    """POST the profile's generation request; stream, count and time it until `deadline`."""
    spec = target.profile.generation
    url = target.endpoint(spec.path)
    started_wall = time.time()
    started = time.monotonic()

    def ms() -> float:
        return round((time.monotonic() - started) * 1000.0, 2)

    status: int | None = None
    decoder: GenerationDecoder | None = None
    ttft: float | None = None
    read = 0
    ended = ""
    try:
        with BoundedExchange(target, deadline, connect_s=connect_s, read_s=read_s) as exchange:
            status, headers = exchange.open(
                "POST",
                request_path(spec.path),
                {
                    "Content-Type": "application/json",
                    "Accept": "text/event-stream, application/json, application/x-ndjson",
                    "Accept-Encoding": "identity",
                },
                spec.body.encode("utf-8"),
            )
            if status >= 400:
                body = bytearray()
                for chunk in exchange.body():
                    body += chunk[: MAX_ERROR_BODY - len(body)]
                    if len(body) >= MAX_ERROR_BODY:
                        break
                error = _error_of(bytes(body)) or f"HTTP {status}"
                return GenerationResult(
                    url,
                    started_wall,
                    _error_outcome(status, error),
                    status,
                    error,
                    total_ms=ms(),
                    bytes_read=len(body),
                    ended="error status",
                )
            decoder = GenerationDecoder(spec.kind, headers.get("content-type", ""))
            for chunk in exchange.body():
                piece = chunk[: MAX_STREAM_BYTES - read]
                read += len(piece)
                if decoder.feed(piece):
                    ttft = ttft if ttft is not None else ms()
                if decoder.tally.done or decoder.tally.error:
                    ended = "done" if decoder.tally.done else "error event"
                    break
                if read >= MAX_STREAM_BYTES:
                    ended = "size cap"
                    break
            else:
                ended = "eof"
    except HTTPFailure as exc:
        failure = exc.failure
        if status is None:
            if failure.kind == "timeout" and failure.phase != "connect":
                return GenerationResult(
                    url,
                    started_wall,
                    "stalled",
                    None,
                    "no answer within the time allowed",
                    total_ms=ms(),
                    ended="deadline",
                )
            return GenerationResult(
                url,
                started_wall,
                "http_error",
                None,
                failure.reason,
                total_ms=ms(),
                ended=failure.kind,
            )
        if decoder is None:  # an error status whose body did not come whole
            error = f"HTTP {status}; its body: {failure.reason}"
            return GenerationResult(
                url,
                started_wall,
                _error_outcome(status, ""),
                status,
                error,
                total_ms=ms(),
                ended=failure.kind,
            )
        ended = "deadline" if failure.kind == "timeout" else f"closed ({failure.reason})"
    if ttft is None and decoder.close():
        ttft = ms()
    elif ttft is not None:
        decoder.close()
    tally = decoder.tally
    result = GenerationResult(
        url,
        started_wall,
        "",
        status,
        tally.error or "",
        tokens=tally.tokens,
        events=tally.events + tally.bad_events,
        ttft_ms=ttft,
        total_ms=ms(),
        done=tally.done,
        framing=tally.framing,
        bytes_read=read,
        ended=ended,
    )
    if tally.error:
        return replace(result, outcome=_error_outcome(status, tally.error))
    if tally.tokens > 0:
        return replace(result, outcome="ok")
    if ended == "deadline":
        return replace(result, outcome="stalled")
    return replace(result, outcome="zero_tokens")


class GenerationProbe(Probe):
    """Sends one tiny generation request and counts the tokens that come back.

    Emits generation.ok, generation.zero_tokens, generation.capacity, generation.no_model,
    generation.http_error, generation.stalled and generation.auth_required (401/403).
    """

    name = "generation"
    title = "One tiny generation"
    timeout_s = 6.0
    emits = (
        "generation.ok",
        "generation.zero_tokens",
        "generation.capacity",
        "generation.no_model",
        "generation.http_error",
        "generation.stalled",
        "generation.auth_required",
    )

    def __init__(self) -> None:
        self._started: float | None = None

    def applies(self, ctx: Context) -> str | None:
        self._started = time.monotonic()
        wanted = ctx.target.generate
        if wanted is False:
            return "generation turned off (--no-generate)"
        if wanted is None:
            obs = health(ctx)
            if not obs.ready:
                return f"the health endpoint is not ready ({obs.label}); --generate forces it"
        return None

    def run(self, ctx: Context) -> ProbeOutput:
        started = self._started if self._started is not None else time.monotonic()
        # The health request (in applies) used part of this probe's time; the rest is ours.
        budget = min(
            self.timeout_s - _MARGIN_S - (time.monotonic() - started),
            ctx.remaining() - 0.2,
        )
        budget = max(0.2, budget)
        result = generate_once(
            ctx.target,
            time.monotonic() + budget,
            connect_s=min(CONNECT_TIMEOUT_S, budget),
            read_s=budget,
        )
        out = ProbeOutput()
        out.event(result.t, "probe", f"generation: {result.outcome}", EventKind.OBSERVATION)
        self._findings(result, budget, out)
        return out

    def _findings(self, r: GenerationResult, budget: float, out: ProbeOutput) -> None:
        where = f"POST {r.url}"
        if r.outcome == "ok":
            out.detail = f"{where}: {r.tokens} tokens, first after {r.ttft_ms} ms"
            out.add(
                self.finding(
                    "generation.ok",
                    Level.OK,
                    f"generated {r.tokens} token(s); first after {r.ttft_ms} ms, "
                    f"all in {r.total_ms} ms",
                    {
                        "tokens": r.tokens,
                        "ttft_ms": r.ttft_ms,
                        "total_ms": r.total_ms,
                        "complete": r.done,
                        "ended": r.ended,
                    },
                )
            )
        elif r.outcome == "zero_tokens":
            out.detail = f"{where}: the answer ended with no tokens"
            out.add(
                self.finding(
                    "generation.zero_tokens",
                    Level.ERROR,
                    f"the generation answer ended after {r.total_ms} ms with no tokens "
                    f"({r.events} event(s), {r.bytes_read} bytes)",
                    {
                        "events": r.events,
                        "total_ms": r.total_ms,
                        "status_code": r.status_code,
                        "ended": r.ended,
                        "bytes": r.bytes_read,
                    },
                )
            )
        elif r.outcome == "capacity":
            out.detail = f"{where}: at capacity"
            out.add(
                self.finding(
                    "generation.capacity",
                    Level.WARNING,
                    f"the engine is at capacity: {r.error}",
                    {"status_code": r.status_code, "error": r.error},
                )
            )
        elif r.outcome == "no_model":
            out.detail = f"{where}: no model loaded"
            out.add(
                self.finding(
                    "generation.no_model",
                    Level.ERROR,
                    f"the engine has no model loaded: {r.error}",
                    {"error": r.error, "status_code": r.status_code},
                )
            )
        elif r.outcome == "stalled":
            waited = round(r.total_ms / 1000.0, 2)
            out.detail = f"{where}: no token within {waited:g} s"
            out.add(
                self.finding(
                    "generation.stalled",
                    Level.ERROR,
                    f"no token within {waited:g} s of asking for {r.url}",
                    {
                        "waited_s": waited,
                        "tokens": r.tokens,
                        "status_code": r.status_code,
                        "allowed_s": round(budget, 2),
                    },
                )
            )
        elif r.outcome == "auth_required":
            out.detail = f"{where}: HTTP {r.status_code}, a key is required"
            out.add(
                self.finding(
                    "generation.auth_required",
                    Level.ERROR,
                    f"the engine refused the request without a key (HTTP {r.status_code}): "
                    f"{r.error}",
                    {"status_code": r.status_code, "error": r.error, "url": r.url},
                )
            )
        else:
            code = f"HTTP {r.status_code}" if r.status_code is not None else "no HTTP answer"
            out.detail = f"{where}: {code}: {r.error}"
            out.add(
                self.finding(
                    "generation.http_error",
                    Level.ERROR,
                    f"the generation request failed ({code}): {r.error}",
                    {"status_code": r.status_code, "error": r.error},
                )
            )
