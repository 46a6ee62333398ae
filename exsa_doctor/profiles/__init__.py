"""Engine profiles as data: one TOML file per engine, loaded into a frozen `Profile`.

Everything engine-specific (how to recognise its process, where its port and model come from,
what its health answer means, its log markers) lives in these files; probes read the profile and
never branch on an engine's name.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_PROFILE = "exsa-engine"
# When an engine binds its port, against when its model is loaded. With "load-then-bind"
# (exsa-engine, llama-cpp-python) and "bind-then-listen" (vLLM: bound early, listening once built)
# a listening socket means the model is loaded; with "bind-then-load" (llama-server, Ollama) not.
BIND_ORDERS = ("load-then-bind", "bind-then-load", "bind-then-listen")


class ProfileError(ValueError):
    """A profile file that cannot be read or does not make sense."""


# What a profile file may hold, checked when it is loaded: table -> key -> kind of value. ""
# is the top level; "*" accepts any key of that kind. Adding a key is one line here (and
# reading it in `profile_from_mapping`). Kinds are checked by `_KIND_CHECKS`.
PROFILE_SCHEMA: dict[str, dict[str, str]] = {
    "": {"name": "str", "description": "str", "default_port": "port", "bind_order": "str"},
    "process": {"executables": "list[str]", "cmdline_regexes": "list[regex]"},
    "config": {
        "port_env": "str",
        "host_env": "str",
        "model_env": "str",
        "port_args": "list[str]",
        "host_args": "list[str]",
        "model_args": "list[str]",
    },
    "health": {
        "path": "str",
        "ready_status": "list[int]",
        "status_key": "str",
        "ready_values": "list[str]",
        "ready_body_regex": "regex",
        "overloaded_values": "list[str]",
        "shutdown_values": "list[str]",
        "model_loaded_key": "str",
        "loading_status": "list[int]",
        "loading_body_regex": "regex",
        "server_header_regex": "regex",
    },
    "generation": {"path": "str", "kind": "str", "body": "str"},
    "logs": {"timestamp": "str"},
    "logs.markers": {"*": "regex"},
    "commands": {"*": "text"},
    "auth": {"args": "list[str]", "env": "str", "header": "str"},
}
# Entries every profile must have: what identifies the engine and where it says it is ready.
PROFILE_REQUIRED = ("name", "default_port", "process.executables", "health.path")


def _is_regex(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        re.compile(value)
    except re.error:
        return False
    return True


def _is_list(value: object, item: Callable[[object], bool]) -> bool:
    return isinstance(value, list) and all(item(v) for v in value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_CHECKS: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "port": lambda v: _is_int(v) and 0 < v < 65536,  # type: ignore[operator]
    "regex": _is_regex,
    "list[str]": lambda v: _is_list(v, lambda i: isinstance(i, str)),
    "list[int]": lambda v: _is_list(v, _is_int),
    "list[regex]": lambda v: _is_list(v, _is_regex),
    "text": lambda v: isinstance(v, str) or _is_list(v, lambda i: isinstance(i, str)),
}
_KIND_NAMES = {
    "str": "a string",
    "port": "a port number 1-65535",
    "regex": "a valid regular expression",
    "list[str]": "a list of strings",
    "list[int]": "a list of integers",
    "list[regex]": "a list of valid regular expressions",
    "text": "a string or a list of strings",
}


def _entry_problem(kind: str, value: object) -> str:
    """Why `value` is not of `kind` (the regex error itself when it is one)."""
    if kind in ("regex", "list[regex]"):
        for rx in value if isinstance(value, list) else [value]:
            if isinstance(rx, str):
                try:
                    re.compile(rx)
                except re.error as exc:
                    return f"bad regex {rx!r}: {exc}"
    return f"must be {_KIND_NAMES[kind]}"


def check_profile(raw: Mapping[str, Any], where: str) -> None:
    """ProfileError naming `where` and the entry for unknown keys, wrong kinds, bad regexes or
    missing entries (`PROFILE_SCHEMA`, `PROFILE_REQUIRED`)."""

    def fail(entry: str, problem: str) -> NoReturn:
        raise ProfileError(f"profile {where}: {entry}: {problem}")

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        allowed = PROFILE_SCHEMA[prefix]
        for key, value in table.items():
            path = f"{prefix}.{key}" if prefix else key
            if path in PROFILE_SCHEMA:
                if not isinstance(value, dict):
                    fail(f"[{path}]", "must be a table")
                walk(value, path)
                continue
            kind = allowed.get(key, allowed.get("*"))
            if kind is None:
                known = [k for k in allowed if k != "*"]
                known += [t.rsplit(".", 1)[-1] for t in PROFILE_SCHEMA if _parent(t) == prefix]
                near = _close(key, known, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                fail(path, f"unknown key{hint}")
            if not _KIND_CHECKS[kind](value):
                fail(path, _entry_problem(kind, value))

    walk(raw, "")
    for path in PROFILE_REQUIRED:
        table: Any = raw
        for part in path.split("."):
            table = table.get(part) if isinstance(table, dict) else None
        if table is None:
            fail(path, "missing (every profile needs it)")


def _parent(table: str) -> str:
    return table.rsplit(".", 1)[0] if "." in table else ""


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
    # how to ask the engine its version and usage, and start it on the CPU only (the fixes of
    # unsupported-architecture, bad-cli-argument and gpu-runtime-error)
    version: str = ""
    help: str = ""
    cpu_only: str = ""
    # out-of-memory's fixes: start it with a smaller context (and KV cache), smaller batches
    smaller_context: str = ""
    smaller_batch: str = ""

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
            ("version_command", self.version, {}),
            ("help_command", self.help, {}),
            ("cpu_only_command", self.cpu_only, {}),
            ("smaller_context_command", self.smaller_context, {}),
            ("smaller_batch_command", self.smaller_batch, {}),
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

    @property
    def listens_when_loaded(self) -> bool:
        """Whether a listening socket means the model is loaded (`BIND_ORDERS`)."""
        return self.bind_order in ("load-then-bind", "bind-then-listen")

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
    """Build a `Profile` from parsed TOML, checked against `PROFILE_SCHEMA` first."""
    if source.startswith("builtin:"):
        where = f"{source.removeprefix('builtin:')}.toml (built-in)"
    else:
        where = f"file {source}" if source else "(given as data)"
    check_profile(raw, where)
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
        bind_order = _str(raw, "bind_order", "load-then-bind")
        if bind_order not in BIND_ORDERS:
            raise ProfileError(f"'bind_order' must be one of {', '.join(BIND_ORDERS)}")
        profile = Profile(
            name=_str(raw, "name") or "custom",
            description=_str(raw, "description"),
            default_port=port,
            bind_order=bind_order,
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
                version=_str(cmds, "version"),
                help=_str(cmds, "help"),
                cpu_only=_str(cmds, "cpu_only"),
                smaller_context=_str(cmds, "smaller_context"),
                smaller_batch=_str(cmds, "smaller_batch"),
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
    for name in (
        "start",
        "run",
        "ready",
        "capacity",
        "version",
        "help",
        "cpu_only",
        "smaller_context",
        "smaller_batch",
    ):
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
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"built-in profile {name}.toml is not valid TOML: {exc}") from exc
    return profile_from_mapping(raw, source=f"builtin:{name}")


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


def _close(word: str, choices: list[str], n: int = 1) -> list[str]:
    """Close matches for a did-you-mean (difflib imported only when a load fails)."""
    import difflib

    return difflib.get_close_matches(word, choices, n=n)
