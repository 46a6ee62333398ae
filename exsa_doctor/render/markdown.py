"""The Markdown report: compact, for a GitHub job summary (`$GITHUB_STEP_SUMMARY`) or an issue.

Verdict, a table of the top causes, the evidence and fix commands of the likely ones (commands
in fenced blocks so they copy intact), the start-up timeline and the probes. Data from the
diagnosis is escaped: pipes cannot break a table, backticks cannot close a code span, HTML and
Markdown syntax in a log line stay literal, control characters are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from exsa_doctor.model import Diagnosis, ProbeStatus, RankedCause, Verdict
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

TOP_CAUSES = 5
MAX_CELL = 300
MAX_EVENTS = 40

_VERDICT = {
    Verdict.HEALTHY: "✅ **healthy**",
    Verdict.UNHEALTHY: "❌ **unhealthy**",
    Verdict.INCONCLUSIVE: "⚠️ **inconclusive**",
}
_PROBE = {
    ProbeStatus.OK: "✅ ok",
    ProbeStatus.SKIPPED: "⏭️ skipped",
    ProbeStatus.TIMEOUT: "⏱️ **timeout**",
    ProbeStatus.CRASHED: "💥 **crashed**",
}
# Characters with a meaning in CommonMark/GFM inline text (and `|` in tables).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~&])")


def text(value: object, limit: int = MAX_CELL) -> str:
    """Plain text, escaped so it renders literally, on one line (safe in a table cell)."""
    return _MD_SPECIAL.sub(r"\\\1", shorten(printable(value), limit))


def code(value: object, limit: int = MAX_CELL, *, in_table: bool = False) -> str:
    """An inline code span that survives backticks (and, in a table cell, pipes) in `value`."""
    s = shorten(printable(value), limit)
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    if in_table:
        # GFM splits table cells on `|` even inside code spans unless it is escaped; outside a
        # table the backslash would show, so only here.
        s = s.replace("|", "\\|")
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def fenced(lines: Iterable[str], lang: str = "sh") -> str:
    """A fenced code block longer than any backtick run inside it."""
    body = [printable(line) for line in lines]
    longest = max((len(m) for line in body for m in re.findall(r"`{3,}", line)), default=2)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence + lang, *body, fence])


def _cause_detail(c: RankedCause) -> list[str]:
    out = [f"### {percent(c.probability)} · {text(c.title)} ({code(c.id)})", ""]
    for e in c.evidence_for:
        out.append(f"- ✔️ {code(e.finding)} {weight(e.weight)} — {text(e.summary)}")
    for e in c.evidence_against:
        out.append(f"- ✖️ {code(e.finding)} {weight(e.weight)} — {text(e.summary)} *(against)*")
    if c.evidence:
        out.append("")
    if c.remediation:
        out.append("**Fix**")
        out.append("")
        for n, step in enumerate(c.remediation, 1):
            out.append(f"{n}. {text(step.text, 1000)}")
            if step.commands:
                out.append("")
                # indented under the list item so the block belongs to the step
                out.extend("   " + line for line in fenced(step.commands).split("\n"))
                out.append("")
        out.append("")
    return out


def render(diagnosis: Diagnosis) -> str:
    """The report as GitHub-flavoured Markdown."""
    d = diagnosis
    shown = prominent_causes(d)
    lines = [f"## exsa-doctor: {_VERDICT[d.verdict]} — {code(d.target.where)}", ""]
    if d.verdict is Verdict.UNHEALTHY and shown:
        top = shown[0]
        lines.append(
            f"> **Most likely:** {text(top.title)} ({code(top.id)}, {percent(top.probability)})"
        )
    elif d.verdict is Verdict.HEALTHY:
        lines.append("> The engine answers and no failure cause is likely.")
    else:
        lines.append("> " + text(inconclusive_reason(d)))
    lines.append("")
    facts = [
        f"profile {code(d.target.profile)}"
        + (" (assumed: nothing names the engine)" if d.target.profile_assumed else "")
    ]
    if d.target.model:
        facts.append(f"model {code(d.target.model)}")
    if d.target.logs:
        facts.append("log " + ", ".join(code(p) for p in d.target.logs[:3]))
    if d.target.pids:
        facts.append("pid " + ", ".join(str(p) for p in d.target.pids))
    facts.append(f"checked {iso_utc(d.started_at) or '?'} in {seconds(d.duration_s)}")
    lines += [" · ".join(facts), ""]
    hints = healthy_hints(d)
    if hints:
        lines += ["**Healthy now. To catch a failure the doctor did not see:**", ""]
        lines += [f"- {text(what)}: {code(command)}" for what, command in hints]
        lines.append("")

    if d.causes:
        lines += ["| # | cause | probability | impact | evidence |", "|---:|---|---:|---|---|"]
        for n, c in enumerate(d.causes[:TOP_CAUSES], 1):
            prob = percent(c.probability)
            prob = f"**{prob}**" if c in shown else prob
            ev = f"{len(c.evidence_for)} for, {len(c.evidence_against)} against"
            lines.append(
                f"| {n} | {text(c.title)} ({code(c.id, in_table=True)}) | {prob} "
                f"| {c.impact} | {ev} |"
            )
        lines.append("")
    for c in shown:
        lines += _cause_detail(c)
    candidates, rerun = tell_apart(d)
    if candidates:
        lines += ["**To tell them apart**", ""]
        for c, check in candidates:
            lines.append(f"- {code(c.id)} ({percent(c.probability)}): {code(check, 1000)}")
        if rerun:
            lines.append(f"- {text(RERUN_INTRO)} {code(rerun, 1000)}")
        lines.append("")

    view = timeline_view(d.timeline, d.failed_at)
    if view.events:
        relation = view.request_vs_ready()
        summary = "Start-up timeline"
        if relation:
            summary += f" — the request failed {text(relation)}"
        lines += [f"<details open><summary>{summary}</summary>", ""]
        lines += ["| t | source | event |", "|---:|---|---|"]
        for e in view.events[:MAX_EVENTS]:
            rel = f"+{e.t - view.t0:.3f} s"
            if event_kind(e) == "failed-request":
                lines.append(f"| **{rel}** | **{text(e.source)}** | ❌ **{text(e.event)}** |")
            else:
                lines.append(f"| {rel} | {text(e.source)} | {text(e.event)} |")
        if len(view.events) > MAX_EVENTS:
            lines.append(f"| | | … {len(view.events) - MAX_EVENTS} more events |")
        lines += ["", f"t0 = {iso_utc(view.t0)}", "", "</details>", ""]

    if d.probes:
        lines += ["<details><summary>Probes</summary>", ""]
        lines += ["| probe | status | time | detail |", "|---|---|---:|---|"]
        for p in d.probes:
            lines.append(
                f"| {text(p.name)} | {_PROBE[p.status]} | {seconds(p.duration_s)} "
                f"| {text(p.detail)} |"
            )
        lines += ["", "</details>", ""]
    return "\n".join(lines)
