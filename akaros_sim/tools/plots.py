"""Figures of runs and sweeps with matplotlib: a Gantt chart of uthread time, CDFs and summary bars.

`gantt(trace, path)` draws one row per uthread (creation order) over virtual
time, from `timeline.spans`: runnable and blocked spans in their own colours,
running spans in the colour of the vcore they ran on, and marks for faults,
extable fixups and RAS restarts.  `cdf` and `summary_bars` compare policies;
`sweep_plots` draws both for the rows of a sweep's CSV.

The format follows the file's suffix (.png, .svg or .pdf).  Output is a
function of the input: the figures carry no date or software version and SVG
ids are salted with a fixed string, so the same input gives the same bytes.
matplotlib is the `experiments` extra; it is imported when a figure is drawn.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from akaros_sim.timeline import BLOCKED, RUNNABLE, RUNNING
from akaros_sim.timeline import spans as timeline_spans
from akaros_sim.tools.report import MARKS, VCORE_COLOURS

__all__ = ["METRICS", "PlotError", "add_parser", "cdf", "gantt", "summary_bars", "sweep_plots"]

FORMATS = ("png", "svg", "pdf")
# The metadata that would otherwise stamp a date or matplotlib's version into the file.
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}
_RC = {"svg.hashsalt": "akaros-sim", "svg.fonttype": "path", "pdf.fonttype": 42}
STATE_COLOURS = {RUNNABLE: "#f0c75e", BLOCKED: "#b8b8b8"}
STATE_HEIGHTS = {RUNNING: 0.8, RUNNABLE: 0.5, BLOCKED: 0.22}  # a row reads at a glance: tall = on a vcore
MARK_STYLE = {"fault": ("x", "#d62728"), "extable_fixup": ("^", "#2ca02c"), "ras_restart": ("|", "#9400d3")}
# Sweep columns drawn when present: (column, label, also drawn as a CDF across runs).
METRICS = (
    ("makespan_ns", "makespan (ns)", False),
    ("turnaround_mean_ns", "mean turnaround (ns)", True),
    ("response_mean_ns", "mean response (ns)", True),
    ("fairness", "fairness (Jain's index)", False),
)


class PlotError(ValueError):
    """Input a figure cannot be drawn from (the message is one line)."""


def _figure(width: float, height: float):
    """A Figure on the Agg canvas, outside pyplot (no global figure list to leak into)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # switching later would close a user's open figures
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _format(path) -> str:
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"{path}: expected a .png, .svg or .pdf file name")
    return fmt


def _save(fig, path) -> Path:
    import matplotlib

    path = Path(path)
    fmt = _format(path)
    with matplotlib.rc_context(_RC):
        fig.savefig(path, format=fmt, metadata=_METADATA[fmt])
    return path


# -- the Gantt chart ---------------------------------------------------------------------------------


def gantt(trace, path, title: str | None = None) -> list[str]:
    """Draw the trace's uthread time to `path`; returns the row names, top to bottom (creation order)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _format(path)
    spans, _vcores, end = timeline_spans(trace)
    rows = list(spans)
    if not rows:
        raise PlotError("the trace has no uthreads to draw")
    fig = _figure(11, 1.6 + 0.32 * len(rows))
    ax = fig.add_subplot()
    scale = 1e-3  # ns -> µs: the axis reads in microseconds
    used_vcores: set[int] = set()
    for y, name in enumerate(rows):
        for state in (BLOCKED, RUNNABLE, RUNNING):
            ranges, colours = [], []
            for start, stop, st, _cause, vc in spans[name]:
                if st != state:
                    continue
                ranges.append((start * scale, (stop - start) * scale))
                if state == RUNNING:
                    used_vcores.add(vc)
                    colours.append(VCORE_COLOURS[vc % len(VCORE_COLOURS)])
                else:
                    colours.append(STATE_COLOURS[state])
            if ranges:
                h = STATE_HEIGHTS[state]
                ax.broken_barh(ranges, (y - h / 2, h), facecolors=colours, linewidth=0)
    marks: dict[str, tuple[list, list]] = {}
    index = {name: y for y, name in enumerate(rows)}
    for rec in trace.records:
        if rec.kind in MARK_STYLE and rec.uth in index:
            xs, ys = marks.setdefault(rec.kind, ([], []))
            xs.append(rec.t * scale)
            ys.append(index[rec.uth])
    for kind, (xs, ys) in marks.items():
        marker, colour = MARK_STYLE[kind]
        ax.scatter(xs, ys, marker=marker, c=colour, s=36, linewidths=1.4, zorder=3)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first-created on top
    ax.set_xlim(0, max(end, 1) * scale)
    ax.set_xlabel("virtual time (µs)")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    header = trace.header
    ax.set_title(title or f"{header.get('scenario', 'trace')} under {header.get('sched', '?')}", fontsize=10)
    handles = [Patch(color=VCORE_COLOURS[vc % len(VCORE_COLOURS)], label=f"running on vcore {vc}")
               for vc in sorted(used_vcores)]  # fmt: skip
    handles += [Patch(color=STATE_COLOURS[RUNNABLE], label="runnable"), Patch(color=STATE_COLOURS[BLOCKED], label="blocked")]
    handles += [Line2D([], [], linestyle="", marker=MARK_STYLE[k][0], color=MARK_STYLE[k][1], label=MARKS[k].split(" (")[0])
                for k in MARK_STYLE if k in marks]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return rows


# -- comparing policies ------------------------------------------------------------------------------------


def _numbers(values) -> list[float]:
    """The finite numbers among values (CSV text included); blanks and None are left out."""
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return out


def cdf(values_by_policy: dict, path, metric: str) -> Path:
    """Draw one empirical CDF of `metric` per policy (values_by_policy: policy -> values) to `path`."""
    _format(path)
    data = {str(p): sorted(_numbers(vs)) for p, vs in values_by_policy.items()}
    data = {p: vs for p, vs in data.items() if vs}
    if not data:
        raise PlotError(f"no values of {metric} to draw")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    for policy, vs in sorted(data.items()):
        n = len(vs)
        ax.step([vs[0], *vs], [0.0, *((i + 1) / n for i in range(n))], where="post", label=f"{policy} (n={n})")
    ax.set_xlabel(metric)
    ax.set_ylabel("fraction ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(color="#e5e5e5", linewidth=0.6)
    ax.legend(fontsize=8)
    ax.set_title(f"CDF of {metric}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def summary_bars(rows, path, metric: str) -> Path:
    """Bars of `metric`'s mean with its 95% CI per policy (`sched`), grouped by `scenario` when rows name several."""
    from akaros_sim.tools.ab import mean_ci

    _format(path)
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        values = _numbers([row.get(metric)])
        if values:
            groups.setdefault((str(row.get("scenario", "")), str(row.get("sched", "?"))), []).extend(values)
    if not groups:
        raise PlotError(f"no values of {metric} to draw")
    scenarios = sorted({s for s, _ in groups})
    policies = sorted({p for _, p in groups})
    fig = _figure(max(6.4, 1.2 + 0.5 * len(scenarios) * len(policies)), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        xs, means, errs = [], [], []
        for j, scenario in enumerate(scenarios):
            values = groups.get((scenario, policy))
            if not values:
                continue
            mean, half = mean_ci(values)
            xs.append(j - 0.4 + width * (i + 0.5))
            means.append(mean)
            errs.append(half or 0.0)
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=policy)
    ax.set_xticks(range(len(scenarios)), [Path(s).stem or "(all)" for s in scenarios],
                  rotation=20 if len(scenarios) > 3 else 0, ha="right" if len(scenarios) > 3 else "center")  # fmt: skip
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95% CI per policy", fontsize=10)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def sweep_plots(rows, outdir) -> list[Path]:
    """The figures of a sweep's rows (dicts with `sched`, `scenario` and metric columns) in outdir.

    For each of METRICS that the rows have: `bars_<column>.png` (summary_bars), and
    for the turnaround and response means `cdf_<column>.png` across runs per policy.
    Returns the files written, in that order.
    """
    rows = list(rows)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for column, _label, as_cdf in METRICS:
        if not any(_numbers([row.get(column)]) for row in rows):
            continue
        if as_cdf:
            by_policy: dict[str, list] = {}
            for row in rows:
                by_policy.setdefault(str(row.get("sched", "?")), []).append(row.get(column))
            written.append(cdf(by_policy, outdir / f"cdf_{column}.png", column))
        written.append(summary_bars(rows, outdir / f"bars_{column}.png", column))
    return written


# -- the verb ------------------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"akaros-sim: {message}", file=sys.stderr)
    return 2


def cmd_plot(args) -> int:
    """Draw a run's Gantt chart (a .toml is run first; anything else is read as a trace)."""
    from akaros_sim.tools.report import ReportError, trace_of

    try:
        _format(args.gantt)
    except PlotError as exc:
        return _fail(f"--gantt {exc}")
    try:
        import matplotlib  # noqa: F401 - only to say clearly when the extra is missing
    except ImportError:
        return _fail("plot needs matplotlib: pip install 'akaros-sim[experiments]'")
    try:
        trace = trace_of(args.source)
    except ReportError as exc:
        return _fail(str(exc))
    try:
        rows = gantt(trace, args.gantt)
    except PlotError as exc:
        return _fail(f"{args.source}: {exc}")
    except OSError as exc:
        return _fail(f"cannot write {args.gantt}: {exc.strerror or exc}")
    print(f"wrote {args.gantt}: {len(rows)} uthread(s) over {trace.header.get('vcores', '?')} vcore(s)")
    return 0


def add_parser(sub, common) -> None:
    """The `plot` verb on the CLI's subparsers."""
    plot = sub.add_parser(
        "plot",
        parents=[common],
        help="draw a run's Gantt chart of uthread time as PNG, SVG or PDF (needs matplotlib)",
        description=(
            "Read a JSONL trace (or run a scenario .toml) and draw its uthreads over virtual time: one row per "
            "uthread in creation order, runnable and blocked spans in their colours, running spans coloured by "
            "vcore, marks for faults, extable fixups and RAS restarts. The suffix of OUT picks the format "
            "(.png, .svg, .pdf). Same trace, same bytes. Exit status: 0 once written, 2 for bad input."
        ),
    )
    plot.add_argument("source", metavar="TRACE_OR_SCENARIO", help="a trace (.jsonl) or a scenario (.toml)")
    plot.add_argument("--gantt", metavar="OUT", required=True, help="where to draw the Gantt chart (.png, .svg, .pdf)")
    plot.set_defaults(func=cmd_plot)
