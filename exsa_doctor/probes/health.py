"""The health probe: one bounded GET of the engine's health endpoint, classified by its profile.

Symptom: "curl failed to connect" / "the engine started but does not answer". One request tells
connection refused (nothing listens yet: still loading, crashed, wrong port), a timeout (connect
or read phase: a full backlog, a hung handler, a server dripping bytes), a reset or a non-HTTP
answer (another program owns the port), and the engine's own words (ready, loading, overloaded,
model not loaded).

The request itself (bounded in time and bytes) is `httpcheck.check_health`; the run makes it once
(`facts.health`), and the generation, progress and stack probes read the same observation.
"""

from __future__ import annotations

from exsa_doctor.context import Context
from exsa_doctor.facts import health
from exsa_doctor.httpcheck import HealthObservation
from exsa_doctor.model import EventKind, Level
from exsa_doctor.parsers.health import MAX_BODY_BYTES, HealthAnswer, HealthState
from exsa_doctor.probes.base import Probe, ProbeOutput


class HealthProbe(Probe):
    """Asks the health endpoint once: refused, timed out, reset, not HTTP, or the engine's words.

    Emits health.ok, health.refused, health.timeout, health.reset, health.loading,
    health.overloaded, health.model_not_loaded, health.http_error, health.bad_body and
    health.auth_required (401/403: the engine wants a key).
    """

    name = "health"
    title = "Health endpoint"
    timeout_s = 3.0
    emits = (
        "health.ok",
        "health.refused",
        "health.timeout",
        "health.reset",
        "health.loading",
        "health.overloaded",
        "health.model_not_loaded",
        "health.http_error",
        "health.bad_body",
        "health.auth_required",
    )

    def run(self, ctx: Context) -> ProbeOutput:
        obs = health(ctx)
        out = ProbeOutput()
        out.event(obs.t, "probe", f"health: {obs.label}", EventKind.OBSERVATION)
        self._findings(obs, out)
        return out

    def _findings(self, obs: HealthObservation, out: ProbeOutput) -> None:
        url = obs.url
        if obs.outcome == "refused":
            out.detail = f"GET {url}: connection refused"
            out.add(
                self.finding(
                    "health.refused",
                    Level.ERROR,
                    f"{url} refused the connection: nothing accepts connections on that port",
                    {"latency_ms": obs.latency_ms, "url": url},
                )
            )
            return
        if obs.outcome == "timeout":
            out.detail = f"GET {url}: timeout ({obs.phase})"
            what = "no TCP connection" if obs.phase == "connect" else "no complete answer"
            out.add(
                self.finding(
                    "health.timeout",
                    Level.ERROR,
                    f"{url}: {what} within {obs.timeout_s:g} s",
                    {
                        "timeout_s": obs.timeout_s,
                        "phase": obs.phase,
                        "url": url,
                        "status_code": obs.status_code,
                    },
                )
            )
            return
        if obs.outcome == "reset":
            out.detail = f"GET {url}: connection closed without an answer"
            out.add(
                self.finding(
                    "health.reset",
                    Level.ERROR,
                    f"{url} accepted the connection and closed it without an HTTP answer",
                    {"latency_ms": obs.latency_ms, "url": url},
                )
            )
            return
        if obs.outcome == "not_http":
            out.detail = f"GET {url}: the answer is not HTTP"
            out.add(
                self.finding(
                    "health.bad_body",
                    Level.WARNING,
                    f"{url} answered, but not in HTTP: another kind of server holds the port",
                    {"reason": "not HTTP", "first_bytes": _printable(obs.first_bytes), "url": url},
                )
            )
            return
        if obs.outcome != "answered" or obs.answer is None:
            out.detail = f"GET {url}: {obs.reason}"
            out.add(
                self.finding(
                    "health.http_error",
                    Level.ERROR,
                    f"{url}: {obs.reason}",
                    {"status_code": None, "reason": obs.reason, "url": url},
                )
            )
            return
        self._answer_findings(obs, obs.answer, out)

    def _answer_findings(
        self, obs: HealthObservation, answer: HealthAnswer, out: ProbeOutput
    ) -> None:
        code = answer.status_code
        out.detail = f"GET {obs.url} -> {code} {answer.state.value} in {obs.latency_ms:g} ms"
        if obs.body_error:
            out.add(
                self.finding(
                    "health.bad_body",
                    Level.WARNING,
                    f"HTTP {code}: {obs.body_error}",
                    {"reason": obs.body_error, "status_code": code},
                )
            )
            return
        state = answer.state
        if state is HealthState.READY:
            out.add(
                self.finding(
                    "health.ok",
                    Level.OK,
                    f"ready: HTTP {code} in {obs.latency_ms:g} ms",
                    {
                        "status_code": code,
                        "latency_ms": obs.latency_ms,
                        "body": dict(answer.fields),
                    },
                )
            )
        elif state is HealthState.LOADING:
            out.add(
                self.finding(
                    "health.loading",
                    Level.WARNING,
                    f"the engine says it is still loading ({answer.reason})",
                    {"status_code": code, "reason": answer.reason},
                )
            )
        elif state is HealthState.OVERLOADED:
            out.add(
                self.finding(
                    "health.overloaded",
                    Level.WARNING,
                    f"the engine is at capacity ({answer.reason})",
                    {"status_code": code, "status": answer.body_status or answer.reason},
                )
            )
        elif state is HealthState.MODEL_NOT_LOADED:
            out.add(
                self.finding(
                    "health.model_not_loaded",
                    Level.ERROR,
                    "the engine answers but has no model loaded",
                    {"status_code": code},
                )
            )
        elif state is HealthState.HTTP_ERROR and code in (401, 403):
            out.add(
                self.finding(
                    "health.auth_required",
                    Level.ERROR,
                    f"the health endpoint wants a key the request did not send ({answer.reason})",
                    {"status_code": code, "reason": answer.reason, "url": obs.url},
                )
            )
        elif state is HealthState.HTTP_ERROR:
            out.add(
                self.finding(
                    "health.http_error",
                    Level.ERROR,
                    f"the health endpoint answered {answer.reason}",
                    {"status_code": code, "reason": answer.reason},
                )
            )
        else:
            # BAD_BODY and SHUTTING_DOWN: the body does not say "ready" (no finding id of its own
            # for shutting down; its status value is in the data).
            reason = answer.reason
            if obs.truncated:
                reason = f"oversized body (more than {MAX_BODY_BYTES // 1024} KiB); {reason}"
            out.add(
                self.finding(
                    "health.bad_body",
                    Level.WARNING,
                    f"HTTP {code}, but {reason}",
                    {"reason": reason, "status_code": code, "status": answer.body_status},
                )
            )


def _printable(raw: bytes) -> str:
    return raw[:64].decode("ascii", errors="replace").replace("\ufffd", "?")
