"""An inconclusive diagnosis ends with how to tell its candidates apart: each one's check from the
cause table, and for a log read on its own, the run that probes the machine."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

from exsa_doctor.api_offline import offline_diagnosis
from exsa_doctor.causes import load_causes
from exsa_doctor.model import SETTLED_PROBABILITY, Verdict
from exsa_doctor.render import render_as
from exsa_doctor.render.common import MAX_CANDIDATES, tell_apart

REFUSED = (
    "requests.exceptions.ConnectionError: HTTPConnectionPool(host='localhost', port=8080): "
    "Max retries exceeded with url: /v1/chat/completions (Caused by NewConnectionError("
    "'<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: "
    "[Errno 111] Connection refused'))\n"
)
LOADING_503 = '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}\n'


def _paste(tmp_path: Path, text: str, name: str = "pasted log.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bare_refused_paste_lists_its_candidates_with_their_checks(tmp_path: Path) -> None:
    log = _paste(tmp_path, REFUSED)
    d = offline_diagnosis([log])
    # a paste that does not settle it: inconclusive, or a likeliest cause well short of certain
    assert d.verdict is not Verdict.HEALTHY
    assert d.verdict is Verdict.INCONCLUSIVE or d.causes[0].probability < SETTLED_PROBABILITY
    candidates, rerun = tell_apart(d)
    ids = [c.id for c, _ in candidates]
    # a client's "connection refused" alone: a wrong address and a stopped engine both print it
    assert {"wrong-address", "engine-not-running"} <= set(ids), ids
    assert 2 <= len(candidates) <= MAX_CANDIDATES
    assert [c.probability for c, _ in candidates] == sorted(
        (c.probability for c, _ in candidates), reverse=True
    )
    table = {c.id: c for c in load_causes()}
    for cause, check in candidates:
        assert check and "{" not in check, check  # filled in, no placeholder left
        assert check.split()[0] == table[cause.id].confirm.split()[0]
    # the log, quoted for a shell (its name has a space), in the run that probes the machine
    assert rerun == f"exsa-doctor diagnose --url {d.target.url} --log {shlex.quote(str(log))}"


def test_the_reports_end_with_the_checks(tmp_path: Path) -> None:
    d = offline_diagnosis([_paste(tmp_path, REFUSED)])
    candidates, rerun = tell_apart(d)
    assert rerun is not None
    text = render_as(d, "text")
    flat = " ".join(text.split())
    assert "To tell them apart" in text
    for cause, check in candidates:
        assert f"{cause.id} (" in text and " ".join(check.split()) in flat
    assert " ".join(rerun.split()) in flat
    md = render_as(d, "markdown")
    assert "**To tell them apart**" in md and f"`{rerun}`" in md
    page = render_as(d, "html")
    assert '<section id="tell-apart">' in page
    for cause, _check in candidates:
        assert f'<li data-cause-id="{cause.id}">' in page
    # the JSON report's keys are a contract (a strict schema): the checks stay out of it
    report = json.loads(render_as(d, "json"))
    assert all("confirm" not in c for c in report["causes"])


def test_a_conclusive_diagnosis_has_nothing_to_tell_apart(tmp_path: Path) -> None:
    d = offline_diagnosis([_paste(tmp_path, LOADING_503)])
    assert d.verdict is Verdict.UNHEALTHY and d.causes[0].id == "race-condition"
    assert d.causes[0].probability >= SETTLED_PROBABILITY
    assert tell_apart(d) == ([], None)
    assert "To tell them apart" not in render_as(d, "text")
    assert "To tell them apart" not in render_as(d, "markdown")
    assert 'id="tell-apart"' not in render_as(d, "html")


def test_an_unhealthy_verdict_short_of_settled_still_lists_its_candidates(tmp_path: Path) -> None:
    # set apart from the fitted weights: the same paste, its likeliest cause put on either side
    d = offline_diagnosis([_paste(tmp_path, REFUSED)])
    top, *rest = d.causes

    def at(p: float) -> list[str]:
        shown = replace(d, verdict=Verdict.UNHEALTHY, causes=(replace(top, probability=p), *rest))
        return [c.id for c, _ in tell_apart(shown)[0]]

    assert at(SETTLED_PROBABILITY - 0.01)[0] == top.id
    assert len(at(SETTLED_PROBABILITY - 0.01)) >= 2
    assert at(SETTLED_PROBABILITY) == []


def test_a_check_that_cannot_be_filled_in_is_left_out(tmp_path: Path) -> None:
    # hung-during-load's check names the running engine's PID: offline there is none, so the
    # cause carries no check rather than a half-filled command
    d = offline_diagnosis([_paste(tmp_path, REFUSED)])
    (hung,) = [c for c in d.causes if c.id == "hung-during-load"]
    assert "{processes.running:pid}" in next(
        c.confirm for c in load_causes() if c.id == "hung-during-load"
    )
    assert hung.confirm == ""


def test_a_log_from_standard_input_is_never_named_as_a_path() -> None:
    # `--log -`: the log has no path, so the commands name the engine's log instead of "<stdin>"
    d = offline_diagnosis([Path("<stdin>")], inline_logs={"<stdin>": REFUSED.encode("utf-8")})
    candidates, rerun = tell_apart(d)
    assert candidates and rerun is not None
    assert rerun.endswith(" --log ENGINE.log")
    for _cause, check in candidates:
        assert "stdin" not in check, check
    steps = [cmd for c in d.causes for step in c.remediation for cmd in step.commands]
    assert all("stdin" not in cmd for cmd in steps), steps


def test_any_inline_log_is_left_out_of_the_commands_by_the_same_rule() -> None:
    # the API may name an inline log anything: it is the target's inline logs that decide, for
    # the fixes' placeholders and the tell-apart run alike
    d = offline_diagnosis([Path("clipboard")], inline_logs={"clipboard": REFUSED.encode("utf-8")})
    assert d.target.logs == ("clipboard",) and d.target.log_files == ()
    _candidates, rerun = tell_apart(d)
    assert rerun is not None and rerun.endswith(" --log ENGINE.log")
    (race,) = [c for c in d.causes if c.id == "race-condition"]
    assert "--log ENGINE.log" in race.confirm and "clipboard" not in race.confirm


# ------------------------------------------------------- the address the client in the log used


def test_the_commands_name_the_address_the_client_was_refused_on(tmp_path: Path) -> None:
    d = offline_diagnosis([_paste(tmp_path, REFUSED)])
    assert d.target.url == "http://localhost:8080" and d.target.port == 8080
    _candidates, rerun = tell_apart(d)
    assert rerun is not None and "--url http://localhost:8080 " in rerun
    (stopped,) = [c for c in d.causes if c.id == "engine-not-running"]
    commands = [cmd for step in stopped.remediation for cmd in step.commands]
    assert any("http://localhost:8080" in cmd for cmd in commands), commands


def test_an_address_given_with_url_wins_over_the_log(tmp_path: Path) -> None:
    d = offline_diagnosis([_paste(tmp_path, REFUSED)], url="http://10.0.0.5:9000")
    assert d.target.url == "http://10.0.0.5:9000"


def test_an_ipv6_client_address_becomes_a_url(tmp_path: Path) -> None:
    d = offline_diagnosis([_paste(tmp_path, "Error: connect ECONNREFUSED ::1:11434\n")])
    assert d.target.host in ("::1", "[::1]") and d.target.port == 11434
    assert d.target.url == "http://[::1]:11434"


def test_an_address_no_url_can_hold_leaves_the_default(tmp_path: Path) -> None:
    d = offline_diagnosis(
        [
            _paste(
                tmp_path,
                "curl: (7) Failed to connect to localhost port 99999: Connection refused\n",
            )
        ]
    )
    assert d.target.port == 3000  # exsa-engine's default: the log named no usable address
    assert [f.id for f in d.findings if f.id == "logs.client_refused"]


def test_a_timeout_or_a_failed_connect_call_also_gives_the_address(tmp_path: Path) -> None:
    timeout = (
        "requests.exceptions.ReadTimeout: HTTPConnectionPool(host='127.0.0.1', port=5001): "
        "Read timed out. (read timeout=60)\n"
    )
    d = offline_diagnosis([_paste(tmp_path, timeout, "timeout.txt")])
    (found,) = [f for f in d.findings if f.id == "logs.client_timeout"]
    assert "from 127.0.0.1:5001" in found.summary
    assert d.target.url == "http://127.0.0.1:5001"
    go = (
        'Error: Post "http://127.0.0.1:11434/api/generate": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)\n"
    )
    assert offline_diagnosis([_paste(tmp_path, go, "go.txt")]).target.port == 11434
    connect = "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 8000)\n"
    assert offline_diagnosis([_paste(tmp_path, connect, "call.txt")]).target.port == 8000


def test_the_address_moves_and_the_detected_engine_stays(tmp_path: Path) -> None:
    text = LOADING_503 + "curl: (7) Failed to connect to 127.0.0.1 port 8181: Connection refused\n"
    d = offline_diagnosis([_paste(tmp_path, text)])
    assert d.target.url == "http://127.0.0.1:8181"
    assert d.target.profile == "llama-server" and "loading_reply" in d.target.profile_reason


def test_an_engine_older_than_the_model_is_told_apart_by_the_engines_own_version(
    tmp_path: Path,
) -> None:
    # Ollama's runner died and said nothing more: the log holds no line to grep for, so the check
    # for "the engine is older than the model" is the detected engine's own version command
    d = offline_diagnosis(
        [_paste(tmp_path, "Error: llama runner process has terminated: signal: aborted\n")]
    )
    assert d.target.profile == "ollama"
    (older,) = [c for c in d.causes if c.id == "unsupported-architecture"]
    assert older.confirm.startswith("ollama --version")
