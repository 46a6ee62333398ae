"""Redaction of secrets before anything leaves the machine.

Three layers, applied in order to every text that goes into a support bundle:
1. values of environment variables whose *names* suggest a secret (KEY, TOKEN, SECRET, PASSWORD,
   PASS, AUTH, CREDENTIAL) are collected as known secrets;
2. structural patterns: credentials inside URLs (`postgres://user:pw@host`), `Bearer ...`
   tokens, `--api-key VALUE` / `password=VALUE` style arguments;
3. every known secret is replaced wherever it recurs (logs, command lines, reports).
The `Redactor` counts what it replaced, by kind, so a manifest can say what was redacted
without ever saying the value.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

MASK = "[REDACTED]"
SECRET_NAME = re.compile(
    r"(?i)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|AUTH|CREDENTIAL|PRIVATE|SESSION)"
)
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@"
)
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_FLAG_VALUE = re.compile(
    r"(?i)(--?[a-z0-9_-]*(?:key|token|secret|password|passwd|pass|auth|credential)[a-z0-9_-]*)"
    r"(=|\s+)(?!\[REDACTED\])(\S+)"
)
_ASSIGNMENT = re.compile(
    r"(?i)\b([A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|AUTH|CREDENTIAL)[A-Z0-9_]*)"
    r"=(?!\[REDACTED\])([^\s&;\"']+)"
)
# too short to be worth replacing everywhere without shredding ordinary text
_MIN_SECRET_LEN = 4


def is_secret_name(name: str) -> bool:
    """True for variable names that suggest a secret."""
    return bool(SECRET_NAME.search(name))


class Redactor:
    """Collects known secrets, redacts text, and counts what it redacted (never the values)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.counts: Counter[str] = Counter()
        for s in secrets:
            self.add_secret(s)

    def add_secret(self, value: str) -> None:
        value = value.strip()
        if len(value) >= _MIN_SECRET_LEN:
            self._secrets.add(value)
            for match in _URL_CREDENTIALS.finditer(value):
                self.add_secret(match.group("pw"))

    def learn_environment(self, environ: Mapping[str, str]) -> None:
        """Remember the values of secret-named variables, and passwords inside any URL value."""
        for name, value in environ.items():
            if is_secret_name(name):
                self.add_secret(value)
            for match in _URL_CREDENTIALS.finditer(value):
                self.add_secret(match.group("pw"))

    def learn_text(self, text: str) -> None:
        """Remember secrets the structural patterns find in a text, to redact them elsewhere."""
        for match in _URL_CREDENTIALS.finditer(text):
            self.add_secret(match.group("pw"))
        for match in _FLAG_VALUE.finditer(text):
            self.add_secret(match.group(3))
        for match in _ASSIGNMENT.finditer(text):
            self.add_secret(match.group(2))

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """A copy of an environment with secret values masked."""
        out: dict[str, str] = {}
        for name, value in sorted(environ.items()):
            if is_secret_name(name) and value:
                self.counts["environment variable"] += 1
                out[name] = MASK
            else:
                out[name] = self.text(value)
        return out

    def argv(self, args: Sequence[str]) -> list[str]:
        """A command line with secret flag values masked (`--api-key X`, `--token=X`)."""
        joined = "\0".join(args)
        self.learn_text(" ".join(args))
        return [self.text(a) for a in joined.split("\0")] if args else []

    def text(self, text: str) -> str:
        """Redact one text: structural patterns first, then every known secret."""

        def url(m: re.Match[str]) -> str:
            self.counts["url credentials"] += 1
            return f"{m.group('scheme')}{m.group('user')}:{MASK}@"

        def bearer(m: re.Match[str]) -> str:
            self.counts["bearer token"] += 1
            return f"{m.group(1)} {MASK}"

        def flag(m: re.Match[str]) -> str:
            self.counts["secret argument"] += 1
            return f"{m.group(1)}{m.group(2)}{MASK}"

        def assign(m: re.Match[str]) -> str:
            self.counts["secret assignment"] += 1
            return f"{m.group(1)}={MASK}"

        text = _URL_CREDENTIALS.sub(url, text)
        text = _BEARER.sub(bearer, text)
        text = _FLAG_VALUE.sub(flag, text)
        text = _ASSIGNMENT.sub(assign, text)
        # longest first, so a secret that contains another is masked whole
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                self.counts["known secret"] += text.count(secret)
                text = text.replace(secret, MASK)
        return text

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
