"""The terminal report (Rich), read at a glance: verdict, ranked causes, evidence, fixes,
the engine's start-up timeline and how each probe ended.

Colour only on a terminal and never with NO_COLOR set; otherwise plain text 100 columns wide.
Fix commands are printed unwrapped so they can be copied as they are. Every string from the
diagnosis is stripped of control characters (a log line must not drive the reader's terminal)
and added as `Text`, never as markup, so `[bold]` in data stays literal.

Also renders the cause table (`exsa-doctor causes`) and one cause (`exsa-doctor explain ID`).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from exsa_doctor.causes import load_causes
from exsa_doctor.model import (
    Cause,
    Diagnosis,
    Evidence,
    ProbeStatus,
    RankedCause,
    Verdict,
)
from exsa_doctor.render.common import (
    RERUN_INTRO,
    event_kind,
    healthy_hints,
    inconclusive_reason,
    iso_utc,
    percent,
    printable,
    prominent_causes,
    seconds,
    shorten,
    tell_apart,
    timeline_view,
    weight,
)

PLAIN_WIDTH = 100
BAR_CELLS = 20
MAX_SUMMARY = 300  # characters of a finding summary shown; the JSON report has all of it
MAX_EVENTS = 40
MAX_OTHER_CAUSES = 5
MIN_OTHER_PROBABILITY = 0.05

_VERDICT_STYLE = {
    Verdict.HEALTHY: ("✓", "bold green"),
    Verdict.UNHEALTHY: ("✗", "bold red"),
    Verdict.INCONCLUSIVE: ("?", "bold yellow"),
}
_PROBE_STYLE = {
    ProbeStatus.OK: "green",
    ProbeStatus.SKIPPED: "dim",
    ProbeStatus.TIMEOUT: "bold yellow",
    ProbeStatus.CRASHED: "bold red",
}


def _use_color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdout
        return False


def _console(color: bool | None, width: int | None) -> Console:
    colored = _use_color() if color is None else color
    if width is None:
        width = shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns if colored else PLAIN_WIDTH
    return Console(
        file=io.StringIO(),
        force_terminal=colored,
        no_color=not colored,
        color_system="auto" if colored else None,
        width=max(40, width),
        highlight=False,
        markup=False,
        emoji=False,
        legacy_windows=False,
        force_jupyter=False,
    )


def _text(console: Console) -> str:
    out = console.file
    assert isinstance(out, io.StringIO)
    # grids pad cells to the full width; trailing blanks only get in the way of copying
    return "\n".join(line.rstrip() for line in out.getvalue().split("\n"))


def _indented(console: Console, item: RenderableType, indent: int) -> None:
    """Print `item` wrapped inside a left margin (a hanging indent for long lines)."""
    console.print(Padding(item, (0, 0, 0, indent)))


def _s(value: object, limit: int | None = None) -> str:
    clean = printable(value)
    return shorten(clean, limit) if limit else clean


def _bar(p: float, style: str) -> Text:
    filled = round(p * BAR_CELLS) if math.isfinite(p) else 0
    filled = min(BAR_CELLS, max(0, filled))
    bar = Text()
    bar.append("█" * filled, style=style)
    bar.append("░" * (BAR_CELLS - filled), style="dim")
    return bar


def _evidence_grid(c: RankedCause) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=8, no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold", ratio=1)
    groups: tuple[tuple[str, Sequence[Evidence], str, str], ...] = (
        ("for", c.evidence_for, "✓", "green"),
        ("against", c.evidence_against, "✗", "red"),
    )
    for title, items, mark, style in groups:
        for n, e in enumerate(items):
            grid.add_row(
                Text(title if n == 0 else "", style="bold"),
                Text(mark, style=style),
                Text(_s(e.finding), style=style),
                Text(weight(e.weight), style="dim"),
                Text(_s(e.summary, MAX_SUMMARY)),
            )
    return grid


def _cause_full(console: Console, c: RankedCause) -> None:
    style = "bold red" if c.probability >= 0.5 else "bold yellow"
    head = Text("  ")
    head.append_text(_bar(c.probability, style))
    head.append(f" {percent(c.probability):>4}  ", style=style)
    head.append(_s(c.id), style="bold")
    head.append(f"  impact {c.impact}", style="dim")
    console.print(head)
    _indented(console, Text(_s(c.title), style="bold"), 4)
    if c.evidence:
        _indented(console, _evidence_grid(c), 4)
    if not c.remediation:
        return
    _indented(console, Text("fix", style="bold"), 4)
    for n, step in enumerate(c.remediation, 1):
        _indented(console, Text(f"{n}. {_s(step.text)}"), 6)
        for cmd in step.commands:
            # soft_wrap: printed as one line, never folded, so it pastes into a shell intact
            console.print(Text("         " + _s(cmd), style="cyan"), soft_wrap=True)


def _cause_compact(console: Console, c: RankedCause) -> None:
    line = Text("  ")
    line.append_text(_bar(c.probability, "yellow" if c.probability >= 0.2 else "dim"))
    line.append(f" {percent(c.probability):>4}  ")
    line.append(_s(c.id), style="bold")
    if not c.evidence_for:
        line.append("  (its prior; no evidence either way)", style="dim")
    line.append("  " + _s(c.title))
    console.print(line, overflow="ellipsis", no_wrap=True)


def _header(console: Console, d: Diagnosis) -> None:
    mark, style = _VERDICT_STYLE[d.verdict]
    line = Text()
    line.append(f"{mark} {d.verdict.value.upper()}", style=style)
    line.append("  " + _s(d.target.where), style="bold")
    assumed = ", assumed: nothing names the engine" if d.target.profile_assumed else ""
    line.append(f"  ({_s(d.target.profile)}{assumed})", style="dim")
    console.print(line)
    shown = prominent_causes(d)
    if d.verdict is Verdict.UNHEALTHY and shown:
        summary = f"most likely: {_s(shown[0].title)} [{_s(shown[0].id)}]"
    elif d.verdict is Verdict.HEALTHY:
        summary = "the engine answers and no failure cause is likely"
    else:
        summary = inconclusive_reason(d)
    _indented(console, Text(summary), 2)
    facts = []
    if d.target.model:
        facts.append("model " + _s(d.target.model, 120))
    if d.target.logs:
        facts.append("log " + ", ".join(_s(p, 120) for p in d.target.logs[:3]))
    if d.target.pids:
        facts.append("pid " + " ".join(str(p) for p in d.target.pids))
    when = printable(_iso_short(d.started_at))
    facts.append(f"checked {when} in {seconds(d.duration_s)}")
    _indented(console, Text(" · ".join(facts), style="dim"), 2)
    hints = healthy_hints(d)
    if hints:
        console.print()
        console.print(Text("Healthy now. To catch a failure the doctor did not see", style="bold"))
        for what, command in hints:
            _indented(console, Text(_s(what)), 2)
            _indented(console, Text(_s(command), style="cyan"), 6)


def _iso_short(t: float) -> str:
    iso = iso_utc(t)
    return iso.replace("T", " ") if iso else "?"


def _causes(console: Console, d: Diagnosis) -> None:
    shown = prominent_causes(d)
    if shown:
        console.print()
        heading = "Most likely cause" if len(shown) == 1 else "Likely causes"
        if d.verdict is not Verdict.UNHEALTHY:
            heading = "Best lead (not conclusive)"
        console.print(Text(heading, style="bold underline"))
        for c in shown:
            _cause_full(console, c)
    others = [c for c in d.causes if c not in shown and c.probability >= MIN_OTHER_PROBABILITY][
        :MAX_OTHER_CAUSES
    ]
    if others:
        console.print()
        heading = "Other causes" if shown else "Causes (none likely)"
        console.print(Text(heading, style="bold underline"))
        for c in others:
            _cause_compact(console, c)
    rest = len(d.causes) - len(shown) - len(others)
    if rest > 0:
        console.print(
            Text(
                f"  … {rest} more below {percent(MIN_OTHER_PROBABILITY)}"
                " (exsa-doctor causes lists them all)",
                style="dim",
            )
        )


def _tell_apart(console: Console, d: Diagnosis) -> None:
    candidates, rerun = tell_apart(d)
    if not candidates:
        return
    console.print()
    console.print(Text("To tell them apart", style="bold underline"))
    for c, check in candidates:
        _indented(console, Text(f"{_s(c.id)} ({percent(c.probability)})"), 2)
        console.print(Text("      " + _s(check), style="cyan"), soft_wrap=True)
    if rerun:
        _indented(console, Text(RERUN_INTRO), 2)
        console.print(Text("      " + _s(rerun), style="cyan"), soft_wrap=True)


def _timeline(console: Console, d: Diagnosis) -> None:
    view = timeline_view(d.timeline, d.failed_at)
    if not view.events:
        return
    console.print()
    title = Text("Start-up timeline", style="bold underline")
    title.append(f"  (t0 = {_iso_short(view.t0)})", style="dim")
    console.print(title)
    if view.earlier:
        console.print(
            Text(f"  {view.earlier} earlier event(s) from previous starts not shown", style="dim")
        )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold", ratio=1)
    for e in view.events[:MAX_EVENTS]:
        kind = event_kind(e)
        rel = f"+{e.t - view.t0:.3f} s"
        if kind == "failed-request":
            what = Text("✗ " + _s(e.event, 200), style="bold red")
            relation = view.request_vs_ready()
            if relation:
                what.append(f"   ← {relation}", style="bold red")
            grid.add_row(Text(rel, style="bold red"), Text(_s(e.source), style="bold red"), what)
            continue
        style = {
            "listening": "green",
            "model-loaded": "green",
            "bind-failed": "red",
            "model-error": "red",
            "error": "red",
        }.get(kind, "")
        grid.add_row(
            Text(rel, style="dim"),
            Text(_s(e.source), style="dim"),
            Text(_s(e.event, 200), style=style),
        )
    console.print(grid)
    if len(view.events) > MAX_EVENTS:
        console.print(Text(f"  … {len(view.events) - MAX_EVENTS} more events", style="dim"))
    if view.loaded_at is not None and view.load_began is not None:
        console.print(
            Text(f"  model load took {seconds(view.loaded_at - view.load_began)}", style="dim")
        )


def _probes(console: Console, d: Diagnosis) -> None:
    if not d.probes:
        return
    console.print()
    line = Text("Probes: ", style="bold")
    for n, p in enumerate(d.probes):
        if n:
            line.append(" · ", style="dim")
        line.append(_s(p.name) + " ")
        status = p.status.value if p.status is ProbeStatus.OK else p.status.value.upper()
        line.append(status, style=_PROBE_STYLE[p.status])
        if p.status is not ProbeStatus.SKIPPED:
            line.append(f" {seconds(p.duration_s)}", style="dim")
    console.print(line)
    for p in d.probes:
        if p.status in (ProbeStatus.CRASHED, ProbeStatus.TIMEOUT):
            row = Text(f"{_s(p.name)} {p.status.value}: ", style=_PROBE_STYLE[p.status])
            row.append(_s(p.detail, MAX_SUMMARY))
            _indented(console, row, 2)


def render(diagnosis: Diagnosis, *, color: bool | None = None, width: int | None = None) -> str:
    """The report as terminal text; `color` None means: only on a TTY without NO_COLOR."""
    console = _console(color, width)
    _header(console, diagnosis)
    _causes(console, diagnosis)
    _tell_apart(console, diagnosis)
    _timeline(console, diagnosis)
    _probes(console, diagnosis)
    return _text(console)


def render_cause_table(
    causes: Iterable[Cause] | None = None, *, color: bool | None = None, width: int | None = None
) -> str:
    """The root-cause table for `exsa-doctor causes`: id, prior, impact, title."""
    console = _console(color, width)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True, style="bold")
    table.add_column("prior", justify="right", no_wrap=True)
    table.add_column("impact", no_wrap=True)
    table.add_column("title", overflow="fold")
    for c in load_causes() if causes is None else causes:
        table.add_row(Text(_s(c.id)), f"{c.prior:.2f}", c.impact, Text(_s(c.title)))
    console.print(table)
    console.print(
        Text("exsa-doctor explain ID shows the evidence and fixes of one cause.", style="dim")
    )
    return _text(console)


def render_cause(cause: Cause, *, color: bool | None = None, width: int | None = None) -> str:
    """One cause for `exsa-doctor explain ID`: description, evidence weights, fixes, confirm."""
    console = _console(color, width)
    head = Text(_s(cause.id), style="bold")
    head.append("  " + _s(cause.title))
    console.print(head)
    console.print(Text(f"prior {cause.prior:.2f} · impact {cause.impact}", style="dim"))
    if cause.description:
        console.print()
        console.print(Text(printable(cause.description, keep_newlines=True)))
    ranked = sorted(cause.evidence.items(), key=lambda kv: -abs(math.log(kv[1])))
    for title, supports, mark, style in (
        ("Evidence for (likelihood ratio > 1)", True, "✓", "green"),
        ("Evidence against (< 1)", False, "✗", "red"),
    ):
        rows = [(fid, w) for fid, w in ranked if w != 1 and (w > 1) is supports]
        if not rows:
            continue
        console.print()
        console.print(Text(title, style="bold underline"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        for fid, w in rows:
            grid.add_row(Text("  " + mark, style=style), Text(_s(fid)), Text(weight(w)))
        console.print(grid)
    if cause.remediation:
        console.print()
        console.print(Text("Remediation", style="bold underline"))
        for n, step in enumerate(cause.remediation, 1):
            line = Text(f"  {n}. ")
            line.append(_s(step.text))
            if step.when:
                line.append(f"  (when {step.when} is found)", style="dim")
            console.print(line)
            for cmd in step.commands:
                console.print(Text("       " + _s(cmd), style="cyan"), soft_wrap=True)
        console.print(
            Text(
                "  {finding.id:key} is filled from that finding's data,"
                " {target:key} from the target.",
                style="dim",
            )
        )
    if cause.confirm:
        console.print()
        console.print(Text("Confirm by hand", style="bold underline"))
        console.print(Text("  " + _s(cause.confirm), style="cyan"), soft_wrap=True)
    return _text(console)


__all__ = ["render", "render_cause", "render_cause_table"]
