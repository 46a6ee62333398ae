"""Log signatures as data: every row checked, the causal reading, mangled pastes, bad tables."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exsa_doctor.parsers.logs import parse_log, unmangle
from exsa_doctor.probes.logs import REFINED_FINDINGS, SIGNATURE_FINDINGS, LogsProbe
from exsa_doctor.profiles import load_builtin
from exsa_doctor.signatures import (
    Hit,
    SignatureError,
    build_table,
    check_gates,
    check_linear,
    literal_gate,
    literal_gates,
    load_table,
    read_chain,
    read_tables,
    render_summary,
)

REPO = Path(__file__).resolve().parents[2]
HOSTILE_LINE = REPO / "fixtures" / "hostile" / "logs" / "giant_line.log"
TABLE = load_table()
ROWS = TABLE.signatures


def test_the_tables_pass_the_strict_check_linear_time_included() -> None:
    strict = build_table(read_tables(), strict=True)
    assert len(strict.signatures) == len(ROWS) >= 100


@pytest.mark.parametrize("sig", ROWS, ids=lambda s: s.id)
def test_each_example_is_matched_by_its_own_row_first(sig: Any) -> None:
    found = TABLE.match_line(sig.example)
    assert found is not None, f"{sig.id}: its example passes no prefilter word or no row"
    assert found[0].id == sig.id, f"{sig.id}'s example is taken by {found[0].id} first"


@pytest.mark.parametrize("sig", ROWS, ids=lambda s: s.id)
def test_each_summary_fills_from_its_example(sig: Any) -> None:
    found = TABLE.match_line(sig.example)
    assert found is not None
    values = {**sig.data, **found[1]}
    text = render_summary(sig.summary, values)
    assert re.search(r"\{[a-z_0-9]+\}", text) is None, text
    assert "…" not in text, f"{sig.id}: a required placeholder is empty on its own example: {text}"


@pytest.mark.parametrize("sig", TABLE.hints, ids=lambda s: s.id)
def test_each_hint_example_raises_its_own_hint_and_is_an_unplaced_line(sig: Any) -> None:
    assert sig.id in {h.id for h, _ in TABLE.hints_of(sig.example)}
    found = TABLE.match_line(sig.example)
    assert found is not None and found[0].kind == "unknown", (sig.id, found and found[0].id)


def test_hint_rows_are_never_tried_as_ordinary_rows() -> None:
    assert TABLE.hints and all(h.kind == "hint" for h in TABLE.hints)
    assert not [s for s in ROWS if s.kind == "hint"]


def _offline(tmp_path: Path, text: str) -> set[str]:
    from exsa_doctor.api_offline import offline_findings

    log = tmp_path / "engine.log"
    log.write_text(text, encoding="utf-8")
    return {f.id for f in offline_findings(log)}


def test_an_unplaced_gpu_line_raises_the_gpu_hint_beside_the_quote(tmp_path: Path) -> None:
    ids = _offline(
        tmp_path, "loading model\nRuntimeError: CUDA kernel frobnication failed on device 0\n"
    )
    assert {"logs.unrecognised_error", "logs.hint_gpu"} <= ids
    assert "logs.hint_permission" not in ids and "logs.gpu_error" not in ids


def test_no_hint_when_a_specific_error_explains_the_run(tmp_path: Path) -> None:
    ids = _offline(
        tmp_path,
        "llama_model_load: error loading model: error loading model architecture: "
        "unknown model architecture: 'gemma9'\n"
        "RuntimeError: CUDA kernel frobnication failed on device 0\n",
    )
    assert "logs.unknown_architecture" in ids
    assert not {i for i in ids if i.startswith("logs.hint_")}


def test_every_finding_a_signature_raises_is_declared_by_the_logs_probe() -> None:
    raised = {s.finding for s in (*ROWS, *TABLE.hints)}
    assert raised <= set(SIGNATURE_FINDINGS)
    assert set(SIGNATURE_FINDINGS) <= set(LogsProbe.emits)
    assert set(REFINED_FINDINGS) <= set(LogsProbe.emits)


def _adversarial_unit(sig: Any) -> str:
    # the row's own example, then its first 24 characters again and again: every literal prefix
    # matches thousands of times and the rest never does
    return sig.example + " " + sig.example[:24] * 40


@pytest.mark.parametrize("sig", (*ROWS, *TABLE.hints), ids=lambda s: s.id)
def test_each_regex_finishes_on_a_1_mb_adversarial_line(sig: Any) -> None:
    unit = _adversarial_unit(sig)
    line = unit * (1_000_000 // len(unit) + 1)
    assert len(line) >= 1_000_000
    # a quadratic pattern would not come back from this (10^12 steps); a linear one does, with
    # the same answer as on one unit of it
    assert (sig.pattern.search(line) is None) == (sig.pattern.search(unit) is None)


def test_the_hostile_giant_line_costs_one_bounded_scan() -> None:
    data = HOSTILE_LINE.read_bytes()
    report = parse_log(data, load_builtin("llama-server"))
    assert report.bytes_parsed == len(data)  # read whole, not skipped
    assert all(len(h.line) <= 400 for h in report.hits)  # each hit's line is capped


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"error: (.*) failed", "unbounded repeat"),
        (r"(a+)+b", "unbounded repeat"),
        (r"x{0,5000}", "bounded above"),
        (r"(a)\1", "back reference"),
        (r"(", "bad regex"),
    ],
)
def test_slow_or_broken_regexes_are_refused(pattern: str, why: str) -> None:
    problem = check_linear(pattern)
    assert problem is not None and why in problem


def test_linear_patterns_are_accepted() -> None:
    assert check_linear(r"unknown model architecture: '(?P<arch>[^']{1,100})'") is None
    assert check_linear(r"Model validation failed:\s{0,20}(?P<reason>.*)") is None
    assert check_linear(r"^Killed\s*$") is None


def _table_with(row_changes: dict[str, Any]) -> dict[str, Any]:
    tables = copy.deepcopy(read_tables())
    tables["llamacpp"]["signature"][0].update(row_changes)
    return tables


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"regex": "(unclosed"}, "bad regex"),
        ({"regex": "a.*b"}, "unbounded repeat"),
        ({"kind": "maybe"}, "kind must be one of"),
        ({"stage": "lunch"}, "stage must be one of"),
        ({"finding": "model.missing"}, "must be a logs.* id"),
        ({"example": "nothing like it"}, "the example does not match"),
        ({"summary": ""}, "missing or empty ['summary']"),
        ({"wrapper": "yes"}, "wrapper must be true or false"),
        ({"kind": "generic", "wrapper": True}, "only on a specific row"),
    ],
)
def test_bad_rows_are_load_errors_naming_file_and_row(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SignatureError) as info:
        build_table(_table_with(change))
    text = str(info.value)
    assert text.startswith("llamacpp.toml, signature llamacpp.unknown-architecture"), text
    assert message in text, text


@pytest.mark.parametrize(
    ("line", "row"),
    [
        # the panic carries a message a row knows: that row places the line
        (
            "thread 'main' panicked at 'Failed to load LLaMA model from \"m.gguf\": invalid magic "
            'number 46554747 (GGUF) for "m.gguf"\', src/lib.rs:54:13',
            "llamacpp.gguf-magic-to-old-loader",
        ),
        ("panic: listen tcp 127.0.0.1:11434: bind: address already in use", "ollama.bind-in-use"),
        # a row of a family tried after Ollama's (os.toml): only the wrapper rank lets it place the line
        (
            "panic: libcudart.so.12: cannot open shared object file: No such file or directory",
            "os.cannot-open-so",
        ),
        # a message no row knows: the panic itself is the reason
        ("thread 'main' panicked at 'frobnicator gave up', src/main.rs:42:5", "exsa.rust-panic"),
        (
            "panic: runtime error: slice bounds out of range [:340] with capacity 339",
            "ollama.go-panic",
        ),
    ],
)
def test_a_wrapper_row_takes_only_messages_no_other_row_knows(line: str, row: str) -> None:
    found = TABLE.match_line(line)
    assert found is not None and found[0].id == row


def test_wrapper_rows_are_tried_after_every_other_specific_row() -> None:
    specific = [s for s in TABLE.signatures if s.kind == "specific"]
    wrappers = [i for i, s in enumerate(specific) if s.wrapper]
    assert wrappers, "no wrapper rows: the rule is untested"
    assert wrappers == list(range(len(specific) - len(wrappers), len(specific)))


def test_a_duplicate_id_is_a_load_error() -> None:
    tables = copy.deepcopy(read_tables())
    tables["ollama"]["signature"].append(dict(tables["llamacpp"]["signature"][0]))
    with pytest.raises(SignatureError, match="appears twice"):
        build_table(tables)


# ------------------------------------------------------------------------------ causal reading


def _hits(text: str) -> list[Hit]:
    return TABLE.scan(text.split("\n"))


LOAD_FAILURE = """\
build: 4410 (9a1e) with cc
llama_model_loader: loaded meta data with 30 key-value pairs
llama_model_load: error loading model: error loading model architecture: unknown model architecture: 'gemma3n'
llama_load_model_from_file: failed to load model
srv    load_model: failed to load model, '/m/x.gguf'
main: exiting due to model loading error"""


def test_the_earliest_specific_error_is_the_root_and_explains_the_generic_lines() -> None:
    chain = read_chain(_hits(LOAD_FAILURE))
    assert chain.root is not None
    assert chain.root.signature.id == "llamacpp.unknown-architecture"
    assert chain.root.groups["arch"] == "gemma3n"
    assert len(chain.generic) == 3
    assert all(h.signature.kind == "generic" for h in chain.generic)


def test_generic_lines_alone_have_no_root() -> None:
    text = "\n".join(LOAD_FAILURE.split("\n")[:2] + LOAD_FAILURE.split("\n")[3:])
    chain = read_chain(_hits(text))
    assert chain.root is None
    assert chain.generic and chain.generic[0].signature.finding == "logs.load_failed"


def test_an_unknown_fatal_line_is_kept_for_quoting() -> None:
    chain = read_chain(_hits("starting\nRuntimeError: the flux capacitor is not charged\n"))
    assert chain.root is None
    assert [h.signature.finding for h in chain.unknown] == ["logs.unrecognised_error"]
    assert "flux capacitor" in chain.unknown[0].line


def test_an_error_the_run_survived_is_context_not_a_root() -> None:
    text = "warning: failed to mlock 4096-byte buffer\nmain: server is listening on http://127.0.0.1:8080"
    hits = _hits(text)
    chain = read_chain(hits, listening_line=1)
    assert chain.root is None
    assert [h.signature.id for h in chain.context] == ["llamacpp.mlock"]


def test_a_bind_failure_after_listening_elsewhere_is_still_a_root() -> None:
    text = "listening\nError: listen tcp 127.0.0.1:11434: bind: address already in use"
    chain = read_chain(_hits(text), listening_line=0)
    assert chain.root is not None and chain.root.signature.finding == "logs.bind_failed"


def test_a_tracebacks_source_lines_are_not_read_but_its_exception_is() -> None:
    # a source line quotes code ("Can't find " is a string in it), not what happened
    text = (
        "Traceback (most recent call last):\n"
        '  File "loader.py", line 12, in open\n'
        "    raise FileNotFoundError(\"Could not find module 'x.dll'\")\n"
        "FileNotFoundError: Could not find module 'C:\\k\\koboldcpp_cublas.dll' (or one of its"
        " dependencies). Try using the full path with constructor syntax."
    )
    hits = _hits(text)
    assert [h.lineno for h in hits] == [3]
    assert hits[0].groups["library"].endswith("koboldcpp_cublas.dll")


def test_a_frozen_programs_traceback_has_no_source_lines_and_its_exception_is_read() -> None:
    # PyInstaller's frames have no source to show: the exception follows the last frame at once
    text = (
        "Initializing dynamic library: koboldcpp_cublas.dll\n"
        "Traceback (most recent call last):\n"
        '  File "PyInstaller\\loader\\pyimod03_ctypes.py", line 53, in __init__\n'
        '  File "ctypes\\__init__.py", line 373, in __init__\n'
        "FileNotFoundError: Could not find module 'C:\\k\\koboldcpp_cublas.dll' (or one of its"
        " dependencies). Try using the full path with constructor syntax.\n"
        "\n"
        "The above exception was the direct cause of the following exception:\n"
    )
    chain = read_chain(_hits(text))
    assert chain.root is not None
    assert chain.root.signature.finding == "logs.missing_library"
    assert chain.root.groups["library"].endswith("koboldcpp_cublas.dll")


# ------------------------------------------------------------------------------ mangled pastes


def test_a_flattened_paste_is_split_back_into_lines() -> None:
    flat = " ".join(LOAD_FAILURE.split("\n"))
    lines = unmangle(flat).split("\n")
    assert len(lines) >= 4
    chain = read_chain(TABLE.scan(lines))
    assert chain.root is not None and chain.root.groups["arch"] == "gemma3n"


def _console_wrap(text: str, width: int) -> str:
    """What a fixed-width console copy makes of a log: every line cut into pieces of `width`."""
    out = []
    for line in text.split("\n"):
        out += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
    return "\n".join(out)


def test_a_console_wrapped_paste_is_joined_back() -> None:
    log = LOAD_FAILURE.replace(
        "key-value pairs",
        "key-value pairs and 807 tensors from C:\\models\\Qwen3-Next-80B-A3B-Instruct-Q8_0.gguf",
    )
    wrapped = _console_wrap(log + '\nTraceback (most recent call last):\n  File "x.py"', 80)
    assert max(len(line) for line in wrapped.split("\n")) == 80  # it was cut
    lines = unmangle(wrapped).split("\n")
    assert lines[:-2] == log.split("\n")
    assert lines[-1] == '  File "x.py"'  # an indented line is a line of its own
    chain = read_chain(TABLE.scan(lines))
    assert chain.root is not None and chain.root.groups["arch"] == "gemma3n"


def test_lines_that_merely_share_a_length_are_not_joined() -> None:
    # an access log's records are all one width, and a rule of "=" fills the console: no wrap
    record = "[GIN] 2025/03/06 - 11:42:21 | 503 |   42.044125ms |       127.0.0.1 | POST /api/"
    text = "\n".join([record, record, "=" * 80, "=" * 80, "Error: done"])
    assert len(record) == 80
    assert unmangle(text) == text


def test_a_json_wrapped_paste_with_escaped_newlines_is_read() -> None:
    wrapped = '{"cause": "' + LOAD_FAILURE.replace("\n", "\\n") + '"}'
    report = parse_log(wrapped.encode(), load_builtin("llama-server"))
    chain = read_chain(report.hits)
    assert chain.root is not None and chain.root.signature.id == "llamacpp.unknown-architecture"


def test_ansi_colours_do_not_hide_a_signature() -> None:
    coloured = "\x1b[31mError: listen tcp 127.0.0.1:11434: bind: address already in use\x1b[0m\n"
    report = parse_log(coloured.encode(), load_builtin("ollama"))
    assert [h.signature.id for h in report.hits] == ["ollama.bind-in-use"]


def test_a_log_cut_at_the_front_still_has_its_root() -> None:
    cut = LOAD_FAILURE[LOAD_FAILURE.index("odel_load: error") :]
    report = parse_log(cut.encode(), load_builtin("llama-server"))
    chain = read_chain(report.hits)
    assert chain.root is not None and chain.root.groups["arch"] == "gemma3n"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_scanning_arbitrary_text_never_raises(text: str) -> None:
    hits = TABLE.scan(text.split("\n"))
    chain = read_chain(hits)
    for hit in hits:
        assert isinstance(hit.summary, str)
    assert chain.root is None or chain.root in hits


def test_the_row_order_puts_specific_rows_first() -> None:
    kinds = [s.kind for s in ROWS]
    order = {"specific": 0, "context": 1, "client": 1, "generic": 2, "unknown": 3}
    assert kinds == sorted(kinds, key=lambda k: order[k])


def _live_ids(tmp_path: Path, text: str) -> set[str]:
    """The logs probe on the same log, as a live diagnosis reads it (not offline)."""
    from exsa_doctor import api
    from exsa_doctor.target import resolve_target

    log = tmp_path / "engine.log"
    log.write_text(text, encoding="utf-8")
    target = resolve_target(logs=(log,), failed_at=None, timeout_s=5.0, environ={})
    return {f.id for f in api.diagnose(target, probes=["logs"]).findings}


QUIET_FRAGMENT = "the vision request returned nothing\nwe checked the nvidia driver page twice\n"


def test_a_pasted_fragment_no_row_knows_still_raises_its_hints(tmp_path: Path) -> None:
    report = parse_log(QUIET_FRAGMENT.encode(), load_builtin("llama-server"))
    assert not report.hits
    assert [h.signature.id for h in report.quiet_hints] == ["hint.gpu"]
    ids = _offline(tmp_path, QUIET_FRAGMENT)
    assert "logs.hint_gpu" in ids and "logs.unrecognised_error" not in ids


def test_quiet_hints_are_for_offline_fragments_only(tmp_path: Path) -> None:
    # live, the other probes speak for the machine; a quiet log's words are not evidence there
    assert not {i for i in _live_ids(tmp_path, QUIET_FRAGMENT) if i.startswith("logs.hint_")}
    # ... while the same live reading does raise hints beside an unplaced error line
    live = _live_ids(tmp_path, "RuntimeError: CUDA kernel frobnication failed on device 0\n")
    assert {"logs.unrecognised_error", "logs.hint_gpu"} <= live


def test_no_quiet_hints_once_a_row_matched_a_line(tmp_path: Path) -> None:
    text = (
        QUIET_FRAGMENT + "curl: (7) Failed to connect to localhost port 3000: Connection refused\n"
    )
    report = parse_log(text.encode(), load_builtin("llama-server"))
    assert report.hits and not report.quiet_hints
    assert not {i for i in _offline(tmp_path, text) if i.startswith("logs.hint_")}


@pytest.mark.parametrize(
    ("regex", "gate"),
    [
        (r"unknown model architecture: '(?P<arch>[^']{1,100})'", "unknown model architecture: '"),
        (r"(?i)CUDA error: out of memory", "cuda error: out of memory"),
        (r"error: (?:a|b) failed to open", " failed to open"),
        (r"abc\x41defgh", "abc"),  # a numeric escape and what follows it end the run
        (r"xyz{2}abcd", "abcd"),  # a repeated character leaves its run
        (r"errors? happened", " happened"),
        (r"ab[c)]defg(h|i)jkl", "defg"),  # a class and a group end runs; their | is inner
        (r"no such file|not found", ""),  # a top-level alternative: no text is certain
        (r"\bab\b", ""),  # shorter than three characters: no gate
        (r"done_reason\"\s{0,3}:", 'done_reason"'),
    ],
)
def test_a_gate_is_the_longest_text_every_match_holds(regex: str, gate: str) -> None:
    assert literal_gate(regex) == gate
    assert check_gates(regex, (gate,) if gate else ())


def test_the_gate_proof_rejects_text_a_match_may_lack() -> None:
    assert not check_gates(r"errors? happened", ("errors",))
    assert not check_gates(r"a(?:bc|de)f", ("bc",))
    with pytest.raises(SignatureError, match="gate"):
        import exsa_doctor.signatures as sigmod

        real = sigmod.literal_gates
        try:
            sigmod.literal_gates = lambda regex: ("not in it",)
            build_table(read_tables(), strict=True)
        finally:
            sigmod.literal_gates = real


@pytest.mark.parametrize(
    ("regex", "gates"),
    [
        (r"(?i)(?:connection refused|ECONNREFUSED)", ("connection refused", "econnrefused")),
        (r"^(?P<x>foo|barbaz) ", ("foo", "barbaz")),  # the first group every match passes
        (r"(?:foo|bar)+ z", ("foo", "bar")),  # a repeat of at least one
        (r"(?:no such file|not found) here", (" here",)),  # a longest text comes first
        (r"(?:error)?xy", ()),  # an optional group proves nothing
        (r"(?:ab|cdef)", ()),  # one alternative without a text of three: nothing is sure
        (r"a(?=bcd)", ()),  # a lookahead is not read
        (r"couldn't bind (?:to|HTTP) server", ("couldn't bind ",)),
    ],
)
def test_gates_one_per_alternative_where_no_text_is_shared(
    regex: str, gates: tuple[str, ...]
) -> None:
    assert literal_gates(regex) == gates
    assert check_gates(regex, gates)


def test_the_alternatives_proof_reads_a_prefix_the_parser_moved_out() -> None:
    # Python's parser turns "ab(?:cd|ce)" style alternations into a shared prefix and a branch
    regex = r"(?:couldn't bind HTTP server socket|couldn't bind to server socket)"
    gates = literal_gates(regex)
    assert gates == ("couldn't bind http server socket", "couldn't bind to server socket")
    assert check_gates(regex, gates)
    assert not check_gates(regex, ("couldn't bind http server socket",))
    assert not check_gates(r"abc(?:def|deg)", ("cdef",))


def test_gated_matching_places_every_corpus_line_as_trying_every_row_would() -> None:
    # the gates only skip rows that could not match: same first row on every real log line
    corpus = REPO / "fixtures" / "realworld"
    lines = [
        line[:8192]
        for log in sorted(corpus.glob("*/*.log"))
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
    ]
    assert len(lines) > 2000
    placed = 0
    for line in lines:
        gated = TABLE.match_line(line)
        folded = line.casefold()
        brute = next(
            ((sig.id, m) for sig in ROWS if (m := sig.pattern.search(line)) is not None), None
        )
        if not any(k in folded for k in TABLE.prefilter):
            brute = None
        assert (gated[0].id if gated else None) == (brute[0] if brute else None), line
        placed += gated is not None
    assert placed > 500
