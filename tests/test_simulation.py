"""Simulation: why a run ends, what it reports, API misuse, side-by-side simulations and determinism."""

from __future__ import annotations

import attrs
import pytest

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.engine import Costs
from akaros_sim.kernel import ProcState
from akaros_sim.simulation import RunEnd, RunResult, Simulation, SimulationError, VcoreStats
from schedops.pthread import PthreadSched
from scripted_2ls import Fifo2LS, spin_insns, spin_sim

# SYS_proc_destroy (12) with status 3, straight from guest code.
EXIT3 = assemble(
    """
_start:
    mov eax, 12
    mov edi, 3
    syscall
    ud2                      # never reached
""",
    name="exit3",
)

# -- why a run ends -----------------------------------------------------------------------------


def test_run_ends_all_exited_with_whole_result():
    """Two guest uthreads that return end the run ALL_EXITED; the result adds up to the trace."""
    sim = spin_sim(Fifo2LS(), 1, a=(100, 1), b=(200, 2))
    result = sim.run()
    insns = spin_insns(100) + spin_insns(200)
    online = sim.trace.of_kind("vcore_online")[0].t  # busy from here to the end
    step = Costs().python_step_ns  # each uthread's exit call, in uthread time with its instructions
    assert attrs.evolve(result, metrics=None) == RunResult(
        end=RunEnd.ALL_EXITED,
        exit_status=None,
        time_ns=result.time_ns,
        insns=insns,
        vcores=(VcoreStats(vcore=0, busy_ns=result.time_ns - online, uthread_ns=insns + 2 * step, switches=2,
                           preemptions=0),),
        counts=sim.trace.counts(),
        report=None,
    )
    assert [(r.uth, r.get("retval") is not None) for r in sim.trace.of_kind("uthread_exit")] == [
        ("a", True), ("b", True),
    ]  # fmt: skip
    last = sim.trace.records[-1]
    assert (last.t, last.kind, last.details) == (
        result.time_ns, "run_end", (("end", "ALL_EXITED"), ("status", None), ("insns", insns)),
    )  # fmt: skip


def test_run_ends_process_exited_on_guest_exit_syscall():
    """SYS_proc_destroy (12) from guest code ends the run PROCESS_EXITED with the guest's status."""
    sim = Simulation(1)
    sim.load(EXIT3)
    sim.set_sched(Fifo2LS())
    sim.spawn_guest("x", EXIT3.symbol("_start"))
    result = sim.run()
    assert (result.end, result.exit_status, result.insns) == (RunEnd.PROCESS_EXITED, 3, 3)
    assert [(r.kind, r.details) for r in sim.trace.of_kind("syscall", "process_exit", "run_end")] == [
        ("syscall", (("sysc", 1), ("name", "exit"), ("args", (3, 0, 0, 0, 0, 0)))),
        ("process_exit", (("status", 3), ("why", "exit syscall"))),
        ("run_end", (("end", "PROCESS_EXITED"), ("status", 3), ("insns", 3))),
    ]


def test_run_ends_time_budget_at_until_ns():
    """run(until_ns=) stops a long guest loop when virtual time reaches the budget."""
    sim = spin_sim(Fifo2LS(), 1, spin=(100_000, 1))
    result = sim.run(until_ns=5000)
    assert result.end is RunEnd.TIME_BUDGET
    assert 5000 <= result.time_ns <= 5001
    assert result.insns < 5000
    assert not sim.uthread("spin").has_exited


def test_run_ends_insn_budget():
    """run(max_insns=) ends INSN_BUDGET before the guest loop finishes."""
    sim = spin_sim(Fifo2LS(), 2, a=(20_000, 1), b=(20_000, 2))
    result = sim.run(max_insns=30_000)
    assert result.end is RunEnd.INSN_BUDGET
    assert 30_000 <= result.insns < 30_000 + Costs().slice_insns
    assert not sim.uthread("a").has_exited


def test_insn_budget_bounds_a_lone_vcore():
    """run(max_insns=1000) on one vcore stops within one slice of the budget."""
    sim = spin_sim(Fifo2LS(), 1, spin=(20_000, 1))
    result = sim.run(max_insns=1000)
    assert result.end is RunEnd.INSN_BUDGET
    assert 1000 <= result.insns < 1000 + Costs().slice_insns


def test_run_ends_idle_when_a_mutex_is_never_unlocked():
    """A uthread waiting on a mutex whose holder exited: every vcore yields, no event is due, IDLE."""
    sim = Simulation(2)
    mutex = []

    def holder():
        mutex.append(parlib.Mutex("m"))
        mutex[0].lock()  # and exit holding it

    def waiter():
        parlib.uthread_sleep(1_000)  # 1 us
        mutex[0].lock()

    sim.set_sched(PthreadSched())
    sim.spawn_python("holder", holder)
    sim.spawn_python("waiter", waiter)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.IDLE, None)
    assert sim.kernel.state is ProcState.WAITING
    kinds = ("uthread_exit", "mutex_block", "vcore_online", "vcore_offline")
    # the waiter's sleep (SYS_block's least, 1 us) outlasts vcore 0's yield, whose wake-up brings vcore 0
    # back; vcore 1's grant falls due after vcore 0 has yielded and lowered amt_wanted: it never comes online
    assert [(r.kind, r.vc, r.uth) for r in sim.trace.of_kind(*kinds)] == [
        ("vcore_online", 0, ""), ("uthread_exit", 0, "holder"), ("vcore_offline", 0, ""),
        ("vcore_online", 0, ""), ("mutex_block", 0, "waiter"), ("vcore_offline", 0, ""),
    ]  # fmt: skip


class _NeverRunnable(Fifo2LS):
    def thread_runnable(self, uth) -> None:
        pass  # loses every thread it is given


def test_a_2ls_that_never_makes_a_thread_runnable_is_caught_losing_it():
    """A 2LS that drops new threads: vcore 0 finds nothing and yields; the contract checker names the lost uthread."""
    sim = spin_sim(_NeverRunnable(), 1, spin=(10, 1))
    result = sim.run()
    assert (result.end, result.exit_status, result.insns, result.time_ns) == (RunEnd.PROCESS_EXITED, -1, 0, 350)
    assert result.report == ("2LS contract: 2LS 'fifo' lost uthread 'spin': it was the 2LS's to run "
                             "(since trace record #3, its creation in sched_ops.thread_create) and every vcore yielded (at trace record #9)")
    assert [(r.t, r.kind) for r in sim.trace.records if r.kind != "op"] == [
        (0, "sched_init"), (100, "uthread_create"), (100, "uthread_state"), (100, "vcore_online"), (250, "vcore_entry"),
        (350, "vcore_offline"), (350, "process_exit"), (350, "run_end"),
    ]  # fmt: skip


def test_without_the_checker_a_lost_uthread_ends_the_run_idle():
    """check=False (a speed run): the same lost uthread just leaves the run IDLE, with no report."""
    sim = spin_sim(_NeverRunnable(), 1, spin=(10, 1), check=False)
    result = sim.run()
    assert (result.end, result.exit_status, result.report) == (RunEnd.IDLE, None, None)


# -- API misuse ---------------------------------------------------------------------------------------


def test_a_simulation_runs_once():
    """A second run() is refused."""
    sim = spin_sim(Fifo2LS(), 1, spin=(10, 1))
    sim.run()
    with pytest.raises(SimulationError, match=r"^Simulation.run: a simulation runs once$"):
        sim.run()


def test_run_without_a_2ls_is_refused():
    """run() with no set_sched names what is missing."""
    with pytest.raises(SimulationError, match=r"^Simulation.run: no 2LS installed \(set_sched\)$"):
        Simulation(1).run()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda sim: sim.preempt_at(10, 2), "preempt_at: no vcore 2 (the machine has 2)"),
        (lambda sim: sim.at(-1, "x", print), "Simulation.at: expected a time >= 0 ns, got -1"),
        (lambda sim: Simulation(0), "Simulation: expected vcores >= 1, got 0"),
        (lambda sim: Simulation(1, stall_ns=0), "Simulation: expected stall_ns >= 1, got 0"),
        (lambda sim: Simulation(1, stall_ns=1.5), "Simulation: expected stall_ns >= 1, got 1.5"),
    ],
)
def test_bad_arguments_are_named(call, message):
    """preempt_at on a missing vcore, at() in negative time, no vcores and no stall limit are refused by name."""
    with pytest.raises(SimulationError) as info:
        call(Simulation(2))
    assert str(info.value) == message


def test_spawn_after_the_run_started_is_refused():
    """Threads made during the run go through parlib.uthread_create, not Simulation.spawn."""
    sim = Simulation(1)
    errors = []

    def main():
        try:
            sim.spawn_python("late", lambda: None)
        except SimulationError as exc:
            errors.append(str(exc))

    sim.set_sched(Fifo2LS())
    sim.spawn_python("main", main)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert errors == ["Simulation.spawn: the run has started; use parlib.uthread_create from a uthread"]


# -- two simulations in one process ---------------------------------------------------------------------


def _preempted_pthread_sim() -> Simulation:
    sim = spin_sim(PthreadSched(), 2, x=(3000, 1), y=(2000, 2), z=(1000, 3))
    sim.preempt_at(4000, 0, duration_ns=3000)
    return sim


def _python_fifo_sim(inner=None) -> Simulation:
    """One Python uthread computing in three steps; with `inner`, it runs that whole simulation mid-way."""
    sim = Simulation(1, seed=5)
    sim.set_sched(Fifo2LS())

    def worker():
        for step in range(3):
            parlib.compute(700)
            if inner is not None and step == 1:
                inner.run()

    sim.spawn_python("w", worker)
    return sim


def test_two_simulations_built_together_and_run_alternately_trace_as_if_alone():
    """Building A and B, then running B and A, gives each the trace it has when run alone."""
    alone_a, alone_b = _preempted_pthread_sim(), _python_fifo_sim()
    alone_a.run()
    alone_b.run()
    a, b = _preempted_pthread_sim(), _python_fifo_sim()
    b.run()
    a.run()
    assert a.trace.to_jsonl() == alone_a.trace.to_jsonl()
    assert b.trace.to_jsonl() == alone_b.trace.to_jsonl()


def test_a_simulation_run_inside_another_ones_uthread_traces_as_if_alone():
    """A whole simulation run from a uthread of another leaves both traces as when each runs alone."""
    alone_a, alone_b = _preempted_pthread_sim(), _python_fifo_sim()
    alone_a.run()
    alone_b.run()
    inner = _preempted_pthread_sim()
    outer = _python_fifo_sim(inner=inner)
    assert outer.run().end is RunEnd.ALL_EXITED
    assert inner.trace.to_jsonl() == alone_a.trace.to_jsonl()
    assert outer.trace.to_jsonl() == alone_b.trace.to_jsonl()


# -- determinism ----------------------------------------------------------------------------------------------


def _busy_machine(preempt_at: int = 3000) -> Simulation:
    """Three vcores, four guest loops, two preemptions (one with a warning) and a Python sleeper."""
    sim = spin_sim(PthreadSched(), 3, a=(2000, 1), b=(1500, 2), c=(1000, 3), d=(2500, 4))

    def sleeper():
        for _ in range(3):
            parlib.uthread_sleep(1500)

    sim.spawn_python("sleeper", sleeper)
    sim.preempt_at(preempt_at, 1, duration_ns=2000)
    sim.preempt_at(5000, 0, warning_ns=1000, duration_ns=3000)
    return sim


def test_multi_vcore_run_with_preemption_is_deterministic():
    """The same scenario run three times gives byte-identical traces and equal results."""
    runs = [_busy_machine() for _ in range(3)]
    results = [sim.run() for sim in runs]
    assert results[0].end is RunEnd.ALL_EXITED
    assert {"preempt", "preempt_warn", "preempt_recover", "uthread_pause"} <= set(results[0].counts)
    assert len({sim.trace.digest() for sim in runs}) == 1
    assert len({sim.trace.to_jsonl() for sim in runs}) == 1
    assert results[0] == results[1] == results[2]


def test_a_different_scenario_gives_a_different_digest():
    """Moving one preemption changes the trace, and so its digest."""
    one, other = _busy_machine(3000), _busy_machine(3500)
    one.run()
    other.run()
    assert one.trace.digest() != other.trace.digest()


class _Random2LS(Fifo2LS):
    """Fifo2LS that runs a ready uthread chosen with the simulation's seeded RNG."""

    name = "random"

    def _pick(self):
        if not self.ready:
            return None
        uth = self.ready[parlib.current_sim().rng.randrange(len(self.ready))]
        self.ready.remove(uth)
        return uth


def _random_order(seed: int) -> tuple[str, str]:
    sim = Simulation(1, seed=seed)
    sim.set_sched(_Random2LS())

    def yielder():
        for _ in range(3):
            parlib.uthread_sched_yield()

    for name in "abcd":
        sim.spawn_python(name, yielder)
    assert sim.run().end is RunEnd.ALL_EXITED
    return "".join(r.uth for r in sim.trace.of_kind("run")), sim.trace.digest()


def test_a_seeded_policy_repeats_per_seed_and_differs_across_seeds():
    """A 2LS drawing from Simulation.rng runs the same order for a seed and another order for another seed."""
    assert _random_order(0) == _random_order(0)
    orders = {seed: _random_order(seed)[0] for seed in (0, 1, 2)}
    assert orders == {0: "ddaddcacaabccbbb", 1: "babccccbadbdaadd", 2: "abcbabacdaccdddb"}


class _FailingInit(PthreadSched):
    def sched_init(self) -> None:
        raise IndexError("no queues")


def test_a_2ls_that_raises_in_sched_init_ends_the_process_with_a_report():
    """An exception in sched_init (the SCP phase) is a report naming the op, not a traceback out of run()."""
    sim = Simulation(2)
    sim.set_sched(_FailingInit())
    sim.spawn_python("a", lambda: 1)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report == "IndexError in sched_ops.sched_init of 2LS 'pthread': no queues (at trace record #2)"
    assert [r.kind for r in sim.trace][-2:] == ["process_exit", "run_end"]


def test_a_failing_injection_ends_the_process_with_a_report_naming_the_event():
    """An injection that raises in kernel context ends the process; the report names the event and its time."""
    sim = Simulation(1)
    sim.set_sched(PthreadSched())
    sim.spawn_python("a", parlib.compute, 10_000)
    sim.at(2000, "broken", lambda: {}["missing"])
    result = sim.run()
    assert (result.end, result.exit_status, result.time_ns) == (RunEnd.PROCESS_EXITED, -1, 2000)
    assert result.report.startswith("KeyError in kernel event 'inject' at t=2000: 'missing'")
