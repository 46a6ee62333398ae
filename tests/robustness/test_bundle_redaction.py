"""A support bundle made from a real run: secrets planted where real ones hide come out, the
innocent look-alikes around them stay byte for byte, only the processes that matter go in, and
`--dry-run` writes nothing while listing every file and every redaction.

The target is the stand-in engine started with a secret on its command line and secrets in its
environment (under a secret name, under an engine prefix, in a URL, under a neutral name). A
model holder that is no engine, and an unrelated engine with secrets of its own on another port
and another model, run beside it. A client log repeats secrets (planted from the redaction
corpus) between innocent lines from real engine logs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from exsa_doctor.redact import TAG_PATTERN
from tests.robustness.conftest import Procs, accepts, free_port, wait_until

CLI_TIMEOUT_S = 90.0  # a hang guard on shared cores, not a speed claim
ROOT = Path(__file__).resolve().parents[2]

HF = "hf_PlantedFakeTokenAbCdEfGhIjKlMnOpQr"
ARGV_KEY = "planted-ArgvKey-7766554433"
ENGINE_KEY = "planted-EngineKey-1122334455"
PG_PASSWORD = "planted-PgPass-998877"
NEUTRAL = "sk-proj-PlantedNeutralNameValue0123456789abcdef"
OTHER_SECRET = "planted-OtherEngine-5544332211"
HOLDER = "import sys, time\nheld = open(sys.argv[1], 'rb')\nprint('ready', flush=True)\ntime.sleep(600)\n"


def _corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "redaction_corpus_bundle", ROOT / "fixtures" / "redaction" / "corpus.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    port: int
    engine_pid: int
    holder_pid: int
    other_pid: int
    model: Path
    engine_log: Path
    client_log: Path
    client_marked: str  # the client log with «secret» marks
    planted: list[str]


def _start_engine(
    procs: Procs, model: Path, log: Path, port: int, env: dict[str, str], *args: str
) -> int:
    full = {**os.environ, "MODEL_PATH": str(model), "PORT": str(port), "HOST": "127.0.0.1", **env}
    with log.open("wb") as out:
        proc = procs.start(
            [sys.executable, "-m", "exsa_doctor.demo.standin", *args],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: proc.poll() is None and accepts(port), 30.0, f"the engine on {port}")
    return proc.pid


@pytest.fixture
def run(procs: Procs, tmp_path: Path) -> Run:
    from exsa_doctor.demo.standin.ggufmake import write_gguf

    corpus = _corpus()
    model, other_model = tmp_path / "model.gguf", tmp_path / "other.gguf"
    write_gguf(model)
    write_gguf(other_model)
    port, other_port = free_port(), free_port()
    engine_log = tmp_path / "engine.log"
    env = {
        "HF_TOKEN": HF,
        "EXSA_API_KEY": ENGINE_KEY,
        "EXSA_RAG_POSTGRES_URL": f"postgres://rag:{PG_PASSWORD}@db.internal:5432/rag",
        "MY_NEUTRAL_SETTING": NEUTRAL,
        "XDG_SESSION_CLASS": "user",
        "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "2",
    }
    engine_pid = _start_engine(procs, model, engine_log, port, env, "--api-key", ARGV_KEY)
    other_pid = _start_engine(
        procs,
        other_model,
        tmp_path / "other.log",
        other_port,
        {"EXSA_API_KEY": OTHER_SECRET},
        "--api-key",
        OTHER_SECRET,
    )
    holder = procs.start(
        [sys.executable, "-c", HOLDER, str(model)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    # the client log: corpus secrets and the engine's own secrets between real innocent lines
    secrets = [c for c in corpus.secret_cases() if "\n" not in c.marked][::3]
    innocents = corpus.innocent_cases(with_logs=False)
    lines: list[str] = []
    for i, case in enumerate(secrets):
        lines.append(case.marked)
        lines.append(innocents[i % len(innocents)].text)
    lines.append(f"retrying with token «{HF}» and key «{ARGV_KEY}»")
    lines.append(f"db at postgres://rag:«{PG_PASSWORD}»@db.internal:5432/rag for user alice")
    lines.append(f"upstream key «{NEUTRAL}» was rejected")
    marked = "\n".join(lines) + "\n"
    client_log = tmp_path / "client.log"
    client_log.write_text(corpus.MARK.sub(lambda m: m.group(1), marked), encoding="utf-8")
    planted = [*corpus.MARK.findall(marked), ENGINE_KEY]
    return Run(
        port, engine_pid, holder.pid, other_pid, model, engine_log, client_log, marked, planted
    )


def _doctor(run: Run, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EXSA_URL", "PORT", "MODEL_PATH")}
    args = [
        "bundle",
        "--url",
        f"http://127.0.0.1:{run.port}",
        "--model",
        str(run.model),
        "--log",
        str(run.engine_log),
        "--log",
        str(run.client_log),
        "--timeout",
        "8",
        "--output",
        str(output),
        *extra,
    ]
    return subprocess.run(
        [sys.executable, "-m", "exsa_doctor", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=CLI_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_a_bundle_from_a_real_run(run: Run, tmp_path: Path) -> None:
    output = tmp_path / "out" / "bundle.tar.gz"
    output.parent.mkdir()
    res = _doctor(run, output)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode in (0, 1, 3), res.stderr
    members = _members(output)

    # every planted secret is out of every file
    for name, data in members.items():
        for secret in [*run.planted, OTHER_SECRET]:
            assert secret.encode() not in data, f"{secret!r} leaked into {name}"

    # the client log is the original, byte for byte, with exactly the planted spans replaced
    parts = re.split(r"«(.*?)»", run.client_marked)
    expected = "".join(
        re.escape(p) if i % 2 == 0 else r"\[REDACTED:[a-z0-9-]+:[0-9a-f]{4}\]"
        for i, p in enumerate(parts)
    )
    client = members["logs/client.log"].decode()
    assert re.fullmatch(expected, client), client
    # the engine's own log has nothing secret in it: kept as written
    engine_log = members["logs/engine.log"]
    assert run.engine_log.read_bytes().startswith(engine_log)

    # one secret, one tag, across files
    rows = json.loads(members["processes.json"])
    by_pid = {r["pid"]: r for r in rows}
    engine = by_pid[run.engine_pid]
    hf_tag = engine["environment"]["HF_TOKEN"]
    assert hf_tag.startswith("[REDACTED:huggingface-token:") and hf_tag in client
    argv_tag = engine["cmdline"][engine["cmdline"].index("--api-key") + 1]
    assert TAG_PATTERN.fullmatch(argv_tag) and argv_tag in client

    # only the processes that matter: the target engine and the model's holder
    assert set(by_pid) == {run.engine_pid, run.holder_pid}, by_pid.keys()
    assert "target engine" in engine["roles"] and "port holder" in engine["roles"]
    assert by_pid[run.holder_pid]["roles"] == ["model holder"]
    assert run.other_pid not in by_pid

    # the environment by allow-list: values for what matters, names only for the rest
    kept = engine["environment"]
    assert kept["PORT"] == str(run.port) and kept["MODEL_PATH"] == str(run.model)
    assert kept["CUDA_VISIBLE_DEVICES"] == "0" and kept["OMP_NUM_THREADS"] == "2"
    assert kept["EXSA_API_KEY"].startswith("[REDACTED:engine-api-key:")
    assert kept["EXSA_RAG_POSTGRES_URL"].startswith("postgres://rag:[REDACTED:")
    assert kept["EXSA_RAG_POSTGRES_URL"].endswith("]@db.internal:5432/rag")
    assert {"MY_NEUTRAL_SETTING", "XDG_SESSION_CLASS"} <= set(engine["environment_names_only"])
    assert "MY_NEUTRAL_SETTING" not in kept and "XDG_SESSION_CLASS" not in kept

    # the manifest's counts are the tags really in each file
    manifest = json.loads(members["manifest.json"])
    for name, data in members.items():
        if name == "manifest.json":
            continue
        tags = TAG_PATTERN.findall(data.decode())
        counted = manifest["redactions_by_file"].get(name, {})
        assert len(tags) == sum(counted.values()), (name, tags, counted)
        for kind, count in counted.items():
            assert sum(1 for k, _ in tags if k == kind) == count, (name, kind)
    assert sum(manifest["redactions"].values()) == sum(
        sum(c.values()) for c in manifest["redactions_by_file"].values()
    )
    assert {f["name"] for f in manifest["files"]} | {"manifest.json"} == set(members)
    assert f"{sum(manifest['redactions'].values())} secrets redacted" in res.stderr


def test_dry_run_writes_nothing_and_lists_everything(run: Run, tmp_path: Path) -> None:
    output = tmp_path / "bundle.tar.gz"
    res = _doctor(run, output, "--dry-run")
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode in (0, 1, 3), res.stderr
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.gguf", "other.gguf", "engine.log", "other.log", "client.log"]
    )
    out = res.stdout
    for name in ("report.json", "processes.json", "logs/engine.log", "logs/client.log"):
        assert f"  {name}  (" in out, out
    assert "manifest.json" in out
    assert f"pid {run.engine_pid}: model holder, port holder, target engine" in out, out
    # each planted secret of the client log is listed with its kind and line
    client_lines = [
        i + 1
        for i, line in enumerate(run.client_marked.splitlines())
        for _ in re.findall("«", line)
    ]
    listed = [int(m) for m in re.findall(r"at logs/client\.log:(\d+)$", out, re.M)]
    assert listed == client_lines, (listed, client_lines)
    assert re.search(r"^  huggingface-token  at processes\.json pid \d+ env HF_TOKEN$", out, re.M)
    for secret in [*run.planted, OTHER_SECRET]:
        assert secret not in out + res.stderr
