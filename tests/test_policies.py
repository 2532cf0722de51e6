"""The policies in schedops/ (docs/policies.md): each one's defining behaviour, seen in what a run measures.

Each new 2LS gets a small run where its policy shows (run time shares,
response and completion order, migrations) asserted on RunResult.metrics and
the trace, its params are validated with errors naming the parameter, and it
runs every shipped scenario written for pthread with the contract checker on:
no contract violation, the same end as pthread (every uthread exited where
pthread's do) and the same trace twice.
"""

from __future__ import annotations

import pytest

from akaros_sim import Simulation, parlib
from akaros_sim.simulation import RunEnd
from akaros_sim.testing import general_scenarios, run_under
from akaros_sim.tools.scenario import BUILTIN_SCHEDULERS, ScenarioError, build, load_scenario_text
from schedops.cfs import CfsSched, nice_to_weight
from schedops.edf import EdfSched
from schedops.lottery import LotterySched
from schedops.priority import PrioritySched
from schedops.roundrobin import RoundRobinSched
from schedops.stride import StrideSched
from schedops.worksteal import WorkStealSched

NEW_POLICIES = ("worksteal", "priority", "stride", "lottery", "cfs", "edf")


def _hog() -> None:
    while True:
        parlib.compute(1_000_000)


def _shares(sched, names, until_ns: int = 20_000_000) -> dict[str, float]:
    """Each uthread's fraction of the run time of CPU hogs sharing one vcore until `until_ns`."""
    sim = Simulation(1)
    sim.set_sched(sched)
    for name in names:
        sim.spawn_python(name, _hog)
    metrics = sim.run(until_ns=until_ns).metrics
    total = sum(u.run_ns for u in metrics.uthreads)
    return {u.name: u.run_ns / total for u in metrics.uthreads}


# -- stride -----------------------------------------------------------------------------------------------


def test_stride_gives_run_time_in_proportion_to_tickets():
    shares = _shares(StrideSched(tickets={"a": 3, "b": 2, "c": 1}), "abc")
    for name, tickets in (("a", 3), ("b", 2), ("c", 1)):
        assert shares[name] == pytest.approx(tickets / 6, rel=0.02), shares


# -- lottery ----------------------------------------------------------------------------------------------


def test_lottery_gives_run_time_in_proportion_to_tickets_in_expectation():
    """Over 2,000 draws (20 ms, 10 us ticks) the shares are near the ticket ratios, not exactly them."""
    shares = _shares(LotterySched(tickets={"a": 3, "b": 2, "c": 1}), "abc")
    for name, tickets in (("a", 3), ("b", 2), ("c", 1)):
        assert shares[name] == pytest.approx(tickets / 6, abs=0.04), shares
    assert shares != _shares(StrideSched(tickets={"a": 3, "b": 2, "c": 1}), "abc")  # draws, not strides


def test_lottery_draws_from_the_seeded_rng():
    def order(seed):
        sim = Simulation(1, seed=seed)
        sim.set_sched(LotterySched())
        for name in "abcdef":
            sim.spawn_python(name, lambda: parlib.compute(1000))
        sim.run()
        return [r.uth for r in sim.trace.of_kind("run")]

    assert order(1) == order(1) and order(1) != order(2)


# -- cfs --------------------------------------------------------------------------------------------------


def test_cfs_gives_run_time_in_proportion_to_nice_weights():
    shares = _shares(CfsSched(nice={"b": 5}), "ab")
    heavy, light = nice_to_weight(0), nice_to_weight(5)
    assert (heavy, light) == (1024, 335)
    assert shares["a"] == pytest.approx(heavy / (heavy + light), rel=0.02), shares


def test_cfs_starts_a_new_uthread_at_the_minimum_vruntime():
    """A uthread created late is not owed the time it did not exist: it shares from then on, it does not
    monopolise the vcore to catch up."""
    sim = Simulation(1)
    sim.set_sched(CfsSched())
    box = {}

    def first():
        box["late"] = None
        parlib.compute(2_000_000)

    def starter():
        parlib.uthread_sleep(1_000_000)
        parlib.uthread_create(parlib.compute, 1_000_000, name="late")

    sim.spawn_python("first", first)
    sim.spawn_python("starter", starter)
    m = sim.run().metrics
    late, first_ = m.uthread("late"), m.uthread("first")
    assert late.response_ns < 100_000  # it runs within a few slices of its creation
    assert first_.exit_ns > late.created_ns + 500_000  # and first kept running meanwhile: they shared


# -- priority -----------------------------------------------------------------------------------------------


def test_priority_runs_the_highest_first():
    sim = Simulation(1)
    sim.set_sched(PrioritySched(priorities={"hi": 10, "mid": 5}))
    for name in ("lo", "mid", "hi"):  # created lowest first: FIFO would run lo first
        sim.spawn_python(name, parlib.compute, 10_000)
    m = sim.run().metrics
    response = {u.name: u.response_ns for u in m.uthreads}
    assert response["hi"] < response["mid"] < response["lo"], response
    assert [r.uth for r in sim.trace if r.kind == "run"] == ["hi", "mid", "lo"]


def _inversion(inherit: bool):
    """The classic inversion: low holds a mutex high needs while medium, a CPU hog, could run instead."""
    sim = Simulation(1)
    sim.set_sched(PrioritySched(priorities={"low": 1, "medium": 5, "high": 10}, inherit=inherit))
    box = {}

    def low():
        box["m"] = parlib.Mutex("m")
        with box["m"]:
            parlib.compute(100_000)

    def high():
        parlib.uthread_sleep(5_000)  # low has the mutex by then
        with box["m"]:
            parlib.compute(1_000)

    def medium():
        parlib.uthread_sleep(10_000)  # wakes while high waits on low
        parlib.compute(1_000_000)

    for name, func in (("low", low), ("high", high), ("medium", medium)):
        sim.spawn_python(name, func)
    result = sim.run()
    assert (result.end, result.report) == (RunEnd.ALL_EXITED, None)
    return sim, result.metrics


def test_priority_inheritance_bounds_the_inversion():
    plain_sim, plain = _inversion(inherit=False)
    pi_sim, pi = _inversion(inherit=True)
    # without inheritance, medium preempts low and high waits for all of medium's hog
    assert plain.uthread("high").blocked_ns["mutex"] > 1_000_000
    assert plain.uthread("high").exit_ns > plain.uthread("medium").exit_ns
    # with it, low runs at high's priority until it unlocks: high waits only for low's critical section
    assert pi.uthread("high").blocked_ns["mutex"] < 100_000
    assert pi.uthread("high").exit_ns < pi.uthread("medium").exit_ns
    boosts = [dict(r.details) for r in pi_sim.trace if r.kind == "pi_boost"]
    assert boosts == [{"holder": "low", "waiter": "high", "mutex": "m", "prio": 10}]
    assert not [r for r in plain_sim.trace if r.kind == "pi_boost"]


def test_a_mutex_goes_to_its_highest_priority_waiter():
    sim = Simulation(1)
    sim.set_sched(PrioritySched(priorities={"holder": 20, "w_hi": 10, "w_lo": 1}))
    box, got = {}, []

    def holder():
        box["m"] = parlib.Mutex("m")
        with box["m"]:
            parlib.uthread_sleep(5_000)  # both waiters queue meanwhile, w_lo first

    def waiter(name):
        with box["m"]:
            got.append(name)

    sim.spawn_python("holder", holder)
    sim.spawn_python("w_lo", waiter, "w_lo")
    sim.spawn_python("w_hi", waiter, "w_hi")
    assert sim.run().end is RunEnd.ALL_EXITED
    assert got == ["w_hi", "w_lo"]


# -- edf ------------------------------------------------------------------------------------------------------


def test_edf_completes_in_deadline_order_and_meets_feasible_deadlines():
    deadlines = {"a": 100_000, "b": 200_000, "c": 300_000}
    sim = Simulation(1)
    sim.set_sched(EdfSched(deadlines=deadlines))
    for name in ("c", "none", "a", "b"):  # "none" has no deadline: it goes last
        sim.spawn_python(name, parlib.compute, 20_000)
    m = sim.run().metrics
    by_exit = sorted(m.uthreads, key=lambda u: u.exit_ns)
    assert [u.name for u in by_exit] == ["a", "b", "c", "none"]
    for u in m.uthreads:
        if u.name in deadlines:
            assert u.exit_ns <= u.created_ns + deadlines[u.name]


def test_edf_preempts_for_an_earlier_deadline():
    """A uthread with a deadline wakes while one without runs: the completion event preempts the runner."""
    sim = Simulation(1)
    sim.set_sched(EdfSched(deadlines={"urgent": 50_000}))

    def urgent():
        parlib.uthread_sleep(10_000)
        parlib.compute(5_000)

    sim.spawn_python("background", parlib.compute, 500_000)
    sim.spawn_python("urgent", urgent)
    m = sim.run().metrics
    assert m.uthread("urgent").exit_ns <= m.uthread("urgent").created_ns + 50_000
    assert m.uthread("background").switches >= 2  # it was taken off and resumed


# -- worksteal --------------------------------------------------------------------------------------------------


def _fan_out(sched):
    sim = Simulation(2)
    sim.set_sched(sched)

    def kid():
        for _ in range(5):
            parlib.compute(3_000)
            parlib.uthread_sched_yield()

    def main():
        kids = [parlib.uthread_create(kid, name=f"k{i}") for i in range(4)]
        for k in kids:
            parlib.uthread_join(k)

    sim.spawn_python("main", main)
    result = sim.run()
    assert (result.end, result.report) == (RunEnd.ALL_EXITED, None)
    return sim, result.metrics


@pytest.mark.parametrize("params", [{}, {"owner": "lifo"}, {"victim": "round_robin"}])
def test_worksteal_an_idle_vcore_steals(params):
    """main makes every kid on vcore 0's deque; vcore 1 has none of its own and steals."""
    sim, m = _fan_out(WorkStealSched(**params))
    steals = [dict(r.details) for r in sim.trace if r.kind == "steal"]
    assert steals and all(s["thief"] != s["victim"] for s in steals)
    assert sum(u.migrations for u in m.uthreads) > 0
    assert all(v.uthread_ns > 0 for v in m.vcores)
    again, _ = _fan_out(WorkStealSched(**params))
    assert again.trace.digest() == sim.trace.digest()


# -- params -------------------------------------------------------------------------------------------------------


def _scenario(name: str, params: str) -> str:
    return (f'description = "x"\n[scheduler]\nname = "{name}"\nparams = {{ {params} }}\n'
            '[[threads]]\nname = "t"\npython = "akaros_sim.parlib:compute"\nargs = [1000]\n')


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("stride", "tickets = { a = 0 }", "stride 2LS: tickets.a: expected an integer >= 1, got 0"),
        ("stride", "tick_ns = -1", "stride 2LS: tick_ns: expected an integer >= 0, got -1"),
        ("cfs", "nice = { a = 20 }", "cfs 2LS: nice.a: expected an integer <= 19, got 20"),
        ("cfs", "latency_ns = 0", "cfs 2LS: latency_ns: expected an integer >= 1, got 0"),
        ("priority", 'priorities = { a = "high" }', "priority 2LS: priorities.a: expected an integer, got 'high'"),
        ("priority", "inherit = 1", "priority 2LS: inherit: expected true or false, got 1"),
        ("edf", "deadlines = [1]", "edf 2LS: deadlines: expected a table of uthread name = integer, got [1]"),
        ("worksteal", 'victim = "nearest"', "worksteal 2LS: victim: expected one of 'random', 'round_robin', "
                                            "got 'nearest'"),
        ("worksteal", "owner_order = 1", "unexpected keyword argument 'owner_order'"),
    ],
)
def test_params_are_checked_with_the_parameter_named(name, params, message):
    scenario = load_scenario_text(_scenario(name, params), "p.toml")
    with pytest.raises(ScenarioError) as caught:
        build(scenario)
    assert f"scheduler.params: '{name}' rejects them: " in str(caught.value)
    assert message in str(caught.value)


def test_every_new_policy_is_a_builtin_name():
    for name in NEW_POLICIES:
        scenario = load_scenario_text(_scenario(name, ""), "p.toml")
        assert build(scenario).ops.name == name


def test_roundrobin_is_the_base_with_a_fifo_queue():
    """roundrobin keeps its old schedule on the shared base: ticks slice, the queue is FIFO."""
    shares = _shares(RoundRobinSched(tick_ns=10_000), "ab", until_ns=2_000_000)
    assert shares["a"] == pytest.approx(0.5, rel=0.02)


# -- the shipped scenarios ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pthread_ends():
    return {s.path.name: run_under(s, "pthread")[1] for s in general_scenarios()}


@pytest.mark.parametrize("name", NEW_POLICIES)
def test_each_policy_runs_the_pthread_scenarios(name, pthread_ends):
    assert BUILTIN_SCHEDULERS[name].startswith(f"schedops.{name}:")
    for scenario in general_scenarios():
        where = scenario.path.name
        sim, result = run_under(scenario, name)
        assert "2LS contract" not in (result.report or ""), (where, result.report)
        theirs = pthread_ends[where]
        assert (result.end, result.exit_status) == (theirs.end, theirs.exit_status), (where, result.report)
        if theirs.end is RunEnd.ALL_EXITED:
            assert all(u.done for u in sim.uthreads), where
        again, _ = run_under(scenario, name)
        assert again.trace.digest() == sim.trace.digest(), where
