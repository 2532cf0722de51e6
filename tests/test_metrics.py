"""Metrics: each definition checked against a tiny run worked by hand, and the same figures however they are made.

The tiny run: one vcore, pthread, default Costs.  `a` computes 1 us and
exits; `b` computes 0.5 us, sleeps 2 us (a blocking syscall), computes 0.3 us
and exits.  Its story, from the trace (times in ns):

    a created 100, b created 200; vcore 0 online 250
    a runs 550 .. 1570 (1000 of compute + 20 for the exit call), vcore context 1570 .. 1720, exits 1720
    b runs 1870 .. 2590, vcore context until 2740, blocked on the syscall 2740 .. 4570 (its completion)
    vcore 0 yields at 2890 (nothing to run); b runnable from 4570, the vcore granted back at 6570
    b runs 7220 .. 7540, vcore context until 7690, exits 7690; the run ends at 7790
"""

from __future__ import annotations

from pathlib import Path

import pytest

from akaros_sim import Simulation, parlib
from akaros_sim.metrics import Distribution, compute_metrics, from_trace
from akaros_sim.timeline import Timeline
from akaros_sim.tools.scenario import build, load_scenario
from akaros_sim.trace import Trace
from schedops.pthread import PthreadSched
from invariants import check_timeline

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.toml"))


def _tiny(trace=None):
    def a():
        parlib.compute(1000)

    def b():
        parlib.compute(500)
        parlib.uthread_sleep(2000)
        parlib.compute(300)

    sim = Simulation(vcores=1, trace=trace)
    sim.set_sched(PthreadSched())
    sim.spawn_python("a", a)
    sim.spawn_python("b", b)
    return sim, sim.run()


def test_each_uthread_metric_matches_the_hand_worked_story():
    sim, result = _tiny()
    m = result.metrics
    a, b = m.uthreads
    assert (a.name, a.created_ns, a.first_run_ns, a.exit_ns) == ("a", 100, 550, 1720)
    assert a.turnaround_ns == 1720 - 100  # exit - created
    assert a.response_ns == 550 - 100  # first run - created
    assert (a.ready_wait_ns, a.run_ns, a.blocked_ns) == (550 - 100, 1570 - 550, {"yield": 1720 - 1570})
    assert a.slowdown == pytest.approx(1620 / 1020)
    assert (b.created_ns, b.first_run_ns, b.exit_ns, b.turnaround_ns, b.response_ns) == (200, 1870, 7690, 7490, 1670)
    assert b.run_ns == (2590 - 1870) + (7540 - 7220)
    assert b.ready_wait_ns == (1870 - 200) + (7220 - 4570)  # the second wait includes the vcore's re-grant
    assert b.blocked_ns == {"syscall": 4570 - 2740, "yield": (2740 - 2590) + (7690 - 7540)}
    assert (b.switches, b.migrations, b.faults, b.signals, b.state) == (2, 0, 0, 0, "exited")
    # every nanosecond from creation to exit is in exactly one state
    for u in (a, b):
        assert u.ready_wait_ns + u.run_ns + sum(u.blocked_ns.values()) == u.turnaround_ns
    # the run's figures agree with its trace's records
    runs = {(r.uth, r.t) for r in sim.trace.of_kind("run")}
    assert runs == {("a", 550), ("b", 1870), ("b", 7220)}
    assert sim.trace.of_kind("syscall_done")[0].t == 4570


def test_process_and_vcore_metrics_match_the_hand_worked_story():
    _, result = _tiny()
    m = result.metrics
    assert (m.end_ns, m.exited, m.makespan_ns) == (7790, 2, 7690 - 100)  # last exit - first creation
    assert m.throughput == pytest.approx(2 * 1e9 / 7590)
    assert m.fairness == pytest.approx((1020 + 1040) ** 2 / (2 * (1020**2 + 1040**2)))  # Jain's index
    (vc,) = m.vcores
    assert (vc.online_ns, vc.offline_ns, vc.preempted_ns) == ((2890 - 250) + (7790 - 6570), 250 + (6570 - 2890), 0)
    assert vc.uthread_ns == 1020 + 1040 == result.vcores[0].uthread_ns  # one definition of uthread time
    assert vc.vcore_context_ns == vc.online_ns - vc.uthread_ns
    assert m.turnaround == Distribution(2, (1620 + 7490) / 2, 1620, 7490, 7490, 7490, ((1024, 2048, 1), (4096, 8192, 1)))


def test_distribution_uses_nearest_rank_percentiles_and_log2_buckets():
    d = Distribution.of(range(1, 101))  # 1..100
    assert (d.n, d.mean, d.p50, d.p90, d.p99, d.max) == (100, 50.5, 50, 90, 99, 100)
    assert d.hist[0] == (1, 2, 1) and d.hist[-1] == (64, 128, 37) and sum(c for _, _, c in d.hist) == 100
    assert Distribution.of([0, 0, 5]).hist == ((0, 1, 2), (4, 8, 1))
    assert Distribution.of([]) == Distribution(0, None, None, None, None, None, ())


def test_metrics_are_the_same_with_the_trace_off_and_from_the_trace_file(tmp_path):
    sim, result = _tiny()
    path = tmp_path / "t.jsonl"
    sim.trace.write(path)
    assert from_trace(Trace.read(path)) == result.metrics
    _, quiet = _tiny(trace=False)
    assert quiet.metrics == result.metrics


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_gives_one_set_of_metrics_live_replayed_and_untraced(path):
    """Live, rebuilt from the trace, and with no trace kept: the same figures; the states obey the timeline's rules."""
    scenario = load_scenario(path)
    sim = build(scenario)
    result = sim.run()
    check_timeline(sim.trace)
    assert from_trace(sim.trace) == result.metrics
    quiet = build(scenario, trace=False).run()
    assert quiet.metrics == result.metrics
    m = result.metrics
    assert [u.name for u in m.uthreads] == [u.name for u in sim.uthreads]
    for u in m.uthreads:
        spent = u.ready_wait_ns + u.run_ns + sum(u.blocked_ns.values())
        assert spent == (u.exit_ns if u.exit_ns is not None else m.end_ns) - u.created_ns, u.name
    for vc, stats in zip(m.vcores, result.vcores, strict=True):
        assert vc.online_ns + vc.offline_ns + vc.preempted_ns == m.end_ns
        assert 0 <= vc.uthread_ns <= vc.online_ns and vc.uthread_ns == stats.uthread_ns


def test_a_timeline_change_to_the_same_state_is_not_a_change():
    t = Timeline(1)
    t.created(0, "u")
    assert t.change(10, "u", "running", "", 0) is True
    assert t.change(20, "u", "running", "", 0) is False
    assert t.change(30, "u", "blocked", "mutex") is True and t.change(40, "u", "blocked", "cv") is True
    m = compute_metrics(t, 50)
    assert (m.uthreads[0].run_ns, m.uthreads[0].blocked_ns, m.uthreads[0].ready_wait_ns) == (20, {"mutex": 10, "cv": 10}, 10)


def test_faults_signals_and_migrations_count_what_the_trace_shows():
    """unmap_under_a_uthread: summer takes 2 faults, each a SIGSEGV handler; vcore_preemption: a stolen uthread
    migrates once for each time it runs on another vcore than the last (worked out from its `run` records)."""
    sim = build(load_scenario(SHIPPED[0].parent / "unmap_under_a_uthread.toml"))
    summer = sim.run().metrics.uthread("summer")
    assert (summer.faults, summer.signals) == (2, 2) == (len(sim.trace.of_kind("fault")), len(sim.trace.of_kind("signal")))
    sim = build(load_scenario(SHIPPED[0].parent / "vcore_preemption.toml"))
    metrics = sim.run().metrics
    for u in metrics.uthreads:
        vcores = [r.vc for r in sim.trace.of_kind("run") if r.uth == u.name]
        assert u.switches == len(vcores)
        assert u.migrations == sum(1 for a, b in zip(vcores, vcores[1:], strict=False) if a != b), u.name
    assert sum(u.migrations for u in metrics.uthreads) == 2  # a and b, each stolen once
