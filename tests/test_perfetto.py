"""The Perfetto export: a checker for the trace-event format, run over every shipped scenario, and what each
track shows (a uthread's states, a vcore's runs, vcore context, offline and preempted spans)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from akaros_sim.metrics import from_trace
from akaros_sim.tools.perfetto import KERNEL_TID, to_chrome
from akaros_sim.tools.scenario import run_scenario

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))
PHASES = {"M", "X", "i", "s", "t", "f", "C"}


def check_trace_events(doc: dict) -> list[str]:
    """What is wrong with a Chrome trace-event document (an empty list: nothing)."""
    problems = []
    events = doc["traceEvents"]
    json.dumps(doc)  # plain JSON values only
    flows: dict[tuple, list[str]] = {}
    by_track: dict[tuple, list[tuple[float, float]]] = {}
    for i, e in enumerate(events):
        for key in ("ph", "pid", "tid", "name"):
            if key not in e:
                problems.append(f"event #{i} has no {key!r}: {e}")
        ph = e.get("ph")
        if ph not in PHASES:
            problems.append(f"event #{i}: unknown phase {ph!r}")
        if ph != "M" and not isinstance(e.get("ts"), (int, float)):
            problems.append(f"event #{i}: no numeric ts: {e}")
        if ph == "X":
            if e["dur"] < 0:
                problems.append(f"event #{i}: negative duration {e['dur']}: {e}")
            by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        if ph in ("s", "t", "f"):
            flows.setdefault((e.get("cat"), e.get("id")), []).append(ph)
        if ph == "C" and not all(isinstance(v, (int, float)) and v >= 0 for v in e["args"].values()):
            problems.append(f"event #{i}: a counter needs non-negative numbers: {e}")
    for key, phases in flows.items():
        if phases[0] != "s" or phases[-1] != "f" or phases.count("s") != 1 or phases.count("f") != 1:
            problems.append(f"flow {key}: phases {phases} (one s, then t steps, then one f)")
    for track, spans in by_track.items():  # slices on one track nest or are disjoint, never cross
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda se: (se[0], -se[1])):
            while stack and stack[-1] <= start + 1e-9:
                stack.pop()
            if stack and end > stack[-1] + 1e-9:
                problems.append(f"track {track}: slice [{start}, {end}] crosses one ending at {stack[-1]}")
            stack.append(end)
    return problems


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_exports_a_valid_document_with_a_track_per_uthread(path):
    run = run_scenario(path)
    trace = run.sim.trace
    doc = to_chrome(trace)
    assert check_trace_events(doc) == []
    events = doc["traceEvents"]
    tracks = [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 2]
    assert tracks == [u.name for u in run.sim.uthreads]
    # each uthread track's time in each state is what the metrics say (one definition of uthread time)
    metrics = from_trace(trace)
    tid_of = {e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
              and e["pid"] == 2}  # fmt: skip
    for u in metrics.uthreads:
        mine = [e for e in events if e["ph"] == "X" and e["pid"] == 2 and e["tid"] == tid_of[u.name]]
        running = sum(round(e["dur"] * 1000) for e in mine if e["cat"] == "running")
        runnable = sum(round(e["dur"] * 1000) for e in mine if e["cat"] == "runnable")
        assert (running, runnable) == (u.run_ns, u.ready_wait_ns), u.name


def test_a_vcore_track_shows_runs_vcore_context_offline_and_preempted_spans_and_migrations_flow():
    """vcore_preemption: vcore 0 is preempted for a while; its uthread is stolen and finishes on vcore 1."""
    run = run_scenario(ROOT / "scenarios" / "vcore_preemption.toml")
    events = to_chrome(run.sim.trace)["traceEvents"]
    names = Counter((e["tid"], e["name"]) for e in events if e["ph"] == "X" and e["pid"] == 1)
    assert names[(0, "preempted")] >= 1 and names[(0, "vcore context")] >= 1 and names[(1, "offline")] >= 1
    preempts = [r for r in run.sim.trace.records if r.kind == "preempt" and r.vc == 0]
    spans = [e for e in events if e["ph"] == "X" and e["pid"] == 1 and e["tid"] == 0 and e["name"] == "preempted"]
    assert [s["ts"] for s in spans][: len(preempts)] == [r.t / 1000 for r in preempts]
    migrations = [e for e in events if e.get("cat") == "migration"]
    assert migrations and {e["ph"] for e in migrations} == {"s", "f"}
    assert all(e["tid"] != KERNEL_TID for e in migrations)


def test_each_fault_story_is_one_flow_from_the_fault_to_the_resume():
    """handler_chain: every fault starts a flow, each handler decision is a step, the resume (or death) ends it."""
    run = run_scenario(ROOT / "scenarios" / "handler_chain.toml")
    trace = run.sim.trace
    events = to_chrome(trace)["traceEvents"]
    stories = [e for e in events if e.get("cat") == "fault" and e["ph"] in "stf"]
    starts = [e for e in stories if e["ph"] == "s"]
    assert len(starts) == len(trace.of_kind("fault")) == sum(1 for e in stories if e["ph"] == "f")
    assert sum(1 for e in stories if e["ph"] == "t") >= len(trace.of_kind("handler"))


def test_the_counters_follow_runnable_uthreads_and_vcores_online():
    run = run_scenario(ROOT / "scenarios" / "pthread_basics.toml")
    events = to_chrome(run.sim.trace)["traceEvents"]
    online = [e["args"]["online"] for e in events if e["ph"] == "C" and e["name"] == "vcores online"]
    runnable = [e["args"]["runnable"] for e in events if e["ph"] == "C" and e["name"] == "runnable uthreads"]
    counts = run.sim.trace.counts()
    assert max(online) == 4 and online[-1] == counts["vcore_online"] - counts["vcore_offline"] - counts.get("preempt", 0)
    assert max(runnable) >= 2 and runnable[-1] == 0
