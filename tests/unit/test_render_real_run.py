"""Every renderer on a Diagnosis from a real run: the real probes against a real closed port
and a real exsa-engine log in which the client's request came before 'listening'."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import xml.etree.ElementTree as ET
from importlib import resources

import jsonschema  # type: ignore[import-untyped]
import pytest

from exsa_doctor.api import diagnose
from exsa_doctor.model import Diagnosis
from exsa_doctor.probes import select
from exsa_doctor.render import FORMATS, render_as
from exsa_doctor.target import resolve_target


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Diagnosis:
    tmp = tmp_path_factory.mktemp("run")
    port = _free_port()  # closed again: nothing listens there
    model = tmp / "model.gguf"
    model.write_bytes(b"")  # a real (empty) file
    t0 = time.time() - 30
    log = tmp / "server.log"
    log.write_text(
        f"{_stamp(t0)}  INFO exsa_engine: Starting Exsa-Engine v0.1.0\n"
        f"{_stamp(t0 + 0.002)}  INFO exsa_engine:   Path: {model}\n"
        f"{_stamp(t0 + 0.010)}  INFO exsa_engine: Model validation passed: {model}\n"
        f"{_stamp(t0 + 12.1)}  INFO exsa_engine: ✅ Model loaded successfully with dynamic "
        "loading capability\n"
        f"{_stamp(t0 + 12.101)}  INFO exsa_engine: Starting HTTP server on 127.0.0.1:{port}\n"
        f"{_stamp(t0 + 12.103)}  INFO exsa_engine: ✅ Server listening on "
        f"http://127.0.0.1:{port}\n",
        encoding="utf-8",
    )
    target = resolve_target(
        url=f"http://127.0.0.1:{port}",
        model=model,
        logs=[log],
        failed_at=str(t0 + 3.0),
        timeout_s=8.0,
        environ={},
    )
    return diagnose(target, probes=select())


def test_json_of_a_real_run_is_valid(real_run: Diagnosis) -> None:
    text = resources.files("exsa_doctor").joinpath("schema/report.schema.json").read_text("utf-8")
    doc = json.loads(render_as(real_run, "json"))
    jsonschema.Draft202012Validator(json.loads(text)).validate(doc)
    assert {p["name"] for p in doc["probes"]} >= {"port", "health", "logs"}
    assert any(e["source"] == "client" for e in doc["timeline"])


def test_every_format_renders_a_real_run(real_run: Diagnosis) -> None:
    for fmt in FORMATS:
        out = render_as(real_run, fmt)
        assert out.strip(), fmt
    ET.fromstring(render_as(real_run, "junit").encode("utf-8"))


def test_the_real_log_events_become_chart_markers(real_run: Diagnosis) -> None:
    html = render_as(real_run, "html")
    for kind in ("start", "model-loaded", "listening", "failed-request"):
        assert f'data-event="{kind}"' in html, (kind, [e.event for e in real_run.timeline])
    text = render_as(real_run, "text")
    assert "before the engine listened" in text
