"""Build each failure exsa-doctor diagnoses for real, on this machine, and tear it down again.

Every builder starts real processes (the stand-in engine, a foreign listener, a lock holder, an
orphan left by a launcher that exits), on a free port it found by binding port 0, in a temporary
folder the returned `Scenario` owns. It waits, polling with a deadline, until the failure has
really happened (the log shows the bind failure, the engine blocks in flock, ...), so the
diagnosis that follows sees the failure and not a half-built state.

`Scenario.cleanup()` stops every process the builder started, by PID (SIGTERM, wait, SIGKILL),
reaps its own children and removes the folder. Used by `exsa-doctor demo` and by the scenario
tests; nothing here prints (progress goes through an optional callback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

HOST = "127.0.0.1"
STOP_WAIT_S = 3.0
Notify = Callable[[str], None]


class ScenarioError(RuntimeError):
    """A scenario could not reach its failure state; the message says which and shows the log."""


@dataclass(frozen=True)
class _Started:
    pid: int
    create_time: float | None
    popen: subprocess.Popen[bytes] | None  # None: not our child (an orphan)
    role: str


@dataclass
class Scenario:
    """A failure built for real: where to look, what was started, and how to undo it."""

    name: str
    title: str
    workdir: Path
    port: int
    model: Path | None
    log: Path | None
    url: str = ""
    host: str = HOST
    failed_at: float | None = None  # when the simulated client's request failed (epoch s)
    watch_s: float = 0.0  # how long a diagnosis should watch to see this failure
    target_pids: tuple[int, ...] = ()  # PIDs a user would name with --pid (empty: none)
    extra: dict[str, Any] = field(default_factory=dict)
    _started: list[_Started] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)
    _cleaned: bool = False

    def __post_init__(self) -> None:
        if not self.url:
            self.url = f"http://{self.host}:{self.port}"

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process this scenario started (some may have exited already)."""
        return tuple(s.pid for s in self._started)

    def pid_of(self, role: str) -> int:
        for s in self._started:
            if s.role == role:
                return s.pid
        raise KeyError(role)

    def cleanup(self) -> None:
        """Stop every process started here, newest first, by PID; reap; remove the folder."""
        if self._cleaned:
            return
        self._cleaned = True
        for started in reversed(self._started):
            _stop(started)
        for fh in self._files:
            with contextlib.suppress(OSError):
                fh.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- used by the builders -------------------------------------------------------------

    def _track(self, popen: subprocess.Popen[bytes], role: str) -> subprocess.Popen[bytes]:
        self._started.append(_Started(popen.pid, _create_time(popen.pid), popen, role))
        return popen

    def _track_orphan(self, pid: int, role: str) -> None:
        self._started.append(_Started(pid, _create_time(pid), None, role))

    def _open_log(self, path: Path) -> IO[bytes]:
        fh = open(path, "ab")  # noqa: SIM115 - closed in cleanup, after the process is gone
        self._files.append(fh)
        return fh


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(started: _Started) -> psutil.Process | None:
    """The process if it is still the one we started (a PID can be reused), else None."""
    try:
        proc = psutil.Process(started.pid)
        if started.create_time is not None and abs(proc.create_time() - started.create_time) > 0.5:
            return None
        return proc
    except psutil.Error:
        return None


def _stop(started: _Started) -> None:
    if started.popen is not None:
        popen = started.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(STOP_WAIT_S)
        for pipe in (popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        return
    # An orphan is not our child: we cannot reap it, only signal it and watch it go.
    proc = _same_process(started)
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
        if _gone_within(proc, STOP_WAIT_S):
            return


def _gone_within(proc: psutil.Process, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True  # dead; its new parent reaps it (or never does: engines.md)
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------ helpers


def free_port(host: str = HOST) -> int:
    """A port nobody uses right now: bind port 0 and let the kernel choose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll `check` until true; past `timeout` raise ScenarioError naming `what`."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout:g} s waiting for {what}{_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _tail(log: Path | None, lines: int = 12) -> str:
    if log is None:
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 8192))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n  log tail:\n    " + "\n    ".join(text.splitlines()[-lines:])


def log_contains(log: Path, needle: str) -> bool:
    try:
        with open(log, "rb") as fh:
            return needle.encode() in fh.read(4 << 20)
    except OSError:
        return False


def connection_refused(host: str, port: int) -> bool:
    """True when a TCP connect to host:port is refused (what a client sees while it loads)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def health_status(host: str, port: int, timeout: float = 1.0) -> str | None:
    """The engine's `status` field from GET /v1/health, or None when it does not answer."""
    import http.client
    import json

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/v1/health")
        resp = conn.getresponse()
        body = json.loads(resp.read(65536) or b"null")
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


def client_generate(host: str, port: int, timeout: float = 5.0) -> tuple[int, int]:
    """One client generation request: (HTTP status, tokens received). Bounded in time and size."""
    import http.client
    import json

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = json.dumps({"prompt": "Hello", "sampling_params": {"max_tokens": 8}})
    try:
        conn.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise ScenarioError(f"the client's generation request failed: {exc}") from None
    finally:
        conn.close()
    tokens = 0
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith("data:"):
            with contextlib.suppress(ValueError, AttributeError):
                event = json.loads(line[5:])
                tokens += 1 if event.get("token") else 0
    return resp.status, tokens


def _exited(popen: subprocess.Popen[bytes]) -> bool:
    return popen.poll() is not None


def _lock_waiters(path: Path) -> set[int]:
    """PIDs waiting (`->` lines of /proc/locks) for a lock on `path`'s inode (Linux)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return set()
    waiters: set[int] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7 or parts[1] != "->":
            continue
        try:
            pid = int(parts[5])
            _maj, _min, ino = parts[6].split(":")
        except ValueError:
            continue
        if int(ino) == st.st_ino:
            waiters.add(pid)
    return waiters


def _cpu_time(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


# ------------------------------------------------------------------------------ builders


def _new(name: str, title: str, *, model: bool = True, truncate: bool = False) -> Scenario:
    workdir = Path(tempfile.mkdtemp(prefix=f"exsa-scenario-{name}-"))
    model_path = workdir / "model.gguf"
    try:
        if model:
            from exsa_doctor.demo.standin.ggufmake import write_gguf

            size = write_gguf(model_path)
            if truncate:
                write_gguf(model_path, truncate_to=size * 2 // 3)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Scenario(
        name=name,
        title=title,
        workdir=workdir,
        port=free_port(),
        model=model_path,
        log=workdir / "engine.log",
    )


def start_engine(
    sc: Scenario,
    *,
    mode: str = "ok",
    load_s: float = 0.2,
    port: int | None = None,
    log: Path | None = None,
    model: Path | None = None,
    role: str = "engine",
) -> subprocess.Popen[bytes]:
    """Start the stand-in engine as our child, its stdout and stderr appended to the log."""
    model_path = model or sc.model
    log_path = log or sc.log
    assert model_path is not None and log_path is not None
    env = _engine_env(model_path, port or sc.port)
    out = sc._open_log(log_path)
    popen = subprocess.Popen(
        _engine_argv(mode, load_s),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=sc.workdir,
        env=env,
    )
    return sc._track(popen, role)


def _engine_env(model: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXSA_")}
    env.update({"MODEL_PATH": str(model), "HOST": HOST, "PORT": str(port)})
    return env


def _engine_argv(mode: str, load_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exsa_doctor.demo.standin",
        "--mode",
        mode,
        "--load-seconds",
        f"{load_s:g}",
    ]


def _python(sc: Scenario, code: str, role: str, *args: str) -> subprocess.Popen[bytes]:
    """A small helper process (listener, lock holder, mapper) that reports 'ready' on stdout."""
    popen = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=sc.workdir,
    )
    sc._track(popen, role)
    return popen


def _await_ready_line(popen: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    """Wait for the helper's 'ready' line (select with a deadline: never block forever)."""
    import selectors

    assert popen.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise ScenarioError(f"timed out after {timeout:g} s waiting for {what}")
        line = popen.stdout.readline()
    finally:
        sel.close()
    if not line.startswith(b"ready"):
        raise ScenarioError(f"{what} did not start (exit {popen.poll()}): {line[:200]!r}")


_LISTENER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"HTTP/1.0 404 Not Found\\r\\nContent-Length: 0\\r\\n\\r\\n")
    c.close()
"""

_LOCK_HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "rb")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

_MAPPER = """
import mmap, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
m[: len(m)]  # touch every page, as a loaded engine would
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

_LAUNCHER = """
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)
print(p.pid, flush=True)
"""


def _wait_fail(sc: Scenario, popen: subprocess.Popen[bytes], needle: str, timeout: float) -> None:
    assert sc.log is not None
    log = sc.log
    wait_until(
        lambda: _exited(popen) and log_contains(log, needle),
        timeout,
        f"the engine to exit with '{needle}' in its log",
        log,
    )


def _start_failing(sc: Scenario, needle: str, mode: str = "ok") -> None:
    """Start the engine and wait until it has exited with `needle` in its log."""
    engine = start_engine(sc, mode=mode)
    sc.extra["engine_pid"] = engine.pid
    _wait_fail(sc, engine, needle, 20.0)
    sc.failed_at = time.time()


def _start_answering(
    sc: Scenario, mode: str, health: str, expected: tuple[int, int | None]
) -> None:
    """Start the engine, wait for its health route to say `health`, then have a client's
    generation get `expected` (status, tokens; tokens None = any); that moment is the failure."""
    engine = start_engine(sc, mode=mode)
    sc.extra["engine_pid"] = engine.pid
    _wait_healthy(sc, status=health)
    status, tokens = client_generate(sc.host, sc.port)
    if (status, tokens if expected[1] is not None else None) != expected:
        raise ScenarioError(f"expected a generation of {expected}, got {status}, {tokens}")
    sc.failed_at = time.time()


def _wait_healthy(
    sc: Scenario, timeout: float = 20.0, port: int | None = None, status: str = "healthy"
) -> None:
    p = port or sc.port
    wait_until(
        lambda: health_status(sc.host, p) == status,
        timeout,
        f"the engine on port {p} to report {status!r}",
        sc.log,
    )


@contextlib.contextmanager
def cleanup_on_error(sc: Scenario) -> Iterator[Scenario]:
    """Stop everything the half-built scenario started if building it fails or is interrupted."""
    try:
        yield sc
    except BaseException:
        sc.cleanup()
        raise


def build_healthy(notify: Notify | None = None) -> Scenario:
    sc = _new("healthy", "A healthy engine that loaded and serves")
    with cleanup_on_error(sc):
        _say(notify, f"starting the stand-in engine on port {sc.port}")
        engine = start_engine(sc)
        sc.extra["engine_pid"] = engine.pid
        _wait_healthy(sc)
    return sc


def build_race(notify: Notify | None = None, load_s: float = 6.0) -> Scenario:
    sc = _new("race", "The client asked 0.5 s after start; the model takes ~6 s to load")
    with cleanup_on_error(sc):
        _say(notify, f"starting the engine in the background on port {sc.port} ({load_s:g} s load)")
        engine = start_engine(sc, load_s=load_s)
        assert sc.log is not None
        log = sc.log
        wait_until(
            lambda: log_contains(log, "Model validation passed"),
            10.0,
            "the engine to start loading",
            log,
        )
        # The bug under study: the client's fixed, too-short sleep after starting the engine.
        time.sleep(0.5)
        _say(notify, "client request after 0.5 s ...")
        if not connection_refused(sc.host, sc.port):
            raise ScenarioError("the client's early request was not refused" + _tail(log))
        sc.failed_at = time.time()
        sc.extra["engine_pid"] = engine.pid
        _say(notify, "... connection refused (the engine is still loading)")
    return sc


def build_port_in_use(notify: Notify | None = None) -> Scenario:
    sc = _new("port-in-use", "A foreign program holds the port; the engine cannot bind")
    with cleanup_on_error(sc):
        _say(notify, f"a foreign (non-engine) program listens on port {sc.port}")
        squatter = _python(sc, _LISTENER, "squatter", str(sc.port))
        _await_ready_line(squatter, "the squatter to listen")
        sc.extra["squatter_pid"] = squatter.pid
        _say(notify, "starting the engine on the same port")
        _start_failing(sc, "Failed to bind")
    return sc


def build_stale_instance(notify: Notify | None = None) -> Scenario:
    sc = _new(
        "stale-instance",
        "An earlier engine, orphaned by its launcher, still serves; the new one cannot bind",
    )
    with cleanup_on_error(sc):
        assert sc.model is not None
        stale_log = sc.workdir / "stale-engine.log"
        _say(notify, f"a launcher starts an engine on port {sc.port} and exits (orphaning it)")
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(stale_log), *_engine_argv("ok", 0.2)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=sc.workdir,
            env=_engine_env(sc.model, sc.port),
        )
        sc._track(launcher, "launcher")
        try:
            out, _ = launcher.communicate(timeout=15.0)
        except subprocess.TimeoutExpired:
            raise ScenarioError("the launcher did not exit within 15 s") from None
        try:
            stale_pid = int(out.split()[0])
        except (IndexError, ValueError):
            raise ScenarioError(f"the launcher did not report its child: {out[:200]!r}") from None
        sc._track_orphan(stale_pid, "stale-engine")
        sc.extra["stale_pid"] = stale_pid
        sc.extra["stale_log"] = str(stale_log)
        _wait_healthy(sc)
        _say(notify, f"the orphaned engine (PID {stale_pid}) serves; starting a new engine")
        _start_failing(sc, "Failed to bind")
    return sc


def build_model_lock(notify: Notify | None = None) -> Scenario:
    sc = _new("model-lock", "Another process holds an exclusive flock on the model")
    with cleanup_on_error(sc):
        assert sc.model is not None
        model = sc.model
        _say(notify, "a holder process takes an exclusive flock on the model")
        holder = _python(sc, _LOCK_HOLDER, "lock-holder", str(model))
        _await_ready_line(holder, "the lock holder to take its lock")
        sc.extra["holder_pid"] = holder.pid
        _say(notify, f"starting the engine (it waits for a shared lock) on port {sc.port}")
        engine = start_engine(sc, mode="flock")
        sc.extra["engine_pid"] = engine.pid
        if os.path.exists("/proc/locks"):
            wait_until(
                lambda: engine.pid in _lock_waiters(model),
                15.0,
                "the engine to block on the lock",
                sc.log,
            )
        else:  # macOS: no lock table to read; the log line before the lock is all we have
            log = sc.log
            assert log is not None
            wait_until(lambda: log_contains(log, "Model name:"), 15.0, "the engine to start", log)
        sc.watch_s = 1.5
        if not connection_refused(sc.host, sc.port):
            raise ScenarioError("the engine's port answered although it should be blocked")
        sc.failed_at = time.time()
    return sc


def build_hung(notify: Notify | None = None) -> Scenario:
    sc = _new("hung", "The engine stops making progress while loading")
    with cleanup_on_error(sc):
        _say(notify, f"starting an engine that hangs during its load, port {sc.port}")
        engine = start_engine(sc, mode="hang", load_s=0.3)
        sc.extra["engine_pid"] = engine.pid
        assert sc.log is not None
        log = sc.log
        wait_until(
            lambda: log_contains(log, "llama_model_loader: loaded meta data"),
            15.0,
            "the engine to start loading",
            log,
        )
        _wait_cpu_still(engine.pid, log)
        sc.watch_s = 2.0
        sc.failed_at = time.time()
    return sc


def _wait_cpu_still(pid: int, log: Path, still_s: float = 0.4, timeout: float = 15.0) -> None:
    """Wait until the process's CPU time stops growing for `still_s` (it reached its hang)."""
    last: list[float | None] = [None]
    since = [time.monotonic()]

    def still() -> bool:
        now_cpu = _cpu_time(pid)
        if now_cpu is None:
            raise ScenarioError("the engine exited instead of hanging" + _tail(log))
        if now_cpu != last[0]:
            last[0] = now_cpu
            since[0] = time.monotonic()
            return False
        return time.monotonic() - since[0] >= still_s

    wait_until(still, timeout, "the engine to stop making progress", log)


def build_corrupt_model(notify: Notify | None = None) -> Scenario:
    sc = _new(
        "corrupt-model", "The model file is cut short (an interrupted download)", truncate=True
    )
    with cleanup_on_error(sc):
        _say(notify, f"a truncated GGUF at {sc.model}; starting the engine")
        _start_failing(sc, "Failed to initialize inference engine")
    return sc


def build_missing_model(notify: Notify | None = None) -> Scenario:
    sc = _new("missing-model", "MODEL_PATH points to a file that does not exist", model=False)
    with cleanup_on_error(sc):
        sc.model = sc.workdir / "models" / "missing.gguf"
        _say(notify, f"starting the engine with MODEL_PATH={sc.model} (no such file)")
        _start_failing(sc, "Model validation failed")
    return sc


def build_zero_tokens(notify: Notify | None = None) -> Scenario:
    sc = _new("zero-tokens", "The engine is healthy but generates zero tokens")
    with cleanup_on_error(sc):
        _say(notify, f"starting an engine whose streams carry no tokens, port {sc.port}")
        _start_answering(sc, "zero-tokens", "healthy", (200, 0))  # a stream without tokens
        _say(notify, "a client's generation request got a stream with zero tokens")
    return sc


def build_wrong_port(notify: Notify | None = None) -> Scenario:
    sc = _new("wrong-port", "The engine listens on another port than the client uses")
    with cleanup_on_error(sc):
        engine_port = free_port()
        while engine_port == sc.port:
            engine_port = free_port()
        _say(notify, f"engine on port {engine_port}; the client uses port {sc.port}")
        engine = start_engine(sc, port=engine_port)
        sc.extra["engine_pid"] = engine.pid
        sc.extra["engine_port"] = engine_port
        _wait_healthy(sc, port=engine_port)
        if not connection_refused(sc.host, sc.port):
            raise ScenarioError(f"port {sc.port} answered; it should be closed")
        sc.failed_at = time.time()
    return sc


def build_mmap(notify: Notify | None = None) -> Scenario:
    sc = _new("mmap", "Mapping the model fails (the engine runs out of address space)")
    with cleanup_on_error(sc):
        assert sc.model is not None
        _say(notify, "another process maps the model")
        mapper = _python(sc, _MAPPER, "mapper", str(sc.model))
        _await_ready_line(mapper, "the mapper to map the model")
        sc.extra["mapper_pid"] = mapper.pid
        _say(notify, "starting an engine whose mmap fails (its own RLIMIT_AS is too small)")
        _start_failing(sc, "Failed to initialize inference engine", mode="mmap-fail")
    return sc


def build_oom(notify: Notify | None = None) -> Scenario:
    sc = _new("oom", "Allocating the KV cache fails: out of memory")
    with cleanup_on_error(sc):
        _say(notify, "starting an engine whose KV-cache allocation fails (RLIMIT_AS)")
        _start_failing(sc, "Failed to initialize inference engine", mode="oom")
    return sc


def build_overloaded(notify: Notify | None = None) -> Scenario:
    sc = _new("overloaded", "The engine is up but its queue is full")
    with cleanup_on_error(sc):
        _say(notify, f"starting an engine at capacity on port {sc.port}")
        _start_answering(sc, "overloaded", "overloaded", (503, None))  # 503 at capacity
        _say(notify, "a client's generation request got 503 Server is at capacity")
    return sc


def build_engine_not_running(notify: Notify | None = None) -> Scenario:
    sc = _new("engine-not-running", "No engine runs; its log says it shut down")
    with cleanup_on_error(sc):
        _say(notify, f"running an engine on port {sc.port}, then stopping it")
        engine = start_engine(sc)
        _wait_healthy(sc)
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(10.0)
        except subprocess.TimeoutExpired:
            raise ScenarioError("the engine did not stop on SIGTERM" + _tail(sc.log)) from None
        sc.extra["engine_pid"] = engine.pid
        # The user knows the PID they started (the seed's "PID Created: 17939").
        sc.target_pids = (engine.pid,)
        if not connection_refused(sc.host, sc.port):
            raise ScenarioError(f"port {sc.port} still answers after the engine stopped")
        sc.failed_at = time.time()
    return sc


def _say(notify: Notify | None, message: str) -> None:
    if notify is not None:
        notify(message)


BUILDERS: dict[str, Callable[..., Scenario]] = {
    "race": build_race,
    "healthy": build_healthy,
    "port-in-use": build_port_in_use,
    "stale-instance": build_stale_instance,
    "model-lock": build_model_lock,
    "hung": build_hung,
    "corrupt-model": build_corrupt_model,
    "missing-model": build_missing_model,
    "zero-tokens": build_zero_tokens,
    "wrong-port": build_wrong_port,
    "mmap": build_mmap,
    "oom": build_oom,
    "overloaded": build_overloaded,
    "engine-not-running": build_engine_not_running,
}

# The cause each scenario is built to produce (None: no cause, a healthy engine).
EXPECTED_CAUSE: dict[str, str | None] = {
    "race": "race-condition",
    "healthy": None,
    "port-in-use": "port-in-use",
    "stale-instance": "port-in-use",
    "model-lock": "model-file-lock",
    "hung": "hung-during-load",
    "corrupt-model": "model-missing-or-invalid",
    "missing-model": "model-missing-or-invalid",
    "zero-tokens": "zero-token-generation",
    "wrong-port": "wrong-address",
    "mmap": "mmap-conflict",
    "oom": "out-of-memory",
    "overloaded": "overloaded",
    "engine-not-running": "engine-not-running",
}


def names() -> tuple[str, ...]:
    return tuple(BUILDERS)


def build(name: str, notify: Notify | None = None) -> Scenario:
    """Build the named scenario; KeyError for an unknown name."""
    return BUILDERS[name](notify)


@contextlib.contextmanager
def scenario(name: str, notify: Notify | None = None) -> Iterator[Scenario]:
    """`with scenario("race") as sc:` builds it and always cleans up."""
    sc = build(name, notify)
    try:
        yield sc
    finally:
        sc.cleanup()
