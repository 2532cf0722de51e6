"""Interposition: handler chains on sched_ops ops, and the process's fault chain."""

from __future__ import annotations

import pytest

from akaros_sim.asm import assemble
from akaros_sim.context import TrapNr
from akaros_sim.disasm import insn_length
from akaros_sim.interpose import FaultStatus, HandlerChain, InterposeError, interpose, uninterpose
from akaros_sim.sched_ops import SchedOps
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched

# Three faults in a row: two #UD (ud2) and a #DE; the guest exits with rbx.
FAULTS = """
_start:
    xor ebx, ebx
first:
    ud2
    inc rbx
second:
    ud2
    inc rbx
    xor ecx, ecx
third:
    div ecx
    mov rax, rbx
    ret
"""

CONT, FIXED, FAIL = FaultStatus.CONTINUE_NEXT_HANDLER, FaultStatus.FAULT_FIXED, FaultStatus.FAIL


def make_sim() -> tuple[Simulation, object]:
    sim = Simulation(vcores=1, seed=3)
    prog = assemble(FAULTS, name="faults")
    sim.load(prog)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("g", prog.entry)
    return sim, prog


def skip(uth, ctx) -> FaultStatus:
    """Skip whatever faulted."""
    ctx.rip += insn_length(uth_sim(uth).mem, ctx.rip)
    return FIXED


def uth_sim(uth):
    from akaros_sim.parlib import current_sim

    return current_sim()


def handler_log(sim) -> list[tuple[str, str]]:
    return [(r.get("handler"), r.get("status")) for r in sim.trace.of_kind("handler")]


def test_fixed_fault_resumes_at_once_and_the_2ls_never_sees_it():
    """FAULT_FIXED: the uthread resumes on the same vcore; thread_refl_fault of pthread is never called."""
    sim, _ = make_sim()
    sim.register_fault_handler(skip)
    res = sim.run()
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 2)
    assert handler_log(sim) == [("skip", "FAULT_FIXED")] * 3
    assert sim.trace.of_kind("chain_previous") == []
    assert [r.get("how") for r in sim.trace.of_kind("run")] == ["run_uthread"] + ["fault_fixed"] * 3


def test_handlers_run_in_order_head_then_tail_and_the_previous_op_last():
    """Head-registered handlers come first, tail ones last, then the 2LS op (here: #UD kills the process)."""
    sim, _ = make_sim()
    calls = []

    def declines(uth, ctx):
        calls.append("declines")
        return CONT

    def tail(uth, ctx):
        calls.append("tail")
        return CONT

    def head(uth, ctx):
        calls.append("head")
        return CONT

    sim.register_fault_handler(declines)
    sim.register_fault_handler(tail, insert_tail=True)
    sim.register_fault_handler(head)
    res = sim.run()
    assert calls == ["head", "declines", "tail"]
    assert handler_log(sim) == [("head", "CONTINUE_NEXT_HANDLER"), ("declines", "CONTINUE_NEXT_HANDLER"),
                                ("tail", "CONTINUE_NEXT_HANDLER")]  # fmt: skip
    assert len(sim.trace.of_kind("chain_previous")) == 1
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert "Pthread has unhandled fault" in res.report


def test_handler_trace_records_the_context_change():
    """A handler's record lists every register it changed with before and after values."""
    sim, prog = make_sim()
    sim.register_fault_handler(skip)
    sim.run()
    first = sim.trace.of_kind("handler")[0]
    assert first.get("changed") == (("rip", prog.symbol("first"), prog.symbol("first") + 2),)


def test_fail_ends_the_process_with_a_report_naming_the_handler():
    """FAIL stops the chain: the process exits -1, the report names the handler, the trace is kept."""
    sim, _ = make_sim()

    def refuses(uth, ctx):
        return FAIL

    sim.register_fault_handler(refuses)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report.startswith("handler 'refuses' on thread_refl_fault: returned FAIL")
    assert sim.trace.of_kind("fault")  # recorded before the failure, still there
    assert sim.trace.of_kind("chain_previous") == []


def test_a_handler_that_raises_ends_the_process_naming_it():
    """An exception in a handler is a report naming the handler and the exception, not a traceback."""
    sim, _ = make_sim()

    def broken(uth, ctx):
        raise KeyError("oops")

    sim.register_fault_handler(broken)
    res = sim.run()
    assert res.exit_status == -1
    assert res.report.startswith("handler 'broken' on thread_refl_fault: raised KeyError: 'oops'")


def test_a_handler_returning_a_non_status_ends_the_process_naming_what_it_returned():
    """Returning True instead of a FaultStatus is reported with the value."""
    sim, _ = make_sim()

    def sloppy(uth, ctx):
        return True

    sim.register_fault_handler(sloppy)
    res = sim.run()
    assert res.report.startswith("handler 'sloppy' on thread_refl_fault: returned True, not a FaultStatus")


def test_registering_twice_is_an_error_and_unregistering_unknown_is_false():
    """The same handler twice raises InterposeError; unregistering one never registered returns False."""
    sim, _ = make_sim()
    sim.register_fault_handler(skip)
    with pytest.raises(InterposeError, match="handler 'skip' is already registered"):
        sim.register_fault_handler(skip, insert_tail=True)
    assert sim.unregister_fault_handler(skip) is True
    assert sim.unregister_fault_handler(skip) is False


def test_unregistering_during_a_walk_takes_effect_at_the_next_fault():
    """A handler that unregisters itself and a later one: this walk still consults both, the next neither."""
    sim, _ = make_sim()
    seen = []

    def second(uth, ctx):
        seen.append(("second", ctx.trap_nr))
        return CONT

    def first(uth, ctx):
        seen.append(("first", ctx.trap_nr))
        sim.unregister_fault_handler(first)
        sim.unregister_fault_handler(second)
        return skip(uth, ctx) if ctx.trap_nr == TrapNr.UD else CONT

    sim.register_fault_handler(second)
    sim.register_fault_handler(first)
    res = sim.run()
    # first fixed the first #UD (so second was not consulted); the second #UD reached pthread
    assert seen == [("first", TrapNr.UD)]
    assert res.exit_status == -1 and "trap 6" in res.report


def test_registering_during_a_walk_takes_effect_at_the_next_fault():
    """A handler registered from inside a walk is not consulted by that walk, but by the next ones."""
    sim, _ = make_sim()
    seen = []

    def late(uth, ctx):
        seen.append("late")
        return skip(uth, ctx)

    def installer(uth, ctx):
        seen.append("installer")
        if seen == ["installer"]:
            sim.register_fault_handler(late, insert_tail=True)
            return skip(uth, ctx)  # fix the first fault itself: late is not in this walk
        return CONT

    sim.register_fault_handler(installer)
    res = sim.run()
    assert seen == ["installer", "installer", "late", "installer", "late"]
    assert sim.uthread("g").exit_value == 2 and res.end is RunEnd.ALL_EXITED


def test_chains_stack_and_each_layer_can_be_removed():
    """Interposing an interposed op wraps it; uninterpose removes the inner or the outer layer."""
    log = []
    ops = SchedOps("t", thread_refl_fault=lambda uth, ctx: log.append("op"))
    inner = interpose(ops, "thread_refl_fault")
    outer = interpose(ops, "thread_refl_fault")

    def tag(name):
        def handler(uth, ctx):
            log.append(name)
            return CONT

        return handler

    inner.register(tag("inner"))
    outer.register(tag("outer"))
    ops.thread_refl_fault(None, None)
    assert log == ["outer", "inner", "op"]
    uninterpose(ops, inner)
    log.clear()
    ops.thread_refl_fault(None, None)
    assert log == ["outer", "op"]
    uninterpose(ops, outer)
    log.clear()
    ops.thread_refl_fault(None, None)
    assert log == ["op"]
    with pytest.raises(InterposeError, match="is not interposed"):
        uninterpose(ops, outer)


def test_interposing_a_missing_op_is_a_clear_error():
    """An op the table does not have cannot be interposed."""
    ops = SchedOps("t")
    with pytest.raises(InterposeError, match="has no op 'thread_refl_fault'"):
        interpose(ops, "thread_refl_fault")


def test_chain_rejects_non_callables():
    """Registering something that is not callable names it."""
    chain = HandlerChain(None, "thread_paused", lambda uth: None)
    with pytest.raises(InterposeError, match="is not callable"):
        chain.register(42)


def test_fault_chain_runs_are_deterministic():
    """The same chain setup twice gives byte-identical traces."""
    digests = []
    for _ in range(2):
        sim, _ = make_sim()
        sim.register_fault_handler(skip)
        sim.run()
        digests.append(sim.trace.digest())
    assert digests[0] == digests[1]


def test_a_chain_on_thread_runnable_observes_and_cannot_skip_the_2ls():
    """On thread_runnable every handler sees the call and pthread still queues the uthread; FAULT_FIXED there
    is refused with a report naming the handler (it would have lost the uthread)."""
    from akaros_sim import parlib

    seen = []

    def watch(uth):
        seen.append(uth.name)
        return FaultStatus.CONTINUE_NEXT_HANDLER

    def swallow(uth):
        return FaultStatus.FAULT_FIXED

    for handler, ends in ((watch, RunEnd.ALL_EXITED), (swallow, RunEnd.PROCESS_EXITED)):
        sim = Simulation(1)
        sched = PthreadSched()
        interpose(sched, "thread_runnable").register(handler)
        sim.set_sched(sched)
        sim.spawn_python("y", parlib.uthread_sched_yield)
        result = sim.run()
        assert result.end is ends
    assert seen == ["y", "y"]  # pthread makes a new uthread runnable, then the yield does
    assert "handler 'swallow' on thread_runnable: returned FAULT_FIXED, which only a thread_refl_fault" in result.report
