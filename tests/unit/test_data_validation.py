"""Data checked when it is loaded: engine profiles and the cause table.

A typo in a profile or in causes.toml is a load error naming the file and the entry, not a
surprise when some probe trips on it later.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exsa_doctor import profiles
from exsa_doctor.causes import (
    CauseTableError,
    finding_catalogue,
    load_causes,
    parse_causes,
    shipped_table,
)
from exsa_doctor.profiles import ProfileError, all_builtin, load_file

GOOD_PROFILE = """
name = "my-llm"
description = "our in-house server"
default_port = 9000
[process]
executables = ["my-llm"]
[health]
path = "/healthz"
ready_status = [200]
[logs.markers]
listening = 'serving on (?P<address>\\S+)'
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my-llm.toml"
    path.write_text(text)
    return path


def test_every_builtin_profile_passes_its_schema() -> None:
    assert {p.name for p in all_builtin()} == {
        "exsa-engine",
        "llama-cpp-python",
        "llama-server",
        "ollama",
        "vllm",
    }


def test_a_good_profile_file_loads_and_a_commands_table_is_welcome(tmp_path: Path) -> None:
    text = GOOD_PROFILE + '[commands]\nstart = "my-llm --port {port}"\nready = "my-llm-ready"\n'
    profile = load_file(write(tmp_path, text))
    assert profile.name == "my-llm"
    assert profile.health.path == "/healthz"


@pytest.mark.parametrize(
    "edit, entry, problem",
    [
        (('path = "/healthz"', 'pathh = "/healthz"'), "health.pathh", "did you mean 'path'"),
        (("[process]", "[proces]"), "proces", "did you mean 'process'"),
        (("default_port = 9000", 'default_port = "9000"'), "default_port", "a port number"),
        (("default_port = 9000", "default_port = 70000"), "default_port", "a port number"),
        (("ready_status = [200]", 'ready_status = ["200"]'), "health.ready_status", "integers"),
        (
            ("listening = 'serving on (?P<address>\\S+)'", "listening = 'serving on (unclosed'"),
            "logs.markers.listening",
            "bad regex 'serving on (unclosed'",
        ),
        (
            ('executables = ["my-llm"]', 'executables = ["my-llm"]\ncmdline_regexes = ["["]'),
            "process.cmdline_regexes",
            "bad regex '['",
        ),
        (('path = "/healthz"', ""), "health.path", "missing"),
        (('name = "my-llm"', ""), "name", "missing"),
        (('name = "my-llm"', 'name = "my-llm"\ngeneration = "x"'), "[generation]", "a table"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_and_the_entry(
    tmp_path: Path, edit: tuple[str, str], entry: str, problem: str
) -> None:
    old, new = edit
    assert old in GOOD_PROFILE
    path = write(tmp_path, GOOD_PROFILE.replace(old, new, 1))
    with pytest.raises(ProfileError) as err:
        load_file(path)
    message = str(err.value)
    assert f"profile file {path}: {entry}: " in message, message
    assert problem in message, message


def test_adding_a_profile_key_is_one_line_in_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD_PROFILE.replace("[health]", '[health]\nprobe_every = "1s"'))
    with pytest.raises(ProfileError, match=r"health\.probe_every: unknown key"):
        load_file(path)
    monkeypatch.setitem(profiles.PROFILE_SCHEMA, "health", {**profiles.PROFILE_SCHEMA["health"]})
    monkeypatch.setitem(profiles.PROFILE_SCHEMA["health"], "probe_every", "str")
    assert load_file(path).name == "my-llm"


def test_the_cli_turns_a_bad_profile_file_into_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_PROFILE.replace("[logs.markers]", "[logs.marker]"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exsa_doctor",
            "diagnose",
            "--url",
            "http://127.0.0.1:9",
            "--profile-file",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"profile file {path}: logs.marker: unknown key (did you mean 'markers'?)" in (
        done.stderr
    ), done.stderr


# ------------------------------------------------------------------------------- causes


def cause(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "c",
        "title": "A cause",
        "prior": 0.5,
        "impact": "high",
        "description": "what it is",
        "confirm": "how to see it",
        "evidence": {"health.refused": 2.0, "health.ok": 0.1},
        "remediation": [{"text": "do this", "commands": ["echo {port.owned_by_other:pid}"]}],
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


CATALOGUE = frozenset({"health.refused", "health.ok", "port.owned_by_other"})


def test_the_shipped_cause_table_loads_against_the_probes_catalogue() -> None:
    assert len(load_causes()) >= 11
    assert "port.owned_by_other" in finding_catalogue()


def test_the_shipped_causes_name_only_catalogued_findings() -> None:
    # load_causes() leaves this check to the tests: evidence, `when` and placeholders alike
    catalogue = finding_catalogue()
    checked = parse_causes(shipped_table(), source="causes.toml", findings=catalogue)
    assert [c.id for c in checked] == [c.id for c in load_causes()]
    raw = shipped_table()
    raw["cause"][0]["remediation"][0]["when"] = "logs.no_such_finding"
    with pytest.raises(CauseTableError, match=r"unknown finding id 'logs\.no_such_finding'"):
        parse_causes(raw, source="causes.toml", findings=catalogue)


def test_a_good_cause_and_a_seed_prior_are_accepted() -> None:
    (loaded,) = parse_causes({"cause": [cause(seed_prior=0.3)]}, findings=CATALOGUE)
    assert loaded.id == "c" and loaded.evidence["health.refused"] == 2.0


@pytest.mark.parametrize(
    "row, problem",
    [
        (cause(evidnce={}), "cause c: unknown key 'evidnce' (did you mean 'evidence'?)"),
        (cause(title=None), "cause c: missing title"),
        (cause(confirm=None, description=None), "cause c: missing description, confirm"),
        (cause(seed_prior=1.5), "cause c: seed_prior must be"),
        (cause(prior="high"), "cause c: 'prior' must be of type float"),
        (
            cause(evidence={"health.refuse": 2.0}),
            "cause c: evidence: unknown finding id 'health.refuse' (did you mean 'health.refused'?)",
        ),
        (
            cause(remediation=[{"text": "x", "when": "port.owned"}]),
            "cause c: remediation step 1: when: unknown finding id 'port.owned'",
        ),
        (
            cause(remediation=[{"text": "x", "commands": ["kill {port.owner:pid}"]}]),
            "cause c: remediation step 1: placeholder: unknown finding id 'port.owner'",
        ),
        (
            cause(remediation=[{"text": "x", "command": ["ls"]}]),
            "cause c: remediation step 1: unknown key 'command' (did you mean 'commands'?)",
        ),
        (cause(remediation=[{"commands": ["ls"]}]), "cause c: missing remediation step 1: text"),
    ],
)
def test_a_bad_cause_is_refused_naming_the_file_and_the_entry(
    row: dict[str, Any], problem: str
) -> None:
    with pytest.raises(CauseTableError) as err:
        parse_causes({"cause": [row]}, source="causes.toml", findings=CATALOGUE)
    assert str(err.value).startswith("causes.toml: "), err.value
    assert problem in str(err.value), err.value


def test_a_when_with_a_condition_names_its_finding() -> None:
    row = cause(remediation=[{"text": "x", "when": "port.owned_by_other:user=root"}])
    assert parse_causes({"cause": [row]}, findings=CATALOGUE)[0].id == "c"
    bad = cause(remediation=[{"text": "x", "when": "port.owned_by:user=root"}])
    with pytest.raises(CauseTableError, match=r"unknown finding id 'port\.owned_by'"):
        parse_causes({"cause": [bad]}, findings=CATALOGUE)


def test_a_placeholder_of_the_target_is_no_finding_id() -> None:
    row = cause(remediation=[{"text": "x", "commands": ["curl {target:url}"]}])
    assert parse_causes({"cause": [row]}, findings=CATALOGUE)[0].id == "c"
