"""Engine profiles as data: one TOML file per engine, loaded into a frozen `Profile`.

Everything engine-specific (how to recognise its process, where its port and model come from,
what its health answer means, its log markers) lives in these files; probes read the profile and
never branch on an engine's name.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_PROFILE = "exsa-engine"


class ProfileError(ValueError):
    """A profile file that cannot be read or does not make sense."""


@dataclass(frozen=True)
class HealthSpec:
    """Where the health endpoint is and what its answers mean."""

    path: str
    ready_status: tuple[int, ...]
    status_key: str = ""
    ready_values: tuple[str, ...] = ()
    ready_body_regex: str = ""
    overloaded_values: tuple[str, ...] = ()
    shutdown_values: tuple[str, ...] = ()
    model_loaded_key: str = ""
    loading_status: tuple[int, ...] = ()
    loading_body_regex: str = ""


@dataclass(frozen=True)
class GenerationSpec:
    """The one-shot generation request and how its tokens are counted (`kind`)."""

    path: str
    kind: str
    body: str


@dataclass(frozen=True)
class Profile:
    """One engine's behaviour, as data."""

    name: str
    description: str
    default_port: int
    bind_order: str
    executables: tuple[str, ...]
    cmdline_regexes: tuple[str, ...]
    port_env: str
    host_env: str
    model_env: str
    port_args: tuple[str, ...]
    host_args: tuple[str, ...]
    model_args: tuple[str, ...]
    health: HealthSpec
    generation: GenerationSpec
    timestamp_format: str
    markers: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    # shell commands that fixes quote for this engine (`[commands]`: version, help, cpu_only, ...)
    commands: Mapping[str, str] = field(default_factory=dict)

    def compiled_markers(self) -> dict[str, re.Pattern[str]]:
        return _compile_markers(tuple(sorted(self.markers.items())))

    def matches_process(self, name: str, exe: str, cmdline: Sequence[str]) -> bool:
        """Positive identification: executable basename, or a command-line regex.

        A process merely *mentioning* the engine (`vim exsa-engine.log`) does not match: only
        argv[0], the process name or the executable's basename are compared to `executables`.
        """
        names = {Path(n).name for n in (name, exe) if n}
        if cmdline:
            names.add(Path(cmdline[0]).name)
        if names & set(self.executables):
            return True
        if not self.cmdline_regexes or not cmdline:
            return False
        joined = shlex.join(cmdline)
        return any(re.search(rx, joined) for rx in self.cmdline_regexes)

    def port_from(self, environ: Mapping[str, str], cmdline: Sequence[str]) -> int | None:
        value = _arg_value(cmdline, self.port_args) or (
            environ.get(self.port_env) if self.port_env else None
        )
        if value is None:
            return None
        try:
            port = int(value.rsplit(":", 1)[-1])
        except ValueError:
            return None
        return port if 0 < port < 65536 else None

    def host_from(self, environ: Mapping[str, str], cmdline: Sequence[str]) -> str | None:
        return _arg_value(cmdline, self.host_args) or (
            environ.get(self.host_env) if self.host_env else None
        )

    def model_from(self, environ: Mapping[str, str], cmdline: Sequence[str]) -> str | None:
        return _arg_value(cmdline, self.model_args) or (
            environ.get(self.model_env) if self.model_env else None
        )


@cache
def _compile_markers(items: tuple[tuple[str, str], ...]) -> dict[str, re.Pattern[str]]:
    return {name: re.compile(rx) for name, rx in items}


def _arg_value(cmdline: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in a command line, last one wins."""
    found: str | None = None
    for i, arg in enumerate(cmdline):
        for flag in flags:
            if arg == flag and i + 1 < len(cmdline):
                found = cmdline[i + 1]
            elif arg.startswith(flag + "="):
                found = arg[len(flag) + 1 :]
    return found


def _tuple_of(raw: Mapping[str, Any], key: str, kind: type) -> tuple[Any, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ProfileError(f"'{key}' must be a list of {kind.__name__}")
    return tuple(value)


def _str(raw: Mapping[str, Any], key: str, default: str = "") -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ProfileError(f"'{key}' must be a string")
    return value


def profile_from_mapping(raw: Mapping[str, Any], source: str = "") -> Profile:
    """Build a `Profile` from parsed TOML, checking types and regexes."""
    try:
        proc = raw.get("process", {})
        cfg = raw.get("config", {})
        health = raw.get("health", {})
        gen = raw.get("generation", {})
        logs = raw.get("logs", {})
        markers = dict(logs.get("markers", {}))
        for key, rx in markers.items():
            if not isinstance(rx, str):
                raise ProfileError(f"marker '{key}' must be a string")
            re.compile(rx)
        port = raw.get("default_port", 3000)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ProfileError("'default_port' must be a port number")
        profile = Profile(
            name=_str(raw, "name") or "custom",
            description=_str(raw, "description"),
            default_port=port,
            bind_order=_str(raw, "bind_order", "load-then-bind"),
            executables=_tuple_of(proc, "executables", str),
            cmdline_regexes=_tuple_of(proc, "cmdline_regexes", str),
            port_env=_str(cfg, "port_env"),
            host_env=_str(cfg, "host_env"),
            model_env=_str(cfg, "model_env"),
            port_args=_tuple_of(cfg, "port_args", str),
            host_args=_tuple_of(cfg, "host_args", str),
            model_args=_tuple_of(cfg, "model_args", str),
            health=HealthSpec(
                path=_str(health, "path", "/health"),
                ready_status=_tuple_of(health, "ready_status", int) or (200,),
                status_key=_str(health, "status_key"),
                ready_values=_tuple_of(health, "ready_values", str),
                ready_body_regex=_str(health, "ready_body_regex"),
                overloaded_values=_tuple_of(health, "overloaded_values", str),
                shutdown_values=_tuple_of(health, "shutdown_values", str),
                model_loaded_key=_str(health, "model_loaded_key"),
                loading_status=_tuple_of(health, "loading_status", int),
                loading_body_regex=_str(health, "loading_body_regex"),
            ),
            generation=GenerationSpec(
                path=_str(gen, "path", "/v1/generate"),
                kind=_str(gen, "kind", "exsa-sse"),
                body=_str(gen, "body", "{}"),
            ),
            timestamp_format=_str(logs, "timestamp", "iso8601"),
            markers=markers,
            source=source,
            commands={str(k): str(v) for k, v in dict(raw.get("commands", {})).items()},
        )
    except re.error as exc:
        raise ProfileError(f"bad regex in profile {source or '?'}: {exc}") from exc
    except AttributeError as exc:
        raise ProfileError(f"profile {source or '?'} has a section of the wrong type") from exc
    for rx in profile.cmdline_regexes:
        try:
            re.compile(rx)
        except re.error as exc:
            raise ProfileError(f"bad cmdline regex {rx!r}: {exc}") from exc
    return profile


@cache
def builtin_names() -> tuple[str, ...]:
    files = resources.files(__package__)
    return tuple(
        sorted(p.name[: -len(".toml")] for p in files.iterdir() if p.name.endswith(".toml"))
    )


@cache
def load_builtin(name: str) -> Profile:
    """A profile shipped with exsa-doctor, by name."""
    if name not in builtin_names():
        raise ProfileError(
            f"unknown profile '{name}' (known: {', '.join(builtin_names())}, or use --profile-file)"
        )
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return profile_from_mapping(tomllib.loads(text), source=f"builtin:{name}")


def load_file(path: Path) -> Profile:
    """A user's own profile file (same keys as the built-in ones)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile file {path} is not valid TOML: {exc}") from exc
    return profile_from_mapping(raw, source=str(path))


def all_builtin() -> tuple[Profile, ...]:
    return tuple(load_builtin(n) for n in builtin_names())


def customized(
    profile: Profile,
    *,
    health_path: str | None = None,
    ready_marker: str | None = None,
    process_names: tuple[str, ...] = (),
) -> Profile:
    """A profile adjusted for a user's own engine without a profile file.

    `health_path` replaces the health route; `ready_marker` is the log regex that means the
    engine listens (ready); `process_names` are extra executable names that identify it.
    """
    from dataclasses import replace

    if health_path is not None:
        if not health_path.startswith("/"):
            raise ProfileError(f"--health-path {health_path!r} must start with /")
        profile = replace(profile, health=replace(profile.health, path=health_path))
    if ready_marker is not None:
        try:
            re.compile(ready_marker)
        except re.error as exc:
            raise ProfileError(
                f"--ready-marker {ready_marker!r} is not a valid regex: {exc}"
            ) from exc
        profile = replace(profile, markers={**profile.markers, "listening": ready_marker})
    if process_names:
        profile = replace(profile, executables=(*profile.executables, *process_names))
    if health_path or ready_marker or process_names:
        profile = replace(profile, source=profile.source + " (customised on the command line)")
    return profile
