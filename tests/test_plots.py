"""Figures (akaros_sim.tools.plots): the Gantt chart of a run, CDFs, summary bars, sweep plots, the `plot` verb.

The Gantt chart is read back as pixels (matplotlib.image.imread) to check it
has ink, and its rows are checked against the uthreads' creation order read
straight from the trace records.  Determinism is checked as bytes: the same
input drawn twice gives the same file, in every format.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from akaros_sim.tools.cli import main
from akaros_sim.tools.plots import PlotError, cdf, gantt, summary_bars, sweep_plots
from akaros_sim.tools.scenario import run_scenario

ROOT = Path(__file__).resolve().parents[1]
BASICS = ROOT / "scenarios" / "pthread_basics.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def basics_trace():
    return run_scenario(BASICS).sim.trace


def created_order(trace) -> list[str]:
    """The uthreads in the order of their uthread_create records."""
    return [rec.uth for rec in trace.records if rec.kind == "uthread_create"]


def test_gantt_png_has_one_row_per_uthread_in_creation_order(basics_trace, tmp_path):
    """gantt() writes a PNG, not blank, with one labelled row per uthread, first-created first."""
    from matplotlib.image import imread

    out = tmp_path / "basics.png"
    rows = gantt(basics_trace, out)
    assert rows == created_order(basics_trace)
    assert rows[:3] == ["main", "g1", "g2"] and len(rows) == 9
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = imread(out)
    height, width = pixels.shape[:2]
    assert width == 1100 and height >= 300  # 11 in at 100 dpi; grows with the rows
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # ink on the page: spans, labels, legend
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.3).mean() > 0.01  # and colour (the states), not just text


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf"])
def test_gantt_is_byte_identical_when_drawn_twice(basics_trace, tmp_path, suffix):
    """Same trace, same bytes: no date, software version or random id in the file."""
    first, second = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    gantt(basics_trace, first)
    gantt(basics_trace, second)
    assert first.read_bytes() == second.read_bytes()


def test_gantt_marks_faults(basics_trace, tmp_path):
    """A run with faults gets marks (a scatter: an SVG PathCollection); a run without has none."""
    trace = run_scenario(ROOT / "scenarios" / "pthread_faults.toml").sim.trace
    assert any(rec.kind == "fault" for rec in trace.records)
    assert gantt(trace, tmp_path / "faults.svg") == created_order(trace)
    assert 'id="PathCollection_1"' in (tmp_path / "faults.svg").read_text(encoding="utf-8")
    assert not any(rec.kind in ("fault", "extable_fixup", "ras_restart") for rec in basics_trace.records)
    gantt(basics_trace, tmp_path / "basics.svg")
    assert "PathCollection" not in (tmp_path / "basics.svg").read_text(encoding="utf-8")


def test_cdf_and_bars_are_written_and_deterministic(tmp_path):
    """cdf() and summary_bars() write their files; drawn twice, the same bytes."""
    values = {"pthread": [5, 1, 3, 2], "lifo": [4.5, "6", None, ""]}  # CSV text and blanks are tolerated
    rows = [{"sched": s, "scenario": sc, "makespan_ns": str(v)}
            for s, sc, v in [("pthread", "a", 10), ("pthread", "a", 12), ("rr", "a", 9), ("rr", "b", 7)]]  # fmt: skip
    for name in ("one", "two"):
        cdf(values, tmp_path / f"cdf_{name}.png", "turnaround_ns")
        summary_bars(rows, tmp_path / f"bars_{name}.png", "makespan_ns")
    for kind in ("cdf", "bars"):
        data = (tmp_path / f"{kind}_one.png").read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert data == (tmp_path / f"{kind}_two.png").read_bytes()
    with pytest.raises(PlotError, match="no values of fairness"):
        summary_bars(rows, tmp_path / "x.png", "fairness")
    with pytest.raises(PlotError, match=r"expected a \.png, \.svg or \.pdf"):
        cdf(values, tmp_path / "x.gif", "m")


def test_sweep_plots_draws_the_columns_a_sweep_has(tmp_path):
    """sweep_plots() on CSV rows: a CDF and bars for turnaround and response, bars for the rest present."""
    text = "scenario,sched,seed,makespan_ns,turnaround_mean_ns,response_mean_ns\n" + "".join(
        f"s.toml,{sched},{seed},{1000 + 7 * seed + k},{800 + seed * k},{100 + seed}\n"
        for k, sched in enumerate(("pthread", "roundrobin")) for seed in range(4)
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(text)))
    written = sweep_plots(rows, tmp_path / "plots")
    assert [p.name for p in written] == [
        "bars_makespan_ns.png", "cdf_turnaround_mean_ns.png", "bars_turnaround_mean_ns.png",
        "cdf_response_mean_ns.png", "bars_response_mean_ns.png",
    ]  # fmt: skip
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in written)
    assert sweep_plots([], tmp_path / "none") == []


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_plot_verb_runs_a_scenario_or_reads_a_trace(tmp_path):
    """`plot X.toml --gantt OUT` runs the scenario first; a trace file gives the same picture."""
    out = tmp_path / "g.png"
    assert cli("plot", BASICS, "--gantt", out) == (0, f"wrote {out}: 9 uthread(s) over 4 vcore(s)\n", "")
    trace = tmp_path / "run.jsonl"
    assert cli("run", "--quiet", "--trace", trace, BASICS)[0] == 0
    again = tmp_path / "g2.png"
    assert cli("plot", trace, "--gantt", again)[0] == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("plot", "missing.toml", "--gantt", "g.png"), "akaros-sim: missing.toml: cannot read: "),
        (("plot", "missing.jsonl", "--gantt", "g.png"), "akaros-sim: cannot read missing.jsonl: "),
        (("plot", "README.md", "--gantt", "g.png"), "akaros-sim: README.md: not an akaros-sim trace"),
        (("plot", "scenarios/pthread_basics.toml", "--gantt", "g.gif"), "akaros-sim: --gantt g.gif: expected a .png"),
        (("plot", "scenarios/pthread_basics.toml", "--gantt", "no/such/dir/g.png"), "akaros-sim: cannot write"),
    ],
    ids=["no-scenario", "no-trace", "not-a-trace", "bad-format", "unwritable"],
)
def test_plot_verb_bad_input_is_one_line_exit_2(argv, message, monkeypatch):
    """Bad input: exit 2, nothing on stdout, one line on stderr saying what is wrong."""
    monkeypatch.chdir(ROOT)
    rc, out, err = cli(*argv)
    assert (rc, out) == (2, "")
    assert err.startswith(message) and err.count("\n") == 1, err
