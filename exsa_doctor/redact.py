"""Redaction of secrets before anything leaves the machine.

Detection comes from three places, all kept as data in `redaction.toml`:
1. the plugins of Yelp's `detect-secrets` (AWS, GitHub, GitLab, Slack, JWT, OpenAI, Stripe,
   private keys, credentials in URLs, keyword assignments, high-entropy strings...), used as a
   library on strings in memory: no scan of files, no baseline written anywhere;
2. our own rules for engines: `--api-key`/`--hf-token` flags, Hugging Face and project-scoped
   OpenAI tokens, `Authorization:` headers, and `NAME=value` where NAME is a secret variable
   (`HF_TOKEN`, `LLAMA_ARG_API_KEY`, `VLLM_API_KEY`, `*_PASSWORD`...);
3. every secret found once is remembered and replaced wherever it recurs.

Only the secret's span is replaced, by `[REDACTED:<kind>:<tag>]`, where `<tag>` is 4 hex digits of
an HMAC-SHA256 of the secret under a key drawn at random for each `Redactor` (one bundle) and
never written out: one secret can be followed across the files of one bundle, but the tag
cannot be checked against guesses, and the same secret gets another tag in another bundle.

`detect-secrets` costs about 0.1 s to import, so it is imported on first use only (a bundle),
never by `exsa-doctor --version` or `diagnose`.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import html
import importlib
import json
import re
import secrets as random_source
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TAG_PREFIX = "[REDACTED:"
TAG_PATTERN = re.compile(r"\[REDACTED:(?P<kind>[a-z0-9-]+):(?P<tag>[0-9a-f]{4})\]")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_JWT_CHARS = _TOKEN_CHARS | frozenset(".+/=")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]{16,}")
# a keyword's value ends at a space, a quote, a separator, or `&name=` (the next query field)
_KEYWORD_VALUE = re.compile(r"(?:[^\s,;&\"'`)\]}]|&(?!\w+=))+")
_PRIVATE_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_KEY_SEARCH = 64 * 1024  # a key block is a few KB; never scan a whole log for its end


class _Plugin(Protocol):
    def analyze_string(self, string: str) -> Iterable[str]: ...


@dataclass(frozen=True)
class LibraryRule:
    """One detect-secrets plugin: where it lives, the kind it reports, how its value is spanned."""

    plugin: str  # "module:Class"
    kind: str
    span: str  # token | jwt | exact | keyword | entropy | private-key
    strip: str = ""  # a prefix the plugin yields with the value (`AccountKey=`)


@dataclass(frozen=True)
class OwnRule:
    """One of our patterns: the group named `secret` is replaced."""

    kind: str
    pattern: re.Pattern[str]
    check_value: bool
    named: bool  # the group `name` must be a secret variable name


@dataclass(frozen=True)
class Rules:
    """Everything `redaction.toml` says."""

    library: tuple[LibraryRule, ...]
    own: tuple[OwnRule, ...]
    names: tuple[tuple[str, re.Pattern[str]], ...]
    names_exclude: re.Pattern[str]
    placeholders: frozenset[str]
    not_secret: re.Pattern[str]
    value_min_length: int
    known_min_length: int
    entropy_limit: float
    entropy_min_length: int
    entropy_not_secret: re.Pattern[str]
    env_names: frozenset[str]
    env_prefixes: tuple[str, ...]
    env_engine_prefixes: Mapping[str, tuple[str, ...]]


def parse_rules(data: Mapping[str, Any]) -> Rules:
    """Build `Rules` from the parsed TOML; a bad table raises ValueError naming the entry."""
    library = tuple(
        LibraryRule(str(e["plugin"]), str(e["kind"]), str(e["span"]), str(e.get("strip", "")))
        for e in data["library"]
    )
    spans = {"token", "jwt", "exact", "keyword", "entropy", "private-key"}
    for lib in library:
        if lib.span not in spans or ":" not in lib.plugin:
            raise ValueError(f"redaction.toml: bad [[library]] entry {lib}")
    own: list[OwnRule] = []
    for e in data["rules"]:
        pattern = re.compile(str(e["pattern"]))
        if "secret" not in pattern.groupindex:
            raise ValueError(f"redaction.toml: rule {e['kind']} has no (?P<secret>...) group")
        named = bool(e.get("named", False))
        if named and "name" not in pattern.groupindex:
            raise ValueError(f"redaction.toml: named rule {e['kind']} has no (?P<name>...) group")
        own.append(OwnRule(str(e["kind"]), pattern, bool(e.get("values", False)), named))
    values, env = data["values"], data["environment"]
    return Rules(
        library=library,
        own=tuple(own),
        names=tuple((str(e["kind"]), re.compile(str(e["pattern"]))) for e in data["names"]),
        names_exclude=re.compile(str(data["exclude"]["names"])),
        placeholders=frozenset(str(p).lower() for p in values["placeholders"]),
        not_secret=re.compile(str(values["not_secret"])),
        value_min_length=int(values["min_length"]),
        known_min_length=int(data["known"]["min_length"]),
        entropy_limit=float(data["entropy"]["limit"]),
        entropy_min_length=int(data["entropy"]["min_length"]),
        entropy_not_secret=re.compile(str(data["entropy"]["not_secret"])),
        env_names=frozenset(str(n) for n in env["names"]),
        env_prefixes=tuple(str(p) for p in env["prefixes"]),
        env_engine_prefixes={
            str(k): tuple(str(p) for p in v) for k, v in env.get("engines", {}).items()
        },
    )


@lru_cache(maxsize=1)
def load_rules() -> Rules:
    """The package's `redaction.toml`, parsed once."""
    text = resources.files("exsa_doctor").joinpath("redaction.toml").read_text(encoding="utf-8")
    return parse_rules(tomllib.loads(text))


@lru_cache(maxsize=1)
def _library_plugins() -> tuple[tuple[LibraryRule, _Plugin], ...]:
    """Instances of the detect-secrets plugins the rules name (imported here, on first use)."""
    out: list[tuple[LibraryRule, _Plugin]] = []
    for rule in load_rules().library:
        module_name, class_name = rule.plugin.split(":", 1)
        plugin = getattr(importlib.import_module(module_name), class_name)()
        out.append((rule, plugin))
    return tuple(out)


def _keyword_regexes() -> dict[Any, int]:
    """detect-secrets' keyword regexes for config-like text (`password: x`, `secret=x`)."""
    keyword = importlib.import_module("detect_secrets.plugins.keyword")
    return dict(keyword.CONFIG_DENYLIST_REGEX_TO_GROUP)


def secret_name_kind(name: str, rules: Rules | None = None) -> str | None:
    """The kind of secret a variable of this name holds, or None when the name is innocent."""
    rules = rules or load_rules()
    if rules.names_exclude.search(name):
        return None
    for kind, pattern in rules.names:
        if pattern.search(name):
            return kind
    return None


def is_secret_name(name: str) -> bool:
    """True for variable names that hold a secret (`HF_TOKEN`), not for `MAX_TOKENS`."""
    return secret_name_kind(name) is not None


def looks_like_value(value: str, rules: Rules | None = None) -> bool:
    """True when a value after a secret keyword, flag or variable could be a secret."""
    rules = rules or load_rules()
    return (
        len(value) >= rules.value_min_length
        and value.lower() not in rules.placeholders
        and not rules.not_secret.match(value)
    )


@dataclass(frozen=True)
class Span:
    """Where a secret is in one text, and what kind it is."""

    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Redaction:
    """One replaced span: its kind and its place (a file and, for text files, a line)."""

    kind: str
    place: str
    line: int  # 1-based; 0 when the place is not a line of a text


def _widen(text: str, end: int, chars: frozenset[str]) -> int:
    """Where a token that a plugin found the start of really ends (a sentence's full stop is
    not part of it)."""
    while end < len(text) and text[end] in chars:
        end += 1
    while end > 0 and text[end - 1] == ".":
        end -= 1
    return end


def _private_key_end(text: str, start: int) -> int:
    """Where a private key block that begins at `start` ends (the END line, or its last line)."""
    window = text[start : start + _PRIVATE_KEY_SEARCH]
    end_marker = _PRIVATE_KEY_END.search(window)
    if end_marker:
        return start + end_marker.end()
    # cut short (a log's head and tail): the BEGIN line and the base64 lines after it
    pos = text.find("\n", start)
    if pos < 0:
        return len(text)
    while True:
        nxt = text.find("\n", pos + 1)
        line = text[pos + 1 : nxt if nxt >= 0 else len(text)]
        if not _BASE64_LINE.fullmatch(line.strip()):
            return pos
        if nxt < 0:
            return len(text)
        pos = nxt


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


class Detector:
    """Finds secret spans in a text: the library's plugins, then our own rules. Stateless."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or load_rules()

    def spans(self, text: str) -> list[Span]:
        found: list[Span] = []
        offset = 0
        for line in text.splitlines(keepends=True):
            if line.strip():
                found.extend(self._library_spans(text, line, offset))
            offset += len(line)
        found.extend(self._own_spans(text))
        return _outside_tags(text, found)

    def _library_spans(self, text: str, line: str, offset: int) -> list[Span]:
        out: list[Span] = []
        for rule, plugin in _library_plugins():
            if rule.span == "keyword":
                values: Iterable[str] = plugin.analyze_string(  # type: ignore[call-arg]
                    line, denylist_regex_to_group=_keyword_regexes()
                )
            else:
                values = plugin.analyze_string(line)
            for raw in values:
                out.extend(self._value_spans(text, line, offset, rule, plugin, raw))
        return out

    def _value_spans(
        self, text: str, line: str, offset: int, rule: LibraryRule, plugin: _Plugin, raw: str
    ) -> list[Span]:
        value = raw.strip(" \t\r\n\"'=:")
        if rule.strip and value.startswith(rule.strip):
            value = value[len(rule.strip) :]
        if rule.span == "keyword":
            first = _KEYWORD_VALUE.match(value)
            value = first.group(0) if first else ""
            if not looks_like_value(value, self.rules):
                return []
        elif rule.span == "entropy":
            entropy = plugin.calculate_shannon_entropy(value)  # type: ignore[attr-defined]
            if (
                len(value) < self.rules.entropy_min_length
                or entropy <= self.rules.entropy_limit
                or self.rules.entropy_not_secret.match(value)
            ):
                return []
        if not value:
            return []
        out: list[Span] = []
        pos = line.find(value)
        while pos >= 0:
            start, end = offset + pos, offset + pos + len(value)
            if rule.span == "token":
                end = max(end, _widen(text, end, _TOKEN_CHARS))
            elif rule.span == "jwt":
                end = max(end, _widen(text, end, _JWT_CHARS))
            elif rule.span == "private-key":
                begin = text.rfind("-----", _line_start(text, start), start)
                start = begin if begin >= 0 else start
                end = _private_key_end(text, start)
            out.append(Span(start, end, rule.kind))
            pos = line.find(value, pos + len(value))
        return out

    def _own_spans(self, text: str) -> list[Span]:
        out: list[Span] = []
        for rule in self.rules.own:
            for m in rule.pattern.finditer(text):
                if rule.named and secret_name_kind(m.group("name"), self.rules) is None:
                    continue
                value = m.group("secret")
                if rule.check_value and not looks_like_value(value, self.rules):
                    continue
                kind = rule.kind
                if rule.named:
                    kind = secret_name_kind(m.group("name"), self.rules) or kind
                out.append(Span(m.start("secret"), m.end("secret"), kind))
        return out


def _outside_tags(text: str, spans: list[Span]) -> list[Span]:
    """Spans that do not touch a tag already in the text: redacting twice changes nothing."""
    if TAG_PREFIX not in text:
        return spans
    tags = [(m.start(), m.end()) for m in TAG_PATTERN.finditer(text)]
    return [s for s in spans if not any(s.start < end and start < s.end for start, end in tags)]


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Overlapping spans become one; the kind of the widest of them is kept."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                wider = span if span.end - span.start > last.end - last.start else last
                merged[-1] = Span(last.start, span.end, wider.kind)
            continue
        merged.append(span)
    return merged


def _escaped_forms(value: str) -> set[str]:
    """The value as written raw, inside JSON strings and inside HTML."""
    return {value, json.dumps(value)[1:-1], html.escape(value), html.escape(value, quote=False)}


@dataclass
class Redactor:
    """Finds and replaces secrets; remembers them, and counts every replacement by kind and place.

    Learn first (`learn_text`, `learn_environment`, `learn_argv`) from every text that will go
    out, then redact (`text`): a secret seen in one place is then replaced in all of them.
    """

    key: bytes = field(default_factory=lambda: random_source.token_bytes(32))
    rules: Rules = field(default_factory=load_rules)
    redactions: list[Redaction] = field(default_factory=list)
    _known: dict[str, str] = field(default_factory=dict)  # secret -> kind
    _detector: Detector | None = None
    # detection is the costly part (about 0.5 MB/s); a text learnt from and then redacted, as
    # every log of a bundle is, is scanned once
    _spans_of: dict[str, list[Span]] = field(default_factory=dict)

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = Detector(self.rules)
        return self._detector

    def tag(self, kind: str, secret: str) -> str:
        digest = hmac.new(self.key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"{TAG_PREFIX}{kind}:{digest.hexdigest()[:4]}]"

    def add_secret(self, value: str, kind: str = "known-secret") -> None:
        """Remember a secret, to replace it wherever it recurs (if long enough to be safe)."""
        value = value.strip()
        if len(value) < self.rules.known_min_length or value.startswith(TAG_PREFIX):
            return
        for form in _escaped_forms(value):
            self._known.setdefault(form, kind)

    def _detect(self, text: str) -> list[Span]:
        spans = self._spans_of.get(text)
        if spans is None:
            spans = self.detector.spans(text)
            if len(text) >= 4096:
                self._spans_of[text] = spans
        return spans

    def learn_text(self, text: str) -> None:
        """Remember every secret the detectors find in a text."""
        for span in self._detect(text):
            self.add_secret(text[span.start : span.end], span.kind)

    def learn_argv(self, args: Iterable[str]) -> None:
        """Remember secrets on a command line (`--api-key X` spans two arguments)."""
        self.learn_text(" ".join(args))

    def learn_environment(self, environ: Mapping[str, str]) -> None:
        """Remember values of secret-named variables and secrets inside any value."""
        for name, value in environ.items():
            kind = secret_name_kind(name, self.rules)
            if kind is not None and looks_like_value(value.strip(), self.rules):
                self.add_secret(value, kind)
            self.learn_text(value)

    def _known_spans(self, text: str) -> list[Span]:
        out: list[Span] = []
        for secret, kind in self._known.items():
            pos = text.find(secret)
            while pos >= 0:
                out.append(Span(pos, pos + len(secret), kind))
                pos = text.find(secret, pos + len(secret))
        return out

    def text(self, text: str, place: str = "") -> str:
        """`text` with every secret span replaced by its tag; each replacement is recorded."""
        spans = _merge(_outside_tags(text, [*self._detect(text), *self._known_spans(text)]))
        if not spans:
            return text
        line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        pieces: list[str] = []
        last = 0
        for span in spans:
            secret = text[span.start : span.end]
            pieces.append(text[last : span.start])
            pieces.append(self.tag(span.kind, secret))
            last = span.end
            line = bisect.bisect_right(line_starts, span.start)
            self.redactions.append(Redaction(span.kind, place, line))
        pieces.append(text[last:])
        return "".join(pieces)

    def value(self, kind: str, value: str, place: str) -> str:
        """The whole of one value replaced (a secret variable's value), recorded at `place`."""
        self.redactions.append(Redaction(kind, place, 0))
        return self.tag(kind, value)

    def environment(
        self, environ: Mapping[str, str], profile: str | None, place: str = ""
    ) -> tuple[dict[str, str], list[str]]:
        """The variables that matter to an engine, with values (secrets replaced), and the names
        of all the others, without values.

        A secret-named variable on the allow-list (`HF_TOKEN`) keeps its name and gets a tag.
        """
        prefixes = self.rules.env_prefixes + tuple(
            p
            for name, engine_prefixes in self.rules.env_engine_prefixes.items()
            if profile is None or name == profile
            for p in engine_prefixes
        )
        kept: dict[str, str] = {}
        names_only: list[str] = []
        for name, value in sorted(environ.items()):
            if name not in self.rules.env_names and not name.startswith(prefixes):
                names_only.append(name)
                continue
            kind = secret_name_kind(name, self.rules)
            where = f"{place} {name}".strip()
            if kind is not None and value.strip():
                kept[name] = self.value(kind, value, where)
            else:
                kept[name] = self.text(value, where)
        return kept, names_only

    def summary(self) -> dict[str, int]:
        """Replacements by kind."""
        return dict(sorted(Counter(r.kind for r in self.redactions).items()))

    def by_place(self) -> dict[str, dict[str, int]]:
        """Replacements by file (the part of a place before the first space), then by kind."""
        out: dict[str, Counter[str]] = {}
        for r in self.redactions:
            out.setdefault(r.place.split(" ", 1)[0], Counter())[r.kind] += 1
        return {p: dict(sorted(c.items())) for p, c in sorted(out.items())}
