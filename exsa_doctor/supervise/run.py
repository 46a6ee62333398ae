"""`exsa-doctor run`: start the engine correctly, wait for readiness, run a command, tear down.

1. Preflight, before anything starts: the port is free (a real `bind()` + `listen()` with
   SO_REUSEADDR, as the engines do, so a bound-but-not-listening socket counts as taken); no
   other engine instance is configured for the port, listens on it or has the model; the model
   passes the GGUF header check. A refusal names the owner (PID and command line).
2. `--port auto` picks a free port; the port reaches the engine the way its profile takes it
   (`port_args` appended as arguments, else `port_env` in the environment).
3. The engine starts in its own session and process group, output to a log file, and is waited
   for exactly as `wait` does (its own pidfd: an engine that dies stops the wait at once).
4. `--then CMD` runs through `/bin/sh -c` with EXSA_URL, EXSA_PORT, EXSA_PID; its exit code is
   ours. Without it we stay until the engine exits or we are interrupted.
5. Always: SIGTERM to the engine's group, a grace period, SIGKILL for what is left, then a check
   that no process of the group remains and the port is free again (`signals.stop_group`).
   SIGINT/SIGTERM to us tear down the same way and exit 130/143.

Nothing is written outside `--report-dir` / `--log`: without them the log lives in a temporary
directory that is removed at the end (its tail is printed when start-up fails).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from exsa_doctor.facts import meant_for_port
from exsa_doctor.model import Diagnosis
from exsa_doctor.oslayer.files import same_file
from exsa_doctor.oslayer.types import EngineProcess
from exsa_doctor.profiles import Profile, all_builtin
from exsa_doctor.supervise.explain import summary
from exsa_doctor.supervise.report import render_failure, reporter_for
from exsa_doctor.supervise.signals import (
    DEFAULT_GRACE_S,
    Child,
    GroupStop,
    errno_name,
    exit_fd,
    fd_ready,
    stop_group,
)
from exsa_doctor.supervise.transport import resolve
from exsa_doctor.supervise.wait import Outcome, WaitRequest, WaitResult, wait_ready
from exsa_doctor.target import Target, resolve_target

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_PORT_RELEASE_S = 3.0
_SCAN_BUDGET_S = 2.0


# How a failed start is diagnosed: the core's diagnosis of the target, with what the wait saw
# (None for a preflight refusal). `api` passes its own; the supervisor does not score.
Diagnoser = Callable[[Target, WaitResult | None], Diagnosis]


class RunUsageError(ValueError):
    """Options that cannot work together; the CLI turns it into exit code 2."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; BaseException so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class RunOptions:
    """What `run` was asked to do."""

    argv: list[str]
    port: int | None = None  # None: from the engine's own args/env, else the profile default
    port_auto: bool = False
    host: str | None = None
    then: str | None = None
    ready_timeout_s: float = 60.0
    report_dir: Path | None = None
    log: Path | None = None
    profile: Profile | None = None  # None: identify from the engine's command line
    grace_s: float = DEFAULT_GRACE_S
    diagnosis_timeout_s: float = 10.0


@dataclass
class Problem:
    """One preflight refusal: what is wrong and who is in the way."""

    kind: str  # "port", "engine", "model"
    message: str
    pids: tuple[int, ...] = ()


@dataclass
class _State:
    """What has to be torn down, whatever happens."""

    engine: Child | None = None
    then: Child | None = None
    log_fh: IO[bytes] | None = None
    log_path: Path | None = None
    temp_dir: Path | None = None
    host: str = "127.0.0.1"
    connect_host: str = "127.0.0.1"
    port: int = 0
    stops: list[GroupStop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- utilities


def say(text: str) -> None:
    """A message for the person at the terminal (stderr; stdout belongs to --then)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"exsa-doctor run: {text}\n")
        sys.stderr.flush()


def profile_for_argv(argv: Sequence[str]) -> tuple[Profile, str]:
    """The built-in profile that recognises this command line (exsa-engine when none does)."""
    exe = shutil.which(argv[0]) or argv[0]
    for profile in all_builtin():
        if profile.matches_process(Path(argv[0]).name, exe, list(argv)):
            return profile, f"identified from the engine command {Path(argv[0]).name}"
    fallback = next(p for p in all_builtin() if p.name == "exsa-engine")
    return fallback, "default (command not recognised)"


def free_port(host: str) -> int:
    """A port the kernel says is free on `host` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_check(host: str, port: int) -> OSError | None:
    """Try what the engine will do: bind() and listen() with SO_REUSEADDR. None when it works.

    A socket that is bound but not listening refuses connections, yet this check fails on it
    (Linux lets two SO_REUSEADDR sockets bind while neither listens, so listen() must be tried).
    """
    addrs = resolve(host, port)
    if not addrs:
        return OSError(0, f"cannot resolve {host}")
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(1)
        except OSError as exc:
            return exc
        finally:
            sock.close()
    return None


def connect_host_for(host: str) -> str:
    """The address a client uses to reach a server bound to `host` (wildcards -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host


def _describe_pid(pid: int) -> str:
    from exsa_doctor.oslayer.procs import describe

    info = describe(pid)
    if info is None:
        return f"PID {pid} (exited)"
    cmd = shlex.join(info.cmdline) if info.cmdline else info.name
    user = f", user {info.username}" if info.username else ""
    return f"PID {pid} ({cmd}{user})"


_WILDCARDS = ("0.0.0.0", "::", "")


def _overlaps(host: str, address: str) -> bool:
    """Would a socket on `address` stand in the way of one on `host` (same port)?"""
    if host in _WILDCARDS or address in _WILDCARDS:
        return True
    wanted = {str(sockaddr[0]) for _, sockaddr in resolve(host, 0)} or {host}
    return address in wanted


def port_owners(port: int, host: str | None = None) -> tuple[list[int], list[str]]:
    """PIDs holding `port` (on addresses that overlap `host`, if given) and a line about each.

    Owners hidden by permissions are described by their uid.
    """
    from exsa_doctor.oslayer.sockets import listeners_of

    scan = listeners_of(port, deadline=time.monotonic() + _SCAN_BUDGET_S)
    pids: list[int] = []
    lines: list[str] = []
    for lst in scan.listeners:
        if host is not None and not _overlaps(host, lst.address):
            continue
        where = f"{lst.address}:{lst.port} ({'listening' if lst.state == 'LISTEN' else 'bound'})"
        if lst.pid is None:
            lines.append(f"{where}: owner hidden (uid {lst.uid}); run as root to see it")
        elif lst.pid not in pids:
            pids.append(lst.pid)
            lines.append(f"{where}: {_describe_pid(lst.pid)}")
    return pids, lines


def engine_conflicts(
    port: int, model: str | None, engines: Sequence[EngineProcess]
) -> list[Problem]:
    """Other live engine instances meant for this port or listening on it; and locks on the model.

    Another server mapping the same model read-only is normal (the kernel shares the pages) and
    no refusal: `model_warnings` says so, louder when memory is tight. What stops a start is a
    lock on the model (a writer's flock/fcntl lock): the engine would wait for it.
    """
    from exsa_doctor.oslayer.sockets import listening_ports_of

    live = [e for e in engines if e.info.state not in ("zombie", "dead")]
    defaults = {p.name: p.default_port for p in all_builtin()}
    listening = listening_ports_of(
        [e.pid for e in live], deadline=time.monotonic() + _SCAN_BUDGET_S
    )
    problems: list[Problem] = []
    for eng in live:
        cmd = shlex.join(eng.info.cmdline) or eng.info.name
        on_port = port in {p for _, p in listening.get(eng.pid, [])}
        if on_port or meant_for_port(eng, port, defaults.get(eng.profile)):
            how = "listens on" if on_port else "is configured for"
            problems.append(
                Problem(
                    "engine",
                    f"engine instance PID {eng.pid} ({cmd}) already {how} port {port}",
                    (eng.pid,),
                )
            )
    if model:
        problems.extend(model_lock_problems(model))
    return problems


def model_lock_problems(model: str) -> list[Problem]:
    """Locks held on the model file (the system-wide lock table, one cheap read)."""
    from exsa_doctor.oslayer.files import holders_of

    if not os.path.exists(model):
        return []
    holders = holders_of(model, time.monotonic() + _SCAN_BUDGET_S, pids=[])
    problems: list[Problem] = []
    for lock in holders.locks:
        if lock.blocked or lock.pid is None or lock.pid <= 0 or lock.pid == os.getpid():
            continue
        problems.append(
            Problem(
                "model",
                f"{_describe_pid(lock.pid)} holds a {lock.kind} {lock.mode} lock on the model "
                f"{model}: the engine would wait for it",
                (lock.pid,),
            )
        )
    return problems


def model_warnings(model: str | None, engines: Sequence[EngineProcess]) -> list[str]:
    """Other engines on the same model: context, not a refusal (louder when memory is tight)."""
    if not model:
        return []
    sharing = [
        e
        for e in engines
        if e.info.state not in ("zombie", "dead") and e.model and same_file(e.model, model)
    ]
    if not sharing:
        return []
    names = ", ".join(f"PID {e.pid} ({e.profile})" for e in sharing)
    line = f"the model {model} is also used by {names}; sharing it read-only is fine"
    try:
        import psutil

        size = os.path.getsize(model)
        available = int(psutil.virtual_memory().available)
    except (OSError, psutil.Error):
        return [line]
    if available < size:
        line += (
            f", but available memory ({available // 2**20} MiB) is less than the model "
            f"({size // 2**20} MiB): the two servers may evict each other's pages"
        )
    return [line]


def model_problem(model: str) -> Problem | None:
    """The GGUF check: exists, readable, a GGUF header whose tensor table fits in the file."""
    from exsa_doctor.parsers.gguf import GGUFError, read_gguf_header

    try:
        header = read_gguf_header(model)
    except FileNotFoundError:
        return Problem("model", f"the model {model} does not exist")
    except OSError as exc:
        return Problem("model", f"the model {model} cannot be read: {exc.strerror or exc}")
    except GGUFError as exc:
        return Problem("model", f"the model {model} is not a usable GGUF file: {exc.reason}")
    if header.truncated:
        return Problem(
            "model",
            f"the model {model} is truncated: {header.file_size} bytes, its tensor table "
            f"needs {header.declared_end} ({header.missing_bytes} missing)",
        )
    return None


def preflight(port: int, host: str, model: str | None) -> list[Problem]:
    """Everything that would make the start fail, checked before anything starts."""
    from exsa_doctor.oslayer.procs import find_engines

    problems: list[Problem] = []
    err = bind_check(host, port)
    pids, lines = port_owners(port, host)
    if err is not None:
        owner = "; ".join(lines) if lines else "no owner visible"
        problems.append(
            Problem(
                "port",
                f"port {host}:{port} is taken ({errno_name(err)}: {err.strerror or err}): {owner}",
                tuple(pids),
            )
        )
    elif lines:
        # bound but not listening, with SO_REUSEADDR: our test bind passes, yet the holder will
        # listen later (vLLM binds early) and one of the two servers will lose the port
        problems.append(
            Problem(
                "port",
                f"port {host}:{port} is bound by another socket: {'; '.join(lines)}",
                tuple(pids),
            )
        )
    engines, _ = find_engines(all_builtin(), deadline=time.monotonic() + _SCAN_BUDGET_S)
    named = {p for prob in problems for p in prob.pids}
    for prob in engine_conflicts(port, model, engines):
        if not set(prob.pids) & named or prob.kind != "engine":
            problems.append(prob)
    for line in model_warnings(model, engines):
        say(f"note: {line}")
    if model:
        bad = model_problem(model)
        if bad is not None:
            problems.append(bad)
    return problems


def engine_command(
    profile: Profile, argv: Sequence[str], host: str, port: int, environ: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that give the engine our host and port, the profile's way."""
    args = list(argv)
    env = dict(environ)
    if profile.port_args:
        if profile.port_from({}, args) is None:
            args += [profile.port_args[0], str(port)]
    elif profile.port_env:
        env[profile.port_env] = str(port)
    if profile.host_args:
        if profile.host_from({}, args) is None:
            args += [profile.host_args[0], host]
    elif profile.host_env:
        # Ollama's OLLAMA_HOST carries host and port together (it has no port setting of its own)
        both = not profile.port_env and not profile.port_args
        shown = f"[{host}]" if ":" in host else host
        env[profile.host_env] = f"{shown}:{port}" if both else host
    return args, env


def choose_port_host(opts: RunOptions, profile: Profile) -> tuple[int, str]:
    """The port and host: the options, else the engine's own args/env, else the defaults."""
    env = dict(os.environ)
    own_port = profile.port_from(env if not profile.port_args else {}, opts.argv)
    own_host = profile.host_from(env if not profile.host_args else {}, opts.argv)
    conflict = own_port is not None and opts.port is not None and own_port != opts.port
    if profile.port_args and conflict:
        raise RunUsageError(
            f"--port {opts.port} contradicts the engine's own {profile.port_args[0]} {own_port}"
        )
    if opts.port_auto and profile.port_args and profile.port_from({}, opts.argv) is not None:
        raise RunUsageError(
            f"--port auto cannot replace the engine's own {profile.port_args[0]}; drop one of them"
        )
    host = opts.host or own_host or "127.0.0.1"
    if ":" in host and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if opts.port_auto:
        try:
            return free_port(host), host
        except OSError as exc:
            why = exc.strerror or exc
            raise RunUsageError(f"--host {host}: cannot bind there ({why})") from None
    port = opts.port or own_port or profile.default_port
    return port, host


# --------------------------------------------------------------------------- signals


class SignalGuard:
    """SIGINT/SIGTERM raise `Interrupted` once; inside `critical()` they wait for its end.

    Deferral is done here, in the handler, and not with the signal mask: a child inherits the
    mask, and an engine started with SIGTERM blocked would ignore our SIGTERM at teardown.
    """

    def __init__(self) -> None:
        self.armed = True
        self.depth = 0
        self.pending: int | None = None
        self.later: list[int] = []  # signals that arrived after the first (during teardown)
        self._old: list[tuple[int, Any]] = []

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.armed:
            self.later.append(signum)
            return
        if self.depth:
            self.pending = signum
            return
        self.armed = False
        raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A block a signal must not cut in two (start a child and record it)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.pending is not None and self.armed:
                signum, self.pending, self.armed = self.pending, None, False
                raise Interrupted(signum)

    def disarm(self) -> None:
        """From now on signals are only recorded (teardown must run to its end)."""
        self.armed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set in the main thread; a library caller keeps its own
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old.append((signum, signal.signal(signum, self.handle)))

    def restore(self) -> None:
        for signum, old in self._old:
            signal.signal(signum, old)
        self._old.clear()


# --------------------------------------------------------------------------- the run


class Runner:
    """One `run`: preflight, start, wait, then-command, teardown."""

    def __init__(
        self, opts: RunOptions, write: Callable[[str], None] = say, *, diagnose: Diagnoser
    ) -> None:
        self.opts = opts
        self.say = write
        self.diagnose = diagnose
        self.state = _State()
        if opts.profile is not None:
            self.profile, self.profile_reason = opts.profile, "from --profile"
        else:
            self.profile, self.profile_reason = profile_for_argv(opts.argv)
        self.target: Target | None = None
        self.guard = SignalGuard()
        self.model: str | None = None
        self.diagnosis: Diagnosis | None = None  # the last one made (a failed start's)

    # ------------------------------------------------------------------------ main
    def execute(self) -> int:
        """Run everything; the exit code is --then's, 0/1 for the engine, 130/143 on a signal."""
        code = EXIT_FAILED
        guard = self.guard
        guard.install()
        try:
            try:
                code = self._supervise()
            except Interrupted as exc:
                guard.disarm()
                name = signal.Signals(exc.signum).name
                self.say(f"{name} received: stopping the engine and everything it started")
                code = 128 + exc.signum
            finally:
                guard.disarm()
                teardown_ok = self._teardown()
                if not teardown_ok and code == EXIT_OK:
                    code = EXIT_FAILED
        finally:
            guard.restore()
        return code

    def _supervise(self) -> int:
        engine = self.start()
        if isinstance(engine, int):
            return engine
        if self.opts.then is not None:
            code = self._run_then(self.opts.then, engine)
            if code != EXIT_OK:
                self._report_then_failure(engine, code, failed_at=time.time())
            return code
        return self._stay(engine)

    def start(self) -> Child | int:
        """Preflight, start, wait: the ready engine, or the exit code of a failed start."""
        opts = self.opts
        port, host = choose_port_host(opts, self.profile)
        st = self.state
        st.port = port
        st.host = host
        st.connect_host = connect_host_for(host)
        args, env = engine_command(self.profile, opts.argv, host, port, dict(os.environ))
        self.model = self.profile.model_from(env, args) or env.get("MODEL_PATH") or None
        self.target = self._target(port, st.connect_host)
        problems = preflight(port, host, self.model)
        if problems:
            self.say("preflight refused to start the engine:")
            for prob in problems:
                self.say(f"  - {prob.message}")
            self._diagnose_and_report(self.target, None)
            return EXIT_FAILED
        self._open_log()
        assert st.log_fh is not None and st.log_path is not None
        where = st.log_path if st.temp_dir is None else "temporary (its tail is shown on failure)"
        command = shlex.join(args)
        self.say(f"starting {command} on {host}:{port} ({self.profile.name}); log: {where}")
        try:
            with self.guard.critical():
                popen = subprocess.Popen(
                    args,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=st.log_fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
                st.engine = Child(popen)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise RunUsageError(f"cannot start {args[0]!r}: {exc.strerror or exc}") from None
        engine = st.engine
        result = wait_ready(
            WaitRequest(
                target=self.target,
                timeout_s=opts.ready_timeout_s,
                child=engine,
                logs=(st.log_path,),
                auto_detect=False,
            ),
            reporter_for(sys.stderr, "exsa-doctor run"),
        )
        if result.outcome is not Outcome.READY:
            self.say(summary(result))
            if result.outcome is Outcome.TIMEOUT:
                # still alive: look at it (stack, progress) before it is stopped
                self._diagnose_and_report(self.target, result)
                self._stop_engine()
            else:
                self._stop_engine()  # reaps it, so it shows as exited, not as a zombie
                self._diagnose_and_report(self.target, result)
            self._print_log_tail()
            return EXIT_FAILED
        self.say(
            f"engine ready at {self.target.base_url} (PID {engine.pid}) after "
            f"{result.elapsed_s:.2f} s"
        )
        return engine

    def _target(self, port: int, host: str) -> Target:
        target = resolve_target(
            port=port,
            host=host,
            model=Path(self.model) if self.model else None,
            timeout_s=self.opts.diagnosis_timeout_s,
        )
        return replace(target, profile=self.profile, profile_reason=self.profile_reason)

    # ------------------------------------------------------------------- pieces
    def _open_log(self) -> None:
        st = self.state
        opts = self.opts
        if opts.log is not None:
            path = opts.log
        elif opts.report_dir is not None:
            opts.report_dir.mkdir(parents=True, exist_ok=True)
            path = opts.report_dir / "engine.log"
        else:
            st.temp_dir = Path(tempfile.mkdtemp(prefix="exsa-doctor-run-"))
            path = st.temp_dir / "engine.log"
        try:
            st.log_fh = open(path, "ab")  # noqa: SIM115 - closed in teardown
        except OSError as exc:
            why = exc.strerror or exc
            raise RunUsageError(f"cannot write the engine log {path}: {why}") from None
        st.log_path = path

    def _run_then(self, command: str, engine: Child) -> int:
        st = self.state
        assert self.target is not None
        env = dict(os.environ)
        env.update(
            EXSA_URL=self.target.base_url,
            EXSA_PORT=str(self.target.port),
            EXSA_PID=str(engine.pid),
        )
        with self.guard.critical():
            popen = subprocess.Popen(
                ["/bin/sh", "-c", command], env=env, start_new_session=True, close_fds=True
            )
            st.then = Child(popen)
        then = st.then
        then_fd = exit_fd(then.pid)
        engine_fd = exit_fd(engine.pid)
        engine_noted = False
        try:
            while then.exit_status() is None:
                watch = (then_fd, None if engine_noted else engine_fd)
                fds = [fd for fd in watch if fd is not None]
                fd_ready(fds, 0.5 if fds else 0.05)
                if not engine_noted and engine.exit_status() is not None:
                    engine_noted = True
                    self.say(
                        f"note: the engine (PID {engine.pid}) exited with code "
                        f"{engine.exit_status()} while --then was running"
                    )
        finally:
            for fd in (then_fd, engine_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        status = then.exit_status()
        assert status is not None
        return status if status >= 0 else 128 - status

    def _report_then_failure(self, engine: Child, code: int, failed_at: float) -> None:
        """--then failed: diagnose the engine as it was then (its log, its PID, that moment)."""
        from exsa_doctor.supervise.postmortem import engine_exit, failure_target

        assert self.target is not None
        status = engine.exit_status()
        ended = None if status is None else engine_exit(engine.pid, status)
        if ended is not None:
            self._stop_engine()  # reaps it, so it shows as exited, not as a zombie
            how = f"the engine (PID {engine.pid}) {ended.describe()}"
            note = ended.kernel_note()
            how += f"; {note}" if note else ""
        else:
            how = f"the engine (PID {engine.pid}) is still running"
        self.say(f"--then failed with exit code {code}; {how}. The doctor's diagnosis:")
        target = failure_target(
            self.target, log=self.state.log_path, pid=engine.pid, failed_at=failed_at, ended=ended
        )
        self._diagnose_and_report(target, None)
        self._print_log_tail()

    def reap_engine(self) -> GroupStop | None:
        """Stop the engine's group now (after it exited: reap it); the rest waits for teardown."""
        return self._stop_engine()

    def _stay(self, engine: Child) -> int:
        self.say("staying in the foreground; Ctrl-C stops the engine")
        fd = exit_fd(engine.pid)
        try:
            while engine.exit_status() is None:
                fd_ready([fd] if fd is not None else [], 1.0 if fd is not None else 0.2)
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        status = engine.exit_status()
        if status == 0:
            self.say(f"the engine (PID {engine.pid}) exited with code 0")
            return EXIT_OK
        self.say(f"the engine (PID {engine.pid}) exited with code {status}")
        self._print_log_tail()
        return EXIT_FAILED

    def _stop_engine(self) -> GroupStop | None:
        st = self.state
        if st.engine is None or st.engine.reaped:
            return None
        stop = stop_group(st.engine, self.opts.grace_s)
        st.stops.append(stop)
        return stop

    def _diagnose_and_report(self, target: Target, result: WaitResult | None) -> Diagnosis:
        st = self.state
        if result is None:
            diagnosis = self.diagnose(target, None)
        else:
            logs = (st.log_path,) if st.log_path is not None else ()
            pids = (st.engine.pid,) if st.engine is not None else ()
            diagnosis = self.diagnose(replace(target, logs=logs, pids=pids), result)
        self.diagnosis = diagnosis
        render_failure(diagnosis, sys.stderr.write)
        if self.opts.report_dir is not None:
            self._write_reports(diagnosis, self.opts.report_dir)
        return diagnosis

    def _write_reports(self, diagnosis: Diagnosis, folder: Path) -> None:
        from exsa_doctor.render import render_as

        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.say(f"cannot create --report-dir {folder}: {exc.strerror or exc}")
            return
        written: list[str] = []
        formats = (("json", "report.json"), ("markdown", "report.md"), ("html", "report.html"))
        for fmt, name in formats:
            try:
                text = render_as(diagnosis, fmt)
            except ImportError:
                continue  # a renderer not written yet (html)
            try:
                (folder / name).write_text(text, encoding="utf-8")
            except OSError as exc:
                self.say(f"cannot write {folder / name}: {exc.strerror or exc}")
                continue
            written.append(name)
        if written:
            self.say(f"reports written to {folder}: {', '.join(written)}")

    def _print_log_tail(self) -> None:
        path = self.state.log_path
        if path is None:
            return
        with contextlib.suppress(OSError):
            if self.state.log_fh is not None:
                self.state.log_fh.flush()
        from exsa_doctor.supervise.postmortem import log_tail

        lines = log_tail(path)
        if not lines:
            return
        where = "" if self.state.temp_dir is not None else f" ({path})"
        self.say(f"last {len(lines)} lines of the engine log{where}:")
        with contextlib.suppress(OSError, ValueError):
            for line in lines:
                sys.stderr.write(f"  | {line}\n")
            sys.stderr.flush()

    # ------------------------------------------------------------------ teardown
    def stop(self) -> bool:
        """Tear down whatever was started (idempotent); False when something survived."""
        return self._teardown()

    def _teardown(self) -> bool:
        """Stop --then's group and the engine's group, verify, remove the temp dir."""
        st = self.state
        ok = True
        if st.then is not None and not st.then.reaped:
            then_stop = stop_group(st.then, min(self.opts.grace_s, 2.0))
            if then_stop.survivors:
                ok = False
                self.say(f"--then left processes that survived SIGKILL: {then_stop.survivors}")
        if st.engine is not None:
            engine_stop = self._stop_engine()
            if engine_stop is None and st.stops:
                engine_stop = st.stops[-1]
            if engine_stop is not None:
                ok = self._report_stop(engine_stop) and ok
        if st.log_fh is not None:
            with contextlib.suppress(OSError):
                st.log_fh.close()
        if st.temp_dir is not None:
            shutil.rmtree(st.temp_dir, ignore_errors=True)
        return ok

    def _report_stop(self, stop: GroupStop) -> bool:
        st = self.state
        if stop.already_exited:
            how = "it had already exited; its group was cleared"
        elif stop.sent_kill:
            how = "SIGKILL after the grace period"
        else:
            how = "SIGTERM"
        released = self._port_released()
        if stop.survivors:
            self.say(
                f"teardown: processes of the engine's group survived: "
                f"{', '.join(str(p) for p in stop.survivors)}"
            )
        if not released:
            _pids, lines = port_owners(st.port)
            self.say(
                f"teardown: port {st.port} is still held: {'; '.join(lines) or 'owner not visible'}"
            )
        if not stop.survivors and released:
            self.say(
                f"teardown: engine PID {stop.pid} stopped ({how}, exit code {stop.exit_code}); "
                f"no process of its group remains; port {st.port} is free"
            )
        return not stop.survivors and released

    def _port_released(self) -> bool:
        st = self.state
        deadline = time.monotonic() + _PORT_RELEASE_S
        while True:
            if bind_check(st.host, st.port) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def check_options(opts: RunOptions) -> None:
    """RunUsageError for options that cannot work."""
    if not opts.argv:
        raise RunUsageError("give the engine command after --, e.g. run -- exsa-engine")
    from exsa_doctor.target import UsageError, check_seconds

    try:
        check_seconds("--ready-timeout", opts.ready_timeout_s, 86400)
    except UsageError as exc:
        raise RunUsageError(str(exc)) from None
    if opts.port is not None and not 0 < opts.port < 65536:
        raise RunUsageError("--port must be 1-65535 or auto")
    if opts.report_dir is not None and opts.report_dir.exists() and not opts.report_dir.is_dir():
        raise RunUsageError(f"--report-dir {opts.report_dir} exists and is not a directory")
