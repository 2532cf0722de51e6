"""The 2LS contract checker: buggy 2LSes are caught, with the 2LS, the uthread and the trace record named.

The runtime keeps its own view of every uthread (running, the 2LS's to run,
or waiting for a syscall, a mutex, a condition variable, a joined uthread),
whatever the 2LS keeps.  A 2LS that runs a uthread still waiting for
something, loses one (every vcore yields while it is the 2LS's to run), or
answers thread_refl_fault with something that is not a FaultStatus ends the
process with a report; a correct 2LS never trips it (every other test runs
with the checker on).
"""

from __future__ import annotations

import re

from akaros_sim import FaultStatus, Simulation, parlib
from akaros_sim.asm import assemble
from akaros_sim.kernel import SYS_block
from akaros_sim.simulation import RunEnd
from schedops.pthread import PthreadSched
from scripted_2ls import Fifo2LS, spin_sim


class _RunsSleepers(Fifo2LS):
    """Puts a uthread back on its queue when it blocks on a syscall: it will run before the syscall is done."""

    def thread_blockon_sysc(self, uth, sysc) -> None:
        self.thread_runnable_quietly(uth)

    def thread_runnable_quietly(self, uth) -> None:
        self.ready.append(uth)


def test_running_a_uthread_that_waits_for_a_syscall_is_caught():
    """A 2LS that runs a sleeper before its syscall completes: the report names the 2LS, uthread and syscall."""
    sim = Simulation(1)
    sim.set_sched(_RunsSleepers())
    sim.spawn_python("sleeper", parlib.uthread_sleep, 5000)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.startswith(
        "2LS contract: 2LS 'fifo' ran uthread 'sleeper', which waits for syscall #1 (block) (since trace record #"
    )


class _Barging(Fifo2LS):
    """Runs a mutex waiter again as soon as it has blocked (thread_has_blocked puts it at the head)."""

    def thread_has_blocked(self, uth, flags) -> None:
        if flags == parlib.UTH_EXT_BLK_MUTEX:
            self.ready.appendleft(uth)


def test_running_a_uthread_that_waits_for_a_mutex_is_caught():
    """A 2LS that re-queues a uthread blocked on a mutex is caught when it runs it."""
    sim = Simulation(1)
    sim.set_sched(_Barging())
    box = {}

    def holder():
        box["m"] = m = parlib.Mutex("m")
        m.lock()
        parlib.uthread_sched_yield()
        m.unlock()

    def waiter():
        box["m"].lock()
        box["m"].unlock()

    sim.spawn_python("holder", holder)
    sim.spawn_python("waiter", waiter)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert "ran uthread 'waiter', which waits for mutex 'm'" in result.report


class _ForgetsYielders(Fifo2LS):
    """Drops a uthread that yields (its has_blocked + runnable pair is answered with nothing)."""

    def thread_runnable(self, uth) -> None:
        if uth.insns or uth.entry.func is None:
            super().thread_runnable(uth)
        elif getattr(uth, "seen", False):
            return  # the second time: dropped
        else:
            uth.seen = True
            super().thread_runnable(uth)


def test_a_uthread_lost_after_a_yield_is_named_when_every_vcore_yields():
    """A 2LS that drops a yielding uthread: the run would end IDLE; the checker reports the lost uthread."""
    sim = Simulation(2)
    sim.set_sched(_ForgetsYielders())
    sim.spawn_python("yielder", parlib.uthread_sched_yield)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.startswith("2LS contract: 2LS 'fifo' lost uthread 'yielder': it was the 2LS's to run")


class _SaysHandled(PthreadSched):
    def thread_refl_fault(self, uth, ctx):
        super().thread_refl_fault(uth, ctx)
        return "handled"


def test_thread_refl_fault_returning_a_wrong_type_is_caught():
    """thread_refl_fault may return nothing or a FaultStatus: "handled" is a named contract violation."""
    prog = assemble("f:\n xor ecx, ecx\n div ecx\n ret\n", name="div")
    sim = Simulation(1)
    sim.load(prog)
    sim.set_sched(_SaysHandled())
    sim.spawn_guest("div", prog.symbol("f"))
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.startswith(
        "2LS contract: 2LS 'pthread': thread_refl_fault('div') returned 'handled'; "
        "expected nothing (the 2LS decided) or a FaultStatus"
    )


def test_a_fault_status_from_the_2ls_itself_is_accepted():
    """A 2LS may answer thread_refl_fault with a FaultStatus (CONTINUE_NEXT_HANDLER: it decided) without a report."""

    class _Explicit(PthreadSched):
        def thread_refl_fault(self, uth, ctx):
            super().thread_refl_fault(uth, ctx)
            return FaultStatus.CONTINUE_NEXT_HANDLER

    prog = assemble("f:\n xor ecx, ecx\n div ecx\n ret\n", name="div")
    sim = Simulation(1)
    sim.load(prog)
    sim.set_sched(_Explicit())
    sim.spawn_guest("div", prog.symbol("f"))
    result = sim.run()
    assert result.report.startswith("SIGFPE with no handler")  # pthread's own verdict, not a contract one


def test_correct_2lses_never_trip_the_checker_on_blocking_work():
    """pthread with sleepers, mutexes, condition variables and joins on 3 vcores: no contract report."""
    sim = Simulation(3, seed=2)
    sim.set_sched(PthreadSched())
    box = {}

    def main():
        box["m"], box["cv"] = parlib.Mutex("m"), parlib.CondVar("cv")
        kids = [parlib.uthread_create(kid, i, name=f"k{i}") for i in range(6)]
        parlib.syscall(SYS_block, 3)
        with box["m"]:
            box["go"] = True
            box["cv"].broadcast()
        return sum(parlib.uthread_join(k) for k in kids)

    def kid(i):
        parlib.uthread_sleep(100 * i)
        with box["m"]:
            while not box.get("go"):
                box["cv"].wait(box["m"])
        return i

    sim.spawn_python("main", main)
    result = sim.run()
    assert (result.end, result.report, sim.uthread("main").exit_value) == (RunEnd.ALL_EXITED, None, 15)
    assert spin_sim(Fifo2LS(), 2, a=(100, 1), b=(100, 2)).run().end is RunEnd.ALL_EXITED


class _Favours(Fifo2LS):
    """Runs `victim` only when nothing else is ready: with a uthread that yields forever, never."""

    def _pick(self):
        others = [uth for uth in self.ready if uth.name != "victim"]
        if others:
            self.ready.remove(others[0])
            return others[0]
        return super()._pick()


def _yield_forever():
    while True:
        parlib.uthread_sched_yield()


def test_a_starved_uthread_is_reported_by_the_stall_watchdog():
    """A 2LS that never runs a ready uthread: the watchdog names it, how long it waited and since when."""
    sim = Simulation(1, stall_ns=200_000)
    sim.set_sched(_Favours())
    sim.spawn_python("hog", _yield_forever)
    sim.spawn_python("victim", parlib.uthread_sched_yield)
    result = sim.run(until_ns=10**9)
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.startswith("2LS contract: 2LS 'fifo' left uthread 'victim' unrun for ")
    match = re.search(r"unrun for ([\d,]+) ns \(the stall limit is 200,000 ns; it became the 2LS's "
                      r"to run at t=(\d+), since trace record #\d+, its creation in sched_ops.thread_create\) "
                      r"\(at trace record #\d+\)$", result.report)
    waited, since = int(match[1].replace(",", "")), int(match[2])
    assert since < 1_000 and waited > 200_000 and since + waited == result.time_ns
    assert sim.uthread("victim").insns == 0 and sim.uthread("victim").exit_value is None


def test_the_watchdog_reports_the_same_stall_at_the_same_record_every_run():
    """The watchdog counts runs, not host time: two runs give byte-identical reports and traces."""
    def once():
        sim = Simulation(2, seed=3, stall_ns=150_000)
        sim.set_sched(_Favours())
        sim.spawn_python("hog", _yield_forever)
        sim.spawn_python("hog2", _yield_forever)
        sim.spawn_python("victim", parlib.uthread_sched_yield)
        result = sim.run(until_ns=10**9)
        return result.report, sim.trace.to_jsonl()

    first = once()
    assert first[0].startswith("2LS contract: 2LS 'fifo' left uthread 'victim' unrun")
    assert once() == first


def test_waiting_is_not_stalling():
    """Uthreads that sleep or block far longer than the limit are waiting, not stalled: no report."""
    sim = Simulation(2, stall_ns=100_000)  # above the kernel's vcore grant latency, far below the waits
    sim.set_sched(PthreadSched())
    sim.spawn_python("sleeper", parlib.uthread_sleep, 5_000_000)
    sim.spawn_python("blocker", parlib.syscall, SYS_block, 3_000)
    result = sim.run()
    assert (result.end, result.report) == (RunEnd.ALL_EXITED, None)
    assert result.time_ns >= 5_000_000


def test_the_watchdog_is_off_with_the_checker():
    """check=False turns the watchdog off too: the starving 2LS runs to the time limit."""
    sim = Simulation(1, stall_ns=200_000, check=False)
    sim.set_sched(_Favours())
    sim.spawn_python("hog", _yield_forever)
    sim.spawn_python("victim", parlib.uthread_sched_yield)
    result = sim.run(until_ns=2_000_000)
    assert result.end is RunEnd.TIME_BUDGET and result.report is None
