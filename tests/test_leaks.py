"""Leaks and the guest clock: a finished run is freed by refcount alone, RSS stays flat, rdtsc advances in a slice."""

from __future__ import annotations

import faulthandler
import gc
import os
import weakref

import pytest
from greenlet import getcurrent, greenlet

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.engine import Costs
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched

# A run that hangs must not hang the suite: dump every thread's stack and end the process.
HANG_SECONDS = 120


@pytest.fixture(autouse=True)
def _no_hang():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# rdi = iterations; 2 instructions per iteration; returns rdi in rax (then the vdso exits the uthread with it).
LOOP = assemble(
    """
_start:
    mov rcx, rdi
again:
    dec rcx
    jnz again
    mov rax, rdi
    ret
""",
    name="loop",
)

# -- the small simulation ------------------------------------------------------------------------------
#
# Two vcores, the pthread 2LS, a guest loop, two Python uthreads sharing a Mutex (each holds it across a
# compute and a yield, so the other blocks on it) and a uthread that yields.  Three endings:
#   "all_exited":   everything finishes;
#   "process_exit": an exiter calls parlib.exit(7) while a locker is blocked on the Mutex and a computer is
#                   suspended inside parlib.compute on the other vcore;
#   "time_budget":  run(until_ns=) stops it with every uthread still busy.
# The uthreads write plain values into `facts` (returned to the test); the Mutex lives in `shared`, which
# only the uthreads' arguments hold, so nothing the test keeps can reach the simulation.

FOREVER = 10**9
BUDGET_NS = 20_000
EXIT_STATUS = 7


def _locker(shared: dict, facts: dict, name: str, rounds: int, ns: int) -> int:
    if "m" not in shared:
        shared["m"] = parlib.Mutex("m")
    m = shared["m"]
    for _ in range(rounds):
        facts[name + "_waiting"] = True
        m.lock()
        facts[name + "_waiting"] = False
        parlib.compute(ns)
        parlib.uthread_sched_yield()  # still holding m: the other locker blocks on it
        m.unlock()
        parlib.compute(ns)
    return rounds


def _yielder(n: int) -> int:
    for _ in range(n):
        parlib.uthread_sched_yield()
    return n


def _computer(facts: dict, chunks: int, ns: int) -> int:
    for i in range(chunks):
        facts["computing_on"] = parlib.vcore_id()
        parlib.compute(ns)
        facts["computing_on"] = None
        facts["chunks_done"] = i + 1
    return chunks


def _exiter(facts: dict, chunks: int, ns: int) -> None:
    for _ in range(chunks):
        parlib.compute(ns)
    facts["exiter_on"] = parlib.vcore_id()
    facts["computing_on_at_exit"] = facts.get("computing_on")
    facts["blocked_at_exit"] = bool(facts.get("a_waiting") or facts.get("b_waiting"))
    parlib.exit(EXIT_STATUS)


def build(ending: str) -> tuple[Simulation, dict]:
    """The small simulation for `ending`, and the dict of plain facts its uthreads fill in."""
    sim = Simulation(vcores=2, seed=1)
    sim.load(LOOP)
    sim.set_sched(PthreadSched())
    shared: dict = {}
    facts: dict = {}
    if ending == "all_exited":
        sim.spawn_guest("g", LOOP.entry, 3000)
        sim.spawn_python("a", _locker, shared, facts, "a", 4, 500)
        sim.spawn_python("b", _locker, shared, facts, "b", 4, 500)
        sim.spawn_python("y", _yielder, 20)
    elif ending == "process_exit":
        sim.spawn_python("a", _locker, shared, facts, "a", FOREVER, 500)
        sim.spawn_python("b", _locker, shared, facts, "b", FOREVER, 500)
        sim.spawn_python("x", _exiter, facts, 20, 500)
        sim.spawn_python("c", _computer, facts, FOREVER, 1000)
        sim.spawn_python("y", _yielder, FOREVER)
        sim.spawn_guest("g", LOOP.entry, FOREVER)
    elif ending == "time_budget":
        sim.spawn_guest("g", LOOP.entry, FOREVER)
        sim.spawn_python("a", _locker, shared, facts, "a", FOREVER, 500)
        sim.spawn_python("b", _locker, shared, facts, "b", FOREVER, 500)
        sim.spawn_python("c", _computer, facts, FOREVER, 1000)
        sim.spawn_python("y", _yielder, FOREVER)
    else:
        raise ValueError(ending)
    return sim, facts


def run_and_check(sim: Simulation, ending: str, facts: dict):
    """Run sim and check that it ended as `ending` says; returns the RunResult."""
    if ending == "all_exited":
        result = sim.run(until_ns=10_000_000)  # the budget only guards against a runaway run
        assert result.end is RunEnd.ALL_EXITED, result.report
        assert sim.uthread("g").exit_value == 3000
        assert result.counts.get("mutex_block", 0) >= 1  # the lockers did contend
    elif ending == "process_exit":
        result = sim.run(until_ns=10_000_000)
        assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, EXIT_STATUS), result.report
        assert facts["blocked_at_exit"], facts  # a locker was blocked on the Mutex
        # the computer was suspended inside compute, on the vcore the exiter was not on
        assert facts["computing_on_at_exit"] not in (None, facts["exiter_on"]), facts
    else:
        result = sim.run(until_ns=BUDGET_NS)
        assert result.end is RunEnd.TIME_BUDGET, result.report
        assert 0 < facts.get("chunks_done", 0) < FOREVER, facts
    return result


def _why_alive(ref: weakref.ref) -> str:
    """For a failure message: is the Simulation held only by reference cycles, or by something live?"""
    gc.collect()
    if ref() is None:
        return "it is held only by reference cycles (gc.collect() frees it)"
    return "it is still alive even after gc.collect(): something outside the run holds it (a live greenlet?)"


def assert_freed_by_refcount(ending: str) -> None:
    enabled = gc.isenabled()
    gc.collect()  # start from a clean heap; from here on only reference counting frees anything
    gc.disable()
    try:
        sim, facts = build(ending)
        result = run_and_check(sim, ending, facts)
        ref = weakref.ref(sim)
        del sim, result
        alive = ref() is not None
        assert not alive, f"Simulation ({ending}) not freed by reference counting after del: {_why_alive(ref)}"
    finally:
        if enabled:
            gc.enable()


# -- freed by reference counting -------------------------------------------------------------------------


def test_simulation_is_freed_by_refcount_after_run():
    """A Simulation whose uthreads all exited is freed by `del` alone, with the cyclic collector off."""
    assert_freed_by_refcount("all_exited")


def test_simulation_is_freed_by_refcount_after_process_exit():
    """A run ended by parlib.exit() with uthreads blocked and mid-compute on another vcore is freed by `del` alone."""
    assert_freed_by_refcount("process_exit")


def test_simulation_is_freed_by_refcount_after_time_budget():
    """A run stopped by until_ns with every uthread still busy is freed by `del` alone."""
    assert_freed_by_refcount("time_budget")


# -- RSS over many runs ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_greenlets() -> int:
    """Greenlets the collector can see that have not finished (the running one excepted)."""
    here = getcurrent()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead and obj is not here)


ENDINGS = ("all_exited", "process_exit", "time_budget")
WARMUP_RUNS = 5
RUNS = 50
MAX_GROWTH = 4 << 20  # "a few MiB"; a leaking run costs about 4 MiB (its Unicorn instance) on its own


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc/self/statm (Linux)")
def test_fifty_runs_do_not_grow_rss():
    """Fifty small runs (all three endings) in one process grow RSS by < 4 MiB and leave no greenlet alive."""
    problems: list[str] = []

    def one(i: int) -> None:
        ending = ENDINGS[i % len(ENDINGS)]
        before = live_greenlets()
        sim, facts = build(ending)
        run_and_check(sim, ending, facts)
        unfinished = [
            uth.name
            for uth in getattr(sim, "uthreads", ())
            if getattr(uth, "greenlet", None) is not None and not uth.greenlet.dead
        ]
        left = live_greenlets() - before
        if unfinished or left > 0:
            problems.append(f"run {i} ({ending}): {left} more live greenlets after run(); uthreads not dead: "
                            f"{unfinished}")  # fmt: skip
        del sim
        gc.collect()

    for i in range(WARMUP_RUNS):
        one(i)
    gc.collect()
    rss0 = rss_bytes()
    for i in range(WARMUP_RUNS, WARMUP_RUNS + RUNS):
        one(i)
    gc.collect()
    growth = rss_bytes() - rss0
    if growth >= MAX_GROWTH:
        problems.insert(0, f"RSS grew {growth / 2**20:.1f} MiB over {RUNS} runs (limit {MAX_GROWTH >> 20} MiB)")
    if len(problems) > 6:
        problems[6:] = [f"... and {len(problems) - 6} more"]
    assert not problems, "\n".join(problems)


# -- rdtsc inside a slice ------------------------------------------------------------------------------------

LOOP_ITERATIONS = 1000  # 2 instructions each: 2000 instructions between the two rdtsc
RDTSC_DELTA = assemble(
    f"""
_start:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbx, rax             # rbx = tsc before
    mov rcx, {LOOP_ITERATIONS}
again:
    dec rcx
    jnz again
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, rbx             # rax = tsc after - tsc before
    ret                      # to the vdso: uthread_exit(rax)
""",
    name="rdtsc_delta",
)


@pytest.mark.parametrize("insn_ns", [1, 3])
def test_rdtsc_advances_within_a_slice(insn_ns):
    """Two rdtsc ~2000 instructions apart in one guest slice differ by at least 2000 * insn_ns."""
    sim = Simulation(vcores=1, seed=1, costs=Costs(insn_ns=insn_ns))
    sim.load(RDTSC_DELTA)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("t", RDTSC_DELTA.entry)
    result = sim.run(until_ns=10_000_000)
    assert result.end is RunEnd.ALL_EXITED, result.report
    between = 2 * LOOP_ITERATIONS  # the loop alone; the few instructions around it only add
    delta = sim.uthread("t").exit_value
    assert between * insn_ns <= delta <= 2 * between * insn_ns, (
        f"rdtsc delta {delta} ns over ~{between} instructions at insn_ns={insn_ns}"
    )
