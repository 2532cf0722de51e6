"""One self-contained HTML page about a recorded run (`akaros-sim report TRACE --html OUT.html`).

The page holds the run's summary and metrics, a Gantt chart of uthread time
(inline SVG: one row per uthread, each span a state; timeline.py defines
them) with marks for faults, extable fixups and RAS restarts, and each fault's
story told with explain's sentences.  A failing run's trace from `explore --trace` also gets its two
deciding events (the header's `decisive`) drawn as lines across the chart and named in the summary.  It needs no network (inline CSS, SVG and
JS only) and is a function of the trace alone: same trace, same bytes.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import tempfile
import tomllib

import attrs

from akaros_sim.context import TrapNr
from akaros_sim.metrics import Distribution, Metrics, from_trace
from akaros_sim.timeline import BLOCKED, CAUSES, EXITED, RUNNING, STATES
from akaros_sim.timeline import spans as timeline_spans
from akaros_sim.tools.explain import Selection, concerns, deciding_records, sentence
from akaros_sim.trace import FORMAT, Trace, TraceRecord

STORIES_SHOWN = 200  # fault stories told in full; past it a line counts the rest, so the page stays small
LABEL_W, PLOT_W, ROW_H, AXIS_H = 180, 960, 20, 28
MERGE_PX = 3  # shapes closer than this on a row are drawn as one, so a busy row stays cheap
VCORE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
MARKS = {"fault": "a fault (click: its story)", "extable_fixup": "an extable fixup", "ras_restart": "a RAS restart"}


class ReportError(Exception):
    """The input cannot make a report (the message names the file)."""


def trace_of(source: str) -> Trace:
    """The trace of `source`: a scenario (.toml) is run first, anything else is read as a trace file."""
    if not source.endswith(".toml"):
        return read_trace(source)
    from akaros_sim.tools.scenario import ScenarioError, run_scenario  # the scenario loader pulls in the runtime

    try:
        return run_scenario(source).sim.trace
    except ScenarioError as exc:
        raise ReportError(str(exc)) from None


def read_trace(path: str) -> Trace:
    """A trace file, checked enough that the report cannot trip on it."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline() or "null")
        # Trace.read fills in a missing format, so the header is checked before it
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f'its first line is not a header with "format": "{FORMAT}"')
        trace = Trace.read(path)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReportError(f"{path}: not an akaros-sim trace ({exc})") from None
    for i, rec in enumerate(trace.records):
        if not (type(rec.t) is int and type(rec.vc) is int and isinstance(rec.uth, str) and isinstance(rec.kind, str)):
            raise ReportError(f"{path}: not an akaros-sim trace (record #{i} has a bad t, vc, uth or kind)")
        if rec.kind == "uthread_state" and (
            rec.get("state") not in STATES or not isinstance(rec.get("cause", ""), str)
        ):
            raise ReportError(
                f"{path}: not an akaros-sim trace (record #{i}: a uthread_state with a bad state or cause)"
            )
    return trace


@attrs.define
class Fault:
    """One fault: its number (1-based), its record and its story's (index, record) pairs."""

    number: int
    rec: TraceRecord
    story: list = attrs.Factory(list)
    resumed: tuple[int, int] | None = None  # (t, vcore) of the uthread's next running span


@attrs.define
class Chart:
    """What the page draws, from one walk over the trace."""

    end: int
    spans: dict[str, list[tuple]]  # uthread -> (start, end, state, cause, vcore), in creation order
    marks: dict[str, list[tuple]]  # uthread -> (t, kind, text, fault number or 0)
    faults: list[Fault]
    decisive: list[tuple] = attrs.Factory(list)  # (record number or None, t or None, uthread, text), in order


def _decisive(trace: Trace) -> list[tuple]:
    """The deciding events of the header, each with its time and the uthread it is about."""
    found = deciding_records(trace)
    if found is None:
        return []
    records = trace.records
    out = []
    for number, text in found[0]:
        if number is None:
            out.append((None, None, "", text))
            continue
        rec = records[number]
        about = concerns(records, number)
        uth = rec.uth or (about[1] if about is not None else "")
        out.append((number, rec.t, uth, f"#{number}: {sentence(rec)}"))
    return out


def walk(trace: Trace) -> Chart:
    """The spans of uthread time (timeline.spans: open ones end at the run's end), the marks, and each fault
    with its story."""
    spans, _vcores, end = timeline_spans(trace)
    marks: dict[str, list[tuple]] = {}
    faults: list[Fault] = []
    story_of: dict[str, Fault] = {}  # uthread -> the fault whose story goes on
    waiting: dict[str, list[Fault]] = {}  # uthread -> its faults not yet resumed
    storied = Selection(faults=True)
    last = None
    for index, rec in enumerate(trace.records):
        kind, uth = rec.kind, rec.uth
        if kind == "uthread_state" and uth in waiting and rec.get("state") == RUNNING:
            for fault in waiting.pop(uth):
                fault.resumed = (rec.t, rec.vc)
        if kind == "fault":
            last = Fault(len(faults) + 1, rec)
            faults.append(last)
            story_of[uth] = last
            waiting.setdefault(uth, []).append(last)
        if kind in MARKS and uth:
            number = faults[-1].number if kind == "fault" else 0
            marks.setdefault(uth, []).append((rec.t, kind, sentence(rec), number))
        if storied.keeps(rec):
            # as explain tells it: a kernel-side record joins the uthread it names, or the story going on
            who = uth or rec.get("target")
            fault = story_of.get(who) if isinstance(who, str) and who else last
            if fault is not None:
                fault.story.append((index, rec))
                last = fault
    return Chart(end, spans, marks, faults, _decisive(trace))


# -- the page ---------------------------------------------------------------------------------------

_e = html.escape


def _ns(v) -> str:
    return "-" if v is None else f"{v:,}"


def _hex(v) -> str:
    return f"{v:#x}" if isinstance(v, int) else str(v)


def _trap(nr) -> str:
    try:
        return f"#{TrapNr(nr).name}"
    except (ValueError, TypeError):
        return f"trap {nr}"


def _cell(value) -> str:
    text = str(value)
    numeric = isinstance(value, int) or text == "-" or text.replace(",", "").replace(".", "").isdigit()
    return f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def _table(head: tuple, rows: list) -> str:
    out = ["<table><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _description(header: dict) -> str:
    text = header.get("scenario_text")
    if not isinstance(text, str):
        return ""
    try:
        description = tomllib.loads(text).get("description", "")
    except tomllib.TOMLDecodeError:
        return ""
    return description if isinstance(description, str) else ""


def _summary(trace: Trace, m: Metrics, chart: Chart) -> str:
    h = trace.header
    ends = trace.of_kind("run_end")
    if ends:
        r = ends[-1]
        status = "" if r.get("status") is None else f" (exit status {r.get('status')})"
        ended = f"{r.get('end')}{status} at {r.t:,} ns, after {_ns(r.get('insns'))} guest instructions"
    else:
        ended = f"no run_end record: the trace stops at {m.end_ns:,} ns"
    rows = [("scenario", h.get("scenario", "-")), ("seed", h.get("seed", "-")), ("vcores", h.get("vcores", "-")),
            ("2LS", h.get("sched", "-")), ("ended", ended), ("records", f"{len(trace):,}"),
            ("faults", f"{len(chart.faults):,}"), ("made by", f"akaros-sim {h.get('version', '?')}")]  # fmt: skip
    out = ['<section id="summary"><h2>The run</h2>']
    description = _description(h)
    if description:
        out.append(f'<p class="description">{_e(description)}</p>')
    if chart.decisive:
        d = trace.header["decisive"]
        first, then = chart.decisive
        rows.append(("deciding events", f"{_at(first)}, then {_at(then)}: this order fails "
                     f"({d.get('key')} {d.get('failing')}); the other passes ({d.get('key')} {d.get('passing')})"))
    out.append('<table class="kv">')
    out += [f"<tr><th>{_e(k)}</th><td>{_e(str(v))}</td></tr>" for k, v in rows]
    out.append("</table></section>")
    return "".join(out)


def _at(event: tuple) -> str:
    number, t, uth, text = event
    if number is None:
        return text
    return f"{text} at {t:,} ns" + (f" ({uth})" if uth else "")


def _dist_row(label: str, d: Distribution) -> tuple:
    mean = "-" if d.mean is None else f"{round(d.mean):,}"
    return (label, d.n, mean, _ns(d.p50), _ns(d.p90), _ns(d.p99), _ns(d.max))


def _metrics(m: Metrics) -> str:
    uthreads = [(u.name, _ns(u.created_ns), _ns(u.first_run_ns), _ns(u.exit_ns), _ns(u.turnaround_ns),
                 _ns(u.response_ns), _ns(u.ready_wait_ns), _ns(u.run_ns),
                 ", ".join(f"{c} {ns:,}" for c, ns in u.blocked_ns.items()) or "-",
                 u.switches, u.migrations, u.faults, u.signals, u.state) for u in m.uthreads]  # fmt: skip
    throughput = "-" if m.throughput is None else f"{m.throughput:,.1f} uthreads/s"
    fairness = "-" if m.fairness is None else f"{m.fairness:.3f}"
    process = (f"{m.exited} of {len(m.uthreads)} uthreads exited; makespan {_ns(m.makespan_ns)} ns; "
               f"throughput {throughput}; fairness of run time (Jain) {fairness}")  # fmt: skip
    dists = [_dist_row(label, d) for label, d in (("turnaround", m.turnaround), ("response", m.response),
                                                  ("ready wait", m.ready_wait), ("run", m.run))]  # fmt: skip
    vcores = [(v.vcore, _ns(v.online_ns), _ns(v.uthread_ns), _ns(v.vcore_context_ns), _ns(v.offline_ns),
               _ns(v.preempted_ns)) for v in m.vcores]  # fmt: skip
    return "".join([
        '<section id="metrics"><h2>Metrics</h2>',
        "<p>Nanoseconds of virtual time, each figure defined in docs/metrics.md.</p><h3>Uthreads</h3>",
        _table(("uthread", "created", "first run", "exit", "turnaround", "response", "ready wait", "run",
                "blocked by cause", "switches", "migrations", "faults", "signals", "at the end"), uthreads),
        f"<h3>The process</h3><p>{_e(process)}</p>",
        _table(("of the uthreads'", "n", "mean", "p50", "p90", "p99", "max"), dists),
        "<h3>Vcores</h3>",
        _table(("vcore", "online", "uthread", "vcore context", "offline", "preempted"), vcores),
        "</section>",
    ])  # fmt: skip


def _tick_step(end: int) -> int:
    step = 1
    while end / step > 10:
        for k in (2, 5, 10):
            if end / (step * k) <= 10:
                return step * k
        step *= 10
    return step


def _state_label(state: str, cause: str, vc: int) -> str:
    if state == RUNNING:
        return f"running on vcore {vc}"
    if state == BLOCKED:
        return f"blocked on {cause}"
    return state


def _drawn(spans: list, scale: float) -> list[tuple]:
    """The rects of one row: (start, stop, (state, cause, vcore), title).  A span MERGE_PX wide or more is its
    own rect; a run of shorter ones becomes one rect (at most MERGE_PX wide) in the colour of the state it spent
    most time in, its tooltip adding them up: a row costs at most ~2 * PLOT_W / MERGE_PX rects however busy."""
    out: list[tuple] = []
    run: list[tuple] = []

    def flush() -> None:
        if len(run) == 1:
            start, stop, *key = run[0]
            what = (
                f"{_state_label(*key)}: {CAUSES[key[1]]}"
                if key[0] == BLOCKED and key[1] in CAUSES
                else _state_label(*key)
            )
            out.append((start, stop, tuple(key), f"{what}\n{start:,} to {stop:,} ns ({stop - start:,} ns)"))
        elif run:
            totals: dict[tuple, int] = {}
            for start, stop, *key in run:
                totals[tuple(key)] = totals.get(tuple(key), 0) + stop - start
            ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
            start, stop = run[0][0], run[-1][1]
            lines = [f"{len(run)} short spans, {start:,} to {stop:,} ns:"]
            lines += [f"{_state_label(*key)} {ns:,} ns" for key, ns in ranked]
            out.append((start, stop, ranked[0][0], "\n".join(lines)))
        run.clear()

    for span in spans:
        start, stop, state = span[:3]
        if state == EXITED or stop <= start:
            continue
        if (stop - start) * scale >= MERGE_PX:
            flush()
            run.append(span)
            flush()
            continue
        if run and (run[-1][1] != start or (stop - run[0][0]) * scale > MERGE_PX):
            flush()
        run.append(span)
    flush()
    return out


def _marks(marks: list, scale: float) -> str:
    """A row's marks; marks of one kind within MERGE_PX of each other share one shape, its tooltip counting them."""
    groups: dict[tuple, list] = {}  # (kind, pixel group) -> [first mark, how many, last mark]
    for mark in marks:
        key = (mark[1], int(mark[0] * scale // MERGE_PX))
        if key in groups:
            groups[key][1] += 1
            groups[key][2] = mark
        else:
            groups[key] = [mark, 1, mark]
    out = []
    for (t, kind, text, number), count, last in groups.values():
        x = LABEL_W + t * scale
        more = f"\n(and {count - 1:,} more to {last[0]:,} ns, drawn as one)" if count > 1 else ""
        title = f"<title>{_e(f'{t:,} ns: {text}{more}')}</title>"
        if kind == "fault":
            shape = f'<path class="m-fault" d="M{x - 5:.2f},1 h10 l-5,8 z">{title}</path>'
            target = f"fault-{number}" if number <= STORIES_SHOWN else "faults-more"
            out.append(f'<a href="#{target}">{shape}</a>')
        elif kind == "extable_fixup":
            out.append(f'<path class="m-extable" d="M{x:.2f},{ROW_H - 9} l4,4 l-4,4 l-4,-4 z">{title}</path>')
        else:
            out.append(f'<rect class="m-ras" x="{x - 1:.2f}" y="2" width="2" height="{ROW_H - 4}">{title}</rect>')
    return "".join(out)


def _gantt(chart: Chart, nvcores: int) -> str:
    end = max(chart.end, 1)
    scale = PLOT_W / end
    vcores = sorted({vc for spans in chart.spans.values() for _, _, s, _, vc in spans if s == RUNNING}
                    | set(range(nvcores)))  # fmt: skip
    colour = {vc: f"vc{i % len(VCORE_COLOURS)}" for i, vc in enumerate(vcores)}
    height = AXIS_H + ROW_H * len(chart.spans) + 4
    out = [f'<svg class="gantt" width="{LABEL_W + PLOT_W + 20}" '
           f'height="{height}" role="img" aria-label="uthread states over virtual time">']  # fmt: skip
    step = _tick_step(end)
    for t in range(0, end + 1, step):
        x = LABEL_W + t * scale
        out.append(f'<line class="tick" x1="{x:.2f}" y1="{AXIS_H - 6}" x2="{x:.2f}" y2="{height}"/>'
                   f'<text class="axis" x="{x:.2f}" y="{AXIS_H - 10}">{t:,}</text>')  # fmt: skip
    for row, (name, spans) in enumerate(chart.spans.items()):
        y = AXIS_H + row * ROW_H
        label = name if len(name) <= 24 else name[:23] + "…"
        out.append(f'<g class="gantt-row" data-uthread="{_e(name)}" transform="translate(0,{y})">'
                   f'<text class="label" x="{LABEL_W - 6}" y="{ROW_H - 6}"><title>{_e(name)}</title>{_e(label)}</text>')  # fmt: skip
        for start, stop, (state, _cause, vc), title in _drawn(spans, scale):
            cls = f"s-running {colour[vc]}" if state == RUNNING else f"s-{state}"
            width = max((stop - start) * scale, 0.5)  # a span too short to see still shows, and has its tooltip
            out.append(f'<rect class="{cls}" x="{LABEL_W + start * scale:.2f}" y="3" width="{width:.2f}" '
                       f'height="{ROW_H - 6}"><title>{_e(title)}</title></rect>')  # fmt: skip
        out.append(_marks(chart.marks.get(name, ()), scale))
        out.append("</g>")
    for i, (number, t, uth, text) in enumerate(chart.decisive, start=1):
        if number is None:
            continue
        x = LABEL_W + t * scale
        title = _e(f"deciding event {i} of 2: {t:,} ns{f' ({uth})' if uth else ''}, {text}")
        out.append(f'<g class="m-decisive" data-record="{number}"><title>{title}</title>'
                   f'<line x1="{x:.2f}" y1="{AXIS_H - 4}" x2="{x:.2f}" y2="{height}"/>'
                   f'<text x="{x + 2:.2f}" y="{AXIS_H - 1}">#{number}</text></g>')  # fmt: skip
    out.append("</svg>")
    legend = ['<p class="legend">',
              '<span><i class="s-runnable"></i>runnable</span>',
              '<span><i class="s-blocked"></i>blocked (the tooltip names the cause)</span>']  # fmt: skip
    legend += [f'<span><i class="{colour[vc]}"></i>running on vcore {vc}</span>' for vc in vcores]
    legend += [f'<span><b class="k-{kind}"></b>{_e(text)}</span>' for kind, text in MARKS.items()]
    if chart.decisive:
        legend.append('<span><b class="k-decisive"></b>a deciding event (explore: their order decides the failure)'
                      "</span>")  # fmt: skip
    legend.append("</p>")
    return "".join(['<section id="gantt"><h2>Uthread time</h2>',
                    "<p>One row per uthread, in creation order; virtual time in ns. Hover a span for its state "
                    "and times (spans too short to see are drawn together); click a fault mark for its story.</p>",
                    *legend, '<div class="scroll">', *out, "</div></section>"])  # fmt: skip


def _record_line(index: int, rec: TraceRecord) -> str:
    where = f"vcore {rec.vc}" if rec.vc >= 0 else "kernel"
    who = f" [{rec.uth}]" if rec.uth else ""
    return (f'<li><span class="when">#{index} {rec.t:,} ns {_e(where)}{_e(who)}</span> '
            f"{_e(sentence(rec))}</li>")  # fmt: skip


def _outcome(fault: Fault) -> tuple[str, str]:
    """What became of the fault (a few words) and where the uthread resumed."""
    kinds = {rec.kind: rec for _, rec in fault.story}
    rip = None
    for _, rec in fault.story:
        if rec.kind in ("fault_fixed", "sigreturn"):
            rip = rec.get("rip")
    if "process_exit" in kinds:
        outcome = "the process exits"
    elif "extable_fixup" in kinds:
        outcome = f"fixed by the exception table, continuing at {_hex(kinds['extable_fixup'].get('fixup'))}"
    elif "fault_fixed" in kinds:
        fixer = next(
            (r.get("handler") for _, r in fault.story if r.kind == "handler" and r.get("status") == "FAULT_FIXED"), None
        )
        outcome = f"fixed by handler {fixer!r}" if fixer else "fixed"
    elif "signal_prep" in kinds:
        outcome = f"turned into signal {kinds['signal_prep'].get('signo')}"
    elif "chain_previous" in kinds:
        outcome = "left to the 2LS's own op"
    else:
        outcome = "no handler decision recorded"
    if fault.resumed is None:
        resume = "it never ran again before the run ended"
    else:
        t, vc = fault.resumed
        resume = f"it ran again at {t:,} ns on vcore {vc}" + (
            f"; its code goes on at {_hex(rip)}" if rip is not None else ""
        )
    return outcome, resume


def _story(fault: Fault) -> str:
    rec = fault.rec
    outcome, resume = _outcome(fault)
    out = [f'<details id="fault-{fault.number}" class="fault"><summary>fault {fault.number}: '
           f"{_e(_trap(rec.get('trap')))} in {_e(rec.uth)} at {rec.t:,} ns: {_e(outcome)}</summary>",
           f'<p>The instruction: <code class="insn">{_e(str(rec.get("insn")))}</code> '
           f"(err {_e(_hex(rec.get('err')))}, addr {_e(_hex(rec.get('aux')))})</p>"]  # fmt: skip
    diffs = [(r.get("handler"), reg, _hex(old), _hex(new)) for _, r in fault.story if r.kind == "handler"
             for reg, old, new in (r.get("changed") or ())]  # fmt: skip
    if diffs:
        out.append("<p>The registers the handlers changed:</p>")
        out.append(_table(("handler", "register", "before", "after"), diffs))
    out.append(f'<p>Resume: {_e(resume)}.</p><ul class="story">')
    out += [_record_line(index, r) for index, r in fault.story]
    out.append("</ul></details>")
    return "".join(out)


def _faults(chart: Chart) -> str:
    faults = chart.faults
    out = ['<section id="faults"><h2>Faults</h2>']
    if not faults:
        out.append("<p>No faults in this run.</p>")
    else:
        out.append("<p>Each fault's story: the instruction, each handler's decision, the registers it changed, "
                   "the fixup or signal, and where the uthread resumed.</p>")  # fmt: skip
    out += [_story(f) for f in faults[:STORIES_SHOWN]]
    if len(faults) > STORIES_SHOWN:
        rest = len(faults) - STORIES_SHOWN
        out.append(f'<p id="faults-more">... and {rest:,} more fault(s), not told here: '
                   "<code>akaros-sim explain TRACE --faults</code> tells them all.</p>")  # fmt: skip
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:#f4f4f4}.scroll{overflow-x:auto}
svg.gantt text{font-size:11px}svg.gantt .label{text-anchor:end}svg.gantt .axis{text-anchor:middle;fill:#666}
svg.gantt .tick{stroke:#eee}
.s-runnable{fill:#f2d16b;background:#f2d16b}.s-blocked{fill:#d9d9d9;background:#d9d9d9}
.m-fault{fill:#d62728;cursor:pointer}.m-extable{fill:#ff7f0e}.m-ras{fill:#111}
.m-decisive line{stroke:#c00;stroke-width:2;stroke-dasharray:4 3}.m-decisive text{fill:#c00;font-weight:bold}
.legend span{margin-right:1.2em;white-space:nowrap}
.legend i{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
.legend b{display:inline-block;width:8px;height:8px;margin-right:4px;vertical-align:middle}
.k-decisive{background:#c00;width:2px!important}.k-fault{background:#d62728}.k-extable_fixup{background:#ff7f0e;transform:rotate(45deg)}.k-ras_restart{background:#111;width:2px!important}
details.fault{margin:.3em 0;padding:.2em .5em;border-left:3px solid #d62728}
details.fault[open]{background:#fafafa}summary{cursor:pointer}
ul.story{font-size:13px;list-style:none;padding-left:1em}.when{color:#666;font-variant-numeric:tabular-nums}code.insn{background:#eee;padding:0 4px}
"""
_CSS += "".join(f".vc{i}{{fill:{c};background:{c}}}" for i, c in enumerate(VCORE_COLOURS)) + "\n"

# First in the page, so an error anywhere later is caught: recorded on <body data-errors> for a headless check.
_JS_ERRORS = """
window.reportErrors = [];
window.onerror = function (message, source, line) {
  window.reportErrors.push(String(message) + " (line " + line + ")");
  if (document.body) { document.body.dataset.errors = window.reportErrors.join("; "); }
  return false;
};
"""

# Last in the page: a click on a fault mark (or a link to #fault-N) opens that story.
_JS_MAIN = """
(function () {
  function openStory(id) {
    var story = document.getElementById(id);
    if (story && story.tagName === "DETAILS") { story.open = true; }
  }
  function fromHash() {
    if (location.hash.length > 1) { openStory(decodeURIComponent(location.hash.slice(1))); }
  }
  window.addEventListener("hashchange", fromHash);
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a[href^='#fault-']") : null;
    if (link) { openStory(link.getAttribute("href").slice(1)); }
  });
  fromHash();
  var body = document.body;
  if (window.reportErrors.length) { body.dataset.errors = window.reportErrors.join("; "); }
  body.dataset.rows = String(document.querySelectorAll(".gantt-row").length);
  body.dataset.decisive = String(document.querySelectorAll(".m-decisive").length);
  body.dataset.ready = "1";
})();
"""


def _page(trace: Trace) -> tuple[str, Chart]:
    m = from_trace(trace)
    chart = walk(trace)
    nvcores = trace.header.get("vcores")
    name = str(trace.header.get("scenario") or "a run")
    page = "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<script>{_JS_ERRORS}</script>",
        f"<title>akaros-sim report: {_e(name)}</title><style>{_CSS}</style></head>\n<body>",
        f"<h1>akaros-sim report: {_e(name)}</h1>\n",
        _summary(trace, m, chart), "\n",
        _metrics(m), "\n",
        _gantt(chart, nvcores if isinstance(nvcores, int) and not isinstance(nvcores, bool) else 0), "\n",
        _faults(chart), "\n",
        f"<script>{_JS_MAIN}</script>\n</body></html>\n",
    ])  # fmt: skip
    return page, chart


def write_report(trace: Trace, path) -> Chart:
    """Write the page to path atomically (a temporary file beside it, renamed over it); returns what it drew."""
    page, chart = _page(trace)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shared report from its readers
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return chart
