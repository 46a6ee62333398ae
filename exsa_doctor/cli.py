"""The `exsa-doctor` command line: parse options, call, pick the exit code; nothing else.

Exit codes: 0 healthy, 1 a problem diagnosed, 2 usage error, 3 inconclusive.
Reports go to stdout (or `--output`), progress and messages to stderr. Every diagnosis comes
from the library core (`api.py`). Heavy imports are done inside the commands, only the command
being run is built, and `--version` is answered by `launch.py` before this module loads
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from exsa_doctor import __version__

if TYPE_CHECKING:
    from exsa_doctor.context import Context
    from exsa_doctor.model import Diagnosis
    from exsa_doctor.target import Target

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3


class ReportFormat(str, enum.Enum):
    """Report formats `diagnose` can write."""

    text = "text"
    json = "json"
    markdown = "markdown"
    junit = "junit"
    html = "html"


_APP_SETTINGS: dict[str, Any] = dict(
    name="exsa-doctor",
    help="Find out why a local LLM inference server failed to start or serve, and how to fix it.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app = typer.Typer(**_APP_SETTINGS)


def fail_usage(message: str) -> NoReturn:
    """Print a usage error the way a person reads it, and exit 2."""
    sys.stderr.write(f"exsa-doctor: error: {message}\n")
    raise typer.Exit(EXIT_USAGE)


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"exsa-doctor {__version__}\n")
        raise typer.Exit(0)


def _list_probes_callback(value: bool) -> None:
    if value:
        from exsa_doctor.probes import all_probes

        for cls in all_probes():
            sys.stdout.write(f"{cls.name:<12} {cls.title}  (timeout {cls.timeout_s:g} s)\n")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
    list_probes: Annotated[
        bool,
        typer.Option(
            "--list-probes", callback=_list_probes_callback, is_eager=True, help="List the probes."
        ),
    ] = False,
) -> None:
    """Diagnose why an LLM inference engine does not start or serve."""


UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="Engine base URL (default: $EXSA_URL, else http://127.0.0.1:${PORT:-3000}).",
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        metavar="PATH",
        # an unreadable model is a finding (the engine's user may differ from ours), not an error
        readable=False,
        help="GGUF model path (default: $MODEL_PATH, else the engine's own).",
    ),
]
LogOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--log",
        metavar="PATH",
        readable=False,  # checked by _check_logs, with a message that says what to do
        help="Engine log file (repeatable); - reads standard input.",
    ),
]
PidOpt = Annotated[
    list[int] | None, typer.Option("--pid", metavar="PID", help="Engine PID (repeatable).")
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        metavar="NAME",
        help="Engine profile: auto, exsa-engine, llama-server, ollama, vllm.",
    ),
]
HealthPathOpt = Annotated[
    str | None,
    typer.Option(
        "--health-path",
        metavar="PATH",
        help="Your engine's health route (overrides the profile's).",
    ),
]
ReadyMarkerOpt = Annotated[
    str | None,
    typer.Option(
        "--ready-marker", metavar="REGEX", help="Log regex that means your engine is listening."
    ),
]
ProcessNameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--process-name",
        metavar="NAME",
        help="Executable name that identifies your engine (repeatable).",
    ),
]
ProfileFileOpt = Annotated[
    Path | None,
    typer.Option("--profile-file", metavar="PATH", help="A profile TOML file for your own engine."),
]


def write_output(text: str, output: Path | None) -> None:
    """Write a report to --output (creating nothing else) or to stdout."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail_usage(f"cannot write --output {output}: {exc.strerror or exc}")


# "program" is set once `main` runs: we are the exsa-doctor program, not a library or a test.
_RUN: dict[str, bool] = {"program": False}


def finish(code: int) -> NoReturn:
    """End a one-shot command: as the program, flush and leave without interpreter teardown.

    With Typer, Rich and the probes loaded, tearing the modules down costs 20-40 ms of a
    300 ms budget, and nothing is left to release: the report is written and flushed, any
    helper a probe started was stopped by PID, and probe threads are daemons. As a library or
    under a test runner this is a plain `typer.Exit`.
    """
    if _RUN["program"]:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    raise typer.Exit(code)


def exit_code_for(verdict: str) -> int:
    return {"healthy": EXIT_HEALTHY, "unhealthy": EXIT_UNHEALTHY}.get(verdict, EXIT_INCONCLUSIVE)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """The cyclic garbage collector off while the probes and profiles are imported.

    Importing allocates many objects and frees few, so the collections it triggers find little
    and cost 15-25 ms of CPU in `diagnose`'s start-up (docs/performance.md). Back on before
    any probe runs.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn the core's `UsageError` into the CLI's usage error (exit 2)."""
    from exsa_doctor.target import UsageError

    try:
        yield
    except UsageError as exc:
        fail_usage(str(exc))


def render(diagnosis: Diagnosis, fmt: ReportFormat, to_file: bool = False) -> str:
    from exsa_doctor.render import render_as

    # a file gets no colour codes, whatever the terminal we run in
    return render_as(diagnosis, fmt.value, color=False if to_file else None)


WatchOpt = Annotated[
    float,
    typer.Option("--watch", metavar="SECONDS", help="Keep observing up to this many seconds."),
]
FailedAtOpt = Annotated[
    str | None,
    typer.Option(
        "--failed-at", metavar="TIME", help="When the client's request failed (ISO 8601 or epoch)."
    ),
]
GenerateOpt = Annotated[
    bool | None,
    typer.Option(
        "--generate/--no-generate", help="One tiny generation (default: when health is OK)."
    ),
]
ProbeOpt = Annotated[
    list[str] | None,
    typer.Option("--probe", metavar="NAME", help="Run only these probes (repeatable)."),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", help="Bound on the whole run, seconds.")
]


STDIN_LOG = "<stdin>"


def _check_logs(log: list[Path] | None) -> dict[str, bytes]:
    """Every --log must be a readable, non-empty file; `-` reads standard input (returned)."""
    inline: dict[str, bytes] = {}
    for path in log or ():
        if str(path) == "-":
            if STDIN_LOG in inline:
                fail_usage("--log - can be given once")
            from exsa_doctor.parsers.logs import read_stream

            data = read_stream(sys.stdin.buffer).data
            if not data.strip():
                fail_usage(
                    "--log -: standard input was empty; paste the engine's log or pipe it in"
                )
            inline[STDIN_LOG] = data
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            fail_usage(f"--log {path}: no such file")
        except OSError as exc:  # a folder we may not enter, a loop of links
            fail_usage(f"--log {path}: cannot be read ({exc.strerror or exc})")
        if stat.S_ISDIR(st.st_mode):
            fail_usage(f"--log {path} is a directory; give the log file")
        if not stat.S_ISREG(st.st_mode):
            fail_usage(f"--log {path}: not a regular file (a FIFO or a device)")
        try:
            with path.open("rb") as fh:
                empty = not fh.read(1)
        except OSError as exc:
            fail_usage(f"--log {path}: cannot be read ({exc.strerror or exc})")
        if empty:
            fail_usage(
                f"--log {path} is empty: the engine wrote nothing there (is it the right file?)"
            )
    return inline


def target_from(
    *,
    url: str | None,
    model: Path | None,
    log: list[Path] | None,
    pid: list[int] | None,
    watch: float = 0.0,
    failed_at: str | None = None,
    generate: bool | None = None,
    timeout: float = 10.0,
    profile: str = "auto",
    profile_file: Path | None = None,
    health_path: str | None = None,
    ready_marker: str | None = None,
    process_name: list[str] | None = None,
) -> Target:
    """The command-line options, as the core's target (usage errors exit 2)."""
    from exsa_doctor import api

    with usage_errors():
        return api.make_target(
            url=url,
            model=model,
            logs=tuple(log or ()),
            pids=tuple(pid or ()),
            watch_s=watch,
            failed_at=failed_at,
            generate=generate,
            timeout_s=timeout,
            profile=profile,
            profile_file=profile_file,
            health_path=health_path,
            ready_marker=ready_marker,
            process_names=tuple(process_name or ()),
        )


@app.command()
def diagnose(
    url: UrlOpt = None,
    model: ModelOpt = None,
    log: LogOpt = None,
    pid: PidOpt = None,
    watch: WatchOpt = 0.0,
    failed_at: FailedAtOpt = None,
    generate: GenerateOpt = None,
    probe: ProbeOpt = None,
    timeout: TimeoutOpt = 10.0,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="Report format.")
    ] = ReportFormat.text,
    output: Annotated[
        Path | None,
        typer.Option("--output", metavar="PATH", help="Write the report here instead of stdout."),
    ] = None,
    profile: ProfileOpt = "auto",
    profile_file: ProfileFileOpt = None,
    health_path: HealthPathOpt = None,
    ready_marker: ReadyMarkerOpt = None,
    process_name: ProcessNameOpt = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Read only the --log files (a log from another machine): probe nothing here. "
            "Implied by --log - (standard input).",
        ),
    ] = False,
) -> None:
    """Run the probes side by side and print a ranked diagnosis with evidence and fixes."""
    if output is not None and output.is_dir():
        fail_usage(f"--output {output} is a directory; give a file name")
    if fmt is ReportFormat.html and output is None and sys.stdout.isatty():
        fail_usage("--format html writes a whole page: give --output FILE.html")
    inline = _check_logs(log)
    if offline or inline:
        if not log:
            fail_usage("--offline reads logs only: give --log FILE (or --log - for standard input)")
        from exsa_doctor.api_offline import offline_diagnosis
        from exsa_doctor.target import UsageError

        try:
            diagnosis = offline_diagnosis(
                [Path(STDIN_LOG) if str(p) == "-" else p for p in log],
                profile=profile,
                profile_file=profile_file,
                failed_at=failed_at,
                timeout_s=timeout,
                inline_logs=inline,
                url=url,
            )
        except UsageError as exc:
            fail_usage(str(exc))
        write_output(render(diagnosis, fmt, to_file=output is not None), output)
        finish(exit_code_for(diagnosis.verdict.value))
    from exsa_doctor import api

    with loading(), usage_errors():
        selected = api.select_probes(probe or ())
        target = target_from(
            url=url,
            model=model,
            log=log,
            pid=pid,
            watch=watch,
            failed_at=failed_at,
            generate=generate,
            timeout=timeout,
            profile=profile,
            profile_file=profile_file,
            health_path=health_path,
            ready_marker=ready_marker,
            process_name=process_name,
        )
    diagnosis = api.diagnose(target, probes=selected)
    write_output(render(diagnosis, fmt, to_file=output is not None), output)
    finish(exit_code_for(diagnosis.verdict.value))


@app.command()
def bundle(
    output: Annotated[
        Path, typer.Option("--output", metavar="FILE.tar.gz", help="The .tar.gz to write.")
    ],
    url: UrlOpt = None,
    model: ModelOpt = None,
    log: LogOpt = None,
    pid: PidOpt = None,
    watch: WatchOpt = 0.0,
    failed_at: FailedAtOpt = None,
    generate: GenerateOpt = None,
    probe: ProbeOpt = None,
    timeout: TimeoutOpt = 10.0,
    profile: ProfileOpt = "auto",
    profile_file: ProfileFileOpt = None,
    health_path: HealthPathOpt = None,
    ready_marker: ReadyMarkerOpt = None,
    process_name: ProcessNameOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List every file and redaction; write nothing."),
    ] = False,
) -> None:
    """Diagnose, then write a redacted support bundle (reports, log tails, processes, system)."""
    from exsa_doctor import api
    from exsa_doctor.bundle import build_bundle

    if output.is_dir():
        fail_usage(f"--output {output} is a directory; give a file name like report.tar.gz")
    if not output.parent.exists():
        fail_usage(f"--output {output}: folder {output.parent} does not exist")
    kept: list[Context] = []
    with usage_errors():
        selected = api.select_probes(probe or ())
    target = target_from(
        url=url,
        model=model,
        log=log,
        pid=pid,
        watch=watch,
        failed_at=failed_at,
        generate=generate,
        timeout=timeout,
        profile=profile,
        profile_file=profile_file,
        health_path=health_path,
        ready_marker=ready_marker,
        process_name=process_name,
    )
    diagnosis = api.diagnose(target, probes=selected, keep=kept)
    # the processes the probes already read (memoised in the run's context), not a second walk;
    # only when the run never read them (--probe) or was cut short, read them now
    from exsa_doctor.facts import engines as engines_of

    engines, complete = engines_of(kept[0])
    if not complete:
        import time as _time

        from exsa_doctor.oslayer.procs import find_engines
        from exsa_doctor.profiles import all_builtin

        engines, _ = find_engines(all_builtin(), deadline=_time.monotonic() + 2.0)
    try:
        result = build_bundle(
            diagnosis, engines, target.logs, output, context=kept[0], dry_run=dry_run
        )
    except OSError as exc:
        fail_usage(f"cannot write --output {output}: {exc.strerror or exc}")
    if dry_run:
        from exsa_doctor.bundle import plan_text

        sys.stdout.write(plan_text(result))
        raise typer.Exit(exit_code_for(diagnosis.verdict.value))
    redacted = sum(result.redactions.values())
    sys.stderr.write(
        f"exsa-doctor: wrote {result.path} ({result.size} bytes, {len(result.files)} files, "
        f"{redacted} secrets redacted); verdict {diagnosis.verdict.value}\n"
    )
    raise typer.Exit(exit_code_for(diagnosis.verdict.value))


@app.command()
def triage(
    reports: Annotated[
        list[Path],
        typer.Argument(metavar="REPORT", help="JSON reports, or folders searched for *.json."),
    ],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="text or json.")
    ] = ReportFormat.text,
) -> None:
    """Which causes recur across many JSON reports (a CI fleet's artifacts), newest first."""
    import json as _json

    from exsa_doctor.triage import render_text
    from exsa_doctor.triage import triage as fold

    missing = [str(p) for p in reports if not p.exists()]
    if missing:
        fail_usage(f"no such file or folder: {', '.join(missing)}")
    if fmt not in (ReportFormat.text, ReportFormat.json):
        fail_usage("triage writes --format text or json")
    result = fold(reports)
    if fmt is ReportFormat.json:
        sys.stdout.write(_json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(render_text(result))
    if result.reports == 0:
        raise typer.Exit(EXIT_INCONCLUSIVE)


@app.command()
def causes() -> None:
    """Print the root-cause table."""
    from exsa_doctor.render.text import render_cause_table

    sys.stdout.write(render_cause_table())


@app.command()
def explain(
    cause: Annotated[str, typer.Argument(metavar="CAUSE", help="A cause id, e.g. race-condition.")],
) -> None:
    """Print one cause in full: what it is, what evidence moves it, how to fix and confirm it."""
    from exsa_doctor.causes import cause_by_id, load_causes
    from exsa_doctor.render.text import render_cause

    found = cause_by_id(cause)
    if found is None:
        fail_usage(f"unknown cause {cause!r} (known: {', '.join(c.id for c in load_causes())})")
    sys.stdout.write(render_cause(found))


def command_name(info: typer.models.CommandInfo) -> str:
    """The name a registered command is called by."""
    if info.name:
        return info.name
    assert info.callback is not None
    return info.callback.__name__.lower().replace("_", "-")


def app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command being run (all of them for help and completion).

    Typer turns every registered command's parameters into Click parameters before it parses
    anything; building only the one that runs saves that work for the other commands
    (docs/performance.md).
    """
    wanted = argv[0] if argv else ""
    completing = any(k.endswith("_COMPLETE") for k in os.environ if k.startswith("_EXSA"))
    chosen = [c for c in app.registered_commands if command_name(c) == wanted]
    if not chosen or completing:
        return app
    lean = typer.Typer(**_APP_SETTINGS)
    lean.registered_callback = app.registered_callback
    lean.registered_commands = chosen
    return lean


def main() -> None:
    """Run the command line (`launch.main` is the console script; it answers --version)."""
    _RUN["program"] = True
    if os.environ.get("NO_COLOR"):
        os.environ.setdefault("TERM", "dumb")
    try:
        app_for(sys.argv[1:])()
    except KeyboardInterrupt:
        sys.stderr.write("exsa-doctor: interrupted\n")
        sys.exit(130)


@app.command()
def demo(
    scenario: Annotated[
        str,
        typer.Argument(
            metavar="SCENARIO", help="The failure to build (see --list); default: race."
        ),
    ] = "race",
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="Report format.")
    ] = ReportFormat.text,
    timeout: TimeoutOpt = 10.0,
    list_scenarios: Annotated[
        bool, typer.Option("--list", help="List the scenarios and exit.")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            metavar="SECONDS",
            help="Watch the engine this long (default: the scenario's own).",
        ),
    ] = None,
) -> None:
    """Build a real failure on this machine (stand-in engine), diagnose it, clean up."""
    from exsa_doctor.demo.scenarios import BUILDERS

    if list_scenarios:
        from exsa_doctor.demo.scenarios import EXPECTED_CAUSE

        for name in BUILDERS:
            sys.stdout.write(f"{name:<20} -> {EXPECTED_CAUSE[name] or '(healthy)'}\n")
        raise typer.Exit(0)
    if scenario not in BUILDERS:
        fail_usage(f"unknown scenario {scenario!r} (known: {', '.join(BUILDERS)})")
    if timeout <= 0 or timeout > 3600:
        fail_usage("--timeout must be between 0 and 3600 seconds")
    from exsa_doctor.demo import run_demo
    from exsa_doctor.demo.scenarios import ScenarioError

    try:
        if watch is not None and not 0 <= watch <= 600:
            fail_usage("--watch must be between 0 and 600 seconds")
        diagnosis = run_demo(scenario, timeout=timeout, watch=watch)
    except ScenarioError as exc:
        sys.stderr.write(f"exsa-doctor: demo: could not build scenario {scenario}: {exc}\n")
        raise typer.Exit(EXIT_INCONCLUSIVE) from None
    write_output(render(diagnosis, fmt), None)
    raise typer.Exit(exit_code_for(diagnosis.verdict.value))


# --------------------------------------------------------------- supervise: wait, run, ps, cleanup


@app.command()
def wait(
    url: UrlOpt = None,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="Give up after this many seconds.")
    ] = 60.0,
    log: LogOpt = None,
    pid: PidOpt = None,
    profile: ProfileOpt = "auto",
    profile_file: ProfileFileOpt = None,
    health_path: HealthPathOpt = None,
    ready_marker: ReadyMarkerOpt = None,
    process_name: ProcessNameOpt = None,
) -> None:
    """Return (exit 0) the moment the engine is ready; if it dies or never gets there, say why."""
    from exsa_doctor import api
    from exsa_doctor.target import UsageError, check_seconds

    try:
        check_seconds("--timeout", timeout, 86400)
    except UsageError as exc:
        fail_usage(str(exc))
    target = target_from(
        url=url,
        model=None,
        log=log,
        pid=pid,
        profile=profile,
        profile_file=profile_file,
        health_path=health_path,
        ready_marker=ready_marker,
        process_name=process_name,
    )
    from exsa_doctor.supervise.report import render_failure, reporter_for, stderr_write

    with usage_errors():
        outcome = api.wait(
            target,
            timeout_s=timeout,
            pids=tuple(pid or ()),
            logs=tuple(log or ()),
            reporter=reporter_for(sys.stderr),
        )
    stderr_write(f"exsa-doctor wait: {outcome.summary}\n")
    if outcome.diagnosis is None:
        finish(EXIT_HEALTHY)
    render_failure(outcome.diagnosis, stderr_write)
    stderr_write(f"exsa-doctor wait: {outcome.summary}\n")
    raise typer.Exit(EXIT_UNHEALTHY)


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    engine: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ENGINE",
            help="The engine command and its arguments, after --.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        str | None,
        typer.Option("--port", metavar="N|auto", help="Port for the engine: a number or 'auto'."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", metavar="HOST", help="Address the engine binds (default 127.0.0.1)."
        ),
    ] = None,
    then: Annotated[
        str | None,
        typer.Option(
            "--then",
            metavar="CMD",
            help="Once ready, run this through the shell (EXSA_URL, EXSA_PORT, EXSA_PID set); "
            "its exit code is ours.",
        ),
    ] = None,
    ready_timeout: Annotated[
        float,
        typer.Option("--ready-timeout", metavar="SECONDS", help="Seconds to wait for readiness."),
    ] = 60.0,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir", metavar="DIR", help="Engine log and, on failure, report.json/report.md."
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option("--log", metavar="PATH", help="Write the engine's output to this file."),
    ] = None,
    profile: ProfileOpt = "auto",
    profile_file: ProfileFileOpt = None,
    health_path: HealthPathOpt = None,
    ready_marker: ReadyMarkerOpt = None,
    process_name: ProcessNameOpt = None,
) -> None:
    """Preflight, start the engine, wait until ready, run --then, always tear down."""
    from exsa_doctor import api

    port_number: int | None = None
    if port is not None and port != "auto":
        try:
            port_number = int(port)
        except ValueError:
            fail_usage(f"--port {port!r}: give a port number or 'auto'")
    with usage_errors():
        options = api.run_options(
            engine or (),
            port=port_number,
            port_auto=port == "auto",
            host=host,
            then=then,
            ready_timeout_s=ready_timeout,
            report_dir=report_dir,
            log=log,
            profile=profile,
            profile_file=profile_file,
            health_path=health_path,
            ready_marker=ready_marker,
            process_names=tuple(process_name or ()),
        )
        code = api.run_command(options)
    raise typer.Exit(code)


class PsFormat(str, enum.Enum):
    """Formats `ps` can print."""

    text = "text"
    json = "json"


@app.command()
def ps(
    fmt: Annotated[PsFormat, typer.Option("--format", help="Output format.")] = PsFormat.text,
) -> None:
    """List every engine instance: PID, parent, orphaned, zombie, state, age, ports, model, RSS."""
    from exsa_doctor.supervise.ps import list_instances, render_json, render_text

    listing = list_instances()
    write_output(render_json(listing) if fmt is PsFormat.json else render_text(listing), None)


@app.command()
def cleanup(
    port: Annotated[
        int | None,
        typer.Option("--port", metavar="PORT", help="Stop the engine instances on this port."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", metavar="PATH", help="Stop the engine instances holding this model."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; signal nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask (for CI).")] = False,
) -> None:
    """Stop stale engine instances of yours (orphans, or those on --port / holding --model)."""
    if port is not None and not 0 < port < 65536:
        fail_usage("--port must be 1-65535")
    from exsa_doctor.supervise import cleanup as cleaning

    plan = cleaning.make_plan(port, str(model) if model is not None else None)
    sys.stdout.write(cleaning.render_plan(plan, dry_run))
    sys.stdout.flush()
    if dry_run:
        raise typer.Exit(EXIT_HEALTHY)
    if not plan.targets:
        foreign = [b for b in plan.bystanders if "never signalled" in b.reason]
        if port is not None and foreign:
            sys.stderr.write(
                f"exsa-doctor cleanup: port {port} is held by a process that is not an engine "
                "instance of yours; stop it yourself if it is yours to stop\n"
            )
            raise typer.Exit(EXIT_UNHEALTHY)
        raise typer.Exit(EXIT_HEALTHY)
    if not yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            sys.stderr.write(
                "exsa-doctor cleanup: not a terminal, so nothing was signalled; re-run with "
                f"--yes to stop the {len(plan.targets)} process(es) above\n"
            )
            raise typer.Exit(EXIT_UNHEALTHY)
        if not typer.confirm(f"Stop {len(plan.targets)} process(es)?", default=False, err=True):
            sys.stderr.write("exsa-doctor cleanup: nothing was signalled\n")
            raise typer.Exit(EXIT_UNHEALTHY)
    report = cleaning.execute(plan)
    sys.stdout.write(cleaning.render_report(plan, report))
    sys.stdout.flush()
    raise typer.Exit(EXIT_HEALTHY if report.ok else EXIT_UNHEALTHY)
