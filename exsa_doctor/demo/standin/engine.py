"""A stand-in for exsa-engine: same configuration, start-up order, log lines and HTTP API.

exsa-doctor is tested against real processes. The real engine (Rust + llama.cpp) is not
installable here, so this stdlib-only program behaves like it where the doctor looks
(shared/reference/engines.md): configured by `MODEL_PATH`, `HOST`, `PORT`; logs in the
tracing-subscriber format to stdout; validates the model, **loads it before it binds** (reads
the GGUF file for real through an mmap, so pages become resident and CPU time grows), then
binds and serves `/v1/health`, `/v1/status`, `/v1/models` and `/v1/generate` (SSE).

Failure modes (`EXSA_STANDIN_MODE` or `--mode`) make the failures the doctor diagnoses happen
for real where an OS mechanism exists:
  ok           load for `EXSA_STANDIN_LOAD_S` seconds with real progress, then serve
  hang         make some load progress, then wait forever on a futex; never binds
  model-error  llama.cpp's "tensor ... not within the file bounds" error, exit 1 (a truncated
               file gives the same error in every mode, found by reading the tensor table)
  oom          a real allocation failure: caps its own RLIMIT_AS, then allocates the KV cache
  mmap-fail    a real mmap failure: caps its own RLIMIT_AS below what mapping the model needs
  flock        takes a blocking shared flock on the model before loading (blocks for real while
               another process holds LOCK_EX)
  zero-tokens  serves, but every generation stream carries only the final `done` event
  overloaded   serves, health says "overloaded", generation answers 503 "Server is at capacity"
"""

from __future__ import annotations

import datetime as dt
import errno as errno_mod
import fcntl
import hashlib
import json
import mmap
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, ClassVar

VERSION = "0.1.0"
MODES = (
    "ok",
    "hang",
    "model-error",
    "oom",
    "mmap-fail",
    "flock",
    "zero-tokens",
    "overloaded",
)
DEFAULT_LOAD_S = 0.5
MAX_BODY_BYTES = 1 << 20
MAX_TOKENS_CAP = 256
# Share of each load step spent computing (the rest sleeps): visible CPU growth without hogging
# a core that other processes need.
_CPU_SHARE = 0.25
_STEP_S = 0.1


class StandinError(Exception):
    """A configuration problem the stand-in reports as one line and exit 2."""


# ---------------------------------------------------------------------------------- logging


class Log:
    """tracing-subscriber's default line format, one flushed line per call.

    `2025-11-23T16:55:52.938526Z  INFO exsa_engine: Starting Exsa-Engine v0.1.0`
    """

    def __init__(self, out: IO[str], raw: IO[str]) -> None:
        self._out = out
        self._raw = raw  # llama.cpp writes its own lines, untimestamped, to stderr
        self._lock = threading.Lock()

    def line(self, level: str, message: str) -> None:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock:
            self._out.write(f"{now} {level:>5} exsa_engine: {message}\n")
            self._out.flush()

    def info(self, message: str) -> None:
        self.line("INFO", message)

    def warn(self, message: str) -> None:
        self.line("WARN", message)

    def error(self, message: str) -> None:
        self.line("ERROR", message)

    def llama(self, message: str) -> None:
        with self._lock:
            self._out.flush()
            self._raw.write(message + "\n")
            self._raw.flush()


# ---------------------------------------------------------------------------------- config


# set once from --api-key before the server starts; read by the request handlers
API_KEY: list[str] = [""]


@dataclass(frozen=True)
class Config:
    """Everything the stand-in reads from its environment and flags."""

    model_path: str
    host: str
    port: int
    gpu_layers: int
    context_size: int
    batch_size: int
    max_queue_size: int
    mode: str
    load_s: float


def _int_env(env: Mapping[str, str], key: str, default: int) -> int:
    # exsa-engine ignores values it cannot parse and keeps its default; so do we
    try:
        return int(env.get(key, ""))
    except ValueError:
        return default


def config_from(
    env: Mapping[str, str], *, mode: str | None = None, load_s: float | None = None
) -> Config | None:
    """Config from the environment (flags win); None when MODEL_PATH is unset."""
    model = env.get("MODEL_PATH")
    if model is None:
        return None
    chosen_mode = mode or env.get("EXSA_STANDIN_MODE") or "ok"
    if chosen_mode not in MODES:
        raise StandinError(f"unknown mode {chosen_mode!r} (known: {', '.join(MODES)})")
    if load_s is None:
        raw = env.get("EXSA_STANDIN_LOAD_S", "")
        try:
            load_s = float(raw) if raw else DEFAULT_LOAD_S
        except ValueError:
            raise StandinError(f"EXSA_STANDIN_LOAD_S={raw!r} is not a number of seconds") from None
    if not 0 <= load_s <= 3600:
        raise StandinError("the load time must be between 0 and 3600 seconds")
    port = _int_env(env, "PORT", 3000)
    if not 0 <= port < 65536:
        port = 3000
    ctx = _int_env(env, "CONTEXT_SIZE", 4096)
    return Config(
        model_path=model,
        host=env.get("HOST", "127.0.0.1"),
        port=port,
        gpu_layers=_int_env(env, "GPU_LAYERS", 0),
        context_size=ctx,
        batch_size=_int_env(env, "BATCH_SIZE", ctx),
        max_queue_size=_int_env(env, "MAX_QUEUE_SIZE", 100),
        mode=chosen_mode,
        load_s=load_s,
    )


# ---------------------------------------------------------------------------------- GGUF

# ggml type id -> (elements per block, bytes per block), from ggml's type traits.
_GGML_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    30: (1, 2),
}
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MAX_COUNT = 1 << 20
_MAX_STR = 1 << 24


class LoadError(Exception):
    """A model the loader cannot use; the message is llama.cpp's wording."""


class ContextError(LoadError):
    """The model loaded but its context (KV cache) could not be created."""


@dataclass(frozen=True)
class Tensor:
    name: str
    start: int  # absolute file offset of its data
    nbytes: int


@dataclass(frozen=True)
class Layout:
    version: int
    kv_count: int
    tensors: tuple[Tensor, ...]
    data_offset: int


class _Reader:
    """Sequential little-endian reads from a mapping, bounded by its size."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise LoadError("unexpectedly reached end of file")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        n = self.u64()
        if n > _MAX_STR:
            raise LoadError(f"string length {n} is absurd")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALAR:
            raw = self.take(_SCALAR[vtype])
            return int.from_bytes(raw, "little") if vtype in (4, 10) else None
        if vtype == 8:
            return self.string()
        if vtype == 9 and depth < 3:
            etype = self.u32()
            count = self.u64()
            if count > _MAX_COUNT * 8:
                raise LoadError(f"array of {count} elements is absurd")
            if etype in _SCALAR:
                self.take(_SCALAR[etype] * count)
            else:
                for _ in range(count):
                    self.skip_value(etype, depth + 1)
            return None
        raise LoadError(f"invalid metadata value type {vtype}")


def read_layout(buf: mmap.mmap | bytes) -> Layout:
    """The tensor table of a GGUF file: every tensor's name and where its data lies."""
    r = _Reader(buf)
    if r.take(4) != b"GGUF":
        raise LoadError("invalid magic characters")
    version = r.u32()
    if version not in (2, 3):
        raise LoadError(f"unsupported GGUF version {version}")
    n_tensors = r.u64()
    n_kv = r.u64()
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise LoadError("tensor or metadata count is absurd")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        value = r.skip_value(r.u32())
        if key == "general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    infos: list[tuple[str, int, int]] = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > 8:
            raise LoadError(f"tensor '{name}' has {n_dims} dimensions")
        elems = 1
        for _ in range(n_dims):
            elems *= r.u64()
        gtype = r.u32()
        offset = r.u64()
        if gtype not in _GGML_SIZES:
            raise LoadError(f"tensor '{name}' has invalid ggml type {gtype}")
        block, size = _GGML_SIZES[gtype]
        infos.append((name, offset, elems // block * size))
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    tensors = tuple(Tensor(n, data_offset + off, nb) for n, off, nb in infos)
    return Layout(version=version, kv_count=n_kv, tensors=tensors, data_offset=data_offset)


def check_bounds(layout: Layout, file_size: int) -> None:
    for t in layout.tensors:
        if t.start + t.nbytes > file_size:
            raise LoadError(
                f"tensor '{t.name}' data is not within the file bounds, "
                "model is corrupted or incomplete"
            )


# ---------------------------------------------------------------------------------- engine


@dataclass
class State:
    """What the HTTP handlers read: the loaded model and live counters."""

    config: Config
    log: Log
    model_size: int
    started: float
    active: int = 0
    shutting_down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _vm_bytes() -> int:
    # /proc/self/statm's first field: the address space in pages, what RLIMIT_AS counts
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


class _AddressSpaceCap:
    """Temporarily cap RLIMIT_AS at current usage + `headroom` (restored on exit)."""

    def __init__(self, headroom: int) -> None:
        self.headroom = headroom
        self.saved = resource.getrlimit(resource.RLIMIT_AS)

    def __enter__(self) -> None:
        soft = _vm_bytes() + self.headroom
        hard = self.saved[1]
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    def __exit__(self, *exc: object) -> None:
        resource.setrlimit(resource.RLIMIT_AS, self.saved)


def _fail_init(log: Log, reason: str) -> int:
    log.error(f"Failed to initialize inference engine: {reason}")
    return 1


def _wait_forever() -> None:
    # A futex wait with no CPU use and no wake-up: what a deadlocked loader thread looks like.
    threading.Event().wait()


def load_model(cfg: Config, log: Log, fh: IO[bytes]) -> tuple[mmap.mmap | None, int]:
    """Map and read the model like llama.cpp does; returns (mapping, size) or raises LoadError.

    Spends `cfg.load_s` seconds: each step reads the next part of the mapping (pages become
    resident) and hashes for a share of the step (CPU time grows), then sleeps the rest.
    """
    size = os.fstat(fh.fileno()).st_size
    if cfg.mode == "mmap-fail":
        # Real failure: leave less address space than the mapping needs. Half the model is
        # headroom enough for the interpreter's own small allocations meanwhile.
        try:
            with _AddressSpaceCap(max(size // 2, 4096)):
                probe = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            probe.close()
        except OSError as exc:
            raise LoadError(f"mmap failed: {os.strerror(exc.errno or errno_mod.ENOMEM)}") from None
        # The cap was not tight enough (a tiny model); fail the same way, and say so.
        raise LoadError(f"mmap failed: {os.strerror(errno_mod.ENOMEM)} (simulated)")
    try:
        mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise LoadError(f"mmap failed: {exc}") from None
    layout = read_layout(mapping)
    log.llama(
        f"llama_model_loader: loaded meta data with {layout.kv_count} key-value pairs and "
        f"{len(layout.tensors)} tensors from {cfg.model_path} (version GGUF V{layout.version})"
    )
    check_bounds(layout, size)
    if cfg.mode == "model-error":
        name = layout.tensors[-1].name if layout.tensors else "output.weight"
        raise LoadError(
            f"tensor '{name}' data is not within the file bounds, model is corrupted or incomplete"
        )
    log.llama(f"llm_load_print_meta: file size = {size / 2**20:.2f} MiB")
    steps = max(1, round(cfg.load_s / _STEP_S))
    chunk = max(mmap.PAGESIZE, -(-size // steps))
    hang_after = max(1, steps // 3)
    digest = hashlib.sha256()
    for step in range(steps):
        t0 = time.monotonic()
        start = (step * chunk) % max(size, 1)
        digest.update(mapping[start : start + chunk])
        busy_until = t0 + _STEP_S * _CPU_SHARE if cfg.load_s > 0 else t0
        while time.monotonic() < busy_until:
            digest.update(mapping[start : start + 4096])
        if cfg.mode == "hang" and step + 1 >= hang_after:
            _wait_forever()
        rest = (_STEP_S if cfg.load_s > 0 else 0.0) - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
    if cfg.mode == "hang":
        _wait_forever()
    if cfg.mode == "oom":
        kv_bytes = max(1 << 30, size * 64)
        try:
            with _AddressSpaceCap(64 << 20):
                kv_cache = bytearray(kv_bytes)
            del kv_cache
            raise ContextError("failed to allocate buffer for kv cache (simulated)")
        except MemoryError:
            log.llama(
                f"ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size "
                f"{kv_bytes}"
            )
            raise ContextError("failed to allocate buffer for kv cache") from None
    return mapping, size


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # tokio sets SO_REUSEADDR on Unix listeners too
    block_on_close = False
    state: State

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS: skip it.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if self.allow_reuse_address:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


_VOCAB = (
    " The",
    " engine",
    " is",
    " a",
    " stand",
    "-in",
    " for",
    " exsa",
    " and",
    " it",
    " answers",
    " with",
    " real",
    " tokens",
    ".",
)


class Handler(BaseHTTPRequestHandler):
    """The exsa-engine HTTP API, as far as the doctor uses it."""

    protocol_version = "HTTP/1.1"
    server_version = "exsa-standin"
    sys_version = ""
    server: _Server
    timeout: ClassVar[float] = 30.0

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's access log; exsa-engine logs requests at debug only."""

    def _json(self, status: int, body: Mapping[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        st = self.server.state
        cfg = st.config
        path = self.path.split("?", 1)[0]
        if path == "/v1/health":
            status = "healthy"
            if st.shutting_down:
                status = "shutting_down"
            elif cfg.mode == "overloaded":
                status = "overloaded"
            self._json(
                200,
                {
                    "status": status,
                    "version": VERSION,
                    "model_loaded": True,
                    "model_path": cfg.model_path,
                    "context_size": cfg.context_size,
                    "gpu_layers": cfg.gpu_layers,
                    "active_requests": st.active,
                    "queue_size": cfg.max_queue_size if cfg.mode == "overloaded" else 0,
                    "queue_capacity": cfg.max_queue_size,
                    "uptime_seconds": int(time.monotonic() - st.started),
                },
            )
        elif path == "/v1/status":
            self._json(
                200,
                {
                    "status": "running",
                    "queue_capacity": cfg.max_queue_size,
                    "active_requests": st.active,
                },
            )
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "model_path": cfg.model_path,
                    "context_size": cfg.context_size,
                    "gpu_layers": cfg.gpu_layers,
                },
            )
        else:
            self._json(404, {"error": f"Not found: {path}"})

    def _read_json(self) -> dict[str, Any] | str:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return "invalid Content-Length"
        if length < 0 or length > MAX_BODY_BYTES:
            return f"body must be at most {MAX_BODY_BYTES} bytes"
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return f"Failed to parse the request body as JSON: {exc}"
        if not isinstance(body, dict):
            return "the request body must be a JSON object"
        return body

    def do_POST(self) -> None:
        st = self.server.state
        cfg = st.config
        path = self.path.split("?", 1)[0]
        if path != "/v1/generate":
            self._json(404, {"error": f"Not found: {path}"})
            return
        if API_KEY[0] and self.headers.get("Authorization", "") != f"Bearer {API_KEY[0]}":
            self._json(401, {"error": "Invalid or missing API key"})
            return
        body = self._read_json()
        if isinstance(body, str):
            self._json(400, {"error": f"Invalid parameters: {body}"})
            return
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            self._json(400, {"error": "Invalid parameters: missing field `prompt`"})
            return
        st.log.info(f"Received generation request with prompt length: {len(prompt)} chars")
        params = body.get("sampling_params") or {}
        max_tokens = params.get("max_tokens", 16) if isinstance(params, dict) else 16
        if not prompt:
            self._json(400, {"error": "Invalid parameters: Prompt cannot be empty"})
            return
        if not isinstance(max_tokens, int) or max_tokens < 0:
            self._json(400, {"error": "Invalid parameters: max_tokens must be a positive integer"})
            return
        prompt_tokens = len(prompt) // 4
        if prompt_tokens + max_tokens > cfg.context_size:
            self._json(
                400,
                {
                    "error": (
                        f"Invalid parameters: Prompt ({prompt_tokens} tokens) + max_tokens "
                        f"({max_tokens}) exceeds context size ({cfg.context_size})"
                    )
                },
            )
            return
        if cfg.mode == "overloaded":
            self._json(503, {"error": "Server is at capacity"})
            return
        n = 0 if cfg.mode == "zero-tokens" else min(max_tokens, MAX_TOKENS_CAP)
        with st.lock:
            st.active += 1
        try:
            self._stream(n)
        finally:
            with st.lock:
                st.active -= 1
        st.log.info(
            f"✅ Generation complete: cached_tokens={prompt_tokens}, "
            f"kv_cache_pos={prompt_tokens + n}"
        )

    def _stream(self, n_tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [{"token": _VOCAB[i % len(_VOCAB)], "done": False} for i in range(n_tokens)]
        events.append({"token": "", "done": True})
        try:
            for i, event in enumerate(events):
                if i:
                    time.sleep(0.005)  # tokens come one by one, as from a sampler
                data = f"data: {json.dumps(event)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _display_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(cfg: Config, log: Log, model_size: int) -> int:
    addr = _display_addr(cfg.host, cfg.port)
    log.info(f"Starting HTTP server on {addr}")
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    _Server.address_family = family
    try:
        server = _Server((cfg.host, cfg.port), Handler)
    except OSError as exc:
        code = exc.errno or 0
        log.error(f"Failed to bind to {addr}: {os.strerror(code)} (os error {code})")
        return 1
    server.state = State(config=cfg, log=log, model_size=model_size, started=time.monotonic())
    bound = _display_addr(cfg.host, int(server.server_address[1]))
    log.info(f"✅ Server listening on http://{bound}")
    log.info("API endpoints:")
    log.info(f"  POST http://{bound}/v1/generate - Generate text (SSE streaming)")
    log.info(f"  GET  http://{bound}/v1/health - Health check")
    log.info(f"  GET  http://{bound}/v1/status - Server status")

    def on_signal(signum: int, _frame: object) -> None:
        is_int = signum == signal.SIGINT
        log.info("Received Ctrl+C signal" if is_int else "Received terminate signal")
        server.state.shutting_down = True
        log.info("Initiating graceful shutdown...")
        # shutdown() waits for serve_forever, which runs in this (the main) thread: call it
        # from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    deadline = time.monotonic() + 5.0
    while server.state.active and time.monotonic() < deadline:
        log.info(f"Waiting for {server.state.active} active requests to complete...")
        time.sleep(0.2)
    log.info("All requests completed successfully")
    log.info("Server shut down gracefully")
    return 0


def run(cfg: Config | None, log: Log) -> int:
    """The engine's main: returns the exit code."""
    log.info(f"Starting Exsa-Engine v{VERSION}")
    log.info("🔒 Security: Privacy-first, local-only operation")
    if cfg is None:
        log.error("MODEL_PATH environment variable must be set")
        log.error("Example: export MODEL_PATH=/path/to/model.gguf")
        return 1
    if cfg.host == "127.0.0.1":
        log.info("🔒 Server bound to localhost only (127.0.0.1)")
    log.info("📊 Model Configuration:")
    log.info(f"  Path: {cfg.model_path}")
    log.info(f"  Context size: {cfg.context_size}")
    log.info(f"  Batch size: {cfg.batch_size}")
    log.info(f"  GPU layers: {cfg.gpu_layers}")
    problem = _validate(cfg.model_path)
    if problem:
        log.error(f"Model validation failed: Model error: {problem}")
        log.error(f"Please ensure the model file exists at: {cfg.model_path}")
        log.error("You can set MODEL_PATH environment variable to specify a different path")
        return 1
    log.info(f"Model validation passed: {cfg.model_path}")
    name = os.path.splitext(os.path.basename(cfg.model_path))[0] or "default-model"
    log.info(f"Model name: {name}")
    try:
        fh = open(cfg.model_path, "rb")  # noqa: SIM115 - kept open while the model is mapped
    except OSError as exc:
        return _fail_init(log, f"Model error: cannot open {cfg.model_path}: {exc.strerror}")
    try:
        if cfg.mode == "flock":
            # Blocks in the kernel while another process holds LOCK_EX: a real lock wait.
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            mapping, size = load_model(cfg, log, fh)
        except ContextError as exc:
            log.llama(f"llama_init_from_model: failed to initialize the context: {exc}")
            return _fail_init(log, f"Model error: Failed to create context: {exc}: out of memory")
        except LoadError as exc:
            log.llama(f"llama_model_load: error loading model: {exc}")
            log.llama("llama_model_load_from_file_impl: failed to load model")
            return _fail_init(log, f"Model error: Failed to load model: {exc}")
        if cfg.mode == "flock":
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        log.info("✅ Model loaded successfully with dynamic loading capability")
        log.info("✅ Inference engine initialized")
        log.info(f"✅ Request queue created (max size: {cfg.max_queue_size})")
        try:
            return serve(cfg, log, size)
        finally:
            if mapping is not None:
                mapping.close()
    finally:
        fh.close()


def _validate(path: str) -> str | None:
    """exsa-engine's ModelLoader::validate, plus the GGUF magic llama.cpp checks first."""
    if not os.path.exists(path):
        return f"Model file not found: {path}"
    if not os.path.isfile(path):
        return f"Path is not a file: {path}"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return f"Cannot read model file {path}: {exc.strerror}"
    if magic != b"GGUF":
        return f"Not a GGUF file (magic {magic!r}): {path}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse flags, read the environment, run the engine."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m exsa_doctor.demo.standin",
        description="A stand-in for exsa-engine (configured by MODEL_PATH, HOST, PORT).",
    )
    parser.add_argument(
        "--mode", choices=MODES, help="failure mode (default: $EXSA_STANDIN_MODE or ok)"
    )
    parser.add_argument(
        "--load-seconds", type=float, help="model load time (default: $EXSA_STANDIN_LOAD_S or 0.5)"
    )
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1/generate (as API-keyed servers do)",
    )
    args = parser.parse_args(argv)
    if args.api_key:
        API_KEY[0] = args.api_key
    log = Log(sys.stdout, sys.stderr)
    try:
        cfg = config_from(os.environ, mode=args.mode, load_s=args.load_seconds)
    except StandinError as exc:
        sys.stderr.write(f"exsa-standin: {exc}\n")
        return 2
    try:
        return run(cfg, log)
    except KeyboardInterrupt:
        return 130
