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
- Once a connect succeeds: one HTTP GET of the health path over that very socket (`http.client`,
  no extra connect); while the answer is "not ready yet", a GET every `http_interval_s`.
- The engine process is watched with a pidfd where the OS has one (Linux): the sleep between
  attempts is a `select` on it, so an engine that exits wakes us at once, for no CPU.
- Every `_SAMPLE_S` the engine's CPU time, bytes read, resident memory and log size are sampled,
  so a timeout can say whether the load was still moving (slow) or not (hung).

`wait_ready` does only this and reports phase changes through a `Reporter`; `failure_diagnosis`
turns a failed wait into a full diagnosis, with the wait's own observations added as findings.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import http.client
import ipaddress
import os
import re
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

import psutil

from exsa_doctor.model import Diagnosis, Finding, Level
from exsa_doctor.parsers.health import MAX_BODY_BYTES, HealthAnswer, HealthState, classify_health
from exsa_doctor.profiles import Profile, ProfileError, all_builtin, load_builtin
from exsa_doctor.supervise.signals import Child, exit_fd, fd_ready
from exsa_doctor.target import Target

DEFAULT_INTERVAL_S = 0.03
DEFAULT_HTTP_INTERVAL_S = 0.02
_HTTP_TIMEOUT_S = 5.0
_SAMPLE_S = 0.5
_RESCAN_FIRST_S = 1.0
_RESCAN_MAX_S = 10.0
_SCAN_BUDGET_S = 0.5
_CONNECT_TIMEOUT_S = 0.25  # remote hosts only: a local refusal is immediate
_EXIT_POLL_S = 0.1  # without pidfd: how often liveness is checked
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}


class Outcome(str, enum.Enum):
    """How a wait ended."""

    READY = "ready"
    EXITED = "exited"
    TIMEOUT = "timeout"


@dataclass
class Watched:
    """One engine process the wait watches."""

    pid: int
    create_time: float | None
    profile: str
    model: str | None = None
    log: str | None = None
    fd: int | None = None
    exit_code: int | None = None  # known only for our own child
    exited_at: float | None = None  # seconds after the wait started
    cpu_s: float | None = None
    read_bytes: int | None = None
    rss: int | None = None


@dataclass
class Progress:
    """Movement of the load between samples: CPU, bytes read, resident memory, log size."""

    first_t: float | None = None
    last_progress_t: float | None = None
    cpu_s: float = 0.0
    read_bytes: int = 0
    rss_bytes: int = 0
    log_bytes: int = 0
    samples: int = 0


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


class Reporter(Protocol):
    """Where the wait tells its phase changes (the CLI prints them; tests collect them)."""

    def phase(self, elapsed_s: float, text: str) -> None: ...

    def close(self) -> None: ...


class SilentReporter:
    """A reporter that keeps the phases and prints nothing."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def phase(self, elapsed_s: float, text: str) -> None:
        self.lines.append((elapsed_s, text))

    def close(self) -> None:
        return None


class LineReporter:
    """One plain line per phase change (not a TTY: CI logs, pipes)."""

    def __init__(self, stream: IO[str], prefix: str = "exsa-doctor wait") -> None:
        self._stream = stream
        self._prefix = prefix

    def phase(self, elapsed_s: float, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(f"{self._prefix}: {elapsed_s:6.2f} s  {text}\n")
            self._stream.flush()

    def close(self) -> None:
        return None


class LiveReporter:
    """A live status line on a TTY: spinner, elapsed time, phase (Rich, on stderr)."""

    def __init__(self, label: str = "waiting for the engine") -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots")  # one instance, so its frames advance
        self._label = label
        self._phase = "starting"
        self._started = time.monotonic()
        self._console = Console(stderr=True)
        self._live = Live(self, console=self._console, refresh_per_second=8, transient=True)
        self._live.start()

    def __rich__(self) -> Any:
        elapsed = time.monotonic() - self._started
        self._spinner.update(text=f"{self._label}  {elapsed:5.1f} s  {self._phase}")
        return self._spinner

    def phase(self, elapsed_s: float, text: str) -> None:
        self._phase = text

    def close(self) -> None:
        self._live.stop()
        self._console.print(f"{self._label}: {self._phase}", highlight=False)


def reporter_for(stream: IO[str], label: str = "exsa-doctor wait") -> Reporter:
    """A live line on a TTY (unless NO_COLOR/TERM=dumb), plain lines otherwise."""
    isatty = getattr(stream, "isatty", None)
    if (
        isatty is not None
        and isatty()
        and os.environ.get("TERM", "") != "dumb"
        and not os.environ.get("NO_COLOR")
    ):
        try:
            return LiveReporter(label)
        except Exception:  # a terminal Rich cannot drive: fall back to plain lines
            return LineReporter(stream, label)
    return LineReporter(stream, label)


# ------------------------------------------------------------------------- network helpers


def resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, sockaddr) for every address `host` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    seen: list[tuple[int, Any]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return seen


_BLOCKING_CONNECT = sys.platform.startswith("linux")


def _timeval(seconds: float) -> bytes:
    whole = int(max(0.0, seconds))
    micro = int((max(0.0, seconds) - whole) * 1_000_000)
    return struct.pack("@ll", whole, max(micro, 1 if whole == 0 else 0))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def try_connect(
    addrs: Sequence[tuple[int, Any]], timeout_s: float
) -> tuple[socket.socket | None, str]:
    """A connected socket to the first address that accepts, or None and why not."""
    reason = "no address"
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A loopback connect is answered (SYN-ACK or RST) before connect() returns, so on
            # Linux it may block: that saves the poll and the SO_ERROR read, a third of the CPU
            # per try. SO_SNDTIMEO bounds it (Linux applies it to connect) should the SYN be
            # dropped by a full accept queue; the timeout then shows as EINPROGRESS.
            blocking = _BLOCKING_CONNECT and _is_loopback(sockaddr[0])
            if blocking:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout_s))
            sock.setblocking(blocking)
            rc = sock.connect_ex(sockaddr)
            if rc in _IN_PROGRESS and blocking:
                reason = "connect timed out"
                sock.close()
                continue
            if rc in _IN_PROGRESS:
                _, writable, _ = select.select([], [sock], [], timeout_s)
                if not writable:
                    reason = "connect timed out"
                    sock.close()
                    continue
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc == 0:
                return sock, ""
            reason = os.strerror(rc).lower()
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
        sock.close()
    return None, reason


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_LISTEN_MASK = 1 << 10
_NLMSG_HDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBBI")
_MAX_DIAG_SOCKETS = 2000  # past this many listeners a connect is the cheaper question


class ListenWatch:
    """Is anything listening on a local port? Asked of the kernel's socket table (Linux).

    One sock_diag netlink request per question on a socket kept open: no TCP handshake and no
    RST to process, which makes a try about half as expensive as a refused connect. Any trouble
    (no netlink, a huge socket table) switches it off for good and callers connect instead.
    """

    def __init__(self, addrs: Sequence[tuple[int, Any]]) -> None:
        # an IPv4 client is also served by a dual-stack IPv6 listener ("::"), so ask both
        families: list[int] = []
        if any(fam == socket.AF_INET for fam, _ in addrs):
            families.append(socket.AF_INET)
        families.append(socket.AF_INET6)
        self.families = families
        local = all(_is_loopback(str(sa[0])) for _, sa in addrs)
        self.usable = bool(addrs) and local and sys.platform.startswith("linux")
        self._sock: socket.socket | None = None
        self._seq = 0

    def listening(self, port: int) -> bool | None:
        """True/False from the kernel, or None when the kernel cannot be asked."""
        if not self.usable:
            return None
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
                self._sock.settimeout(1.0)
            return any(self._ask(family, port) for family in self.families)
        except (OSError, ValueError):
            self.close()
            self.usable = False
            return None

    def _ask(self, family: int, port: int) -> bool:
        assert self._sock is not None
        self._seq += 1
        req = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, _TCP_LISTEN_MASK) + bytes(48)
        header = _NLMSG_HDR.pack(
            _NLMSG_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, self._seq, 0
        )
        self._sock.send(header + req)
        found = False
        seen = 0
        while True:
            data = self._sock.recv(65536)
            if not data:
                raise OSError("sock_diag answer ended")
            off = 0
            while off + _NLMSG_HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, off)
                if length < _NLMSG_HDR.size:
                    raise ValueError("bad netlink message")
                if seq == self._seq:
                    if kind == _NLMSG_DONE:
                        return found
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag refused")
                    seen += 1
                    # inet_diag_msg: family, state, timer, retrans, then the big-endian sport
                    if struct.unpack_from(">H", data, off + _NLMSG_HDR.size + 4)[0] == port:
                        found = True
                off += (length + 3) & ~3
            if seen > _MAX_DIAG_SOCKETS:
                raise ValueError("too many listening sockets to ask cheaply")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _host_header(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{shown}:{port}"


def get_health(
    target: Target, sock: socket.socket | None, timeout_s: float
) -> tuple[int, bytes, str] | str:
    """One GET of the profile's health path: (status, body, Server header) or an error text.

    Plain HTTP reuses `sock` (already connected by `try_connect`); HTTPS opens its own.
    """
    path = target.profile.health.path
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        import ssl

        if sock is not None:
            sock.close()
        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
        if sock is not None:
            sock.setblocking(True)
            sock.settimeout(timeout_s)
            conn.sock = sock
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", _host_header(target.host, target.port))
        conn.putheader("User-Agent", "exsa-doctor-wait")
        conn.putheader("Accept", "application/json")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read(MAX_BODY_BYTES + 1)
        return resp.status, body, resp.getheader("Server") or ""
    except (OSError, http.client.HTTPException) as exc:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"no HTTP answer: {text}"
    finally:
        conn.close()


# ------------------------------------------------------------------------- process helpers


def _cpu_read_rss(pid: int) -> tuple[float | None, int | None, int | None]:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            cpu: float | None = times.user + times.system
            try:
                io = proc.io_counters()
                # read_chars counts page-cache reads too (a warm load reads no disk at all)
                read: int | None = int(getattr(io, "read_chars", io.read_bytes))
            except (psutil.AccessDenied, AttributeError, NotImplementedError):
                read = None
            rss: int | None = proc.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None, None, None
    return cpu, read, rss


def stdout_log_of(pid: int) -> str | None:
    """The regular file the process writes its stdout (else stderr) to, if any (Linux)."""
    for fd in (1, 2):
        try:
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if path.startswith("/") and not path.startswith(("/dev/", "/proc/")):
            with contextlib.suppress(OSError):
                if Path(path).is_file():
                    return path
    return None


def _model_abs(pid: int, model: str | None) -> str | None:
    if not model or os.path.isabs(model):
        return model
    with contextlib.suppress(psutil.Error, OSError):
        return os.path.join(psutil.Process(pid).cwd(), model)
    return model


def engines_for(target: Target) -> list[Watched]:
    """Live engine instances meant to serve the target's port (by their config or default)."""
    from exsa_doctor.oslayer.procs import find_engines

    profiles: list[Profile] = [
        target.profile,
        *[p for p in all_builtin() if p.name != target.profile.name],
    ]
    defaults = {p.name: p.default_port for p in profiles}
    engines, _ = find_engines(profiles, deadline=time.monotonic() + _SCAN_BUDGET_S)
    found: list[Watched] = []
    for eng in engines:
        if eng.info.state in ("zombie", "dead"):
            continue
        port = eng.configured_port
        if port != target.port and not (port is None and defaults.get(eng.profile) == target.port):
            continue
        found.append(
            Watched(
                pid=eng.pid,
                create_time=eng.info.create_time,
                profile=eng.profile,
                model=_model_abs(eng.pid, eng.model),
            )
        )
    return found


def profile_is_detected(target: Target) -> bool:
    """Whether the target's profile is ours to re-decide (not --profile / --profile-file, not
    customised with --health-path and the like)."""
    return not target.profile_reason.startswith("from --profile") and (
        "customised" not in target.profile.source
    )


def _watch_pid(pid: int, profile: str) -> Watched:
    create: float | None = None
    with contextlib.suppress(psutil.Error):
        create = psutil.Process(pid).create_time()
    return Watched(pid=pid, create_time=create, profile=profile)


def _exited(w: Watched) -> bool:
    try:
        proc = psutil.Process(w.pid)
        if w.create_time is not None and abs(proc.create_time() - w.create_time) > 0.01:
            return True
        return proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


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
        self.next_sample = self.t0
        self.next_exit_poll = self.t0
        self.logs = [str(p) for p in req.logs]
        self.log_sizes: dict[str, int] = {}
        self.auto_profile = profile_is_detected(req.target)
        self.result.target = req.target
        self._start_watching()

    # ---------------------------------------------------------------- watching processes
    def _start_watching(self) -> None:
        req = self.req
        if req.child is not None:
            w = _watch_pid(req.child.pid, req.target.profile.name)
            w.create_time = req.child.create_time
            self._add(w)
        for pid in dict.fromkeys(req.pids):
            watched = _watch_pid(pid, req.target.profile.name)
            self._add(watched)
            if _exited(watched):
                self._mark_exited(watched)
        if req.child is None and not req.pids and req.auto_detect:
            self._scan()

    def _add(self, w: Watched) -> None:
        if any(x.pid == w.pid for x in self.result.watched):
            return
        w.fd = exit_fd(w.pid)
        if not self.req.logs and w.log is None:
            w.log = stdout_log_of(w.pid)
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
                    self._add(_watch_pid(lst.pid, profile.name))
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
            elif _exited(w):
                self._mark_exited(w)

    # ------------------------------------------------------------------------ progress
    def sample(self) -> None:
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.next_sample = now + _SAMPLE_S
        p = self.result.progress
        moved = False
        cpu_total = 0.0
        read_total = 0
        rss_total = 0
        any_proc = False
        for w in self.live():
            cpu, read, rss = _cpu_read_rss(w.pid)
            if cpu is None:
                continue
            any_proc = True
            if w.cpu_s is not None and cpu - w.cpu_s > 0.005:
                moved = True
                cpu_total += cpu - w.cpu_s
            if read is not None and w.read_bytes is not None and read > w.read_bytes:
                moved = True
                read_total += read - w.read_bytes
            if rss is not None and w.rss is not None and rss > w.rss:
                moved = True
                rss_total += rss - w.rss
            w.cpu_s, w.read_bytes, w.rss = cpu, read, rss
        for path in self.logs:
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            any_proc = True
            old = self.log_sizes.get(path)
            if old is not None and size != old:
                moved = True
                p.log_bytes += max(0, size - old)
            self.log_sizes[path] = size
        if not any_proc:
            return
        t = round(now - self.t0, 3)
        if p.first_t is None:
            p.first_t = t
        p.samples += 1
        if moved:
            p.last_progress_t = t
            p.cpu_s += cpu_total
            p.read_bytes += read_total
            p.rss_bytes += rss_total

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
                self.sample()
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


# ----------------------------------------------------------------- explaining a failure


def summary(result: WaitResult) -> str:
    """One or two sentences on how the wait ended, for a person."""
    url = result.url
    if result.outcome is Outcome.READY:
        return f"ready: {url} answered healthy after {result.elapsed_s:.2f} s"
    if result.outcome is Outcome.EXITED:
        gone = result.exited[-1] if result.exited else None
        if gone is None:
            return f"the engine exited after {result.elapsed_s:.2f} s, before {url} was ready"
        code = f" with exit code {gone.exit_code}" if gone.exit_code is not None else ""
        if gone.exit_code is not None and gone.exit_code < 0:
            code = f", killed by signal {-gone.exit_code}"
        return (
            f"the engine (PID {gone.pid}) exited{code} {gone.exited_at or 0.0:.2f} s into the "
            f"wait, before {url} was ready"
        )
    head = f"timed out after {result.elapsed_s:.1f} s: {url} never became ready"
    last = f" (last: {result.last_error})" if result.last_error else ""
    stalled = result.stalled_for()
    answer = result.last_answer
    if answer is not None and answer.status_code == 200 and answer.state is HealthState.BAD_BODY:
        profile = result.target.profile.name if result.target is not None else "the profile"
        return (
            f"{head}{last}. It answers HTTP 200, but not in {profile}'s words: is another "
            "engine serving there? Name it with --profile."
        )
    if result.looks_hung() and stalled is not None:
        return (
            f"{head}{last}. The engine looks hung: no CPU time, no reads, no log output for the "
            f"last {stalled:.1f} s, and its port is "
            f"{'open' if result.port_opened_at is not None else 'closed'}."
        )
    if stalled is not None and result.watched:
        return (
            f"{head}{last}. The engine was still making progress (last {stalled:.1f} s ago): "
            f"a slow load, not a hang; give it a longer --timeout."
        )
    if not result.watched:
        return f"{head}{last}. No engine process for this port was found."
    return head + last


def wait_findings(result: WaitResult) -> list[Finding]:
    """The wait's own observations in the probes' vocabulary (docs/findings.md: progress)."""
    out: list[Finding] = []
    p = result.progress
    if len(result.phases) > 1:
        out.append(
            Finding(
                "progress",
                "progress.transitions",
                Level.INFO,
                "phases seen while waiting: " + " -> ".join(t for _, t in result.phases),
                {"transitions": [{"t": t, "phase": text} for t, text in result.phases]},
            )
        )
    stalled = result.stalled_for()
    if result.outcome is not Outcome.TIMEOUT or stalled is None:
        return out
    window = round(result.elapsed_s - (p.first_t or 0.0), 2)
    if result.looks_hung():
        out.append(
            Finding(
                "progress",
                "progress.stalled",
                Level.ERROR,
                f"no CPU, reads, memory growth or log output for the last {stalled:.1f} s "
                f"of a {result.elapsed_s:.1f} s wait; port never became ready",
                {"window_s": round(stalled, 2)},
            )
        )
    elif p.last_progress_t is not None:
        out.append(
            Finding(
                "progress",
                "progress.loading",
                Level.INFO,
                f"still loading when the wait ended: +{p.cpu_s:.2f} s CPU, "
                f"+{p.read_bytes} bytes read, +{p.log_bytes} log bytes",
                {
                    "cpu_s": round(p.cpu_s, 3),
                    "read_bytes": p.read_bytes,
                    "log_bytes": p.log_bytes,
                    "pages": p.rss_bytes // (os.sysconf("SC_PAGE_SIZE") or 4096),
                    "window_s": window,
                },
            )
        )
    return out


def failure_target(target: Target, result: WaitResult) -> Target:
    """The target to diagnose after a failed wait: with the PIDs, logs and model it saw."""
    pids = tuple(dict.fromkeys([*target.pids, *(w.pid for w in result.watched)]))
    logs = target.logs or tuple(Path(p) for p in result.logs)
    new = replace(target, pids=pids, logs=logs)
    seen = next((w for w in result.watched if w.model), None)
    borrowed = new.model_source.startswith("engine PID") and not any(
        new.model_source == f"engine PID {w.pid}" for w in result.watched
    )
    if seen is not None and seen.model and (new.model is None or borrowed):
        new = new.with_model(Path(seen.model), f"engine PID {seen.pid}")
    elif borrowed and result.watched:
        # detection took the model of some other engine; the one we watched may use another
        new = replace(new, model=None, model_source="")
    return new


def failure_diagnosis(target: Target, result: WaitResult) -> Diagnosis:
    """Diagnose what the wait watched; the core scores the wait's own observations in."""
    from exsa_doctor.api import diagnose, wait_observations

    return diagnose(
        failure_target(result.target or target, result), observations=wait_observations(result)
    )


def render_failure(diagnosis: Diagnosis, write: Callable[[str], object]) -> None:
    """The diagnosis as text, through `write` (stderr for `wait` and `run`)."""
    from exsa_doctor.render import render_as

    text = render_as(diagnosis, "text")
    write(text if text.endswith("\n") else text + "\n")


def exit_now_if_program(code: int) -> None:
    """Exit at once, skipping interpreter teardown, when we are the `exsa-doctor` program.

    With Typer, Click and Rich loaded, a normal exit spends 20-40 ms tearing modules down, which
    would be most of `wait`'s readiness latency. Nothing is left to clean up when `wait` ends
    (no files, no children), so the streams are flushed and the process ends. Called from a
    library or a test runner, it does nothing and the caller exits normally.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    ours = (spec is not None and getattr(spec, "name", "") == "exsa_doctor.__main__") or (
        Path(sys.argv[0]).name == "exsa-doctor" if sys.argv else False
    )
    if not ours:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def stderr_write(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(text)
        sys.stderr.flush()
