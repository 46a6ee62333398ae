"""Fixtures for the tests against the real llama-cpp-python server (`python -m llama_cpp.server`).

The server's venv comes from `scripts/build-llama-cpp-python.sh` (cache: `~/.cache/exsa-doctor/
llama-cpp-python-<version>/venv`, or under `$EXSA_LLAMA_CACHE`), or `$EXSA_LLAMA_CPP_PYTHON` names
its python. The tiny model needs llama.cpp's vocabulary file, which that script keeps next to the
venv (the llama-server build's copy does as well). Without them the tests are skipped on a
workstation and FAIL under CI (`CI` set), as in tests/llama/.

Every process a test starts is stopped by PID in the fixture's teardown, even when the test fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "llama"))

from llama_helpers import LlamaServer, Squatter, free_port, squatters, stop_pid  # noqa: E402
from make_tiny_model import write_tiny_llama  # noqa: E402

BUILD_SCRIPT = REPO / "scripts" / "build-llama-cpp-python.sh"
LLAMA_SERVER_SCRIPT = REPO / "scripts" / "build-llama-server.sh"
VOCAB = "ggml-vocab-llama-spm.gguf"
# Settings the server reads from the environment (pydantic-settings, and HOST/PORT in __main__):
# a caller's own must not leak into a test's server.
_SERVER_ENV = re.compile(
    r"^(?:HOST|PORT|MODEL|CONFIG_FILE|N_CTX|N_THREADS|VERBOSE|CHAT_FORMAT)$", re.I
)


def _pinned(script: Path) -> str:
    match = re.search(r'^VERSION="([^"]+)"', script.read_text(encoding="utf-8"), re.M)
    if not match:
        raise RuntimeError(f"no VERSION= line in {script}")
    return match.group(1)


def _cache_root() -> Path:
    return Path(os.environ.get("EXSA_LLAMA_CACHE") or str(Path.home() / ".cache" / "exsa-doctor"))


def cache_dir() -> Path:
    return _cache_root() / f"llama-cpp-python-{_pinned(BUILD_SCRIPT)}"


def _missing(reason: str) -> None:
    hint = f"build it with: bash {BUILD_SCRIPT.relative_to(REPO)}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so these tests must run; {hint})", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


@pytest.fixture(scope="session")
def lcp_python() -> Path:
    """The python of the venv that has llama-cpp-python[server] installed."""
    explicit = os.environ.get("EXSA_LLAMA_CPP_PYTHON")
    path = Path(explicit) if explicit else cache_dir() / "venv" / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(f"no llama-cpp-python venv at {path}")
    if not explicit and not (cache_dir() / ".complete").is_file():
        _missing(f"the llama-cpp-python build at {cache_dir()} is incomplete")
    return path


@pytest.fixture(scope="session")
def lcp_vocab(lcp_python: Path) -> Path:
    candidates = [
        cache_dir() / VOCAB,
        _cache_root() / f"llama-server-{_pinned(LLAMA_SERVER_SCRIPT)}" / VOCAB,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    _missing(f"no {VOCAB} in {' or '.join(str(c.parent) for c in candidates)}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def tiny_model(lcp_vocab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~5 MB random-weight llama GGUF that llama.cpp loads and generates with."""
    return write_tiny_llama(lcp_vocab, tmp_path_factory.mktemp("model") / "tiny-llama.gguf")


def server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not _SERVER_ENV.match(k)}


@pytest.fixture
def start_lcp(lcp_python: Path, tmp_path: Path) -> Iterator[Callable[..., LlamaServer]]:
    """Factory: start `python -m llama_cpp.server` on 127.0.0.1 and `port` (default a free one)
    with `model`; stdout and stderr to one log file. Every server is stopped by PID afterwards."""
    started: list[LlamaServer] = []

    def start(model: Path, port: int | None = None, extra: Sequence[str] = ()) -> LlamaServer:
        host = "127.0.0.1"
        chosen = port if port is not None else free_port(host)
        log = tmp_path / f"llama-cpp-python-{chosen}-{len(started)}.log"
        argv = [
            str(lcp_python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            host,
            "--port",
            str(chosen),
            "--n_ctx",
            "256",
            "--n_threads",
            "2",
            *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(),
            )
        server = LlamaServer(
            proc=proc,
            port=chosen,
            model=model,
            log=log,
            argv=argv,
            host=host,
            name="llama-cpp-python",
            ready_path="/v1/models",  # it has no /health; this answers once the model is loaded
            wait_s=120.0,
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop_pid(server.proc)


@pytest.fixture
def squatter() -> Iterator[Callable[[int], Squatter]]:
    """Factory: a foreign listener on a port; stopped by PID afterwards."""
    yield from squatters()
