"""The explorer's engine: executors and budgets, always/sometimes assertions, liveness mode, more choice kinds,
windows and the deciding events of a shrunk schedule (docs/explore.md)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from test_explore import LOSSY_2LS, small

from akaros_sim.tools import explore as ex
from akaros_sim.tools.scenario import ScenarioError, load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]
WATCH = ["seq_start..seq_end"]
MEMORY_EXPECT = '[[expect.memory]]\nsymbol = "main:counter"\nvalue = 12\n'


def lossy(tmp_path: Path):
    (tmp_path / "lossy.py").write_text(LOSSY_2LS, encoding="utf-8")
    path = small(tmp_path, "ras_counter")
    path.write_text(path.read_text(encoding="utf-8").replace('name = "roundrobin"', 'name = "lossy.py:LossyRecovery"'),
                    encoding="utf-8")  # fmt: skip
    return load_scenario(path)


def summary(result):
    return (result.runs, result.found and result.found.choices, result.found and result.found.failure,
            result.found and result.found.digest, result.shrunk and result.shrunk.choices, result.decisive)  # fmt: skip


# -- executors and budgets --------------------------------------------------------------------------------


def test_local_processes_and_a_dask_cluster_find_the_same_first_failure(tmp_path):
    """Plans come from the seed up front and results merge in plan order: two local processes and a real Dask
    LocalCluster (2 workers) give the run count, failing schedule, trace digest and shrink of one process."""
    distributed = pytest.importorskip("distributed")
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    kw = dict(strategy="random", seed=1, runs=40, max_preemptions=1, watch=WATCH)
    alone = ex.explore(scenario, **kw)
    assert alone.found is not None and alone.runs > 2  # not the first plan: order matters
    assert summary(ex.explore(scenario, **kw, workers=2)) == summary(alone)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        assert summary(ex.explore(scenario, **kw, workers=2, dask=cl.scheduler_address)) == summary(alone)


def test_portfolio_interleaves_the_strategies_and_says_which_found_it(tmp_path):
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    a = ex.explore(scenario, "portfolio", seed=2, runs=30, watch=WATCH)
    b = ex.explore(scenario, "portfolio", seed=2, runs=30, watch=WATCH)
    assert a.strategy in ("random", "pct", "exhaustive") and summary(a) == summary(b)
    picks = list(ex.explore_plans("portfolio", 10, 2, 6, 3, 2))
    assert [name for name, _ in picks] == ["random", "pct", "exhaustive"] * 2
    assert picks[2][1] == [0] and picks[5][1] == [1]  # exhaustive's own order, every third plan


def test_a_time_budget_reports_the_runs_done_and_their_result_is_the_run_budgets(tmp_path):
    """With no failure to find, a tiny time budget stops after the first batch; the runs it did are the
    ones a run budget of that count does, with the same (deterministic) result."""
    scenario = load_scenario(small(tmp_path, "ras_counter"))
    timed = ex.explore(scenario, "random", seed=1, runs=50, max_preemptions=1, time_s=1e-9)
    assert timed.timed_out and timed.found is None and timed.runs == 2  # the first run and one plan
    counted = ex.explore(scenario, "random", seed=1, runs=timed.runs - 1, max_preemptions=1)
    assert (counted.runs, counted.found, counted.timed_out) == (timed.runs, None, False)


# -- always / sometimes -------------------------------------------------------------------------------------


ALWAYS = '\n[[expect.always]]\nname = "every increment counted"\nmemory = { symbol = "main:counter", value = 12 }\n'
SOMETIMES = ('\n[[expect.sometimes]]\nname = "a preemption restarted the sequence"\npreempted_in = { ras = "main:seq_start" }\n'
             '\n[[expect.sometimes]]\nname = "a page fault"\ntrace = "fault"\n')  # fmt: skip


def test_an_always_assertion_fails_an_explored_run_and_a_plain_run(tmp_path):
    path = small(tmp_path, "ras_counter_unprotected")
    path.write_text(path.read_text(encoding="utf-8").replace(MEMORY_EXPECT, "") + ALWAYS, encoding="utf-8")
    scenario = load_scenario(path)
    found = ex.explore(scenario, "random", seed=1, runs=40, watch=WATCH)
    assert found.shrunk.failure.startswith("always[0] every increment counted: expected 12, got")
    path.write_text(path.read_text(encoding="utf-8") + '\n[[injections]]\npreempt = "here"\n'
                    'when = { code = "seq_start", uthread = "w1", nth = 2, offset = 2 }\n', encoding="utf-8")  # fmt: skip
    run = run_scenario(path)
    assert [c.name for c in run.checks if not c.ok] == ["always[0] every increment counted"]


def test_a_sometimes_that_never_held_is_a_coverage_gap(tmp_path, capsys):
    path = small(tmp_path, "ras_counter", extra=SOMETIMES)
    result = ex.explore(load_scenario(path), "random", seed=1, runs=20, max_preemptions=1)
    assert result.found is None and result.gaps == ("a page fault",)  # a preemption did land in the RAS
    unexplored = ex.explore(load_scenario(path), "random", seed=1, runs=0)
    assert unexplored.gaps == ("a preemption restarted the sequence", "a page fault")  # the first run alone
    assert run_scenario(path).ok  # a sometimes is no failure of one run
    code = ex.main(_args(str(path), runs="20", max_preemptions=1))
    assert code == 0 and "coverage gap: sometimes 'a page fault' never held in 21 run(s)" in capsys.readouterr().out


@pytest.mark.parametrize("body, fragment", [
    ('trace = "fault"\nmemory = { symbol = "main:counter", value = 1 }', "expect.always[0]: expected exactly one of"),
    ('preempted_in = { ras = "main:seq_start", uthread = "w0" }', "expect.always[0].preempted_in: expected exactly one"),
    ('preempted_in = { in = "sched_entry" }', "expect.always[0].preempted_in.in: expected \"vcore_context\""),
    ('preempted_in = { uthread = "nobody" }', "unknown thread 'nobody'"),
    ('trace = "fault"\ncount = { least = 1 }', "expect.always[0].count: expected an integer or a table"),
    ('memory = { symbol = "main:counter", value = 1 }\ncount = 1', "expect.always[0].count: only allowed with"),
])  # fmt: skip
def test_a_bad_assertion_is_named(tmp_path, body, fragment):
    path = small(tmp_path, "ras_counter", extra=f"\n[[expect.always]]\n{body}\n")
    with pytest.raises(ScenarioError, match=re.escape(fragment)):
        load_scenario(path)


# -- liveness --------------------------------------------------------------------------------------------


def test_liveness_mode_reports_the_uthread_a_preemption_made_the_2ls_forget(tmp_path):
    scenario = lossy(tmp_path)
    result = ex.explore(scenario, "exhaustive", runs=60, max_preemptions=1, liveness_ns=10**9)
    assert result.found is not None and len(result.shrunk.choices) == 1
    assert re.fullmatch(r"liveness: w\d never finished \(at the end, t=\d+: runnable\)", result.shrunk.failure)


def test_liveness_bound_on_ready_waits(tmp_path):
    """The bound is on one ready-wait span of the timeline: 4 uthreads sharing 2 vcores wait a few us each."""
    scenario = load_scenario(small(tmp_path, "ras_counter"))
    tight = ex.run_choices(scenario, (), liveness_ns=100)
    assert re.fullmatch(r"liveness: w\d runnable for \d+ ns without running \(t=\d+\.\.\d+; bound 100 ns\)",
                        tight.failure)  # fmt: skip
    assert ex.run_choices(scenario, (), liveness_ns=10**8).failure is None


# -- more choice kinds ------------------------------------------------------------------------------------

FIRST_BLOCK = {"in_op": "thread_blockon_sysc", "vcore": 0, "nth": 1}


def _done(outcome) -> list:
    return [(r.get("sysc"), r.t) for r in outcome.sim.trace.records if r.kind == "syscall_done"]


def test_a_delayed_completion_reorders_the_wake_ups():
    """blocking_syscalls wakes in latency order; delaying the next `block` completion after slow's
    blockon (fast's) by 200 us makes fast wake last, which its order invariant catches."""
    scenario = load_scenario(ROOT / "scenarios" / "blocking_syscalls.toml")
    base = ex.run_choices(scenario, ())
    delay = {"delay_syscall": {"when": FIRST_BLOCK, "syscall": "block", "ns": 200_000}}
    late = ex.run_choices(scenario, [delay])
    (first_id, first_t), *_ = _done(base)
    assert dict(_done(late))[first_id] == first_t + 200_000 and _done(late)[-1][0] == first_id
    assert "".join(late.sim.kernel.console).endswith("fast: awake\n") and late.failure.startswith("order[0]")
    found = ex.explore(scenario, "exhaustive", runs=30, max_preemptions=1, kinds=("delay_syscall",))
    assert found.found is not None and "delay_syscall" in found.shrunk.choices[0]


def test_a_tick_storm_at_a_point_and_a_page_unmapped_at_a_point(tmp_path):
    scenario = load_scenario(ROOT / "scenarios" / "blocking_syscalls.toml")
    storm = {"tick_storm": {"vcore": None, "when": FIRST_BLOCK, "ns": 20_000, "min_insns": 1, "max_insns": 4}}
    out = ex.run_choices(scenario, [storm])
    ticks = [r.t for r in out.sim.trace.records if r.kind == "tick"]
    assert out.failure is None and ticks and min(ticks) >= 1561 and max(ticks) <= 1561 + 20_000
    assert not any(r.kind == "tick" for r in ex.run_choices(scenario, ()).sim.trace.records)

    unmap_sc = load_scenario(ROOT / "scenarios" / "unmap_under_a_uthread.toml")
    page = unmap_sc.mappings[0].start
    assert ex.run_choices(unmap_sc, ()).failure is None
    cut = ex.run_choices(unmap_sc, [{"unmap": {"when": {"in": "vcore_context", "vcore": 0, "nth": 1}, "start": page,
                                               "length": 4096}}])  # fmt: skip
    assert any(r.kind == "fault" for r in cut.sim.trace.records) and cut.failure is not None
    read_only = ex.run_choices(unmap_sc, [{"protect": {"when": {"in": "vcore_context", "vcore": 0, "nth": 1},
                                                       "start": page, "length": 4096, "prot": "r"}}])  # fmt: skip
    assert any(r.kind == "fault" for r in read_only.sim.trace.records) and read_only.digest != cut.digest
    for choices, outcome in (([storm], out), (cut.choices, cut), (read_only.choices, read_only)):  # deterministic
        sc = scenario if "tick_storm" in choices[0] else unmap_sc
        assert ex.run_choices(sc, choices).digest == outcome.digest


def test_schedule_files_of_both_formats(tmp_path):
    """Preemptions only: format /1, as before; another kind: /2; a /1 file may not hold other kinds."""
    scenario = load_scenario(ROOT / "scenarios" / "blocking_syscalls.toml")
    delay = {"delay_syscall": {"when": FIRST_BLOCK, "syscall": "block", "ns": 200_000}}
    out = ex.run_choices(scenario, [delay])
    path = tmp_path / "s.json"
    ex.save(path, scenario, out)
    doc = json.loads(path.read_text())
    assert doc["format"] == "akaros-sim-schedule/2" and ex.load(path) == [delay]
    again = ex.run_choices(scenario, ex.load(path))
    assert (again.failure, again.digest) == (out.failure, out.digest)
    doc["format"] = "akaros-sim-schedule/1"
    path.write_text(json.dumps(doc))
    with pytest.raises(ex.ExploreError, match="preemptions only"):
        ex.load(path)
    doc["choices"] = [{"delay_syscall": {"when": FIRST_BLOCK, "syscall": "nosuch", "ns": 1}}]
    doc["format"] = "akaros-sim-schedule/2"
    path.write_text(json.dumps(doc))
    with pytest.raises(ex.ExploreError, match=r"choices\[0\]\.delay_syscall\.syscall: unknown syscall 'nosuch'"):
        ex.load(path)
    doc["choices"] = [{"tick_storm": {"when": FIRST_BLOCK, "ns": 100, "min_insns": 9, "max_insns": 8}}]
    path.write_text(json.dumps(doc))
    with pytest.raises(ex.ExploreError, match=r"choices\[0\]\.tick_storm: expected 1 <= min_insns <= max_insns"):
        ex.load(path)


# -- windows and the deciding events ---------------------------------------------------------------------


def test_the_lost_update_is_decided_by_the_store_and_the_preemption(tmp_path):
    """Shrunk to one preemption inside the unprotected sequence, the window is the instructions between the
    load and the store; moved past the store it passes, so the store and the preemption decide it."""
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    result = ex.explore(scenario, "random", seed=1, runs=40, watch=WATCH)
    (choice,) = result.shrunk.choices
    assert choice["preempt"]["when"]["offset"] == 1  # right after the load
    offset = [w for w in result.windows if w["key"] == "offset"]
    assert offset == [{"choice": 0, "key": "offset", "earliest": 1, "latest": 2}]
    why = result.decisive
    assert (why["key"], why["failing"], why["passing"]) == ("offset", 1, 3)
    assert "preempt vcore here at w1 code seq_start entry #1 +1" in why["first"] and why["then"] == "w1 runs seq_start+2 (mov qword ptr [rsi], rax) first"
    assert ex.run_choices(scenario, why["passing_choices"]).failure is None  # the nearest passing schedule


def test_the_lossy_2ls_is_decided_by_a_preemption_before_the_uthread_exits(tmp_path, capsys):
    """The buggy-2LS fixture: preempting w0 on any of its entries into the sequence loses it; moved past its
    last entry the preemption lands nowhere and the run passes; the two events are the preemption and w0's
    exit, printed and saved in the schedule."""
    scenario = lossy(tmp_path)
    result = ex.explore(scenario, "exhaustive", runs=60, max_preemptions=1)
    why = result.decisive
    assert why["first"].split()[1:5] == ["preempt", "vcore", "here", "at"] and " w0 " in why["first"]
    assert why["then"].split()[3:5] == ["w0", "uthread_exit"]
    out = tmp_path / "cx.json"
    code = ex.main(_args(str(scenario.path), strategy="exhaustive", max_preemptions=1, out=str(out),
                         sched=None))  # fmt: skip
    text = capsys.readouterr().out
    assert code == 1 and "decided by the order of" in text and why["then"] in text
    saved = json.loads(out.read_text())
    assert saved["decisive"]["then"] == why["then"] and saved["windows"] == list(result.windows)
    assert ex.run_choices(scenario, ex.load(out)).digest == result.shrunk.digest


# -- the verb --------------------------------------------------------------------------------------------


def _args(scenario: str, **kw):
    base = dict(scenario=scenario, sched=None, strategy="random", seed=1, runs=200, time=None, depth=3,
                max_preemptions=2, kinds="preempt", watch=[], mutex=[], oracle=None, liveness=None, jobs="1", dask=None,
                out=None, replay=None, trace=None)  # fmt: skip
    base.update(kw)
    base["runs"] = int(base["runs"])
    return argparse.Namespace(**base)


def test_the_cli_with_jobs_is_quiet_on_a_pipe_and_names_bad_options(tmp_path, capsys):
    path = str(small(tmp_path, "ras_counter_unprotected"))
    kw = dict(watch=WATCH, runs="40", max_preemptions=1)
    assert ex.main(_args(path, **kw)) == 1
    one = capsys.readouterr()
    assert ex.main(_args(path, **kw, jobs="2")) == 1
    two = capsys.readouterr()
    assert one.out == two.out and two.err == "" and "decided by the order of" in one.out
    assert re.search(r"^FAILED after 3 run\(s\) \(random\): memory\[0\]", one.out, flags=re.M)
    for bad, fragment in ((dict(kinds="preempt,nosuch"), "--kinds: unknown kind(s) nosuch"),
                          (dict(jobs="0"), "--jobs: expected an integer >= 1, got '0'"),
                          (dict(liveness="soon"), "--liveness: expected an integer >= 1, got 'soon'"),
                          (dict(time=-1.0), "--time: expected seconds > 0"),
                          (dict(runs="-3"), "--runs: expected an integer >= 1, got '-3'"),
                          (dict(depth=0), "--depth: expected an integer >= 1, got '0'"),
                          (dict(max_preemptions=0), "--max-preemptions: expected an integer >= 1, got '0'"),
                          (dict(oracle="nosuch_module:f"), "--oracle nosuch_module:f: No module named")):  # fmt: skip
        assert ex.main(_args(path, **{**kw, **bad})) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("akaros-sim explore: ") and fragment in err, err
