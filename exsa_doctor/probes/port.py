"""The port probe: who holds the target port, and is it the engine the user means?

Symptom: "connection refused", "Address already in use", or an answer from the wrong program.
One scan of the port (`facts.port_listeners`, the run's shared scan) tells apart: nothing
listening, the engine listening, a foreign program or a stale engine instance holding it, a socket
bound but not listening (refuses connections yet blocks `bind()`), an owner hidden by
permissions, the engine listening elsewhere, and `localhost` resolving to the family the engine
does not listen on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from exsa_doctor.context import Context
from exsa_doctor.facts import engine_ports, engines, last_log_start, meant_for_port, port_listeners
from exsa_doctor.model import EventKind, Level
from exsa_doctor.oslayer.files import same_file
from exsa_doctor.oslayer.procs import engine_from, identify, output_file_of
from exsa_doctor.oslayer.sockets import resolve_localhost
from exsa_doctor.oslayer.types import EngineProcess, Listener, ListenerScan
from exsa_doctor.probes.base import Probe, ProbeOutput
from exsa_doctor.profiles import ProfileError, all_builtin, load_builtin

# An engine logs its start line within moments of being exec'd; a process created this much
# earlier than the log's latest start is an older instance, not the one that wrote it.
_LOG_START_TOLERANCE_S = 3.0
_WILDCARDS = {"0.0.0.0", "::"}


def format_address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def client_address(address: str) -> str:
    """Where a client on this machine connects to reach a socket bound to `address`."""
    if address == "0.0.0.0":
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def url_for(scheme: str, address: str, port: int) -> str:
    return f"{scheme}://{format_address(client_address(address), port)}"


def _v6_default_only() -> bool:
    """The system default for IPV6_V6ONLY (Linux sysctl; dual-stack elsewhere)."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as fh:
            return fh.read(16).strip() == "1"
    except OSError:
        return False


def covers(listener: Listener, target: str, v6only_default: bool = False) -> bool:
    """Does a socket bound to `listener.address` accept connections to `target`?

    127.0.0.1 is reached through 127.0.0.1, 0.0.0.0, ::ffff:127.0.0.1, and `::` unless
    IPV6_V6ONLY; ::1 through ::1 and `::`.
    """
    try:
        want = ipaddress.ip_address(client_address(target))
        have = ipaddress.ip_address(listener.address)
    except ValueError:
        return False
    if want.version == 4:
        if have.version == 4:
            return have == want or listener.address == "0.0.0.0"
        if have.ipv4_mapped is not None:
            return have.ipv4_mapped == want
        v6only = listener.v6only if listener.v6only is not None else v6only_default
        return listener.address == "::" and not v6only
    if have.version == 6:
        return have == want or listener.address == "::"
    return False


def _user_of(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return None


@dataclass(frozen=True)
class Owner:
    """What we could learn about a listening process; None where the OS refused."""

    pid: int
    name: str | None
    cmdline: list[str] | None
    user: str | None
    started: float | None
    alive: bool


def owner_of(pid: int) -> Owner:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return Owner(pid, None, None, None, None, alive=False)
    values: dict[str, Any] = {}
    for attr in ("name", "cmdline", "username", "create_time"):
        try:
            values[attr] = getattr(proc, attr)()
        except (psutil.AccessDenied, psutil.ZombieProcess):
            values[attr] = None
        except psutil.NoSuchProcess:
            return Owner(pid, None, None, None, None, alive=False)
    return Owner(
        pid=pid,
        name=values["name"],
        cmdline=list(values["cmdline"]) if values["cmdline"] is not None else None,
        user=values["username"],
        started=values["create_time"],
        alive=True,
    )


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return dt.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def holder_facts(owner: Owner, engine: EngineProcess | None, port: int) -> dict[str, Any]:
    """Who holds a port, for a person and for a fix: PID, user, command, when it started, and
    whether `exsa-doctor cleanup` may stop it (an engine instance of the current user only)."""
    ours = owner.user is not None and owner.user == _user_of(os.getuid())
    may_stop = engine is not None and ours
    if engine is None:
        why_not = "it is not an engine instance; exsa-doctor cleanup never stops other programs"
    elif not ours:
        why_not = f"it belongs to {owner.user or 'another user'}; cleanup stops only your own"
    else:
        why_not = ""
    started = _when(owner.started)
    command = shlex.join(owner.cmdline) if owner.cmdline else (owner.name or "?")
    holder = (
        f"PID {owner.pid} of user {owner.user or '(hidden)'}, "
        f"started {started or '(time hidden)'}: {command}"
    )
    return {
        "holder": holder,
        "pid": owner.pid,
        "user": owner.user,
        "command": shlex.join(owner.cmdline) if owner.cmdline else (owner.name or "?"),
        "started_at": _when(owner.started),
        "cleanup_may_stop": may_stop,
        "cleanup": "exsa-doctor cleanup may stop it"
        if may_stop
        else f"cleanup will not ({why_not})",
        # only where cleanup would act: a fix never offers a command that refuses
        "cleanup_command": f"exsa-doctor cleanup --port {port}" if may_stop else None,
    }


def _resolved(ctx: Context) -> list[str]:
    """The target host's addresses in client order, resolved once per run."""
    host = ctx.target.host
    return ctx.shared(f"resolve:{host}", lambda: resolve_localhost(host, ctx.io_timeout(1.0)))


def _is_local(addresses: Sequence[str]) -> bool:
    local: set[str] = set(_WILDCARDS)
    try:
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                local.add(str(a.address).split("%", 1)[0])
    except (OSError, psutil.Error):
        pass
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if (
            ip.is_loopback
            or text in local
            or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
        ):
            return True
    return False


class PortProbe(Probe):
    """Who holds the target port: nobody, the engine, a stale engine, a foreign program, a
    bound-only socket or a hidden owner; and whether the engine listens somewhere else.

    Emits port.listening, port.listening_engine, port.owned_by_other,
    port.held_by_stale_instance, port.not_listening, port.bound_not_listening,
    port.owner_hidden, port.engine_on_other_port, port.localhost_mismatch, port.scan_incomplete.
    """

    name = "port"
    title = "Who holds the port"
    timeout_s = 3.0
    emits = (
        "port.listening",
        "port.listening_engine",
        "port.owned_by_other",
        "port.held_by_stale_instance",
        "port.not_listening",
        "port.bound_not_listening",
        "port.owner_hidden",
        "port.engine_on_other_port",
        "port.localhost_mismatch",
        "port.scan_incomplete",
    )

    def applies(self, ctx: Context) -> str | None:
        addrs = _resolved(ctx)
        if not addrs:
            return f"cannot resolve {ctx.target.host}"
        if not _is_local(addrs):
            return f"{ctx.target.host} is not this machine; its sockets cannot be inspected"
        return None

    def run(self, ctx: Context) -> ProbeOutput:
        out = ProbeOutput()
        target = ctx.target
        port = target.port
        started = time.monotonic()
        # our own budget, inside the run's deadline, with a margin to build the findings
        deadline = min(ctx.deadline - 0.2, started + self.timeout_s - 0.5)
        scan = port_listeners(ctx, port, deadline)
        resolved = [client_address(a) for a in _resolved(ctx)]
        v6default = _v6_default_only()

        listening = [ls for ls in scan.listeners if ls.state == "LISTEN"]
        covering = [ls for ls in listening if any(covers(ls, a, v6default) for a in resolved)]
        bound = [ls for ls in scan.listeners if ls.state == "BOUND"]

        if not scan.complete:
            out.add(
                self.finding(
                    "port.scan_incomplete",
                    Level.WARNING,
                    f"the search for the owner of port {port} ran out of time ({scan.note})",
                    {"scanned": scan.scanned, "method": scan.method},
                )
            )

        engines_by_pid = self._engines(ctx)
        reported: set[int | None] = set()
        for ls in covering:
            if ls.pid in reported and ls.pid is not None:
                continue
            reported.add(ls.pid)
            self._report_listener(ctx, out, ls, engines_by_pid, scan)

        for ls in bound:
            if not any(covers(ls, a, v6default) for a in resolved) and ls.address not in _WILDCARDS:
                continue
            owner = owner_of(ls.pid) if ls.pid is not None else None
            who = f"PID {ls.pid} ({owner.name})" if owner and owner.name else "a hidden process"
            out.add(
                self.finding(
                    "port.bound_not_listening",
                    Level.WARNING,
                    f"{who} has a socket bound to {format_address(ls.address, port)} that does not "
                    "listen: connections are refused, yet another bind() to the port fails",
                    {
                        "pid": ls.pid,
                        "address": format_address(ls.address, port),
                        "name": owner.name if owner else None,
                        "uid": ls.uid,
                    },
                )
            )

        if target.host == "localhost" and resolved and listening:
            self._localhost(
                out,
                resolved=resolved,
                listening=listening,
                port=port,
                scheme=target.scheme,
                v6default=v6default,
            )

        mismatch = any(f.id == "port.localhost_mismatch" for f in out.findings)
        if not covering and not mismatch:
            # (a localhost mismatch already says where the engine listens)
            others = self._engine_elsewhere(
                ctx, out, engines_by_pid=engines_by_pid, v6default=v6default, resolved=resolved
            )
            if not others:
                out.add(
                    self.finding(
                        "port.not_listening",
                        Level.WARNING,
                        f"nothing listens on {target.host}:{port}",
                        {
                            "port": port,
                            "host": target.host,
                            "other_addresses": [
                                format_address(ls.address, port) for ls in listening
                            ],
                        },
                    )
                )
        out.detail = self._detail(out, port, scan)
        return out

    # ------------------------------------------------------------------ pieces

    def _engines(self, ctx: Context) -> dict[int, EngineProcess]:
        found, _complete = engines(ctx)
        return {e.pid: e for e in found}

    def _identify(self, ctx: Context, pid: int) -> EngineProcess | None:
        """Identify one listener directly, when the shared engine walk did not reach it."""
        mine = ctx.target.profile
        profiles = [mine, *[p for p in all_builtin() if p.name != mine.name]]
        attrs = ["pid", "ppid", "name", "exe", "cmdline", "username", "create_time", "status"]
        try:
            proc = psutil.Process(pid)
            info = proc.as_dict(attrs=attrs, ad_value=None)
        except psutil.NoSuchProcess:
            return None
        profile = identify(info, profiles)
        return engine_from(proc, profile, info) if profile is not None else None

    def _report_listener(
        self,
        ctx: Context,
        out: ProbeOutput,
        ls: Listener,
        engines_by_pid: dict[int, EngineProcess],
        scan: ListenerScan,
    ) -> None:
        port = ls.port
        address = format_address(ls.address, port)
        if ls.pid is None:
            user = _user_of(ls.uid)
            out.add(
                self.finding(
                    "port.listening",
                    Level.INFO,
                    f"a process of {user or f'uid {ls.uid}'} listens on {address}",
                    {
                        "pid": None,
                        "name": None,
                        "cmdline": None,
                        "user": user,
                        "address": address,
                        "family": ls.family,
                        "is_engine": None,
                    },
                )
            )
            if ls.owner_hidden:
                out.add(
                    self.finding(
                        "port.owner_hidden",
                        Level.WARNING,
                        f"something listens on {address}, but permissions hide which process "
                        f"(socket owner: {user or f'uid {ls.uid}'})",
                        {
                            "uid": ls.uid,
                            "user": user,
                            "address": address,
                            "reveal": f"sudo lsof -nP -iTCP:{port} -sTCP:LISTEN",
                        },
                    )
                )
            return
        owner = owner_of(ls.pid)
        engine = engines_by_pid.get(ls.pid) or self._identify(ctx, ls.pid)
        out.add(
            self.finding(
                "port.listening",
                Level.INFO,
                f"PID {ls.pid} ({owner.name or '?'}) listens on {address}",
                {
                    "pid": ls.pid,
                    "name": owner.name,
                    "cmdline": owner.cmdline,
                    "user": owner.user,
                    "address": address,
                    "family": ls.family,
                    "is_engine": engine is not None,
                },
            )
        )
        if owner.started is not None:
            out.event(
                owner.started,
                "port",
                f"PID {ls.pid} ({owner.name or '?'}) started; it listens on {address}",
                EventKind.PORT_HOLDER,
            )
        if engine is None:
            out.add(
                self.finding(
                    "port.owned_by_other",
                    Level.ERROR,
                    f"port {port} is held by PID {ls.pid} ({owner.name or '?'}), which is not an "
                    "engine",
                    {
                        **holder_facts(owner, None, port),
                        "name": owner.name,
                        "cmdline": owner.cmdline,
                        "address": address,
                    },
                )
            )
            return
        out.add(
            self.finding(
                "port.listening_engine",
                Level.OK,
                f"{engine.profile} PID {ls.pid} listens on {address}",
                {"pid": ls.pid, "name": owner.name, "profile": engine.profile, "address": address},
            )
        )
        why = self._stale_reason(ctx, engine, port)
        if why is not None:
            out.add(
                self.finding(
                    "port.held_by_stale_instance",
                    Level.ERROR,
                    f"port {port} is held by a stale {engine.profile} instance, "
                    f"PID {ls.pid}: {why}",
                    {
                        **holder_facts(owner, engine, port),
                        "name": owner.name,
                        "profile": engine.profile,
                        "why": why,
                        "started": engine.info.create_time,
                        "address": address,
                    },
                )
            )

    def _stale_reason(self, ctx: Context, engine: EngineProcess, port: int) -> str | None:
        target = ctx.target
        if target.pids:
            if engine.pid in target.pids:
                return None  # the instance the user named is, by definition, the one they mean
            named = ", ".join(str(p) for p in target.pids)
            return f"it is not the instance you named (--pid {named})"
        # Orphaned alone is not stale: a server a script started with `&` is re-parented when
        # the script exits and may be exactly the engine the user means. Stale means another
        # engine than the target's, holding what the target needs (here: its port).
        if (
            target.model is not None
            and engine.model
            and target.model_source != f"engine PID {engine.pid}"
            and not same_file(engine.model, target.model)
        ):
            return f"it serves another model ({engine.model}), not {target.model}"
        created = engine.info.create_time
        if created is None:
            return None
        found, _ = engines(ctx)
        newer = [
            e
            for e in found
            if e.pid != engine.pid
            and e.profile == target.profile.name
            and e.info.state not in ("zombie", "dead")
            and meant_for_port(e, port, target.profile.default_port)
            and e.info.create_time is not None
            and e.info.create_time > created
        ]
        if newer:
            latest = max(newer, key=lambda e: e.info.create_time or 0.0)
            return (
                f"an older instance: PID {latest.pid} was started later for the same port "
                "and cannot bind it"
            )
        log_start = last_log_start(ctx)
        if log_start is not None and created < log_start - _LOG_START_TOLERANCE_S:
            age = log_start - created
            return f"started {age:.0f} s before the latest start in the log"
        writes_to = output_file_of(engine.pid)
        if (
            log_start is not None
            and created < log_start
            and writes_to is not None
            and target.logs
            and not any(same_file(writes_to, log) for log in target.logs)
        ):
            return (
                f"it writes to {writes_to}, not to the log you gave, and was started before "
                "that log's latest start"
            )
        return None

    def _localhost(
        self,
        out: ProbeOutput,
        *,
        resolved: list[str],
        listening: list[Listener],
        port: int,
        scheme: str,
        v6default: bool,
    ) -> None:
        first = resolved[0]
        if any(covers(ls, first, v6default) for ls in listening):
            return
        out.add(
            self.finding(
                "port.localhost_mismatch",
                Level.ERROR,
                f"'localhost' resolves to {first} first, but port {port} listens only on "
                + ", ".join(format_address(ls.address, port) for ls in listening),
                {
                    "resolved": resolved,
                    "listening": [format_address(ls.address, port) for ls in listening],
                    "working_url": url_for(scheme, listening[0].address, port),
                },
            )
        )

    def _engine_elsewhere(
        self,
        ctx: Context,
        out: ProbeOutput,
        *,
        engines_by_pid: dict[int, EngineProcess],
        v6default: bool,
        resolved: list[str],
    ) -> int:
        """port.engine_on_other_port for the meant engines listening anywhere but the target.

        Only the instances the user means (--pid, else the target profile's): an unrelated
        engine elsewhere (Ollama on 11434 while exsa-engine is the target) is not "the engine".
        """
        target = ctx.target
        live = [
            e
            for e in engines_by_pid.values()
            if e.info.state not in ("zombie", "dead")
            and (e.pid in target.pids if target.pids else e.profile == target.profile.name)
        ]
        if target.model is not None and not target.pids:
            # another instance serving another model is somebody else's engine, not ours
            # on the wrong port
            live = [e for e in live if e.model is None or same_file(e.model, target.model)]
        if not live:
            return 0
        live.sort(key=lambda e: -(e.info.create_time or 0.0))  # newest first
        ports = engine_ports(ctx)
        count = 0
        for engine in live:
            for address, port in ports.get(engine.pid, []):
                if port == target.port and any(
                    covers(_as_listener(address, port), a, v6default) for a in resolved
                ):
                    continue
                out.add(
                    self.finding(
                        "port.engine_on_other_port",
                        Level.ERROR,
                        f"{engine.profile} PID {engine.pid} listens on "
                        f"{format_address(address, port)}, not on {target.host}:{target.port}",
                        {
                            "pid": engine.pid,
                            "address": format_address(address, port),
                            "port": port,
                            "url": url_for(target.scheme, address, port),
                            "health_path": _health_path(ctx, engine.profile),
                            "profile": engine.profile,
                        },
                    )
                )
                count += 1
                break  # one finding per engine: its first listening address
        return count

    def _detail(self, out: ProbeOutput, port: int, scan: ListenerScan) -> str:
        ids = [f.id for f in out.findings]
        if "port.held_by_stale_instance" in ids:
            text = "held by a stale engine instance"
        elif "port.owned_by_other" in ids:
            text = "held by a foreign program"
        elif "port.listening_engine" in ids:
            text = "the engine listens"
        elif "port.owner_hidden" in ids:
            text = "a hidden process listens"
        elif "port.engine_on_other_port" in ids:
            text = "nothing listens; the engine listens elsewhere"
        elif "port.localhost_mismatch" in ids:
            text = "localhost resolves to the other address family"
        elif "port.bound_not_listening" in ids:
            text = "bound but not listening"
        else:
            text = "nothing listens"
        return f"port {port}: {text} ({scan.method}{', incomplete' if not scan.complete else ''})"


def _as_listener(address: str, port: int) -> Listener:
    return Listener(
        family="ipv6" if ":" in address else "ipv4",
        address=address,
        port=port,
        state="LISTEN",
        inode=None,
        uid=None,
        pid=None,
    )


def _health_path(ctx: Context, profile_name: str) -> str:
    if profile_name == ctx.target.profile.name:
        return ctx.target.profile.health.path
    try:
        return load_builtin(profile_name).health.path
    except ProfileError:
        return ctx.target.profile.health.path


__all__ = ["PortProbe", "covers", "format_address", "url_for"]
