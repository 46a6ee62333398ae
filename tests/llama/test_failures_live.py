"""Start-up failures of the real llama-server, provoked for real and diagnosed through the CLI.

Each test first makes the engine fail the way a user's would (an unknown architecture, a Git LFS
pointer instead of the weights, a mistyped flag, an unreadable model, a privileged port, a KV cache
over the address-space limit, a missing shared library, a missing split shard, a bind address this
machine does not have), and asserts that the failure really happened: the server's exit status and
the engine's own error line in its log. Only then does it run `exsa-doctor diagnose` as a user
would (`python -m exsa_doctor diagnose --url ... --log ... --format json`, no `--profile`) and
assert the top cause and that its key detail (the architecture, the flag, the path, the user, the
port, the stage and device, the library, the shard, the address) is named both in the cause's
evidence and in its fix.

The cases with an unprivileged server run it as `nobody` (uid 65534) from a copy of the binary in
a fresh 0755 directory under /tmp, and diagnose as `nobody` too: the user who started the server
is the one who asks the doctor. That user cannot start this machine's Python (it lives under
/root, mode 0700), so the diagnosis runs the real CLI entry point in a forked child that drops to
uid 65534 after a warm-up run as root, the way tests/robustness/test_unprivileged.py does.

With `EXSA_LIVE_RECORD=DIR` set, each test copies the engine's log (whole when under 200 lines,
else its head and tail) to DIR/CASE.log once the provocation is verified: that is how
fixtures/engines/llama-server/live/ was recorded (see SOURCES.md there).
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import pkgutil
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_helpers import LlamaServer, free_port
from make_tiny_model import write_tiny_llama, write_tiny_llama_split

pytestmark = pytest.mark.llama

StartLlama = Callable[..., LlamaServer]

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
CLI_TIMEOUT_S = 180.0  # a hang guard on two shared cores, not a speed claim
EXIT_WAIT_S = 120.0
RECORD_LINES = 200
RECORD_KEEP = 80  # head and tail lines kept of a longer log

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4c0e1f6a0d8b7f1c2e3d4b5a69788796a5b4c3d2e1f00112233445566778899a\n"
    "size 4920734528\n"
)


# ---------------------------------------------------------------------------------------------
# running the doctor


def _cli_args(url: str, log: Path, model: Path | None) -> list[str]:
    args = ["diagnose", "--url", url, "--log", str(log), "--format", "json"]
    if model is not None:
        args += ["--model", str(model)]
    return args


def diagnose_cli(url: str, log: Path, model: Path | None = None) -> dict[str, Any]:
    """`python -m exsa_doctor diagnose ... --format json` in a subprocess; the parsed report."""
    proc = subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *_cli_args(url, log, model)],
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    stderr = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode in (0, 1, 3), f"diagnose exited {proc.returncode}:\n{stderr[-3000:]}"
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _import_everything() -> None:
    """Import every exsa_doctor module now: after the drop to `nobody` /root is unreadable."""
    import exsa_doctor

    for mod in pkgutil.walk_packages(exsa_doctor.__path__, "exsa_doctor."):
        if mod.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(mod.name)


def _run_cli_in_process(args: Sequence[str]) -> int:
    from exsa_doctor.cli import app

    try:
        app(args=list(args), prog_name="exsa-doctor", standalone_mode=True)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


def diagnose_cli_as_nobody(
    url: str, log: Path, out_dir: Path, model: Path | None = None
) -> dict[str, Any]:
    """The same CLI run, as `nobody`, in a forked child; the parsed report it wrote."""
    report_path = out_dir / "report.json"
    args = _cli_args(url, log, model)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        code = 70
        try:
            _import_everything()
            # as root first: loads whatever the CLI imports lazily (and data files under /root)
            _run_cli_in_process([*args, "--output", os.devnull])
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if os.geteuid() != NOBODY or os.getgroups():
                raise RuntimeError("could not drop privileges to nobody")
            code = _run_cli_in_process([*args, "--output", str(report_path)])
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    done, status = os.waitpid(pid, os.WNOHANG)
    while done == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:  # our own child, by its PID
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"diagnose as nobody unfinished after {CLI_TIMEOUT_S:g} s")
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1, 3), (
        f"diagnose as nobody exited {code} (its stderr is in the captured output)"
    )
    assert report_path.stat().st_uid == NOBODY, "the report was not written as nobody"
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    return report


# ---------------------------------------------------------------------------------------------
# reading the report


def explain(report: dict[str, Any]) -> str:
    causes = ", ".join(f"{c['id']}={c['probability']:.2f}" for c in report["causes"][:4])
    rows = "\n".join(f"  {f['id']} {f['summary']}" for f in report["findings"])
    return f"\nverdict={report['verdict']} causes: {causes}\nfindings:\n{rows}"


def top_cause(report: dict[str, Any], expected: str) -> dict[str, Any]:
    assert report["causes"], "no causes in the report" + explain(report)
    top: dict[str, Any] = report["causes"][0]
    assert top["id"] == expected, explain(report)
    assert report["verdict"] == "unhealthy", explain(report)
    return top


def evidence_text(cause: dict[str, Any]) -> str:
    return "\n".join(e["summary"] for e in cause["evidence"] if e["weight"] > 1)


def remediation_text(cause: dict[str, Any]) -> str:
    return "\n".join(r["text"] + "\n" + "\n".join(r["commands"]) for r in cause["remediation"])


def _mentions(text: str, detail: str) -> bool:
    """`detail` is in `text`; a number only as a whole number (port 81 is not in "0.81 s")."""
    if detail.isdigit():
        return re.search(rf"(?<![\d.]){detail}(?!\d)", text) is not None
    return detail in text


def assert_names(cause: dict[str, Any], report: dict[str, Any], *details: str) -> None:
    """Every detail is in the supporting evidence AND in the fix (text or commands)."""
    for detail in details:
        assert _mentions(evidence_text(cause), detail), f"{detail!r} not in the evidence" + explain(
            report
        )
        assert _mentions(remediation_text(cause), detail), (
            f"{detail!r} not in the fix: {cause['remediation']}" + explain(report)
        )


def assert_names_any(cause: dict[str, Any], report: dict[str, Any], *choices: str) -> None:
    """One of `choices` (words, any case) is in the supporting evidence AND in the fix."""
    ev, fix = evidence_text(cause).lower(), remediation_text(cause).lower()
    assert any(c.lower() in ev for c in choices), f"none of {choices} in the evidence" + explain(
        report
    )
    assert any(c.lower() in fix for c in choices), f"none of {choices} in the fix" + explain(report)


# ---------------------------------------------------------------------------------------------
# the provocation


def failed(server: LlamaServer, *engine_lines: str, code: int | None = None) -> str:
    """Wait for the server to exit, assert it failed as the engine says, return its log."""
    status = server.wait_exit(EXIT_WAIT_S)
    text = server.log_text()
    assert status != 0, f"llama-server exited 0:\n{text[-3000:]}"
    if code is not None:
        assert status == code, f"llama-server exited {status}, expected {code}:\n{text[-3000:]}"
    for line in engine_lines:
        assert line in text, f"{line!r} not in the engine's log:\n{text[-3000:]}"
    return text


def record(case: str, server: LlamaServer) -> None:
    """Copy the engine's log to $EXSA_LIVE_RECORD/CASE.log (head and tail when long), and note
    its exit status and command line in $EXSA_LIVE_RECORD/runs.tsv."""
    where = os.environ.get("EXSA_LIVE_RECORD")
    if not where:
        return
    lines = server.log_text().splitlines(keepends=True)
    if len(lines) >= RECORD_LINES:
        cut = len(lines) - 2 * RECORD_KEEP
        lines = [*lines[:RECORD_KEEP], f"[... {cut} lines left out ...]\n", *lines[-RECORD_KEEP:]]
    folder = Path(where)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{case}.log").write_text("".join(lines), encoding="utf-8")
    with (folder / "runs.tsv").open("a", encoding="utf-8") as runs:
        runs.write(f"{case}\t{server.proc.returncode}\t{' '.join(server.argv)}\n")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh 0755 directory under /tmp that `nobody` can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="exsa-live-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def as_nobody(shared_dir: Path, llama_server_bin: Path) -> tuple[Path, Path]:
    """(a copy of llama-server `nobody` may run, a directory `nobody` may write)."""
    if os.geteuid() != 0 or not hasattr(os, "fork"):
        pytest.skip("needs root to run the server and the doctor as nobody")
    binary = shared_dir / "bin" / "llama-server"
    binary.parent.mkdir(mode=0o755)
    shutil.copy2(llama_server_bin, binary)
    binary.chmod(0o755)
    writable = shared_dir / "out"
    writable.mkdir(mode=0o755)
    os.chown(writable, NOBODY, NOBODY)
    return binary, writable


def free_privileged_port() -> int:
    """A port below 1024 that nothing on 127.0.0.1 holds right now (we are root here)."""
    for port in range(81, 1024):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            return port
    pytest.skip("no free port below 1024")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# the cases


def test_unknown_architecture(start_llama: StartLlama, llama_vocab: Path, tmp_path: Path) -> None:
    model = write_tiny_llama(llama_vocab, tmp_path / "model.gguf", architecture="frobnicator")
    server = start_llama(model)
    failed(
        server,
        "unknown model architecture: 'frobnicator'",
        "exiting due to model loading error",
        code=1,
    )
    record("unknown-architecture", server)

    report = diagnose_cli(server.url, server.log, model)
    top = top_cause(report, "unsupported-architecture")
    assert_names(top, report, "frobnicator")


def test_git_pointer_file_as_model(start_llama: StartLlama, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_text(LFS_POINTER, encoding="ascii")
    assert "lfs" not in str(model).lower()  # the detail below cannot come from the path
    server = start_llama(model)
    failed(server, "invalid magic characters: 'vers'", "exiting due to model loading error", code=1)
    record("lfs-pointer", server)

    report = diagnose_cli(server.url, server.log, model)
    top = top_cause(report, "model-missing-or-invalid")
    assert_names(top, report, "LFS")


def test_bad_cli_argument(start_llama: StartLlama, tiny_model: Path) -> None:
    server = start_llama(tiny_model, extra=("--frobnicate", "3"))
    failed(server, "error: invalid argument: --frobnicate", code=1)
    record("bad-cli-argument", server)

    report = diagnose_cli(server.url, server.log, tiny_model)
    top = top_cause(report, "bad-cli-argument")
    assert_names(top, report, "--frobnicate")


def test_model_unreadable_by_the_server_user(
    start_llama: StartLlama, tiny_model: Path, as_nobody: tuple[Path, Path], shared_dir: Path
) -> None:
    binary, writable = as_nobody
    model = shared_dir / "model.gguf"
    shutil.copyfile(tiny_model, model)
    model.chmod(0o600)  # owned by root, readable by root only
    assert model.stat().st_uid == 0
    server = start_llama(model, binary=binary, user=NOBODY, log_dir=shared_dir)
    failed(server, f"failed to open GGUF file '{model}' (Permission denied)", code=1)
    record("permission-denied-model", server)

    report = diagnose_cli_as_nobody(server.url, server.log, writable, model)
    top = top_cause(report, "permission-denied")
    assert_names(top, report, str(model), "nobody")


def test_privileged_port_as_unprivileged_user(
    start_llama: StartLlama, tiny_model: Path, as_nobody: tuple[Path, Path], shared_dir: Path
) -> None:
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    port = free_privileged_port()
    if start.is_file() and int(start.read_text()) <= port:
        pytest.skip(f"{start} lets every user bind port {port} here")
    binary, writable = as_nobody
    model = shared_dir / "model.gguf"
    shutil.copyfile(tiny_model, model)
    model.chmod(0o644)  # readable: the port is the only fault
    server = start_llama(model, port=port, binary=binary, user=NOBODY, log_dir=shared_dir)
    failed(
        server,
        f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {port}",
        "exiting due to HTTP server error",
        code=1,
    )
    record("privileged-port", server)

    report = diagnose_cli_as_nobody(server.url, server.log, writable, model)
    top = top_cause(report, "permission-denied")
    assert_names(top, report, str(port))


# RLIMIT_AS for `-c 1048576` on the tiny model, measured on build 11434 (2 layers x 64 wide: the
# F16 KV cache is 512 MiB, the prompt-processing compute buffer 1025 MiB). From 300 to 700 MiB
# the weights load and the KV cache allocation fails; from 800 MiB to about 1.5 GiB the KV cache
# fits and the compute buffer fails; below about 250 MiB the context fails with a bare
# std::bad_alloc, below about 100 MiB a thread cannot even start. The limits chosen sit in the
# middle of their windows.
BIG_CONTEXT = ("-c", "1048576")
OOM_STAGES = [
    pytest.param(512 << 20, "failed to allocate buffer for kv cache", "KV cache", id="kv-cache"),
    pytest.param(
        1 << 30, "failed to allocate compute pp buffers", "compute buffer", id="compute-buffer"
    ),
]


@pytest.mark.parametrize(("limit", "engine_line", "stage"), OOM_STAGES)
def test_context_over_the_address_space_limit(
    start_llama: StartLlama, tiny_model: Path, limit: int, engine_line: str, stage: str
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit(1) (util-linux) to cap the address space")
    # as a user would: `prlimit --as=N -- llama-server ...` (or `ulimit -v` in a shell)
    server = start_llama(tiny_model, extra=BIG_CONTEXT, prefix=("prlimit", f"--as={limit}", "--"))
    text = failed(
        server,
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size",
        engine_line,
        "exiting due to model loading error",
        code=1,
    )
    # the weights loaded: it is the context (made after the model) that failed
    assert "llama_model_load: error" not in text, text[-3000:]
    assert "failed to create context with model" in text, text[-3000:]
    # the real engine's consequence line is the context-stage row's, not the model-load one's
    from exsa_doctor.signatures import load_table

    context_line = next(x for x in text.splitlines() if "failed to create context with model" in x)
    matched = load_table().match_line(context_line)
    assert matched is not None and matched[0].id == "llamacpp.context-failed", context_line
    record(f"oom-{stage.replace(' ', '-').lower()}", server)

    report = diagnose_cli(server.url, server.log, tiny_model)
    top = top_cause(report, "out-of-memory")
    assert_names_any(top, report, stage)
    assert_names_any(top, report, "CPU", "host")
    # the allocation that failed is the root and explains the context line: not raised alone
    found = {f["id"] for f in report["findings"]}
    assert "logs.oom" in found and "logs.context_failed" not in found, sorted(found)


def _needed_libraries(binary: Path) -> list[tuple[str, Path]]:
    """(soname, resolved path) of every shared library `ldd` says the binary loads."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    libs: list[tuple[str, Path]] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            libs.append((parts[0], Path(parts[parts.index("=>") + 1])))
    return libs


def _interpreter(binary: Path) -> Path:
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first.startswith("/") and "ld-linux" in first:
            return Path(first)
    pytest.skip(f"no dynamic loader in ldd {binary}")
    raise AssertionError("unreachable")


def test_missing_shared_library(
    start_llama: StartLlama, llama_server_bin: Path, tiny_model: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("needs root and chroot(8) to make a root filesystem without one library")
    libs = _needed_libraries(llama_server_bin)
    # libgomp (OpenMP) is the one a slim image most often lacks; else any but libc and libm
    candidates = [n for n, _ in libs if n.startswith("libgomp")] or [
        n for n, _ in libs if not n.startswith(("libc.", "libm."))
    ]
    if not candidates:
        pytest.skip(f"{llama_server_bin} loads no shared library that could go missing")
    omitted = candidates[0]
    # a minimal root filesystem, as in a slim container image: the binary, the dynamic loader
    # and every library it needs but one
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(llama_server_bin, root / "bin" / "llama-server")
    loader = _interpreter(llama_server_bin)
    (root / loader.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(loader, root / loader.relative_to("/"))
    (root / "lib").mkdir(exist_ok=True)
    for name, path in libs:
        if name != omitted:
            shutil.copy2(path, root / "lib" / name)
    shutil.copyfile(tiny_model, root / "model.gguf")
    server = start_llama(
        Path("/model.gguf"), binary=Path("/bin/llama-server"), prefix=("chroot", str(root))
    )
    failed(
        server,
        f"error while loading shared libraries: {omitted}: cannot open shared object file",
        code=127,
    )
    record("missing-shared-library", server)

    report = diagnose_cli(server.url, server.log)
    top = top_cause(report, "missing-shared-library")
    assert_names(top, report, omitted)


def test_split_model_missing_a_shard(
    start_llama: StartLlama, llama_vocab: Path, tmp_path: Path
) -> None:
    first, second = write_tiny_llama_split(llama_vocab, tmp_path / "model.gguf", shards=2)
    assert (first.name, second.name) == ("model-00001-of-00002.gguf", "model-00002-of-00002.gguf")
    second.unlink()
    server = start_llama(first)
    failed(
        server,
        f"failed to open GGUF file '{second}' (No such file or directory)",
        "exiting due to model loading error",
        code=1,
    )
    record("split-shard-missing", server)

    report = diagnose_cli(server.url, server.log, first)
    top = top_cause(report, "model-missing-or-invalid")
    assert_names(top, report, second.name)


def test_bind_address_not_on_this_machine(start_llama: StartLlama, tiny_model: Path) -> None:
    address = "192.0.2.1"  # TEST-NET-1 (RFC 5737): no interface here has it; never contacted
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(OSError) as err:
        sock.bind((address, 0))
    assert err.value.errno == errno.EADDRNOTAVAIL
    port = free_port()
    server = start_llama(tiny_model, port=port, host=address)
    failed(
        server,
        f"couldn't bind HTTP server socket, hostname: {address}, port: {port}",
        "exiting due to HTTP server error",
        code=1,
    )
    record("bind-address-unavailable", server)

    # the user's client asked on loopback; the doctor must not contact 192.0.2.1 either way
    report = diagnose_cli(f"http://127.0.0.1:{port}", server.log, tiny_model)
    top = top_cause(report, "bind-address-unavailable")
    assert_names(top, report, address)
