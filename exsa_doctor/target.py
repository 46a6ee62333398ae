"""What is being diagnosed: URL, host and port, model path, logs, PIDs and the engine profile.

`resolve_target` turns command-line options (and the environment a user expects them from:
`EXSA_URL`, `PORT`, `MODEL_PATH`) into one frozen `Target`. Bad input raises `UsageError` with
a message meant for a person; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from exsa_doctor.model import DEFAULT_PROFILE_REASON, TargetInfo
from exsa_doctor.oslayer.types import EngineProcess, ListenerScan
from exsa_doctor.profiles import (
    DEFAULT_PROFILE,
    Profile,
    ProfileError,
    load_builtin,
    load_file,
)


class UsageError(ValueError):
    """Input a person gave that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class Sighting:
    """What engine detection read just before the run: the engine walk and the port's sockets.

    The run's facts reuse it while it is fresh (`facts.engines`, `facts.port_listeners`) instead
    of walking /proc again a few milliseconds later.
    """

    taken: float  # time.monotonic()
    profiles: tuple[str, ...]  # the profile order the walk identified processes by
    pids: tuple[int, ...]  # the --pid it included
    engines: tuple[EngineProcess, ...]
    listeners: ListenerScan | None  # the target port's sockets, when detection looked


@dataclass(frozen=True)
class Target:
    """The engine under diagnosis, as far as the options and environment tell."""

    url: str
    scheme: str
    host: str
    port: int
    profile: Profile
    profile_reason: str
    model: Path | None = None
    model_source: str = ""
    logs: tuple[Path, ...] = ()
    pids: tuple[int, ...] = ()
    failed_at: float | None = None
    watch_s: float = 0.0
    generate: bool | None = None  # None: only when health is OK
    timeout_s: float = 10.0
    # a log read on its own (support's pasted log): nothing of this machine is evidence
    offline: bool = False
    # logs that arrived as bytes, not files (`--log -`): name -> what was read
    inline_logs: Mapping[str, bytes] = field(default_factory=dict)
    # what detection read (not part of what is diagnosed: never compared, never reported)
    sighting: Sighting | None = field(default=None, compare=False, repr=False)

    @property
    def log_files(self) -> tuple[str, ...]:
        """The logs a command can name: those read from a file, not inline (`--log -`)."""
        return tuple(str(p) for p in self.logs if str(p) not in self.inline_logs)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def endpoint(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def info(self) -> TargetInfo:
        return TargetInfo(
            url=self.url,
            host=self.host,
            port=self.port,
            model=str(self.model) if self.model else None,
            logs=tuple(str(p) for p in self.logs),
            log_files=self.log_files,
            pids=self.pids,
            profile=self.profile.name,
            profile_reason=self.profile_reason,
            offline=self.offline,
        )

    def with_model(self, model: Path, source: str) -> Target:
        return replace(self, model=model, model_source=source)


def parse_time(text: str) -> float:
    """ISO 8601 (`2025-11-23T16:55:52Z`, offsets allowed, naive means local) or epoch seconds."""
    raw = text.strip()
    if not raw:
        raise UsageError(
            "--failed-at is empty: give ISO 8601 (2025-11-23T23:41:56Z) or epoch seconds"
        )
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        value = float(raw)
        if value > 1e11:  # milliseconds, as JavaScript and many loggers write them
            value /= 1000.0
        if not 0 < value < 4102444800:  # 2100-01-01
            raise UsageError(f"--failed-at {text!r} is not a plausible epoch time")
        return value
    iso = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(
            f"--failed-at {text!r} is neither ISO 8601 (2025-11-23T23:41:56Z) nor epoch seconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    stamp = parsed.timestamp()
    if not 0 < stamp < 4102444800:
        raise UsageError(f"--failed-at {text!r} is not a plausible time")
    return stamp


_URL_EXAMPLE = "http://127.0.0.1:8080"


def parse_url(url: str, option: str = "--url") -> tuple[str, str, int]:
    """Scheme, host and port of an engine's base URL; anything else is a `UsageError`.

    A base URL is `http://HOST[:PORT]` or `https://HOST[:PORT]` (the port defaults by scheme).
    No scheme (`notaurl`, `127.0.0.1:3000`), no host, or a path, query or fragment
    (`http://h:8080/health`) is refused with a message that shows what is expected, instead of
    probing something the user did not mean.
    """
    candidate = url.strip()
    expected = f"give the engine's base URL, e.g. {_URL_EXAMPLE}"
    if not candidate:
        raise UsageError(f"{option} is empty: {expected}")
    if "://" not in candidate:
        raise UsageError(
            f"{option} {url!r} has no scheme: {expected} (http:// or https://, a host, a port)"
        )
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise UsageError(f"{option} {url!r}: the port must be a number 1-65535") from None
        raise UsageError(f"{option} {url!r} is not a valid URL ({exc}): {expected}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{option} {url!r}: only http:// and https:// are supported; {expected}")
    if not parts.hostname:
        raise UsageError(f"{option} {url!r} has no host: {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        base = f"{parts.scheme}://{parts.netloc}"
        raise UsageError(
            f"{option} {url!r} has a path ({parts.path or '?' + parts.query}): give only the "
            f"base URL, e.g. {base}; the engine's profile knows its routes"
        )
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 0 < port < 65536:
        raise UsageError(f"{option} {url!r}: the port must be a number 1-65535")
    return parts.scheme, parts.hostname, port


def split_url(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a base URL (`parse_url`, for callers that name no option)."""
    return parse_url(url)


def check_seconds(option: str, value: float, high: float, *, zero_ok: bool = False) -> None:
    """A duration option in range, or a `UsageError` that says which range is allowed."""
    low_ok = value >= 0 if zero_ok else value > 0
    if not (low_ok and value <= high):  # also refuses NaN
        low = "0 or more" if zero_ok else "more than 0"
        raise UsageError(
            f"{option} {value:g}: give a number of seconds, {low} and at most {high:g}"
        )


def choose_profile(name: str | None, profile_file: Path | None) -> tuple[Profile, str]:
    """The profile to use and why; `auto` is refined later from what the probes see."""
    try:
        if profile_file is not None:
            return load_file(profile_file), f"from --profile-file {profile_file}"
        if name and name != "auto":
            return load_builtin(name), "from --profile"
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    return load_builtin(DEFAULT_PROFILE), DEFAULT_PROFILE_REASON


def resolve_target(
    *,
    url: str | None = None,
    port: int | None = None,
    host: str | None = None,
    model: Path | None = None,
    logs: Sequence[Path] = (),
    pids: Sequence[int] = (),
    failed_at: str | None = None,
    watch_s: float = 0.0,
    generate: bool | None = None,
    timeout_s: float = 10.0,
    profile: str | None = None,
    profile_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Options plus environment -> `Target`. Does no probing beyond reading the environment."""
    env = os.environ if environ is None else environ
    check_seconds("--timeout", timeout_s, 3600)
    check_seconds("--watch", watch_s, 3600, zero_ok=True)
    for pid in pids:
        if pid <= 0:
            raise UsageError(f"--pid {pid}: a PID is a positive number")
    chosen, reason = choose_profile(profile, profile_file)
    url_option = "--url"
    if url is None and env.get("EXSA_URL") is not None:
        url, url_option = env["EXSA_URL"], "EXSA_URL"
    if url is None:
        env_port = env.get(chosen.port_env or "PORT") or env.get("PORT")
        chosen_port = port or _int_or_none(env_port) or chosen.default_port
        shown = host or "127.0.0.1"
        shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
        url = f"http://{shown}:{chosen_port}"
    scheme, url_host, url_port = parse_url(url, url_option)
    if port is not None:
        if not 0 < port < 65536:
            raise UsageError("--port must be 1-65535")
        url_port = port
    if host:
        url_host = host
    model_path: Path | None = None
    model_source = ""
    if model is not None:
        model_path, model_source = model, "--model"
    elif env.get("MODEL_PATH"):
        model_path, model_source = Path(env["MODEL_PATH"]), "MODEL_PATH"
    when = parse_time(failed_at) if failed_at else None
    return Target(
        url=url,
        scheme=scheme,
        host=url_host,
        port=url_port,
        profile=chosen,
        profile_reason=reason,
        model=model_path,
        model_source=model_source,
        logs=tuple(logs),
        pids=tuple(pids),
        failed_at=when,
        watch_s=watch_s,
        generate=generate,
        timeout_s=timeout_s,
    )


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 < number < 65536 else None
