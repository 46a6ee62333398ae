"""Log signatures as data, and the causal reading of a run's error lines.

One TOML file per family (`llamacpp.toml`, `ollama.toml`, `python.toml`, `os.toml`, `exsa.toml`,
`client.toml`, `generic.toml`, `hints.toml`). A row is a regex with named captures, the finding it
raises, the start-up stage, whether it is `specific` (a reason), `generic` (a consequence: "failed
to load model", an exit status), `context` (a fact that explains nothing alone), `client` (what a
client printed), `unknown` (a fatal-looking line no other row knows) or `hint` (a word in such an
unknown line that leans towards a kind of cause: a GPU, memory, a flag; every hint that matches is
raised, with weights fitted like any other evidence), a summary with `{capture}` placeholders (a
`[...]` segment is dropped when a placeholder in it has no value) and an example line that the
regex must match.

Reading (`read_chain`): in the newest run, the earliest specific error is the root; the generic
lines after it are its consequences, never a cause of their own. Generic lines alone say that the
engine failed without saying why. A fatal-looking line that no row knows is quoted as
`logs.unrecognised_error`, never mapped to a confident wrong cause. Specific errors before the run
listened are survivable warnings (demoted to context).

Every regex is checked (in the tests, strict) to run in linear time: an unbounded repeat may only
stand at the end of the pattern (elsewhere repeats are bounded, `{0,300}`), so one 1 MB line costs
a bounded amount of work per position. Lines are tried only when they contain one of the
`prefilter` substrings (a plain `in` test), so an ordinary log costs a few milliseconds.

A row's regex is compiled the first time a line could match it: each row has `gates`, texts of
which every match must contain one (read off the regex by `literal_gates`: its longest literal
text, or one per alternative), and a line with none of them is not tried. Compiling three hundred
regexes costs more than reading a pasted log (#13's 0.3 s budget), and a log touches few of them.
The strict check proves each row's gates with Python's own regex parser (`check_gates`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import re._constants as sre_constants
    import re._parser as sre_parse
else:  # pragma: no cover - exercised on 3.10 only
    import sre_constants
    import sre_parse

FAMILIES = ("exsa", "llamacpp", "ollama", "python", "os", "client", "generic", "hints")
KINDS = ("specific", "generic", "context", "client", "unknown", "hint")
STAGES = (
    "arguments",
    "libraries",
    "model-open",
    "model-load",
    "weights",
    "kv-cache",
    "compute-buffer",
    "bind",
    "serve",
    "unknown",
)
_ROW_KEYS = frozenset(
    {"id", "regex", "finding", "stage", "kind", "summary", "example", "data", "note", "wrapper"}
)
_REQUIRED = ("id", "regex", "finding", "stage", "kind", "summary", "example")
_ALIAS = re.compile(r"^(?P<base>[A-Za-z_]+?)\d+$")
_PLACE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
MAX_LINE_CHARS = 8192
_TRACEBACK_FRAME = re.compile(r'^\s{0,8}File "[^"\n]{1,1000}", line \d{1,7}')
# A frozen program (PyInstaller, a zipapp) has no source to show: its frame line is followed by
# the next frame or by the exception itself, which starts at the margin with the exception's name.
_EXCEPTION_RECORD = re.compile(r"[A-Za-z_][\w.]{0,200}(?:Error|Exception|Exit|Interrupt|Warning)\b")
MAX_BOUNDED_REPEAT = 1000
# how many lines of a run are read at most: its first and its last ones
HEAD_LINES = 4000
TAIL_LINES = 4000
# a run no row matched is read for hints in its first and last few lines only
HINT_HEAD_LINES = 200
HINT_TAIL_LINES = 200


class SignatureError(ValueError):
    """A signature table that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Signature:
    """One row of a signature table."""

    id: str
    family: str
    regex: str
    finding: str
    stage: str
    kind: str
    summary: str
    example: str
    data: Mapping[str, Any] = field(default_factory=dict)
    gates: tuple[str, ...] = ()  # casefolded texts, one of which every match holds (() = none)
    # a specific row whose line carries another program's message (a panic's, an assertion's):
    # tried after every other specific row, so a row that knows the message reads it first
    wrapper: bool = False

    @property
    def pattern(self) -> re.Pattern[str]:
        """The compiled regex (compiled on first use, shared by rows with the same regex)."""
        return compiled(self.regex)

    def may_match(self, folded: str) -> bool:
        """Whether a line (casefolded) holds one of the row's gate texts."""
        return not self.gates or any(g in folded for g in self.gates)


@cache
def compiled(regex: str) -> re.Pattern[str]:
    """A row's regex, compiled once per process."""
    try:
        return re.compile(regex, re.MULTILINE)
    except re.error as exc:
        raise SignatureError(f"bad regex {regex!r}: {exc}") from exc


@dataclass(frozen=True)
class Hit:
    """One line matched by one signature."""

    signature: Signature
    lineno: int
    line: str
    groups: Mapping[str, str]

    @property
    def values(self) -> dict[str, Any]:
        """The row's constant data, then the captures (captures win)."""
        merged: dict[str, Any] = dict(self.signature.data)
        merged.update(self.groups)
        return merged

    @property
    def summary(self) -> str:
        return render_summary(self.signature.summary, self.values)


@dataclass(frozen=True)
class Chain:
    """A run's error lines read as a causal chain."""

    root: Hit | None
    after: tuple[Hit, ...]  # specific lines after the root (consequences or further errors)
    generic: tuple[Hit, ...]  # consequences ("failed to load model", exit statuses)
    unknown: tuple[Hit, ...]  # fatal-looking lines no row knows
    context: tuple[Hit, ...]  # facts, and specific lines the run survived
    client: tuple[Hit, ...]  # what a client printed


@dataclass(frozen=True)
class Table:
    """Every signature, in priority order, with the prefilter."""

    signatures: tuple[Signature, ...]
    prefilter: tuple[str, ...]
    hints: tuple[Signature, ...] = ()  # kind "hint": read only on lines no other row placed

    def match_line(self, line: str) -> tuple[Signature, dict[str, str]] | None:
        """The first row (by kind, then file order) that matches this line."""
        folded = line.casefold()
        if not any(k in folded for k in self.prefilter):
            return None
        for sig in self.signatures:
            if not sig.may_match(folded):
                continue
            m = sig.pattern.search(line)
            if m is not None:
                return sig, groups_of(m)
        return None

    def hints_of(self, line: str) -> list[tuple[Signature, dict[str, str]]]:
        """Every hint row that matches a line no row could place (all of them, not the first)."""
        out: list[tuple[Signature, dict[str, str]]] = []
        for sig in self.hints:
            m = sig.pattern.search(line)
            if m is not None:
                out.append((sig, groups_of(m)))
        return out

    def hint_scan(self, lines: Sequence[str], start: int = 0) -> list[Hit]:
        """The first line each hint row matches, in a run where no row matched any line.

        Reads the run's first and last few hundred lines; one hit per hint row, in line order.
        """
        found: dict[str, Hit] = {}
        for idx, line in _readable(lines, start, len(lines), HINT_HEAD_LINES, HINT_TAIL_LINES):
            for sig, groups in self.hints_of(line):
                found.setdefault(sig.id, Hit(sig, idx, line.strip()[:400], groups))
            if len(found) == len(self.hints):
                break
        return sorted(found.values(), key=lambda h: h.lineno)

    def scan(self, lines: Sequence[str], start: int = 0, end: int | None = None) -> list[Hit]:
        """Hits in `lines[start:end]`, reading at most the first and last few thousand lines."""
        end = len(lines) if end is None else min(end, len(lines))
        hits: list[Hit] = []
        for idx, line in _readable(lines, start, end, HEAD_LINES, TAIL_LINES):
            found = self.match_line(line)
            if found is not None:
                sig, groups = found
                hits.append(Hit(signature=sig, lineno=idx, line=line.strip()[:400], groups=groups))
        return hits


def _readable(
    lines: Sequence[str], start: int, end: int, head: int, tail: int
) -> Iterator[tuple[int, str]]:
    """(index, line capped) of `lines[start:end]`: only the first `head` and last `tail` of a long
    run, never a Python traceback's source line (code, not what happened), never a blank one."""
    indexes: Iterable[int]
    if end - start > head + tail:
        indexes = [*range(start, start + head), *range(end - tail, end)]
    else:
        indexes = range(start, end)
    for idx in indexes:
        line = lines[idx][:MAX_LINE_CHARS]
        if idx > 0 and _TRACEBACK_FRAME.match(lines[idx - 1]) and not _EXCEPTION_RECORD.match(line):
            continue
        if line.strip():
            yield idx, line


def groups_of(m: re.Match[str]) -> dict[str, str]:
    """Named captures that matched; `name2` fills `name` when that one is empty."""
    found = {k: v.strip() for k, v in m.groupdict().items() if v is not None and v.strip()}
    for name in list(found):
        alias = _ALIAS.match(name)
        if alias and alias["base"] not in found:
            found[alias["base"]] = found[name]
    return {k: v for k, v in found.items() if not _ALIAS.match(k)}


def render_summary(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{name}`; a `[...]` segment whose placeholders are not all known is dropped."""

    def known(segment: str) -> bool:
        return all(values.get(name) not in (None, "") for name in _PLACE.findall(segment))

    text = _OPTIONAL.sub(lambda m: m.group(1) if known(m.group(1)) else "", template)
    return _PLACE.sub(lambda m: str(values.get(m.group(1)) or "…"), text)


def read_chain(hits: Sequence[Hit], listening_line: int | None = None) -> Chain:
    """The causal reading of one run's hits (in line order).

    `listening_line`: where the run said it listens; specific errors before it did not end the run.
    """
    root: Hit | None = None
    after: list[Hit] = []
    generic: list[Hit] = []
    unknown: list[Hit] = []
    context: list[Hit] = []
    client: list[Hit] = []
    for hit in sorted(hits, key=lambda h: h.lineno):
        kind = hit.signature.kind
        survived = listening_line is not None and hit.lineno < listening_line
        if kind == "client":
            client.append(hit)
        elif kind == "context" or (kind == "specific" and survived):
            context.append(hit)
        elif kind == "specific":
            if root is None:
                root = hit
            else:
                after.append(hit)
        elif kind == "generic":
            if not survived:
                generic.append(hit)
        elif not survived:
            unknown.append(hit)
    return Chain(
        root=root,
        after=tuple(after),
        generic=tuple(generic),
        unknown=tuple(unknown),
        context=tuple(context),
        client=tuple(client),
    )


# ------------------------------------------------------------------------------------ loading


def check_linear(pattern: str) -> str | None:
    """Why a pattern may backtrack more than linearly, or None.

    Allowed: bounded repeats anywhere; an unbounded repeat only where nothing but the end of the
    pattern (or `$`, or an optional tail) follows it, so a failed attempt cannot rescan the line.
    """
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        return f"bad regex: {exc}"
    problems: list[str] = []

    def tail_is_trivial(items: Sequence[Any]) -> bool:
        # what may follow an unbounded repeat: anchors ($, \b) and parts that may match nothing
        return all(
            op == sre_constants.AT
            or (op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT) and av[0] == 0)
            for op, av in items
        )

    def walk(items: Sequence[Any], at_end: bool) -> None:
        seq = list(items)
        for i, (op, av) in enumerate(seq):
            last = at_end and tail_is_trivial(seq[i + 1 :])
            if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
                _lo, hi, sub = av
                if hi == sre_constants.MAXREPEAT and not last:
                    problems.append("an unbounded repeat before the end of the pattern")
                elif hi != sre_constants.MAXREPEAT and hi > MAX_BOUNDED_REPEAT:
                    problems.append(f"a repeat bounded above {MAX_BOUNDED_REPEAT}")
                walk(sub, False)
            elif op == sre_constants.SUBPATTERN:
                walk(av[-1], last)
            elif op == sre_constants.BRANCH:
                for branch in av[1]:
                    walk(branch, last)
            elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
                walk(av[1], False)
            elif op == sre_constants.GROUPREF:
                problems.append("a back reference")

    walk(list(parsed), True)  # type: ignore[call-overload]
    return problems[0] if problems else None


_QUANTIFIER = re.compile(r"\{\d*,?\d*\}")


def literal_gate(regex: str, minimum: int = 3) -> str:
    """The longest literal text every match of `regex` contains, casefolded ("" if none is sure).

    A cheap reading of the regex text (no parser: that is what costs at load time). It reads only
    the top level: a group, a class, an escape such as `\\s`, `.`, an anchor, or a repeat ends a
    run of literal characters (a repeated character is dropped from its run); a top-level `|`
    means no text is certain (`literal_gates` reads the alternatives).
    """
    runs: list[str] = []
    run: list[str] = []

    def cut() -> None:
        if run:
            runs.append("".join(run))
            run.clear()

    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            nxt = regex[i + 1 : i + 2]
            if not nxt:
                return ""
            i += 2
            if nxt.isalnum():  # a class, an anchor, a control or numeric escape
                cut()
                if nxt in "xuUN0123456789":  # and the digits or name that follow it
                    while i < n and (regex[i].isalnum() or regex[i] in "{}"):
                        i += 1
            else:
                run.append(nxt)
        elif c in "([":
            cut()
            i = _skip_group(regex, i) if c == "(" else _skip_class(regex, i)
            if i < 0:
                return ""
        elif c == "|":
            return ""
        elif c in "?*+" or (c == "{" and _QUANTIFIER.match(regex, i)):
            if run:
                run.pop()
            cut()
            end = _QUANTIFIER.match(regex, i)
            i = end.end() if c == "{" and end is not None else i + 1
        elif c in ".^${":
            cut()
            i += 1
        else:
            run.append(c)
            i += 1
    cut()
    best = max(runs, key=len, default="")
    return best.casefold() if len(best) >= minimum else ""


_CLASS_STOP = re.compile(r"[\\\]]")  # what ends a character class, or escapes its end
_GROUP_STOP = re.compile(r"[\\\[()]")  # what opens or closes a group, a class or an escape
_BRANCH_STOP = re.compile(r"[\\\[(|]")  # a top-level "|", or what to skip to find one


def _skip_class(regex: str, i: int) -> int:
    """The index after the character class that starts at `regex[i] == "["`, or -1."""
    j = i + 1
    if regex[j : j + 1] == "^":
        j += 1
    if regex[j : j + 1] == "]":
        j += 1
    while (m := _CLASS_STOP.search(regex, j)) is not None:
        if m.group() == "]":
            return m.end()
        j = m.end() + 1  # an escape: skip the escaped character
    return -1


def _skip_group(regex: str, i: int) -> int:
    """The index after the group that starts at `regex[i] == "("`, or -1."""
    depth, j = 0, i
    # jump from one bracket or escape to the next: the characters between cannot matter
    while (m := _GROUP_STOP.search(regex, j)) is not None:
        c, j = m.group(), m.start()
        if c == "\\":
            j += 2
            continue
        if c == "[":
            j = _skip_class(regex, j)
            if j < 0:
                return -1
            continue
        if c == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return -1


MAX_GATES = 12


def literal_gates(regex: str) -> tuple[str, ...]:
    """Texts, casefolded, one of which every match of `regex` holds (() if none is sure).

    The longest literal text of the top level (`literal_gate`); where there is none, one text per
    alternative, of a top-level `a|b` or of the first group every match passes through.
    `check_gates` proves the answer with Python's parser in the tests.
    """
    branches = _split_alternatives(regex)
    if branches is None:
        return ()
    if len(branches) > 1:
        found: list[str] = []
        for branch in branches:
            sub = literal_gates(branch)
            if not sub:
                return ()
            found.extend(sub)
        unique = tuple(dict.fromkeys(found))
        return unique if len(unique) <= MAX_GATES else ()
    best = literal_gate(regex)
    if best:
        return (best,)
    for body in _required_groups(regex):
        sub = literal_gates(body)
        if sub:
            return sub
    return ()


def _split_alternatives(regex: str) -> list[str] | None:
    """`regex` split at its top-level `|` (None when its brackets do not close)."""
    parts: list[str] = []
    start = i = 0
    while (m := _BRANCH_STOP.search(regex, i)) is not None:
        c, i = m.group(), m.start()
        if c == "\\":
            i += 2
        elif c in "([":
            i = _skip_group(regex, i) if c == "(" else _skip_class(regex, i)
            if i < 0:
                return None
        else:  # a top-level "|"
            parts.append(regex[start:i])
            start = i = i + 1
    parts.append(regex[start:])
    return parts


_GROUP_OPENING = re.compile(r"\((?:\?:|\?P<[A-Za-z_]\w*>|\?[aiLmsux]+:|(?!\?))")


def _required_groups(regex: str) -> Iterator[str]:
    """The bodies of the top-level groups every match passes through (not `(...)?`, `(...)*`,
    `(...){0,n}`, lookarounds or flag groups), in order."""
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _skip_class(regex, i)
            if i < 0:
                return
        elif c == "(":
            end = _skip_group(regex, i)
            if end < 0:
                return
            opening = _GROUP_OPENING.match(regex, i)
            after = regex[end : end + 2]
            optional = after[:1] in ("?", "*") or after in ("{0", "{,")
            if opening is not None and not optional:
                yield regex[opening.end() : end - 1]
            i = end
        else:
            i += 1


def check_gates(regex: str, gates: tuple[str, ...]) -> bool:
    """Whether every match of `regex` holds one of `gates` (proved on Python's own parse)."""
    if not gates:
        return True
    return _proves(sre_parse.parse(regex).data, gates)


def _proves(items: Sequence[Any], gates: tuple[str, ...], prefix: str = "") -> bool:
    # a stretch of literal characters is in every match; so is what a group, a repeat of at
    # least one, or every alternative of a branch holds, each read on from the stretch before it
    # (the parser moves an alternation's shared prefix out in front of it)
    run: list[str] = list(prefix)
    for op, av in [*items, (None, None)]:
        if op == sre_constants.LITERAL and isinstance(av, int):
            run.append(chr(av))
            continue
        text = "".join(run)
        if any(g in text.casefold() for g in gates):
            return True
        if op == sre_constants.SUBPATTERN and _proves(av[-1].data, gates, text):
            return True
        repeat = op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)
        if repeat and av[0] >= 1 and _proves(av[2].data, gates, text):
            return True
        if op == sre_constants.BRANCH and all(_proves(b.data, gates, text) for b in av[1]):
            return True
        run = []
    return False


def parse_table(
    raw: Mapping[str, Any],
    family: str,
    known_findings: frozenset[str] | None = None,
    *,
    strict: bool = True,
    gates_of: Mapping[str, Sequence[str]] | None = None,
) -> list[Signature]:
    """One family's rows, checked: unknown keys, missing fields, bad regexes, examples; with
    `strict`, also that every regex runs in linear time (a test runs it strict on every row).
    `gates_of`: each row's gates already derived (the shipped cache), by row id."""
    rows = raw.get("signature", [])
    extra = set(raw) - {"signature", "prefilter"}
    if extra:
        raise SignatureError(f"{family}.toml: unknown top-level key(s) {sorted(extra)}")
    out: list[Signature] = []
    for n, row in enumerate(rows, 1):
        where = f"{family}.toml, signature {row.get('id') or f'#{n}'}"
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise SignatureError(f"{where}: unknown key(s) {sorted(unknown)}")
        missing = [k for k in _REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
        if missing:
            raise SignatureError(f"{where}: missing or empty {missing}")
        if row["kind"] not in KINDS:
            raise SignatureError(f"{where}: kind must be one of {KINDS}")
        if row["stage"] not in STAGES:
            raise SignatureError(f"{where}: stage must be one of {STAGES}")
        if not row["finding"].startswith("logs."):
            raise SignatureError(f"{where}: finding must be a logs.* id")
        if known_findings is not None and row["finding"] not in known_findings:
            raise SignatureError(f"{where}: unknown finding id {row['finding']}")
        if row["kind"] == "hint":
            gates: tuple[str, ...] = ()
        elif gates_of is not None and row["id"] in gates_of:
            gates = tuple(gates_of[row["id"]])
        else:
            gates = literal_gates(row["regex"])
        if strict:
            slow = check_linear(row["regex"])
            if slow:
                raise SignatureError(f"{where}: regex rejected: {slow}")
            if compiled(row["regex"]).search(row["example"]) is None:
                raise SignatureError(f"{where}: the example does not match the regex")
            if not check_gates(row["regex"], gates):
                raise SignatureError(f"{where}: gates {gates!r} are not text every match holds")
        data = row.get("data", {})
        if not isinstance(data, dict):
            raise SignatureError(f"{where}: data must be a table")
        wrapper = row.get("wrapper", False)
        if not isinstance(wrapper, bool) or (wrapper and row["kind"] != "specific"):
            raise SignatureError(
                f"{where}: wrapper must be true or false, and only on a specific row"
            )
        out.append(
            Signature(
                id=row["id"],
                family=family,
                regex=row["regex"],
                finding=row["finding"],
                stage=row["stage"],
                kind=row["kind"],
                summary=row["summary"],
                example=row["example"],
                data=dict(data),
                gates=gates,
                wrapper=wrapper,
            )
        )
    return out


def build_table(
    tables: Mapping[str, Mapping[str, Any]],
    *,
    strict: bool = True,
    gates_of: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """Rows of all families in priority order: specific (wrappers last), then context/client,
    generic, unknown."""
    rows: list[Signature] = []
    prefilter: list[str] = []
    seen: set[str] = set()
    for family, raw in tables.items():
        for sig in parse_table(raw, family, strict=strict, gates_of=gates_of):
            if sig.id in seen:
                raise SignatureError(f"{family}.toml: signature {sig.id} appears twice")
            seen.add(sig.id)
            rows.append(sig)
        prefilter.extend(str(k).lower() for k in raw.get("prefilter", []))
    order = {"specific": 0, "context": 1, "client": 1, "generic": 2, "unknown": 3}
    hints = tuple(s for s in rows if s.kind == "hint")
    rows = [s for s in rows if s.kind != "hint"]
    rows.sort(key=lambda s: (order[s.kind], s.wrapper))  # stable: file order within a kind
    table = Table(signatures=tuple(rows), prefilter=tuple(dict.fromkeys(prefilter)), hints=hints)
    for sig in rows:
        if strict and not any(k in sig.example.casefold() for k in table.prefilter):
            raise SignatureError(
                f"{sig.family}.toml, signature {sig.id}: its example holds no prefilter word"
            )
    return table


CACHE_NAME = "table.json"


def table_texts() -> dict[str, bytes]:
    """The shipped family files' bytes, by family."""
    base = resources.files("exsa_doctor").joinpath("signatures")
    return {family: base.joinpath(f"{family}.toml").read_bytes() for family in FAMILIES}


def tables_digest(texts: Mapping[str, bytes]) -> str:
    """A digest of the family files' bytes: what the shipped cache must have been made from."""
    h = hashlib.sha256()
    for family in FAMILIES:
        h.update(family.encode() + b"\0" + texts[family] + b"\0")
    return h.hexdigest()


def read_tables(texts: Mapping[str, bytes] | None = None) -> dict[str, Mapping[str, Any]]:
    """The shipped tables as parsed TOML, by family."""
    if sys.version_info >= (3, 11):  # imported here: a run that finds the cache never parses TOML
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib

    texts = table_texts() if texts is None else texts
    tables: dict[str, Mapping[str, Any]] = {}
    for family in FAMILIES:
        try:
            tables[family] = tomllib.loads(texts[family].decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SignatureError(f"{family}.toml: {exc}") from exc
    return tables


def cache_document(texts: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """What `table.json` holds: the TOML files parsed and every row's gates, with the digest of
    the files they were read from (scripts/build_signature_cache.py writes it)."""
    texts = table_texts() if texts is None else texts
    tables = read_tables(texts)
    table = build_table(tables, strict=False)
    return {
        "digest": tables_digest(texts),
        "tables": tables,
        "gates": {s.id: list(s.gates) for s in table.signatures},
    }


def cache_for(raw: bytes, texts: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The cache document in `raw` if it was made from exactly these files, else None."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("digest") != tables_digest(texts):
        return None
    return doc


def _cached(texts: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The shipped cache, if it was made from exactly these files (else None: read the TOML)."""
    try:
        raw = resources.files("exsa_doctor").joinpath("signatures").joinpath(CACHE_NAME)
        return cache_for(raw.read_bytes(), texts)
    except OSError:
        return None


@cache
def load_table() -> Table:
    """The shipped signature tables, checked (the linear-time proof runs in the tests).

    The TOML files are the knowledge; `table.json` beside them is the same tables already parsed,
    with each row's gates, used only while the files' digest matches it (parsing 337 rows of TOML
    and reading their gates is about a seventh of an offline diagnosis). An edited row without a
    rebuilt cache is read from the TOML, and a test says the cache is stale."""
    texts = table_texts()
    doc = _cached(texts)
    if doc is not None:
        return build_table(doc["tables"], strict=False, gates_of=doc["gates"])
    return build_table(read_tables(texts), strict=False)
