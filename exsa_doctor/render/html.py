"""The HTML report: one self-contained file to attach to a CI run or an issue.

Inline CSS and inline SVG only: no scripts, no fonts, no network, so it opens anywhere and a
log line cannot run code in it (every string is escaped; there is no <script> to break out of).
It shows the verdict, the ranked causes with probability bars, evidence and fixes, the probes,
the findings, and a start-up timeline chart: the engine's milestones on a time axis, the
loading phase, when the port started listening, and the client's failed request in red, so a
request sent before 'listening' is seen at a glance.

Stable hooks for tests and scripts: `#verdict[data-verdict]`, `.cause[data-cause-id]`,
`#timeline` with `.marker[data-event]` (kinds in `render.common.KIND_LABELS`), `#probes`
rows `.probe[data-status]`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable

from exsa_doctor.model import Diagnosis, Finding, ProbeStatus, RankedCause, Verdict
from exsa_doctor.render.common import (
    FATAL_KINDS,
    KIND_LABELS,
    RERUN_INTRO,
    TimelineView,
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
from exsa_doctor.render.json import json_safe

MAX_TEXT = 600  # characters of one summary shown; the JSON report keeps everything
MAX_DATA = 600
MAX_DRAWN = 40
OTHER_CAUSES = 6

_KIND_COLOR = {
    "start": "#0969da",
    "model-validated": "#57606a",
    "model-loading": "#8250df",
    "model-loaded": "#8250df",
    "http-starting": "#57606a",
    "listening": "#1a7f37",
    "bind-failed": "#a40e26",
    "model-error": "#a40e26",
    "error": "#a40e26",
    "shutdown": "#57606a",
    "failed-request": "#cf222e",
    "port-holder": "#bf8700",
    "observation": "#8c959f",
    "other": "#8c959f",
}

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f8fa; color: #1f2328;
  font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 40px; }
h2 { font-size: 18px; margin: 0 0 12px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 10px;
  padding: 18px 22px; margin: 18px 0; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo,
  Consolas, monospace; font-size: 13px; }
code { background: #eff1f3; border-radius: 4px; padding: 1px 5px; overflow-wrap: anywhere; }
p, li, td, th, summary { overflow-wrap: anywhere; }
.muted { color: #656d76; }
#verdict { border-radius: 12px; padding: 20px 24px; margin: 0; border: 1px solid;
  display: grid; grid-template-columns: auto 1fr; gap: 6px 18px; align-items: center; }
#verdict.unhealthy { background: #ffebe9; border-color: #ff8182; }
#verdict.healthy { background: #dafbe1; border-color: #4ac26b; }
#verdict.inconclusive { background: #fff8c5; border-color: #d4a72c; }
.badge { font-weight: 700; font-size: 22px; letter-spacing: .04em; padding: 6px 14px;
  border-radius: 8px; color: #fff; grid-row: span 3; align-self: start; }
.unhealthy .badge { background: #cf222e; } .healthy .badge { background: #1a7f37; }
.inconclusive .badge { background: #9a6700; }
#verdict .target { font-size: 18px; font-weight: 600; overflow-wrap: anywhere; }
#verdict .headline { font-size: 16px; }
#verdict .facts { font-size: 13px; color: #57606a; overflow-wrap: anywhere; }
.cause { border-top: 1px solid #eaeef2; padding: 12px 0; }
h2 + .cause { border-top: 0; padding-top: 0; }
.cause-head { display: grid; grid-template-columns: 180px 52px 1fr; gap: 12px;
  align-items: center; }
.bar { height: 14px; background: #eaeef2; border-radius: 7px; overflow: hidden; }
.fill { height: 100%; border-radius: 7px; background: #8c959f; }
.likely .fill { background: #cf222e; } .lead .fill { background: #bf8700; }
.prob { font-weight: 700; text-align: right; font-variant-numeric: tabular-nums; }
.cause-title { font-weight: 600; }
.minor .cause-title { font-weight: 400; }
.cause-id { color: #656d76; font-size: 13px; margin-left: 6px; }
.cause-body { margin: 10px 0 0 0; padding-left: 256px; }
.evidence { list-style: none; margin: 0 0 8px; padding: 0; }
.evidence li { padding: 2px 0 2px 24px; position: relative; }
.evidence li::before { position: absolute; left: 2px; font-weight: 700; }
.evidence li.for::before { content: "\\2713"; color: #1a7f37; }
.evidence li.against::before { content: "\\2717"; color: #cf222e; }
.evidence .w { color: #656d76; font-variant-numeric: tabular-nums; margin: 0 6px; }
.fix { margin: 6px 0 0; padding-left: 20px; }
.fix li { margin: 6px 0; }
pre.command { background: #1f2328; color: #f0f3f6; padding: 10px 14px; border-radius: 8px;
  margin: 6px 0 0; overflow-x: auto; white-space: pre; }
pre.command code { background: none; padding: 0; color: inherit; overflow-wrap: normal; }
h3 { font-size: 14px; margin: 10px 0 4px; color: #57606a; text-transform: uppercase;
  letter-spacing: .05em; }
#timeline svg { width: 100%; height: auto; display: block; }
#timeline svg text.halo { paint-order: stroke; stroke: #fff; stroke-width: 3px;
  stroke-linejoin: round; }
#timeline .relation { font-weight: 600; color: #cf222e; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 5px 10px; border-top: 1px solid #eaeef2; vertical-align: top; }
th { color: #57606a; font-weight: 600; border-top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed-request td { color: #cf222e; font-weight: 600; }
.status { font-weight: 600; border-radius: 10px; padding: 1px 8px; font-size: 12px; }
.st-ok { background: #dafbe1; color: #1a7f37; }
.st-skipped { background: #eaeef2; color: #57606a; }
.st-timeout, .st-warning { background: #fff8c5; color: #9a6700; }
.st-crashed, .st-error { background: #ffebe9; color: #a40e26; }
.st-info { background: #ddf4ff; color: #0969da; }
details > summary { cursor: pointer; font-weight: 600; }
footer { color: #656d76; font-size: 12px; text-align: center; margin-top: 20px; }
@media (max-width: 760px) {
  .cause-head { grid-template-columns: 120px 48px 1fr; } .cause-body { padding-left: 0; }
}
"""


def esc(value: object, limit: int | None = MAX_TEXT) -> str:
    """Text safe in HTML and SVG content and in quoted attributes."""
    s = printable(value)
    return html.escape(shorten(s, limit) if limit else s, quote=True)


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "0"


# ---------------------------------------------------------------- header and causes


def _verdict(d: Diagnosis) -> str:
    shown = prominent_causes(d)
    if d.verdict is Verdict.UNHEALTHY and shown:
        headline = (
            f"Most likely: <strong>{esc(shown[0].title)}</strong> "
            f"<code>{esc(shown[0].id)}</code> ({percent(shown[0].probability)})"
        )
    elif d.verdict is Verdict.HEALTHY:
        headline = "The engine answers and no failure cause is likely."
    else:
        headline = esc(inconclusive_reason(d))
    t = d.target
    facts = [f"profile <code>{esc(t.profile)}</code>"]
    if t.profile_reason:
        facts[0] += f" ({esc(t.profile_reason, 200)})"
    if t.model:
        facts.append(f"model <code>{esc(t.model, 300)}</code>")
    if t.logs:
        facts.append("log " + ", ".join(f"<code>{esc(p, 300)}</code>" for p in t.logs[:5]))
    if t.pids:
        facts.append("pid " + " ".join(str(p) for p in t.pids))
    facts.append(f"checked {esc(iso_utc(d.started_at) or '?')} in {seconds(d.duration_s)}")
    v = d.verdict.value
    return (
        f'<header id="verdict" class="{v}" data-verdict="{v}">'
        f'<div class="badge">{v.upper()}</div>'
        f'<div class="target">{esc(t.where, 500)}</div>'
        f'<div class="headline">{headline}</div>'
        f'<div class="facts">{" · ".join(facts)}</div>{_hints(d)}</header>'
    )


def _hints(d: Diagnosis) -> str:
    hints = healthy_hints(d)
    if not hints:
        return ""
    rows = "".join(
        f"<li>{esc(what)}: <code>{esc(command, 500)}</code></li>" for what, command in hints
    )
    return (
        '<div class="hints" id="healthy-hints"><strong>Healthy now. To catch a failure the '
        f"doctor did not see:</strong><ul>{rows}</ul></div>"
    )


def _bar(p: float) -> str:
    width = min(100.0, max(0.0, p * 100)) if math.isfinite(p) else 0.0
    return f'<div class="bar"><div class="fill" style="width:{width:.1f}%"></div></div>'


def _cause(c: RankedCause, cls: str, full: bool) -> str:
    head = (
        f'<div class="cause-head">{_bar(c.probability)}'
        f'<span class="prob">{percent(c.probability)}</span>'
        f'<span><span class="cause-title">{esc(c.title)}</span>'
        f'<span class="cause-id mono">{esc(c.id)} · impact {esc(c.impact)}</span></span></div>'
    )
    attrs = (
        f'class="cause {cls}" data-cause-id="{esc(c.id)}" '
        f'data-probability="{_num(c.probability, 4)}"'
    )
    if not full:
        return f"<div {attrs}>{head}</div>"
    items = [
        f'<li class="{"for" if e.supports else "against"}" data-finding="{esc(e.finding)}">'
        f'<code>{esc(e.finding)}</code><span class="w">{esc(weight(e.weight))}</span>'
        f"{esc(e.summary)}</li>"
        for e in (*c.evidence_for, *c.evidence_against)
    ]
    body = ""
    if items:
        body += '<h3>Evidence</h3><ul class="evidence">' + "".join(items) + "</ul>"
    if c.remediation:
        steps = []
        for step in c.remediation:
            cmds = "".join(
                f'<pre class="command"><code>{esc(cmd, None)}</code></pre>' for cmd in step.commands
            )
            steps.append(f"<li><div>{esc(step.text)}</div>{cmds}</li>")
        body += '<h3>Fix</h3><ol class="fix">' + "".join(steps) + "</ol>"
    return f'<div {attrs}>{head}<div class="cause-body">{body}</div></div>'


def _causes(d: Diagnosis) -> str:
    """The causes shown in full: the likely ones, or the best lead."""
    shown = prominent_causes(d)
    if not shown:
        return ""
    lead = d.verdict is not Verdict.UNHEALTHY
    parts = [_cause(c, "lead" if lead else "likely", True) for c in shown]
    title = (
        "Best lead (not conclusive)"
        if lead
        else ("Most likely cause" if len(shown) == 1 else "Likely causes")
    )
    return f'<section id="causes"><h2>{title}</h2>{"".join(parts)}</section>'


def _other_causes(d: Diagnosis) -> str:
    """The rest of the ranking, one line each."""
    shown = prominent_causes(d)
    others = [c for c in d.causes if c not in shown][:OTHER_CAUSES]
    if not others:
        return ""
    parts = [_cause(c, "minor", False) for c in others]
    hidden = len(d.causes) - len(shown) - len(others)
    if hidden > 0:
        parts.append(
            f'<p class="muted">{hidden} more causes are less likely; '
            "the JSON report lists them all.</p>"
        )
    title = "Other causes" if shown else "Causes (none is likely)"
    return f'<section id="other-causes"><h2>{title}</h2>{"".join(parts)}</section>'


def _tell_apart(d: Diagnosis) -> str:
    """An unsettled diagnosis: each candidate's check, and the run that probes the machine."""
    candidates, rerun = tell_apart(d)
    if not candidates:
        return ""
    items = [
        f'<li data-cause-id="{esc(c.id)}"><div><code>{esc(c.id)}</code> '
        f"({percent(c.probability)})</div>"
        f'<pre class="command"><code>{esc(check, None)}</code></pre></li>'
        for c, check in candidates
    ]
    if rerun:
        items.append(
            f"<li><div>{esc(RERUN_INTRO)}</div>"
            f'<pre class="command"><code>{esc(rerun, None)}</code></pre></li>'
        )
    return (
        '<section id="tell-apart"><h2>To tell them apart</h2><ul class="fix">'
        + "".join(items)
        + "</ul></section>"
    )


# ---------------------------------------------------------------- the timeline chart

W = 1000
LEFT, RIGHT = 24, 24
LANE_H = 20
CHAR_W = 6.6  # average glyph width of 12px sans-serif, to keep labels from colliding


def _ticks(span: float) -> list[float]:
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(span / step) + 1)]


def _tick_label(x: float, span: float) -> str:
    if span < 2:
        return f"+{round(x * 1000, 6):g} ms"
    if span < 300:
        return f"+{round(x, 6):g} s"
    return f"+{round(x / 60, 6):g} min"


def _chart(view: TimelineView, now: float | None) -> str:
    """The SVG chart; `now` (when exsa-doctor ran) extends the axis of an unfinished start-up."""
    # what probes saw while exsa-doctor ran can be long after the start-up; it stays in the
    # table, the chart keeps to the start-up itself (and the failed request)
    milestones = [e.t for e in view.events if event_kind(e) != "observation"]
    t_last = max(milestones) if milestones else view.t1
    open_ended = (
        view.listening_at is None
        and view.fatal_at is None
        and now is not None
        and math.isfinite(now)
        and t_last < now < view.t0 + 86400
    )
    if open_ended and now is not None:
        t_last = now
    span = max(t_last - view.t0, 1.0 if len(view.events) == 1 else 1e-3)
    pad = span * 0.06
    lo, hi = view.t0 - pad * 0.2, view.t0 + span + pad
    scale = (W - LEFT - RIGHT) / (hi - lo)

    def x(t: float) -> float:
        return LEFT + (t - lo) * scale

    minor = ("other", "observation")
    inside = [e for e in view.events if e.t <= t_last]
    drawn = [e for e in inside if event_kind(e) not in minor or len(inside) <= MAX_DRAWN]
    drawn = drawn[:MAX_DRAWN]
    # Labels go into lanes above the axis; the failed request has its own top row.
    lanes_end: list[float] = []
    placed: list[tuple[float, int, str, str, bool, str]] = []  # x, lane, label, kind, anchor end
    last_x: dict[str, float] = {}
    for e in drawn:
        kind = event_kind(e)
        if kind == "failed-request":
            continue
        # one milestone seen by two sources (process start time, the log's first line) is
        # drawn once
        if kind not in minor and abs(x(e.t) - last_x.get(kind, -1e9)) < 8:
            continue
        last_x[kind] = x(e.t)
        label = shorten(printable(KIND_LABELS[kind] if kind not in minor else e.event), 36)
        label = f"{label} +{seconds(e.t - view.t0)}" if kind != "start" else label
        px = x(e.t)
        width = len(label) * CHAR_W + 12
        end_anchor = px + width > W - 4
        left_edge = px - width if end_anchor else px
        lane = next((i for i, end in enumerate(lanes_end) if end < left_edge), len(lanes_end))
        if lane == len(lanes_end):
            lanes_end.append(0.0)
        lanes_end[lane] = px if end_anchor else px + width
        placed.append((px, lane, label, kind, end_anchor, e.event))
    n_lanes = max(1, len(lanes_end))
    top = 40 if view.failed_at is not None else 14
    axis_y = top + n_lanes * LANE_H + 10
    band1 = axis_y + 50
    band2 = band1 + 30
    height = band2 + 44
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
        f'role="img" aria-label="start-up timeline" font-family="-apple-system, Segoe UI, '
        f'Helvetica, Arial, sans-serif" font-size="12">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff1f0"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#ffb3ad" stroke-width="3"/></pattern>'
        '<pattern id="hatch-amber" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff8c5"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#e9c46a" stroke-width="3"/></pattern></defs>',
    ]
    # time axis and ticks
    out.append(
        f'<line class="axis" x1="{LEFT}" y1="{axis_y}" x2="{W - RIGHT}" y2="{axis_y}" '
        'stroke="#57606a" stroke-width="1.5"/>'
    )
    for tick in _ticks(hi - view.t0):
        tx = x(view.t0 + tick)
        if tx > W - RIGHT:
            break
        out.append(
            f'<line x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" y2="{axis_y + 5}" stroke="#57606a"/>'
        )
        out.append(
            f'<text class="halo" x="{tx:.1f}" y="{axis_y + 18}" text-anchor="middle" '
            'fill="#656d76">'
            f"{esc(_tick_label(tick, hi - view.t0))}</text>"
        )

    # phase bands: is the port open, and is the model loading
    end_t = t_last if open_ended else hi
    ready = view.listening_at
    stop = view.fatal_at
    closed_end = ready if ready is not None else (stop if stop is not None else end_t)
    out.append(
        _band(
            x(view.t0),
            x(closed_end),
            band1,
            fill="url(#hatch)",
            stroke="#cf222e",
            label="engine not listening",
            phase="closed",
        )
    )
    exited = stop is not None and (ready is None or stop > ready)
    if ready is not None:
        ready_end = stop if exited and stop is not None else end_t
        out.append(
            _band(
                x(ready),
                x(ready_end),
                band1,
                fill="#dafbe1",
                stroke="#1a7f37",
                label="listening",
                phase="listening",
            )
        )
    if exited and stop is not None:
        out.append(
            _band(
                x(stop),
                x(end_t),
                band1,
                fill="#a40e26",
                stroke="#a40e26",
                label="exited",
                phase="exited",
                text_fill="#fff",
            )
        )
    if view.load_began is not None:
        if view.loaded_at is not None:
            out.append(
                _band(
                    x(view.load_began),
                    x(view.loaded_at),
                    band2,
                    fill="#fbefff",
                    stroke="#8250df",
                    phase="loading",
                    label=f"loading model {seconds(view.loaded_at - view.load_began)}",
                )
            )
        elif ready is not None and ready > view.load_began:
            # no 'loaded' line, but it listened: exsa-engine loads before it binds
            out.append(
                _band(
                    x(view.load_began),
                    x(ready),
                    band2,
                    fill="#fbefff",
                    stroke="#8250df",
                    phase="loading",
                    label=f"loading, then binding {seconds(ready - view.load_began)}",
                )
            )
        elif stop is None:
            out.append(
                _band(
                    x(view.load_began),
                    x(end_t),
                    band2,
                    fill="url(#hatch-amber)",
                    stroke="#9a6700",
                    label="loading model… (not finished)",
                    phase="loading",
                )
            )
    out.append(
        f'<text x="{LEFT}" y="{band2 + 40}" fill="#656d76">t0 = '
        f"{esc(iso_utc(view.t0) or '?')}</text>"
    )

    # milestone markers
    for px, lane, label, kind, end_anchor, event in placed:
        ly = top + lane * LANE_H + 12
        color = _KIND_COLOR[kind]
        weight_ = "700" if kind in FATAL_KINDS or kind == "listening" else "400"
        anchor = "end" if end_anchor else "start"
        tx = px - 4 if end_anchor else px + 4
        out.append(
            f'<g class="marker" data-event="{kind}" data-x="{px:.1f}" data-label="{esc(label)}">'
            f"<title>{esc(event, 300)}</title>"
            f'<line x1="{px:.1f}" y1="{ly + 3}" x2="{px:.1f}" y2="{axis_y}" stroke="{color}" '
            'stroke-width="1.2" stroke-opacity="0.7"/>'
            f'<circle cx="{px:.1f}" cy="{axis_y}" r="5" fill="{color}" stroke="#fff"/>'
            f'<text class="halo" x="{tx:.1f}" y="{ly}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight_}">{esc(label)}</text></g>'
        )
    if open_ended and now is not None:
        nx = x(now)
        out.append(
            f'<g class="marker" data-event="diagnosis" data-x="{nx:.1f}">'
            f'<line x1="{nx:.1f}" y1="{top}" '
            f'x2="{nx:.1f}" y2="{band2 + 22}" stroke="#57606a" stroke-dasharray="2 3"/>'
            f'<text x="{nx - 4:.1f}" y="{top + 10}" text-anchor="end" fill="#57606a">'
            f"exsa-doctor ran +{esc(seconds(now - view.t0))}</text></g>"
        )
    if view.failed_at is not None:
        out.append(_failed_marker(view, x, axis_y, band1, band2))
    out.append("</svg>")
    return "".join(out)


def _band(
    x0: float,
    x1: float,
    y: float,
    *,
    fill: str,
    stroke: str,
    label: str,
    phase: str,
    text_fill: str | None = None,
) -> str:
    """A phase as a bar under the axis, labelled inside when it fits, else beside it."""
    w = max(2.0, x1 - x0)
    text_w = len(label) * CHAR_W
    inside = text_w + 12 < w
    tx = x0 + 6 if inside else x1 + 6
    anchor = "start"
    if not inside and tx + text_w > W - 4:
        tx, anchor = x0 - 6, "end"
    return (
        f'<g class="phase" data-phase="{phase}"><rect x="{x0:.1f}" y="{y}" width="{w:.1f}" '
        f'height="20" rx="4" fill="{fill}" stroke="{stroke}" stroke-opacity="0.6"/>'
        f'<text class="{"" if inside and text_fill else "halo"}" x="{tx:.1f}" y="{y + 14}" '
        f'text-anchor="{anchor}" '
        f'fill="{text_fill if inside and text_fill else stroke}">{esc(label)}</text></g>'
    )


def _failed_marker(view: TimelineView, x: object, axis_y: float, band1: float, band2: float) -> str:
    assert view.failed_at is not None and callable(x)
    fx: float = x(view.failed_at)
    label = f"\u2717 client request failed +{seconds(view.failed_at - view.t0)}"
    relation = view.request_vs_ready()
    text_w = len(label) * 7.4
    anchor, tx = ("end", fx - 6) if fx + text_w > W - 4 else ("start", fx + 6)
    parts = [
        f'<g class="marker failed-request" data-event="failed-request" data-x="{fx:.1f}" '
        f'data-t="{esc(iso_utc(view.failed_at) or "")}">'
        f"<title>{esc('request failed ' + relation)}</title>"
        f'<line x1="{fx:.1f}" y1="10" x2="{fx:.1f}" y2="{band2 + 22}" stroke="#cf222e" '
        'stroke-width="2.5" stroke-dasharray="6 3"/>'
        f'<circle cx="{fx:.1f}" cy="{axis_y}" r="7" fill="#cf222e" stroke="#fff" '
        'stroke-width="2"/>'
        f'<text class="halo" x="{tx:.1f}" y="24" text-anchor="{anchor}" fill="#cf222e" '
        'font-weight="700" '
        f'font-size="13">{esc(label)}</text>'
    ]
    if view.listening_at is not None and view.listening_at > view.failed_at:
        lx: float = x(view.listening_at)
        gy = axis_y + 28
        gap = f"{seconds(view.listening_at - view.failed_at)} too early"
        parts.append(
            f'<line class="gap" x1="{fx:.1f}" y1="{gy}" x2="{lx:.1f}" y2="{gy}" '
            'stroke="#cf222e" stroke-width="1.5"/>'
            f'<line x1="{lx:.1f}" y1="{gy - 4}" x2="{lx:.1f}" y2="{gy + 4}" stroke="#cf222e"/>'
        )
        if lx - fx > len(gap) * CHAR_W + 8:
            parts.append(
                f'<text class="halo" x="{(fx + lx) / 2:.1f}" y="{gy + 14}" '
                'text-anchor="middle" '
                f'fill="#cf222e" font-weight="700">{esc(gap)}</text>'
            )
    parts.append("</g>")
    return "".join(parts)


def _timeline(d: Diagnosis) -> str:
    view = timeline_view(d.timeline, d.failed_at)
    if not view.events:
        return (
            '<section id="timeline"><h2>Start-up timeline</h2><p class="muted">No timeline: '
            "no engine log was read (give <code>--log</code>) and no "
            "<code>--failed-at</code>.</p></section>"
        )
    relation = view.request_vs_ready()
    rel_html = (
        f'<p class="relation">The client\'s request failed {esc(relation)}.</p>' if relation else ""
    )
    earlier = (
        f'<p class="muted">{view.earlier} earlier event(s) from previous starts are not drawn.</p>'
        if view.earlier
        else ""
    )
    rows = []
    for e in view.events[:200]:
        kind = event_kind(e)
        rows.append(
            f'<tr class="{kind}" data-event="{kind}"><td class="num">'
            f'+{_num(e.t - view.t0, 3)} s</td><td class="mono">{esc(iso_utc(e.t) or "?")}</td>'
            f"<td>{esc(e.source, 100)}</td><td>{esc(e.event)}</td></tr>"
        )
    table = (
        "<details><summary>Events</summary><table><thead><tr><th>t</th><th>UTC</th>"
        "<th>source</th><th>event</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></details>"
    )
    return (
        f'<section id="timeline"><h2>Start-up timeline</h2>{rel_html}{earlier}'
        f"{_chart(view, d.started_at)}{table}</section>"
    )


# ---------------------------------------------------------------- probes and findings


def _probes(d: Diagnosis) -> str:
    rows = [
        f'<tr class="probe" data-probe="{esc(p.name)}" data-status="{p.status.value}">'
        f"<td><code>{esc(p.name)}</code></td>"
        f'<td><span class="status st-{p.status.value}">{p.status.value}</span></td>'
        f'<td class="num">{"" if p.status is ProbeStatus.SKIPPED else seconds(p.duration_s)}</td>'
        f"<td>{esc(p.detail)}</td></tr>"
        for p in d.probes
    ]
    return (
        '<section id="probes"><h2>Probes</h2><table><thead><tr><th>probe</th><th>status</th>'
        '<th class="num">time</th><th>detail</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _data(f: Finding) -> str:
    if not f.data:
        return ""
    try:
        text = json.dumps(json_safe(dict(f.data)), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = str(f.data)
    return f"<code>{esc(text, MAX_DATA)}</code>"


def _findings(findings: Iterable[Finding]) -> str:
    rows = [
        f'<tr class="finding" data-finding="{esc(f.id)}" data-status="{f.status.value}">'
        f"<td><code>{esc(f.id)}</code></td>"
        f'<td><span class="status st-{f.status.value}">{f.status.value}</span></td>'
        f"<td>{esc(f.summary)}<br>{_data(f)}</td></tr>"
        for f in findings
    ]
    if not rows:
        return ""
    return (
        '<section id="findings"><details><summary>Findings (' + str(len(rows)) + ")</summary>"
        "<table><thead><tr><th>id</th><th>level</th><th>summary and data</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table></details></section>"
    )


def render(diagnosis: Diagnosis) -> str:
    """The report as one self-contained HTML document."""
    d = diagnosis
    title = f"exsa-doctor: {d.verdict.value} — {printable(d.target.where)}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{esc(title, 200)}</title><style>{CSS}</style></head><body><main>"
        + _verdict(d)
        + _causes(d)
        + _tell_apart(d)
        + _timeline(d)
        + _other_causes(d)
        + _probes(d)
        + _findings(d.findings)
        + f"<footer>exsa-doctor {esc(d.tool_version)} · report schema 1 · "
        f"{esc(iso_utc(d.started_at) or '')}</footer>"
        "</main></body></html>\n"
    )
