"""The logs probe: what the engine itself said in its log (`--log`, repeatable).

Symptom: the engine "started" but does not serve, or a request failed early. The log tells when
the newest run started, validated and loaded the model and began to listen (and on which
address), or which fatal line ended it: bind failure, model error, MODEL_PATH unset, mmap
failure, out of memory, panic. With `--failed-at` it tells whether the failed request came before
the engine listened (a race) or after.

Only the newest run of a log decides the state; earlier runs (a log appended to by several
starts) give `logs.restarts`. Each log is read and parsed once per run (`facts.log_report`, which
the port probe reads too).

Finding ids: logs.missing, logs.started, logs.restarts, logs.model_validated, logs.model_loaded,
logs.listening, logs.listening_other_address, logs.bind_failed, logs.model_error,
logs.model_path_unset, logs.mmap_failed, logs.oom, logs.panic, logs.shutdown, logs.zero_tokens,
logs.started_never_listened, logs.loading_in_progress, logs.failed_before_ready,
logs.failed_after_ready.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exsa_doctor.context import Context
from exsa_doctor.facts import Unreadable, log_report
from exsa_doctor.model import EventKind, Finding, Level
from exsa_doctor.probes.base import Probe, ProbeOutput

if TYPE_CHECKING:  # the log parser and the signature tables load only when a log is read
    from exsa_doctor.parsers.logs import LogEvent, LogReport, Run
    from exsa_doctor.signatures import Chain, Hit, Signature

LOADING_WINDOW_S = 600.0  # a load older than this is no longer "in progress" but stuck
_WILDCARDS = frozenset({"0.0.0.0", "::", "*", "", "[::]"})
# Words in unplaced error lines (signatures/hints.toml): evidence that leans, never a root.
HINT_FINDINGS = (
    "logs.hint_gpu",
    "logs.hint_memory",
    "logs.hint_argument",
    "logs.hint_unsupported",
    "logs.hint_permission",
    "logs.hint_library",
    "logs.hint_model_file",
    "logs.hint_network",
)
MAX_HINTED_LINES = 20
# The findings the signature tables raise (exsa_doctor/signatures/*.toml; a test checks the list).
SIGNATURE_FINDINGS = (
    "logs.bind_failed",
    "logs.address_unavailable",
    "logs.permission_denied",
    "logs.model_error",
    "logs.model_path_unset",
    "logs.unknown_architecture",
    "logs.unsupported_format",
    "logs.unreadable_format",
    "logs.bad_argument",
    "logs.usage_line",
    "logs.missing_library",
    "logs.not_started",
    "logs.gpu_error",
    "logs.no_gpu",
    "logs.illegal_instruction",
    "logs.oom",
    "logs.killed",
    "logs.mlock_failed",
    "logs.mmap_failed",
    "logs.panic",
    "logs.load_failed",
    "logs.runner_exited",
    "logs.context_failed",
    "logs.hub_unauthorized",
    "logs.hub_unauthenticated",
    "logs.load_timeout",
    "logs.overloaded",
    "logs.request_during_load",
    "logs.waiting_for_lock",
    "logs.unrecognised_error",
    "logs.client_refused",
    "logs.client_cli_unreachable",
    "logs.client_unauthorized",
    "logs.client_reset",
    "logs.client_timeout",
    "logs.client_refused_remote",
    "logs.client_unresolved",
    "logs.client_not_found",
    "logs.client_bad_url",
    "logs.client_container_localhost",
    "logs.client_model_not_found",
    "logs.limit_not_raised",
    "logs.zero_tokens",
    *HINT_FINDINGS,
)
# Facts of this machine that refine what a bind failure means (never for an offline log).
REFINED_FINDINGS = ("logs.privileged_port", "logs.bind_specific_host")
_UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
# Findings that say why the engine stopped: with one of them, "engine not running" is a symptom.
_ERROR_KINDS = ("specific",)


def _clock(t: float | None) -> str:
    if t is None:
        return "an unknown time"
    lt = time.localtime(t)
    return time.strftime("%H:%M:%S", lt) + f".{int((t % 1) * 1000):03d}"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _covers(listen_host: str, target_host: str) -> bool:
    """Whether a server listening on `listen_host` can be reached as `target_host`."""
    listen = listen_host.strip("[]").lower()
    target = target_host.strip("[]").lower()
    if listen == target or listen in _WILDCARDS:
        return True
    loopbacks = {"localhost"}
    try:
        listen_ip = ipaddress.ip_address(listen)
    except ValueError:
        listen_ip = None
    try:
        target_ip = ipaddress.ip_address(target)
    except ValueError:
        target_ip = None
    if target in loopbacks and (listen in loopbacks or (listen_ip and listen_ip.is_loopback)):
        return True
    if listen in loopbacks and target_ip is not None and target_ip.is_loopback:
        return True
    if listen_ip is None or target_ip is None:
        return True  # a host name we cannot compare without resolving: no opinion
    return listen_ip == target_ip


def _url_for(scheme: str, host: str, port: int) -> str:
    host = host.strip("[]")
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class LogsProbe(Probe):
    """Reads the engine's log: start, validation, load, listening address, fatal lines, and the
    request's failure time against the moment the engine listened.

    Emits logs.missing for an unreadable `--log`; for the newest run logs.started,
    logs.model_validated, logs.model_loaded, logs.listening (and logs.listening_other_address
    when it listens elsewhere than the target), logs.bind_failed, logs.model_error,
    logs.model_path_unset, logs.mmap_failed, logs.oom, logs.panic, logs.shutdown (a clean exit),
    logs.zero_tokens, logs.started_never_listened, logs.loading_in_progress; logs.restarts for
    several starts; with --failed-at logs.failed_before_ready or logs.failed_after_ready.
    """

    name = "logs"
    title = "Engine log"
    timeout_s = 2.0
    emits = (
        "logs.missing",
        "logs.started",
        "logs.restarts",
        "logs.model_validated",
        "logs.model_loaded",
        "logs.listening",
        "logs.listening_other_address",
        *SIGNATURE_FINDINGS,
        *REFINED_FINDINGS,
        "logs.reason_logged",
        "logs.shutdown",
        "logs.started_never_listened",
        "logs.loading_in_progress",
        "logs.failed_before_ready",
        "logs.failed_after_ready",
    )

    def applies(self, ctx: Context) -> str | None:
        return None if ctx.target.logs else "no --log given"

    def run(self, ctx: Context) -> ProbeOutput:
        out = ProbeOutput()
        now = time.time()
        reports: list[tuple[Path, LogReport]] = []
        for path in ctx.target.logs:
            ctx.check_deadline()
            result = log_report(ctx, path)
            if isinstance(result, Unreadable):
                out.add(
                    self.finding(
                        "logs.missing",
                        Level.WARNING,
                        f"cannot read the log {result.path}: {result.reason}",
                        {"path": result.path, "reason": result.reason},
                    )
                )
                continue
            reports.append((path, result))
        if not reports:
            out.detail = "no log could be read"
            return out
        primary_path, primary = self._primary(reports)
        seen: set[str] = set()
        # the newest run of every log (llama.cpp's own errors may sit in a stderr log): the
        # primary log's chain first, then the others'
        ordered = sorted(reports, key=lambda pr: pr[0] != primary_path)
        fatal = self._chain(out, ordered, seen, ctx_offline=ctx.target.offline)
        for path, report in ordered:
            run = report.last_run
            if run is not None:
                self._zero_tokens(out, run, path, seen)
        self._state(ctx, out, primary_path, primary, fatal=fatal, now=now)
        self._failed_at(ctx, out, primary)
        for path, report in reports:
            self._timeline(out, report, full=path == primary_path)
        for f in out.findings:
            # the root of the chain (a bind failure is already there, with its address)
            if (
                f.data.get("kind") == "specific"
                and f.id != "logs.bind_failed"
                and isinstance(f.data.get("t"), float)
            ):
                kind = _STAGE_KINDS.get(str(f.data.get("stage")), EventKind.ERROR)
                out.event(f.data["t"], "log", f"error: {f.summary}", kind)
        out.detail = self._detail(reports, primary)
        return out

    # ---------------------------------------------------------------------------- helpers

    @staticmethod
    def _primary(reports: list[tuple[Path, LogReport]]) -> tuple[Path, LogReport]:
        """The log whose newest run started last (else the first with a start, else the first)."""
        timed = [(p, r) for p, r in reports if r.started_at is not None]
        if timed:
            return max(timed, key=lambda pr: pr[1].started_at or 0.0)
        started = [(p, r) for p, r in reports if r.starts]
        return started[0] if started else reports[0]

    def _chain(
        self,
        out: ProbeOutput,
        reports: list[tuple[Path, LogReport]],
        seen: set[str],
        *,
        ctx_offline: bool = False,
    ) -> bool:
        """The newest runs' error lines read as a causal chain; True when the run ended in error.

        The earliest specific error is the root and explains the generic lines after it; generic
        lines alone say the engine failed without saying why; a fatal-looking line no signature
        knows is quoted as logs.unrecognised_error.
        """
        from exsa_doctor.signatures import read_chain

        chains: list[tuple[Path, LogReport, Chain]] = []
        for path, report in reports:
            run = report.last_run
            listening = run.listening if run is not None else None
            chains.append(
                (path, report, read_chain(report.hits, listening.lineno if listening else None))
            )
        root = next(((p, r, c) for p, r, c in chains if c.root is not None), None)
        ended = False
        if root is not None:
            path, report, chain = root
            assert chain.root is not None
            consequences = [*chain.after, *chain.generic, *chain.unknown]
            root_finding = self._hit_finding(
                out, report, path, chain.root, seen, explains=consequences
            )
            if not ctx_offline:
                self._refine_bind(out, root_finding)
                self._refine_permission(out, root_finding)
            else:
                self._note_specific_host(out, root_finding)
            out.add(
                self.finding(
                    "logs.reason_logged",
                    Level.INFO,
                    "the log says why the engine failed: "
                    + chain.root.summary
                    + (
                        f" (it explains {len(consequences)} later error line(s))"
                        if consequences
                        else ""
                    ),
                    {"signature": chain.root.signature.id, "log": str(path)},
                )
            )
            ended = True
        else:
            for path, report, chain in chains:
                if chain.generic and chain.generic[0].signature.finding not in seen:
                    self._hit_finding(out, report, path, chain.generic[0], seen, explains=[])
                    ended = True
                if chain.unknown and "logs.unrecognised_error" not in seen:
                    # a Python traceback ends with its exception: that line says the most
                    hit = chain.unknown[-1] if _is_traceback(chain.unknown) else chain.unknown[0]
                    self._hit_finding(out, report, path, hit, seen, explains=[])
                    self._hints(out, path, chain.unknown, seen)
                    ended = True
        if ctx_offline and not any(report.hits for _path, report, _chain in chains):
            # a pasted fragment no row knows: what its words are about is still evidence
            for path, report, _chain in chains:
                if report.last_run is None or report.last_run.listening is None:
                    found = [(hit.signature, hit.line) for hit in report.quiet_hints]
                    self._raise_hints(out, path, found, seen)
        for path, report, chain in chains:
            for hit in (*chain.context, *chain.client):
                if hit.signature.finding not in seen:
                    self._hit_finding(out, report, path, hit, seen, explains=[])
        return ended

    def _hints(self, out: ProbeOutput, path: Path, unknown: Sequence[Hit], seen: set[str]) -> None:
        """Words in the unplaced lines that lean towards a kind of cause (signatures/hints.toml)."""
        from exsa_doctor.signatures import load_table

        table = load_table()
        found = [
            (sig, hit.line)
            for hit in unknown[:MAX_HINTED_LINES]
            for sig, _ in table.hints_of(hit.line)
        ]
        self._raise_hints(out, path, found, seen)

    def _raise_hints(
        self, out: ProbeOutput, path: Path, found: Iterable[tuple[Signature, str]], seen: set[str]
    ) -> None:
        """One finding per hint row matched, quoting the first line it matched."""
        for sig, line in found:
            if sig.finding in seen:
                continue
            seen.add(sig.finding)
            out.add(
                self.finding(
                    sig.finding,
                    Level.INFO,
                    f"{sig.summary}: {line[:200]}",
                    {"signature": sig.id, "line": line, "log": str(path), "kind": "hint"},
                )
            )

    def _hit_finding(
        self,
        out: ProbeOutput,
        report: LogReport,
        path: Path,
        hit: Hit,
        seen: set[str],
        *,
        explains: list[Hit],
    ) -> Finding:
        sig = hit.signature
        seen.add(sig.finding)
        t = report.hit_times[report.hits.index(hit)] if hit in report.hits else None
        values = hit.values
        summary = hit.summary
        # a later line of the same finding may say more: what it knows by its row (the stage of an
        # allocation that failed, the kind of model problem) wins; its captures fill gaps
        for later in explains:
            if later.signature.finding == sig.finding:
                values.update(later.signature.data)
                for key, value in later.groups.items():
                    values.setdefault(key, value)
                if later.signature.data and later.summary not in summary:
                    summary = f"{summary}; then: {later.summary}"
        data: dict[str, Any] = {
            "t": t,
            "line": hit.line,
            "lineno": hit.lineno + 1,
            "signature": sig.id,
            "stage": sig.stage,
            "kind": sig.kind,
            "log": str(path),
            **values,
        }
        data.setdefault("reason", hit.line)  # the engine's own words; the summary explains them
        data["explanation"] = summary
        if sig.finding == "logs.bind_failed" or "address" in data:
            from exsa_doctor.parsers.logs import split_address

            host, port = split_address(data.get("address"))
            if data.get("host"):
                host = data["host"]
            if str(data.get("port", "")).isdigit():
                port = int(data["port"])
            data["port"] = port
            data.setdefault("host", host)
            if data.get("address") is None and host is not None:
                data["address"] = f"{host}:{port}" if port else host
            errno_text = str(data.get("errno") or "")
            data["errno"] = int(errno_text) if errno_text.isdigit() else None
        if explains:
            data["explains"] = [h.line for h in explains[:5]]
        level = Level.INFO if sig.kind in ("context",) else Level.ERROR
        if sig.kind == "client":
            level = Level.WARNING
        where = f" (log line {hit.lineno + 1})"
        return out.add(self.finding(sig.finding, level, summary + where, data))

    def _refine_permission(self, out: ProbeOutput, finding: Finding) -> None:
        """Who may read a file the engine was refused: its owner and mode, and whether the user
        this diagnosis runs as may (the engine that failed is gone; its user often is ours)."""
        path = finding.data.get("path")
        if finding.id != "logs.permission_denied" or not isinstance(path, str):
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        owner = _user_name(st.st_uid)
        me = _user_name(os.geteuid())
        readable = os.access(path, os.R_OK)
        mode = stat.filemode(st.st_mode)
        more = f"; {path} is owned by {owner} ({mode})"
        more += (
            f", and user {me} (this diagnosis) may read it: the engine ran as another user"
            if readable
            else f", and user {me} (this diagnosis) may not read it either"
        )
        out.findings.remove(finding)
        out.add(
            self.finding(
                finding.id,
                finding.status,
                finding.summary + more,
                {**finding.data, "owner": owner, "mode": mode, "user": me, "readable": readable},
            )
        )

    def _note_specific_host(self, out: ProbeOutput, finding: Finding) -> None:
        """Offline, a bind failure that does not say why cannot be checked against the engine's
        machine; that it named one specific address (not a wildcard, not loopback) is a hint
        that the address is not that machine's."""
        host = _reasonless_bind_host(finding)
        if not host or _specific_address(host) is None:
            return  # a name resolves on the engine's machine, not here
        out.add(
            self.finding(
                "logs.bind_specific_host",
                Level.INFO,
                f"the engine was told to listen on {host} only: if that address is not on the "
                "engine's machine, the bind fails (check with `ip -brief addr` there)",
                {"host": host, "port": finding.data.get("port")},
            )
        )

    def _refine_bind(self, out: ProbeOutput, finding: Finding) -> None:
        """What this machine adds to a bind failure that does not say why (llama-server's
        "couldn't bind"): a host that is not one of its addresses, a privileged port."""
        host = _reasonless_bind_host(finding)
        if host is None:
            return
        port = finding.data.get("port")
        if host and not _is_local_address(host):
            out.findings.remove(finding)
            out.add(
                self.finding(
                    "logs.address_unavailable",
                    Level.ERROR,
                    f"the engine could not bind {host}: that address is not on this machine "
                    f"(log line {finding.data.get('lineno')})",
                    {
                        **finding.data,
                        "signature": f"{finding.data.get('signature')}+local-addresses",
                    },
                )
            )
            return
        start = _unprivileged_port_start()
        if isinstance(port, int) and port < start:
            data = {**finding.data, "port": port, "unprivileged_port_start": start}
            if _nobody_listens(port):
                # nothing holds the port, so it was not in use: it was refused for privilege
                out.findings.remove(finding)
                out.add(
                    self.finding(
                        "logs.permission_denied",
                        Level.ERROR,
                        f"the engine could not bind port {port}: nothing holds it now, and ports "
                        f"below {start} need root or CAP_NET_BIND_SERVICE "
                        f"(log line {finding.data.get('lineno')})",
                        {
                            **data,
                            "what": "port",
                            "signature": f"{data.get('signature')}+port-facts",
                        },
                    )
                )
                return
            out.add(
                self.finding(
                    "logs.privileged_port",
                    Level.WARNING,
                    f"port {port} is privileged (below {start}): only root or a process with "
                    "CAP_NET_BIND_SERVICE may bind it",
                    {"port": port, "unprivileged_port_start": start, "what": "port"},
                )
            )

    def _zero_tokens(self, out: ProbeOutput, run: Run, path: Path, seen: set[str]) -> None:
        event = run.first("zero_tokens")
        if event is None or "logs.zero_tokens" in seen:
            return
        seen.add("logs.zero_tokens")
        count = run.counts.get("zero_tokens", 1)
        out.add(
            self.finding(
                "logs.zero_tokens",
                Level.WARNING,
                f"the log reports a generation with 0 tokens ({count} time(s))",
                {"t": event.t, "count": count, "log": str(path)},
            )
        )

    def _state(
        self,
        ctx: Context,
        out: ProbeOutput,
        path: Path,
        report: LogReport,
        *,
        fatal: bool,
        now: float,
    ) -> None:
        run = report.last_run
        if run is None:
            return
        log = str(path)
        if run.start is not None:
            version = run.version
            out.add(
                self.finding(
                    "logs.started",
                    Level.INFO,
                    f"the engine started at {_clock(run.started_at)}"
                    + (f" (version {version})" if version else ""),
                    {"t": run.started_at, "version": version, "log": log},
                )
            )
        if report.start_count > 1:
            out.add(
                self.finding(
                    "logs.restarts",
                    Level.INFO,
                    f"the log holds {report.start_count} starts; the newest one is diagnosed",
                    {"count": report.start_count, "log": log},
                )
            )
        validated = run.first("model_validated")
        if validated is not None:
            out.add(
                self.finding(
                    "logs.model_validated",
                    Level.INFO,
                    "model validation passed",
                    {"t": validated.t, "log": log},
                )
            )
        loaded = run.first("model_loaded")
        if loaded is not None:
            load_s = _round(run.load_s)
            out.add(
                self.finding(
                    "logs.model_loaded",
                    Level.OK,
                    "the model loaded" + (f" in {load_s:.2f} s" if load_s is not None else ""),
                    {"t": loaded.t, "load_s": load_s, "log": log},
                )
            )
        listening = run.listening
        if listening is not None:
            address = listening.groups.get("address")
            out.add(
                self.finding(
                    "logs.listening",
                    Level.OK,
                    f"the engine listens on {address or 'its address'} since {_clock(listening.t)}",
                    {"t": listening.t, "address": address, "log": log},
                )
            )
            if not ctx.target.offline:
                self._other_address(ctx, out, address)
        shutdown = run.shutdown
        if shutdown is not None:
            out.add(
                self.finding(
                    "logs.shutdown",
                    Level.INFO,
                    f"the engine shut down at {_clock(shutdown.t)}",
                    {"t": shutdown.t, "log": log},
                )
            )
        started_at = run.started_at
        since_s = _round(now - started_at, 1) if started_at is not None else None
        if run.start is not None and listening is None and not fatal:
            out.add(
                self.finding(
                    "logs.started_never_listened",
                    Level.WARNING,
                    "the newest run started"
                    + (f" {since_s:.0f} s ago" if since_s is not None else "")
                    + " and never said it listens, with no fatal line",
                    {"since_s": since_s, "log": log},
                )
            )
        began = run.start or run.first("model_validated") or run.first("model_loading")
        if (
            began is not None
            and loaded is None
            and not fatal
            and shutdown is None
            and not ctx.target.offline
        ):
            if started_at is not None:
                recent = now - started_at < LOADING_WINDOW_S
            else:
                recent = self._recently_written(path, now)
            if recent:
                out.add(
                    self.finding(
                        "logs.loading_in_progress",
                        Level.INFO,
                        "the newest run is still loading the model"
                        + (f" ({since_s:.0f} s since start)" if since_s is not None else ""),
                        {"since_s": since_s, "log": log},
                    )
                )

    @staticmethod
    def _recently_written(path: Path, now: float) -> bool:
        try:
            return now - os.stat(path).st_mtime < LOADING_WINDOW_S
        except OSError:
            return False

    def _other_address(self, ctx: Context, out: ProbeOutput, address: str | None) -> None:
        from exsa_doctor.parsers.logs import split_address

        host, port = split_address(address)
        if host is None and port is None:
            return
        target = ctx.target
        port_differs = port is not None and port != target.port
        host_differs = host is not None and not _covers(host, target.host)
        if not (port_differs or host_differs):
            return
        url_host = target.host if host is None or host.strip("[]") in _WILDCARDS else host
        url = _url_for(target.scheme, url_host, port if port is not None else target.port)
        out.add(
            self.finding(
                "logs.listening_other_address",
                Level.ERROR,
                f"the engine listens on {address}, not on {target.host}:{target.port}: use {url}",
                {"address": address, "url": url},
            )
        )

    def _failed_at(self, ctx: Context, out: ProbeOutput, report: LogReport) -> None:
        failed_at = ctx.target.failed_at
        if failed_at is None:
            return
        run = report.run_at(failed_at)
        if run is None:
            return  # no timed start: nothing to compare with
        ready_at = run.listening_at
        if ready_at is not None and ready_at <= failed_at:
            out.add(
                self.finding(
                    "logs.failed_after_ready",
                    Level.INFO,
                    f"the request failed at {_clock(failed_at)}, "
                    f"{failed_at - ready_at:.2f} s after the engine listened",
                    {"failed_at": failed_at, "ready_at": ready_at},
                )
            )
            return
        gap_s = _round(ready_at - failed_at) if ready_at is not None else None
        summary = (
            f"the request failed at {_clock(failed_at)}, {gap_s:.2f} s before the engine listened"
            if gap_s is not None
            else f"the request failed at {_clock(failed_at)}; the engine never listened after it"
        )
        out.add(
            self.finding(
                "logs.failed_before_ready",
                Level.ERROR,
                summary,
                {"failed_at": failed_at, "ready_at": ready_at, "gap_s": gap_s},
            )
        )

    @staticmethod
    def _timeline(out: ProbeOutput, report: LogReport, *, full: bool) -> None:
        runs = report.runs[-3:] if full else report.runs[-1:]
        for run in runs:
            for event in run.events:
                if event.t is None:
                    continue
                text = (
                    _timeline_text(event, run)
                    if full
                    else (_timeline_text(event, run) if event.marker == "bind_failed" else None)
                )
                if text:
                    out.event(event.t, "log", text, _MARKER_KINDS[event.marker])

    @staticmethod
    def _detail(reports: list[tuple[Path, LogReport]], primary: LogReport) -> str:
        run = primary.last_run
        parts = [f"{len(reports)} log(s) read"]
        if run is None:
            parts.append("no engine markers found")
        else:
            states = [
                name
                for name, present in (
                    ("started", run.start is not None),
                    ("validated", run.first("model_validated") is not None),
                    ("loaded", run.first("model_loaded") is not None),
                    ("listening", run.listening is not None),
                )
                if present
            ]
            parts.append("newest run: " + (", ".join(states) or "no lifecycle line"))
            from exsa_doctor.signatures import read_chain

            chain = read_chain(primary.hits, run.listening.lineno if run.listening else None)
            if chain.root is not None:
                parts.append(f"error: {chain.root.signature.id}")
            elif chain.unknown:
                parts.append("an error no signature knows")
        if primary.stamped_lines == 0:
            parts.append("no timestamps")
        return "; ".join(parts)


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def _nobody_listens(port: int) -> bool:
    """Whether no socket listens on `port` now (False when we cannot tell)."""
    from exsa_doctor.oslayer.sockets import listeners_of

    try:
        scan = listeners_of(port, deadline=time.monotonic() + 0.5)
    except Exception:  # the OS layer failing must not cost us the log's own finding
        return False
    return not scan.listeners and scan.complete


def _reasonless_bind_host(finding: Finding) -> str | None:
    """The host ("" when none) a bind failure without an errno named; None for other findings."""
    if finding.id != "logs.bind_failed" or finding.data.get("errno") is not None:
        return None
    return str(finding.data.get("host") or "").strip("[]")


def _specific_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as a literal address that is neither a wildcard nor loopback; None for a name."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return None if address.is_unspecified or address.is_loopback else address


def _is_local_address(host: str) -> bool:
    """Whether `host` is a wildcard, a name, or an address of one of this machine's interfaces."""
    address = _specific_address(host)
    if address is None:
        return True  # a wildcard, loopback, or a name: resolving it is not ours to do here
    import psutil

    try:
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.address.split("%", 1)[0] == str(address):
                    return True
    except OSError:
        return True
    return False


def _unprivileged_port_start() -> int:
    try:
        return int(_UNPRIVILEGED_PORT_START.read_text().strip())
    except (OSError, ValueError):
        return 1024


def _is_traceback(hits: tuple[Hit, ...]) -> bool:
    return any(h.signature.id == "generic.python-exception" for h in hits)


# The milestone each timeline line of the log marks: by the profile marker that matched it, and
# for the causal chain's root, by the start-up stage its signature names.
_MARKER_KINDS = {
    "start": EventKind.START,
    "model_validated": EventKind.MODEL_VALIDATED,
    "model_loading": EventKind.MODEL_LOADING,
    "model_loaded": EventKind.MODEL_LOADED,
    "binding": EventKind.HTTP_STARTING,
    "listening": EventKind.LISTENING,
    "bind_failed": EventKind.BIND_FAILED,
    "shutdown": EventKind.SHUTDOWN,
}
_STAGE_KINDS = {
    "model-open": EventKind.MODEL_ERROR,
    "model-load": EventKind.MODEL_ERROR,
    "weights": EventKind.MODEL_ERROR,
    "bind": EventKind.BIND_FAILED,
}


def _timeline_text(event: LogEvent, run: Run) -> str | None:
    g = event.groups
    marker = event.marker
    if marker == "start":
        return "engine started" + (f" (version {g['version']})" if g.get("version") else "")
    if marker == "model_validated":
        return "model validated"
    if marker == "model_loading":
        return "loading model" + (f" {g['path']}" if g.get("path") else "")
    if marker == "model_loaded":
        load_s = run.load_s
        return "model loaded" + (f" ({load_s:.2f} s)" if load_s is not None else "")
    if marker == "binding":
        return "starting HTTP server" + (f" on {g['address']}" if g.get("address") else "")
    if marker == "listening":
        return "listening" + (f" on {g['address']}" if g.get("address") else "")
    if marker == "bind_failed":
        failure = run.bind_failure
        where = failure.address if failure and failure.address else "its address"
        return f"bind failed: {where}: {event.line.strip()[-120:]}"
    if marker == "shutdown":
        return "shut down" if run.shutdown is event else None
    # fatal lines reach the timeline once, as the causal chain's root (see `run`)
    return None
