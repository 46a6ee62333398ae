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
    # the HTTP `Server` header this engine sends, when it is its own (identifies it remotely)
    server_header_regex: str = ""


@dataclass(frozen=True)
class GenerationSpec:
    """The one-shot generation request and how its tokens are counted (`kind`)."""

    path: str
    kind: str
    body: str


@dataclass(frozen=True)
class CommandSpec:
    """Shell commands a fix may show for this engine, as templates.

    `start`: start it by hand on `{host}:{port}` with `{model}`; `run`: the same under
    `exsa-doctor run` (which picks the port); `ready`: a readiness check that ends, ready or not,
    by this engine's meaning of ready; `capacity`: start it with more room for requests.
    `{model}` is shell-quoted when filled; the others are validated URL parts.
    """

    start: str = ""
    run: str = ""
    ready: str = ""
    capacity: str = ""

    def filled(self, values: Mapping[str, str]) -> dict[str, str]:
        """`start_command`, `start_command_port_var` (port `$PORT`), `run_command`,
        `ready_check`, `capacity_command` for `{target:...}` placeholders; a template that names
        an unknown value is left out, never shown half-filled."""
        quoted = {k: (shlex.quote(v) if k == "model" else v) for k, v in values.items() if v}
        out: dict[str, str] = {}
        for key, template, overrides in (
            ("start_command", self.start, {}),
            ("start_command_port_var", self.start, {"port": '"$PORT"'}),
            ("run_command", self.run, {}),
            ("ready_check", self.ready, {}),
            ("capacity_command", self.capacity, {}),
        ):
            if not template:
                continue
            try:
                out[key] = template.format_map({**quoted, **overrides})
            except (KeyError, ValueError, IndexError):
                continue
        return out


_COMMAND_FIELDS = ("model", "host", "port", "url", "health_url")


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
    commands: CommandSpec = field(default_factory=CommandSpec)
    # how a client proves it may ask, when the engine demands a key (auth-required's fix)
    auth_args: tuple[str, ...] = ()
    auth_env: str = ""
    auth_header: str = ""

    def command_vars(self, values: Mapping[str, str]) -> dict[str, str]:
        """Values for `{target:...}` placeholders that come from this profile: its filled
        commands, how its model is set (`model_setting`), how a client sends a key (`auth_*`)."""
        out = self.commands.filled(values)
        if self.model_args:
            out["model_setting"] = f"{self.model_args[0]} MODEL"
        elif self.model_env:
            out["model_setting"] = f"{self.model_env}=MODEL"
        ways = [f"{a} KEY" for a in self.auth_args[:1]]
        if self.auth_env:
            ways.append(self.auth_env)
        if ways:
            out["auth_setting"] = " or ".join(ways)
        if self.auth_header:
            out["auth_header"] = self.auth_header
        url = values.get("url")
        if url and "'" not in self.generation.body:
            out["generate_command"] = (
                f"curl -sN -X POST {url}{self.generation.path} "
                f"-H 'Content-Type: application/json' -d '{self.generation.body}'"
            )
            if self.auth_header:
                out["generate_command_with_key"] = (
                    out["generate_command"] + f' -H "{self.auth_header} $API_KEY"'
                )
        return out

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
        cmds = raw.get("commands", {})
        auth = raw.get("auth", {})
        markers = dict(logs.get("markers", {}))
        re.compile(_str(health, "server_header_regex"))
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
                server_header_regex=_str(health, "server_header_regex"),
            ),
            generation=GenerationSpec(
                path=_str(gen, "path", "/v1/generate"),
                kind=_str(gen, "kind", "exsa-sse"),
                body=_str(gen, "body", "{}"),
            ),
            timestamp_format=_str(logs, "timestamp", "iso8601"),
            markers=markers,
            source=source,
            commands=CommandSpec(
                start=_str(cmds, "start"),
                run=_str(cmds, "run"),
                ready=_str(cmds, "ready"),
                capacity=_str(cmds, "capacity"),
            ),
            auth_args=_tuple_of(auth, "args", str),
            auth_env=_str(auth, "env"),
            auth_header=_str(auth, "header"),
        )
        _check_command_templates(profile.commands, source)
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


def _check_command_templates(commands: CommandSpec, source: str) -> None:
    """Every command template names only known values and parses as shell once filled."""
    sample = {k: "x" if k != "port" else "8080" for k in _COMMAND_FIELDS}
    for name in ("start", "run", "ready", "capacity"):
        template = getattr(commands, name)
        if not template:
            continue
        try:
            shlex.split(template.format_map(sample))
        except (KeyError, IndexError) as exc:
            raise ProfileError(
                f"profile {source or '?'}: [commands] {name} names an unknown value {exc}; "
                f"known: {', '.join(_COMMAND_FIELDS)}"
            ) from None
        except ValueError as exc:
            raise ProfileError(
                f"profile {source or '?'}: [commands] {name} is not valid shell: {exc}"
            ) from None


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
