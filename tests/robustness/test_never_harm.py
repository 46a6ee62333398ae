"""`cleanup` and `run` never signal a process they did not start or positively identify.

`pkill -f exsa-engine` would hit all of the bystanders built here; the doctor must hit none:
- a root-owned Python listener on the port whose argv merely mentions `exsa-engine`;
- `sleep` renamed `vim exsa-engine.log` (exec -a), the seed's own example;
- a Python tool under a folder named `exsa-engine` that holds the model file open;
- a process positively identified as an engine (its executable is named `exsa-engine`) that
  belongs to another user (`nobody`) and listens on a port of its own.
Each Python bystander writes a file from its handler for every catchable signal; the test
checks those files never appear and every bystander is alive with the same creation time and
not stopped. A positive control (our own identified engine on another port) shows `cleanup`
does signal what it should, so "nothing was signalled" cannot come from a cleanup that does
nothing at all.

Two more ways to harm are covered at the end: writing files outside `--output` (HOME, TMPDIR,
the working directory and the model's folder are fingerprinted before and after), and leaking
secrets from the engine's environment and logs into a support bundle.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.robustness.conftest import Procs, accepts, alive, free_port, wait_until

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # world-executable, stdlib only: what `nobody` can run
CLI_TIMEOUT_S = 90.0  # a hang guard for one CLI call on shared cores, not a speed claim

BYSTANDER = """
import os, signal, socket, sys, time
port, marks, hold = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def note(signum, frame):
    with open(os.path.join(marks, "%d.%d" % (os.getpid(), signum)), "w") as fh:
        fh.write("signalled")
    if signum == signal.SIGTERM and os.environ.get("EXIT_ON_TERM"):
        os._exit(0)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
          signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT):
    signal.signal(s, note)
held = open(hold, "rb") if hold != "-" else None
srv = None
if port:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
print("ready", flush=True)
end = time.monotonic() + 600
while time.monotonic() < end:
    time.sleep(0.2)
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root (to start another user's process) and a system python3",
)


@dataclass(frozen=True)
class Bystander:
    """A process the doctor must leave alone."""

    label: str
    pid: int
    create_time: float


@dataclass
class World:
    port: int  # held by a foreign, root-owned listener that mentions exsa-engine
    nobody_port: int  # held by another user's identified engine
    own_port: int  # held by our own identified engine (the positive control)
    own_engine: int
    model: Path
    marks: Path
    bystanders: list[Bystander]

    def signalled(self) -> list[str]:
        return sorted(p.name for p in self.marks.iterdir())


def _ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30.0)
    assert ready, f"{what} did not start"
    line = proc.stdout.readline().strip()
    assert line == "ready", f"{what}: {line!r} (exit {proc.poll()})"


def _bystander(proc: subprocess.Popen[Any], label: str) -> Bystander:
    return Bystander(label, proc.pid, psutil.Process(proc.pid).create_time())


@pytest.fixture
def world(procs: Procs, world_dir: Path, tmp_path: Path) -> Iterator[World]:
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    marks = world_dir / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # nobody's bystander writes here too
    script = world_dir / "bystander.py"
    script.write_text(BYSTANDER)
    script.chmod(0o644)
    model = world_dir / "model.gguf"
    write_gguf(model)
    model.chmod(0o644)
    port, nobody_port, own_port = free_port(), free_port(), free_port()
    assert len({port, nobody_port, own_port}) == 3
    pipe: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "text": True}
    found: list[Bystander] = []

    # 1. root-owned listener on the port; argv mentions exsa-engine, argv[0] is python
    listener = procs.start(
        [sys.executable, str(script), str(port), str(marks), "-", "exsa-engine"], **pipe
    )
    _ready(listener, "the foreign listener")
    found.append(_bystander(listener, "python listener with 'exsa-engine' in argv"))

    # 2. sleep renamed `vim exsa-engine.log`
    vim = procs.start(["bash", "-c", 'exec -a "vim exsa-engine.log" sleep 300'])
    wait_until(
        lambda: alive(vim.pid) and "exsa-engine" in " ".join(psutil.Process(vim.pid).cmdline()),
        20.0,
        "the renamed sleep",
    )
    found.append(_bystander(vim, "sleep renamed 'vim exsa-engine.log'"))

    # 3. a tool under a folder named exsa-engine, holding the model open
    tool_dir = world_dir / "exsa-engine"
    tool_dir.mkdir()
    tool = tool_dir / "convert.py"
    tool.write_text(BYSTANDER)
    holder = procs.start([sys.executable, str(tool), "0", str(marks), str(model)], **pipe)
    _ready(holder, "the model holder")
    found.append(_bystander(holder, "tool in exsa-engine/ holding the model"))

    # 4. another user's process, positively identified as an engine, on its own port
    bindir = world_dir / "bin"
    bindir.mkdir()
    bindir.chmod(0o755)
    (bindir / "exsa-engine").symlink_to(os.path.realpath(SYSTEM_PYTHON))
    others = procs.start(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            str(bindir / "exsa-engine"),
            str(script),
            str(nobody_port),
            str(marks),
            "-",
        ],
        **pipe,
    )
    _ready(others, "nobody's engine")
    assert psutil.Process(others.pid).uids().real == NOBODY
    found.append(_bystander(others, "nobody's exsa-engine"))

    # positive control: our own identified engine on a third port
    own_bin = tmp_path / "own-bin"
    own_bin.mkdir()
    (own_bin / "exsa-engine").symlink_to(os.path.realpath(sys.executable))
    own = procs.start(
        [str(own_bin / "exsa-engine"), str(script), str(own_port), str(marks), "-"],
        env={**os.environ, "EXIT_ON_TERM": "1"},
        **pipe,
    )
    _ready(own, "our own engine")
    for p in (port, nobody_port, own_port):
        wait_until(partial(accepts, p), 20.0, f"a listener on {p}")
    yield World(port, nobody_port, own_port, own.pid, model, marks, found)


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m exsa_doctor ARGS` (its own process group is never ours to signal)."""
    full_env = dict(os.environ if env is None else env)
    for var in ("EXSA_URL", "PORT", "MODEL_PATH"):
        full_env.pop(var, None)
    if env is not None:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=CLI_TIMEOUT_S,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def assert_untouched(w: World, after: str) -> None:
    marks = [m for m in w.signalled() if not m.startswith(f"{w.own_engine}.")]
    assert not marks, f"after {after}: bystanders received signals (pid.signum): {marks}"
    for b in w.bystanders:
        assert alive(b.pid, b.create_time), f"after {after}: {b.label} (PID {b.pid}) is gone"
        status = psutil.Process(b.pid).status()
        assert status != psutil.STATUS_STOPPED, f"after {after}: {b.label} was stopped"


def test_cleanup_never_signals_bystanders(world: World) -> None:
    w = world
    res = doctor("cleanup", "--port", str(w.port), "--yes")
    assert "Traceback" not in res.stderr, res.stderr
    assert_untouched(w, "cleanup --port (foreign listener)")
    assert res.returncode == 1, res.stdout + res.stderr  # the port stays taken: not ours to free
    assert str(w.bystanders[0].pid) in res.stdout, res.stdout  # named, with why it is left alone

    res = doctor("cleanup", "--port", str(w.nobody_port), "--yes")
    assert "Traceback" not in res.stderr, res.stderr
    assert_untouched(w, "cleanup --port (nobody's engine)")
    assert "not yours" in res.stdout, res.stdout

    res = doctor("cleanup", "--model", str(w.model), "--yes")
    assert "Traceback" not in res.stderr, res.stderr
    assert_untouched(w, "cleanup --model")

    # no filter: every orphaned engine of ours would be a target; a dry run only prints the plan
    res = doctor("cleanup", "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_untouched(w, "cleanup --dry-run")

    # the positive control: our own engine on its port is stopped, and only it
    assert alive(w.own_engine)
    res = doctor("cleanup", "--port", str(w.own_port), "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: not alive(w.own_engine), 10.0, "our own engine to stop")
    assert f"{w.own_engine}.15" in w.signalled(), w.signalled()  # SIGTERM first
    assert_untouched(w, "cleanup --port (own engine)")


def test_run_never_signals_bystanders(world: World) -> None:
    w = world
    engine = [sys.executable, "-m", "exsa_doctor.demo.standin"]
    # the port is taken by the foreign listener: run must refuse, naming it, and signal nothing
    res = doctor(
        "run",
        "--port",
        str(w.port),
        "--ready-timeout",
        "20",
        "--",
        *engine,
        env={"MODEL_PATH": str(w.model)},
    )
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode != 0, res.stdout + res.stderr
    assert str(w.bystanders[0].pid) in res.stdout + res.stderr
    assert_untouched(w, "run --port (foreign listener)")

    res = doctor(
        "run",
        "--port",
        str(w.nobody_port),
        "--ready-timeout",
        "20",
        "--",
        *engine,
        env={"MODEL_PATH": str(w.model)},
    )
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode != 0, res.stdout + res.stderr
    assert_untouched(w, "run --port (nobody's engine)")

    # a whole run: start our engine, wait, run --then, tear down; the teardown hits only it
    res = doctor(
        "run",
        "--port",
        "auto",
        "--ready-timeout",
        "30",
        "--then",
        "true",
        "--",
        *engine,
        env={"MODEL_PATH": str(w.model)},
    )
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert_untouched(w, "run --port auto --then true")
    assert alive(w.own_engine), "run stopped an engine instance it did not start"


# ------------------------------------------------- no writes outside --output, no leaked secrets

SECRETS = {
    "HF_TOKEN": "hf_Zq8secretTOKENvalue1234",
    "DATABASE_URL": "postgres://svc:pw-Sekr3tPart@db.internal/x",
}
ARGV_SECRET = "sk-argv-Key77665544"
SECRET_STRINGS = (
    "hf_Zq8secretTOKENvalue1234",
    "pw-Sekr3tPart",
    "sk-BearerValue0987654321",
    ARGV_SECRET,
)


def _fingerprint(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `root`: size, mtime (ns) and the first bytes; directories too."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        head = path.read_bytes()[:64] if path.is_file() else b""
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, head)
    return out


@pytest.fixture
def engine_with_secrets(procs: Procs, tmp_path: Path) -> tuple[int, Path, Path, Path]:
    """A live stand-in engine whose environment holds secrets; its model; its (growing) log;
    and a static client log that repeats the secrets and carries a bearer token."""
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    inputs = tmp_path / "inputs"  # watched: nothing in here may change
    inputs.mkdir()
    model = inputs / "model.gguf"
    write_gguf(model)
    port = free_port()
    engine_log = tmp_path / "engine-out" / "engine.log"  # the engine itself appends to this
    engine_log.parent.mkdir()
    env = {
        **os.environ,
        "MODEL_PATH": str(model),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        **SECRETS,
    }
    with engine_log.open("wb") as out:
        engine = procs.start(
            # a secret on the engine's command line, too
            [sys.executable, "-m", "exsa_doctor.demo.standin", "--api-key", ARGV_SECRET],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: engine.poll() is None and accepts(port), 30.0, "the stand-in engine")
    client_log = inputs / "client.log"  # what a proxy or client library may leave in a log
    client_log.write_text(
        f"request failed: Authorization: Bearer {SECRET_STRINGS[2]}\n"
        f"connecting to {SECRETS['DATABASE_URL']} with token {SECRETS['HF_TOKEN']}\n"
    )
    return port, model, engine_log, client_log


@pytest.mark.parametrize("command", ["diagnose", "bundle"])
def test_writes_only_the_output_and_bundles_no_secrets(
    command: str, engine_with_secrets: tuple[int, Path, Path, Path], tmp_path: Path
) -> None:
    port, model, engine_log, client_log = engine_with_secrets
    home, tmp, cwd, outdir = (tmp_path / n for n in ("home", "tmp", "cwd", "out"))
    for d in (home, tmp, cwd, outdir):
        d.mkdir()
    output = outdir / ("report.json" if command == "diagnose" else "bundle.tar.gz")
    watched = [home, tmp, cwd, outdir, model.parent]
    before = {str(d): _fingerprint(d) for d in watched}
    args = [
        command,
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        str(model),
        "--log",
        str(engine_log),
        "--log",
        str(client_log),
        "--timeout",
        "8",
        "--output",
        str(output),
    ]
    if command == "diagnose":
        args += ["--format", "json"]
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "XDG_CACHE_HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    res = subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=CLI_TIMEOUT_S,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode in (0, 1, 3), res.stderr
    after = {str(d): _fingerprint(d) for d in watched}
    before[str(outdir)][output.name] = after[str(outdir)].get(output.name, (0, 0, b""))
    assert after == before, "files appeared or changed outside --output"
    assert output.is_file() and output.stat().st_size > 0
    if command == "diagnose":
        assert json.loads(output.read_text())["target"]["port"] == port
        return
    with tarfile.open(output) as tar:
        members = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    names = {n.split("/", 1)[1] for n in members}
    assert {
        "report.json",
        "processes.json",
        "manifest.json",
        "logs/engine.log",
        "logs/client.log",
    } <= names, names
    for name, data in members.items():
        for secret in SECRET_STRINGS:
            assert secret.encode() not in data, f"{secret!r} leaked into {name}"
    manifest = json.loads(members["exsa-doctor-bundle/manifest.json"])
    assert sum(manifest["redactions"].values()) > 0, manifest
    rows = json.loads(members["exsa-doctor-bundle/processes.json"])
    ours = [r for r in rows if r["environment"] and r["environment"].get("PORT") == str(port)]
    assert ours, "the engine's row is missing from processes.json"
    assert ours[0]["environment"]["HF_TOKEN"].startswith("[REDACTED:huggingface-token:")
    assert "--api-key" in ours[0]["cmdline"]
    assert any(a.startswith("[REDACTED:") for a in ours[0]["cmdline"]), ours[0]["cmdline"]
