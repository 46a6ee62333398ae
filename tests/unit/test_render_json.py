"""The JSON report: one strict document, the exact contract keys, valid against the schema."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import sample_diagnosis as samples

from exsa_doctor.render import render_as
from exsa_doctor.render.common import iso_utc
from exsa_doctor.render.json import json_safe, render

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"


def _schema() -> dict[str, Any]:
    # read through the package, as an installed user would: proves it is package data
    text = resources.files("exsa_doctor").joinpath("schema/report.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _strict_load(text: str) -> Any:
    def reject(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_is_one_strict_document_valid_against_the_schema(name: str) -> None:
    text = render(samples.ALL[name]())
    doc = _strict_load(text)  # one document: json.loads rejects trailing data
    jsonschema.Draft202012Validator(_schema()).validate(doc)
    text.encode("utf-8")  # printable on a UTF-8 stdout (no lone surrogates)
    assert render_as(samples.ALL[name](), "json") == text


def test_contract_keys_and_values_of_the_race() -> None:
    d = samples.race()
    doc = _strict_load(render(d))
    assert list(doc) == [
        "schema_version",
        "tool",
        "target",
        "started_at",
        "duration_s",
        "verdict",
        "failed_at",
        "causes",
        "findings",
        "probes",
        "timeline",
    ]
    assert doc["schema_version"] == 1
    assert doc["tool"] == {"name": "exsa-doctor", "version": "0.1.0", "hostname": ""}
    assert doc["target"] == {
        "url": "http://127.0.0.1:3000",
        "host": "127.0.0.1",
        "port": 3000,
        "model": samples.MODEL,
        "logs": [samples.LOG],
        "pids": [17939],
        "profile": "exsa-engine",
        "profile_reason": d.target.profile_reason,
        "offline": False,
    }
    assert doc["verdict"] == "unhealthy"
    assert doc["started_at"] == "2025-11-23T23:42:31.502Z"
    assert doc["failed_at"] == "2025-11-23T23:41:56.127Z"
    top = doc["causes"][0]
    assert set(top) == {"id", "title", "probability", "prior", "impact", "evidence", "remediation"}
    assert top["id"] == "race-condition"
    assert top["evidence"][0] == {
        "finding": "logs.failed_before_ready",
        "weight": d.causes[0].evidence[0].weight,  # the fitted ratio, as the report states it
        "summary": d.finding("logs.failed_before_ready").summary,  # type: ignore[union-attr]
    }
    assert top["remediation"][0]["commands"][0] == (
        "exsa-doctor wait --url http://127.0.0.1:3000 --timeout 60"
    )
    probs = [c["probability"] for c in doc["causes"]]
    assert probs == sorted(probs, reverse=True)
    assert len(doc["causes"]) == len(d.causes)
    assert {p["name"]: p["status"] for p in doc["probes"]}["stack"] == "skipped"
    assert set(doc["findings"][0]) == {"probe", "id", "status", "summary", "data"}
    client = [e for e in doc["timeline"] if e["source"] == "client"]
    assert client == [
        {
            "t": "2025-11-23T23:41:56.127Z",
            "t_epoch": d.failed_at,
            "source": "client",
            "event": "request failed",
            "kind": "failed-request",
        }
    ]
    assert all(ISO_MS.match(e["t"]) for e in doc["timeline"])
    assert [e["t_epoch"] for e in doc["timeline"]] == sorted(e["t_epoch"] for e in doc["timeline"])


def test_hostile_data_becomes_plain_json() -> None:
    doc = _strict_load(render(samples.hostile()))
    by_id = {f["id"]: f["data"] for f in doc["findings"]}
    assert by_id["logs.failed_before_ready"]["ready_at"] is None  # NaN
    assert by_id["logs.failed_before_ready"]["gap_s"] is None  # inf
    missing = by_id["model.missing"]
    assert missing["path"] == "/models/a|b`c</script>.gguf"
    assert missing["extra"]["raw"] == [1, 2]  # bytes key decoded, set sorted into a list
    assert missing["extra"]["nested"] == [{"deep": [None, "\ufffd\ufffd"]}]
    assert by_id["port.owned_by_other"]["cmdline"][0] == samples.HOSTILE  # kept, JSON-escaped
    assert doc["target"]["model"] == samples.HOSTILE


def test_json_safe_converts_and_terminates() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    out = json_safe({"p": PurePosixPath("/a/b"), "t": (1, (2.5, float("nan"))), "c": cyclic})
    assert out["p"] == "/a/b"
    assert out["t"] == [1, [2.5, None]]
    json.dumps(out, allow_nan=False)  # the cycle was cut, not followed forever

    @dataclasses.dataclass
    class Point:
        x: int

    assert json_safe({1: Point(3)}) == {"1": {"x": 3}}
    assert json_safe(object.__new__(Point)) is not None


def test_iso_utc() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(samples.at("2025-11-23T23:41:53.120")) == "2025-11-23T23:41:53.120Z"
    assert iso_utc(float("nan")) is None
    assert iso_utc(1e20) is None
    assert iso_utc(None) is None


def test_schema_is_not_vacuous() -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    doc = _strict_load(render(samples.race()))
    mutations: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d.update(verdict="broken"),
        lambda d: d.pop("timeline"),
        lambda d: d["causes"][0].update(probability=1.5),
        lambda d: d["probes"][0].update(status="fine"),
        lambda d: d.update(started_at="yesterday"),
        lambda d: d["target"].update(extra_key=1),
    ]
    for mutate in mutations:
        broken = json.loads(json.dumps(doc))
        mutate(broken)
        assert not validator.is_valid(broken)


def test_the_documented_example_is_valid() -> None:
    text = DOCS.read_text("utf-8")
    block = text.split("```json", 1)[1].split("```", 1)[0]
    doc = json.loads(block)
    jsonschema.Draft202012Validator(_schema()).validate(doc)
    # every key the schema knows is described in the docs
    for key in ("schema_version", "profile_reason", "t_epoch", "remediation", "duration_s"):
        assert f"`{key}`" in text
    assert math.isclose(doc["timeline"][0]["t_epoch"], samples.at("2025-11-23T23:41:53.120"))


def test_an_offline_report_says_the_address_was_not_probed(tmp_path: Path) -> None:
    from exsa_doctor.api_offline import offline_diagnosis
    from exsa_doctor.render.markdown import render as render_markdown

    log = tmp_path / "pasted.log"
    log.write_text(
        "srv          init: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080\n",
        encoding="utf-8",
    )
    d = offline_diagnosis([log])
    doc = json.loads(render(d))
    assert doc["target"]["offline"] is True
    jsonschema.validate(
        doc,
        json.loads(
            resources.files("exsa_doctor").joinpath("schema/report.schema.json").read_text()
        ),
    )
    assert d.target.where == "offline (the log alone)"
    assert "offline (the log alone)" in render_markdown(d).splitlines()[0]
