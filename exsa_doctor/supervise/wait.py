"""`exsa-doctor wait`: return the moment the engine is ready, or say why it never will be.

Ready means what the engine's profile says (`parsers.health.classify_health`): exsa-engine's
`/v1/health` 200 with status `healthy`; llama-server's 503 "Loading model" means keep waiting.

How it waits, cheaply and promptly:

- While the port is closed: one try every `interval_s` (30 ms: half of it is the median delay,
  well inside the 30 ms budget once `wait`'s own exit is added). For a loopback target on Linux
  a try first asks the kernel's socket table (`ListenWatch`, sock_diag netlink) whether anything
  listens on the port, which costs about half of a refused TCP connect; otherwise, or when it
  says yes, a plain TCP connect. No HTTP client is involved while the port is closed. Measured
  on the 2-core test VM: about 1.0 % of a core per second of waiting, `wait-on` 1.4 % (defaults)
  and 4.8 % (`--interval 50`).
- Once a connect succeeds: one HTTP GET of the health path over that very socket (the bounded
  exchange the probes use, no extra connect); while the answer is "not ready yet", a GET every
  `http_interval_s`.
- The engine process is watched with a pidfd where the OS has one (Linux): the sleep between
  attempts is a `select` on it, so an engine that exits wakes us at once, for no CPU.
- Every `watched.SAMPLE_S` the engine's CPU time, bytes read, resident memory and log size are
  sampled, so a timeout can say whether the load was still moving (slow) or not (hung).

`wait_ready` does only this and reports phase changes through a `Reporter`. Its pieces live
beside it: `transport` (how it asks), `watched` (the processes and their progress), `report` (what
a person sees) and `explain` (what a failed wait means); `api.wait` diagnoses a failed wait.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from exsa_doctor.oslayer.procs import output_file_of
from exsa_doctor.parsers.health import HealthAnswer, HealthState, classify_health
from exsa_doctor.profiles import ProfileError, all_builtin, load_builtin
from exsa_doctor.supervise.report import Reporter, SilentReporter
from exsa_doctor.supervise.signals import Child, exit_fd, fd_ready
from exsa_doctor.supervise.transport import ListenWatch, get_health, resolve, try_connect
from exsa_doctor.supervise.watched import (
    Progress,
    ProgressSampler,
    Watched,
    engines_for,
    has_exited,
    watch_pid,
)
from exsa_doctor.target import Target

DEFAULT_INTERVAL_S = 0.03
DEFAULT_HTTP_INTERVAL_S = 0.02
_HTTP_TIMEOUT_S = 5.0
_RESCAN_FIRST_S = 1.0
_RESCAN_MAX_S = 10.0
_SCAN_BUDGET_S = 0.5
_CONNECT_TIMEOUT_S = 0.25  # remote hosts only: a local refusal is immediate
_EXIT_POLL_S = 0.1  # without pidfd: how often liveness is checked


class Outcome(str, enum.Enum):
    """How a wait ended."""

    READY = "ready"
    EXITED = "exited"
    TIMEOUT = "timeout"


@dataclass
class WaitResult:
    """What the wait saw and how it ended."""

    outcome: Outcome
    elapsed_s: float
    url: str
    phases: list[tuple[float, str]] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    last_answer: HealthAnswer | None = None
    last_error: str = ""
    port_opened_at: float | None = None
    progress: Progress = field(default_factory=Progress)
    connects: int = 0
    requests: int = 0
    cpu_s: float = 0.0  # our own CPU time while waiting
    # the target as the wait ended: its profile may have been re-decided from what answered
    target: Target | None = None

    @property
    def exited(self) -> list[Watched]:
        return [w for w in self.watched if w.exited_at is not None]

    def stalled_for(self) -> float | None:
        """Seconds since the engine last made visible progress (None: nothing was watched)."""
        p = self.progress
        if p.samples < 2 or p.first_t is None:
            return None
        since = p.last_progress_t if p.last_progress_t is not None else p.first_t
        return max(0.0, self.elapsed_s - since)

    def looks_hung(self) -> bool:
        """No progress for a good part of the wait (at least 1 s, at most 10 s asked)."""
        stalled = self.stalled_for()
        if stalled is None or self.outcome is not Outcome.TIMEOUT:
            return False
        if not [w for w in self.watched if w.exited_at is None]:
            return False
        return stalled >= max(1.0, min(10.0, 0.5 * self.elapsed_s))


def profile_is_detected(target: Target) -> bool:
    """Whether the target's profile is ours to re-decide (not --profile / --profile-file, not
    customised with --health-path and the like)."""
    return not target.profile_reason.startswith("from --profile") and (
        "customised" not in target.profile.source
    )


# ------------------------------------------------------------------------------ the wait


@dataclass
class WaitRequest:
    """What to wait for and how."""

    target: Target
    timeout_s: float
    pids: tuple[int, ...] = ()
    child: Child | None = None
    logs: tuple[Path, ...] = ()
    auto_detect: bool = True
    interval_s: float = DEFAULT_INTERVAL_S
    http_interval_s: float = DEFAULT_HTTP_INTERVAL_S


class _Waiter:
    """The state of one wait; `run` drives the loop."""

    def __init__(self, req: WaitRequest, reporter: Reporter) -> None:
        self.req = req
        self.reporter = reporter
        self.t0 = time.monotonic()
        self.cpu0 = _own_cpu()
        self.result = WaitResult(Outcome.TIMEOUT, 0.0, req.target.base_url)
        self.addrs = resolve(req.target.host, req.target.port)
        self.listen_watch = ListenWatch(self.addrs)
        self.port_open = False
        self.health = ""
        self.phase_text = ""
        self.next_scan = self.t0
        self.scan_every = _RESCAN_FIRST_S
        self.sampler = ProgressSampler(self.t0)
        self.next_exit_poll = self.t0
        self.logs = [str(p) for p in req.logs]
        self.auto_profile = profile_is_detected(req.target)
        self.result.target = req.target
        self._start_watching()

    # ---------------------------------------------------------------- watching processes
    def _start_watching(self) -> None:
        req = self.req
        if req.child is not None:
            w = watch_pid(req.child.pid, req.target.profile.name)
            w.create_time = req.child.create_time
            self._add(w)
        for pid in dict.fromkeys(req.pids):
            watched = watch_pid(pid, req.target.profile.name)
            self._add(watched)
            if has_exited(watched):
                self._mark_exited(watched)
        if req.child is None and not req.pids and req.auto_detect:
            self._scan()

    def _add(self, w: Watched) -> None:
        if any(x.pid == w.pid for x in self.result.watched):
            return
        w.fd = exit_fd(w.pid)
        if not self.req.logs and w.log is None:
            w.log = output_file_of(w.pid)
            if w.log and w.log not in self.logs:
                self.logs.append(w.log)
        self.result.watched.append(w)

    def _scan(self) -> None:
        now = time.monotonic()
        found = engines_for(self.req.target)
        for w in found:
            self._add(w)
        if found:
            newest = max(found, key=lambda w: w.create_time or 0.0)
            self._redecide(
                newest.profile,
                f"detected from PID {newest.pid}, a {newest.profile} started for port "
                f"{self.req.target.port}",
            )
        self.next_scan = now + self.scan_every
        self.scan_every = min(_RESCAN_MAX_S, self.scan_every * 2)

    # ------------------------------------------------------------- which engine answers
    def _redecide(self, profile_name: str, why: str) -> None:
        """Switch to the profile of the engine that is really there (unless the user chose one):
        "ready" is that engine's meaning of ready."""
        target = self.req.target
        if not self.auto_profile or profile_name == target.profile.name:
            return
        try:
            profile = load_builtin(profile_name)
        except ProfileError:
            return
        new = replace(target, profile=profile, profile_reason=why)
        self.req = replace(self.req, target=new)
        self.result.target = new
        for w in self.result.watched:
            if w.profile == target.profile.name and self.req.child is None:
                w.profile = profile_name
        self.health = ""
        elapsed = round(time.monotonic() - self.t0, 3)
        self.result.phases.append((elapsed, f"engine: {profile_name} ({why})"))
        self.reporter.phase(elapsed, f"engine: {profile_name} ({why})")

    def _identify_listener(self) -> None:
        """The process behind the port, identified the moment the port opens."""
        if not self.auto_profile:
            return
        from exsa_doctor.oslayer.procs import identify
        from exsa_doctor.oslayer.sockets import listeners_of

        port = self.req.target.port
        try:
            scan = listeners_of(port, deadline=time.monotonic() + _SCAN_BUDGET_S)
        except (OSError, ValueError):
            return
        profiles = [self.req.target.profile, *all_builtin()]
        attrs = ["pid", "name", "exe", "cmdline"]
        for lst in scan.listeners:
            if lst.state != "LISTEN" or lst.pid is None:
                continue
            try:
                info = psutil.Process(lst.pid).as_dict(attrs=attrs, ad_value=None)
            except psutil.Error:
                continue
            profile = identify(info, profiles)
            if profile is not None:
                self._redecide(
                    profile.name,
                    f"detected from PID {lst.pid}, a {profile.name} listening on port {port}",
                )
                if (
                    not any(w.pid == lst.pid for w in self.result.watched)
                    and self.req.child is None
                ):
                    self._add(watch_pid(lst.pid, profile.name))
                return

    def _identify_answer(self, status: int, body: bytes, server: str) -> bool:
        """An answer our profile cannot read, but another engine's profile recognises: by the
        `Server` header it sends, or by its own words (a status value or a body pattern, not a
        bare 200). Switch to that engine."""
        if not self.auto_profile:
            return False
        for profile in all_builtin():
            rx = profile.health.server_header_regex
            other = profile.name != self.req.target.profile.name
            if server and rx and other and re.search(rx, server):
                self._redecide(profile.name, f"detected from its Server header {server!r}")
                return True
        for profile in all_builtin():
            spec = profile.health
            if profile.name == self.req.target.profile.name:
                continue
            if not ((spec.status_key and spec.ready_values) or spec.ready_body_regex):
                continue
            state = classify_health(spec, status, body).state
            if state in (HealthState.READY, HealthState.LOADING):
                self._redecide(
                    profile.name, f"detected from its health answer, {profile.name}'s words"
                )
                return True
        return False

    def live(self) -> list[Watched]:
        return [w for w in self.result.watched if w.exited_at is None]

    def _mark_exited(self, w: Watched) -> None:
        w.exited_at = round(time.monotonic() - self.t0, 4)
        if self.req.child is not None and w.pid == self.req.child.pid:
            w.exit_code = self.req.child.exit_status()
        if w.fd is not None:
            with contextlib.suppress(OSError):
                os.close(w.fd)
            w.fd = None

    def check_exits(self, readable: Sequence[int]) -> None:
        now = time.monotonic()
        poll_all = now >= self.next_exit_poll
        if poll_all:
            self.next_exit_poll = now + _EXIT_POLL_S
        for w in self.live():
            if w.fd is not None and w.fd not in readable:
                continue  # the pidfd says it is alive; no need to ask
            if w.fd is None and not poll_all:
                continue
            child = self.req.child
            if child is not None and w.pid == child.pid:
                if child.exit_status() is not None:
                    self._mark_exited(w)
            elif has_exited(w):
                self._mark_exited(w)

    # --------------------------------------------------------------------------- phases
    def set_phase(self) -> None:
        live = self.live()
        if live:
            proc = "process up (PID " + ", ".join(str(w.pid) for w in live) + ")"
        elif self.result.exited:
            last = self.result.exited[-1]
            code = f", exit code {last.exit_code}" if last.exit_code is not None else ""
            proc = f"process exited (PID {last.pid}{code})"
        else:
            proc = "no process"
        parts = [proc, "port open" if self.port_open else "port closed"]
        if self.health:
            parts.append(self.health)
        text = " · ".join(parts)
        if text != self.phase_text:
            self.phase_text = text
            elapsed = round(time.monotonic() - self.t0, 3)
            self.result.phases.append((elapsed, text))
            self.reporter.phase(elapsed, text)

    # ----------------------------------------------------------------------- the probes
    def probe_once(self, deadline: float) -> bool:
        """One connect (and, if it connects, one GET). True when ready."""
        res = self.result
        remaining = max(0.05, deadline - time.monotonic())
        if not self.addrs:
            self.addrs = resolve(self.req.target.host, self.req.target.port)
            if not self.addrs:
                res.last_error = f"cannot resolve {self.req.target.host}"
                return False
        if not self.port_open and self.listen_watch.listening(self.req.target.port) is False:
            res.last_error = "connect: connection refused (nothing listens on the port)"
            return False
        res.connects += 1
        sock, why = try_connect(self.addrs, min(_CONNECT_TIMEOUT_S, remaining))
        if sock is None:
            if self.port_open:
                self.health = ""
            self.port_open = False
            res.last_error = f"connect: {why}"
            return False
        if not self.port_open:
            self.port_open = True
            if res.port_opened_at is None:
                res.port_opened_at = round(time.monotonic() - self.t0, 4)
            path_before = self.req.target.profile.health.path
            self._identify_listener()
            if self.req.target.profile.health.path != path_before:
                # the engine behind the port has another health route: ask that one next
                sock.close()
                return False
        res.requests += 1
        got = get_health(self.req.target, sock, min(_HTTP_TIMEOUT_S, remaining))
        if isinstance(got, str):
            res.last_error = got
            self.health = "no HTTP answer"
            return False
        status, body, server = got
        answer = classify_health(self.req.target.profile.health, status, body)
        res.last_answer = answer
        if answer.state is HealthState.READY:
            self.health = "healthy"
            return True
        if answer.state not in (HealthState.LOADING, HealthState.OVERLOADED) and (
            self._identify_answer(status, body, server)
        ):
            self.health = "engine re-detected"
            return False
        self.health = (
            "loading" if answer.state is HealthState.LOADING else f"not ready ({answer.reason})"
        )
        res.last_error = answer.reason
        return False

    def run(self) -> WaitResult:
        req = self.req
        res = self.result
        deadline = self.t0 + req.timeout_s
        readable: list[int] = []
        try:
            while True:
                self.check_exits(readable)
                searching = req.auto_detect and req.child is None and not req.pids
                if searching and not self.live() and time.monotonic() >= self.next_scan:
                    self._scan()
                if self.probe_once(deadline):
                    res.outcome = Outcome.READY
                    break
                if res.watched and not self.live():
                    # a restart (new instance) is followed, anything else is the end
                    if req.auto_detect and req.child is None and not req.pids:
                        self._scan()
                    if not self.live():
                        res.outcome = Outcome.EXITED
                        break
                self.sampler.sample(self.live(), self.logs, res.progress)
                self.set_phase()
                now = time.monotonic()
                if now >= deadline:
                    res.outcome = Outcome.TIMEOUT
                    break
                pause = req.http_interval_s if self.port_open else req.interval_s
                fds = [w.fd for w in self.live() if w.fd is not None]
                readable = fd_ready(fds, min(pause, deadline - now))
        finally:
            res.elapsed_s = round(time.monotonic() - self.t0, 4)
            res.cpu_s = round(_own_cpu() - self.cpu0, 4)
            res.logs = list(self.logs)
            self.listen_watch.close()
            for w in res.watched:
                if w.fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(w.fd)
                    w.fd = None
        self.set_phase()
        return res


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_ready(req: WaitRequest, reporter: Reporter | None = None) -> WaitResult:
    """Wait until the target is ready, its engine exits, or the timeout passes."""
    rep: Reporter = reporter if reporter is not None else SilentReporter()
    try:
        return _Waiter(req, rep).run()
    finally:
        rep.close()
