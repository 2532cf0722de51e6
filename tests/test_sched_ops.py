"""sched_ops: the op table's validation, its defaults, and the runtime calling ops through it."""

from __future__ import annotations

from collections import deque

import pytest

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.kernel import SYS_block
from akaros_sim.memory import Prot
from akaros_sim.sched_ops import ALL_OPS, OPTIONAL_OPS, REQUIRED_OPS, SchedOps, SchedOpsError, default_ops
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.uthread import Uthread, UthreadEntry
from schedops.pthread import PthreadSched
from schedops.thread0 import Thread0Sched


def _op(*_args):
    return None


class ScriptedSched:
    """A fake 2LS: one run queue, popped from the head (FIFO) or the tail (LIFO).

    Unlike pthread it makes new threads runnable through parlib (so the op
    shows in the trace) and defines no thread_bulk_runnable.
    """

    name = "scripted"

    def __init__(self, lifo: bool = False) -> None:
        self.lifo = lifo
        self.ready: deque[Uthread] = deque()
        self.evq = None

    def sched_init(self) -> None:
        self.evq = parlib.get_eventq(0)
        parlib.uthread_2ls_init(lambda sysc: parlib.uthread_runnable(sysc.u_data))

    def sched_entry(self) -> None:
        if parlib.current_uthread() is not None:
            parlib.run_current_uthread()
        while not self.ready:
            parlib.handle_events()
            if not self.ready:
                parlib.vcore_yield(False)
        parlib.run_uthread(self.ready.pop() if self.lifo else self.ready.popleft())

    def thread_runnable(self, uth) -> None:
        self.ready.append(uth)

    def thread_paused(self, uth) -> None:
        self.ready.append(uth)

    def thread_blockon_sysc(self, uth, sysc) -> None:
        if not parlib.register_evq(sysc, self.evq):
            self.ready.append(uth)

    def thread_has_blocked(self, uth, flags) -> None:
        pass

    def thread_refl_fault(self, uth, ctx) -> None:
        parlib.exit(-1, parlib.fault_report(uth, "scripted: fault"))

    def thread_exited(self, uth) -> None:
        parlib.uthread_cleanup(uth)

    def thread_create(self, entry) -> Uthread:
        uth = Uthread(entry)
        parlib.uthread_init(uth)
        parlib.uthread_runnable(uth)
        return uth

    def got_posix_signal(self, signo, info) -> None:
        pass


def op_records(sim):
    """(op, args) of every op record, in order."""
    return [(r.get("op"), r.get("args")) for r in sim.trace.of_kind("op")]


# -- the table ---------------------------------------------------------------------------------


def test_op_names_are_akaros_schedule_ops():
    """The required/optional split is uthread.h's: ten required ops, the sync ops and two others optional."""
    assert REQUIRED_OPS == (
        "sched_init", "sched_entry", "thread_runnable", "thread_paused", "thread_blockon_sysc",
        "thread_has_blocked", "thread_refl_fault", "thread_exited", "thread_create", "got_posix_signal",
    )  # fmt: skip
    assert OPTIONAL_OPS == (
        "sync_init", "sync_destroy", "sync_enqueue", "sync_get_next", "sync_get_uth", "sync_swap",
        "sync_is_empty", "preempt_pending", "thread_bulk_runnable",
    )  # fmt: skip


def test_validate_names_every_missing_required_op():
    """An empty table's error lists all ten required ops, in Akaros's order."""
    ops = SchedOps("empty")
    assert ops.missing() == list(REQUIRED_OPS)
    with pytest.raises(SchedOpsError) as info:
        ops.validate()
    assert str(info.value) == "sched_ops 'empty': missing required op(s) " + ", ".join(REQUIRED_OPS)


def test_validate_names_only_the_ops_still_missing():
    """With some ops given, the error names exactly the others."""
    ops = SchedOps("partial", sched_init=_op, sched_entry=_op, thread_create=_op, got_posix_signal=_op)
    with pytest.raises(SchedOpsError) as info:
        ops.validate()
    assert str(info.value) == (
        "sched_ops 'partial': missing required op(s) thread_runnable, thread_paused, thread_blockon_sysc, "
        "thread_has_blocked, thread_refl_fault, thread_exited"
    )


def test_validate_names_non_callable_ops():
    """An op set to something not callable is named, after the missing ones."""
    ops = SchedOps("bad", **{op: _op for op in REQUIRED_OPS})
    ops.thread_paused = "not a function"
    ops.sync_swap = 3
    with pytest.raises(SchedOpsError) as info:
        ops.validate()
    assert str(info.value) == (
        "sched_ops 'bad': missing required op(s) thread_paused; op(s) thread_paused, sync_swap not callable"
    )


def test_complete_table_validates():
    """A table with every required op validates; no optional op is needed."""
    SchedOps("full", **{op: _op for op in REQUIRED_OPS}).validate()


def test_unknown_op_names_are_rejected():
    """Op names outside Akaros's table are rejected at construction, sorted and named."""
    with pytest.raises(SchedOpsError) as info:
        SchedOps("typo", sched_entry=_op, thread_runable=_op, sched_exit=_op)
    assert str(info.value).startswith("typo: unknown sched_ops sched_exit, thread_runable (known: sched_init, ")


def test_ops_are_plain_attributes_and_no_others_can_be_added():
    """The table has a slot per op (readable, replaceable) and nothing else."""
    ops = SchedOps("t", sched_entry=_op)
    assert ops.sched_entry is _op
    ops.sched_entry = print
    assert ops.sched_entry is print
    with pytest.raises(AttributeError):
        ops.thread_runable = _op


def test_from_object_takes_the_methods_named_like_ops():
    """from_object copies callables named like ops; other attributes and methods are ignored."""

    class Mine:
        name = "mine"
        thread_paused = 5  # not callable: left out (so it is missing)

        def sched_init(self):
            pass

        def sync_enqueue(self, uth, sync):
            pass

        def helper(self):
            pass

    obj = Mine()
    ops = SchedOps.from_object(obj)
    assert ops.name == "mine"
    assert ops.sched_init == obj.sched_init
    assert ops.sync_enqueue == obj.sync_enqueue
    assert ops.missing() == [op for op in REQUIRED_OPS if op != "sched_init"]
    assert not hasattr(ops, "helper")


def test_from_object_name_falls_back_to_the_class_name():
    """Without a name attribute the table is named after the class; an explicit name wins."""

    class Nameless:
        def sched_init(self):
            pass

    assert SchedOps.from_object(Nameless()).name == "Nameless"
    assert SchedOps.from_object(Nameless(), name="given").name == "given"


def test_set_sched_builds_the_table_from_a_2ls_object():
    """Simulation.set_sched on a 2LS object returns a full table bound to its methods."""
    sched = PthreadSched()
    ops = Simulation().set_sched(sched)
    assert ops.name == "pthread"
    assert ops.missing() == []
    assert ops.thread_runnable == sched.thread_runnable
    assert ops.thread_bulk_runnable == sched.thread_bulk_runnable
    assert ops.sync_enqueue is default_ops()["sync_enqueue"]


def test_run_validates_the_table_before_starting():
    """run() with a table missing ops raises SchedOpsError and nothing is traced."""
    sim = Simulation()
    sim.set_sched(SchedOps("half", sched_init=_op, sched_entry=_op))
    sim.spawn_python("a", _op)
    with pytest.raises(SchedOpsError, match=r"missing required op\(s\) thread_runnable, "):
        sim.run()
    assert sim.trace.records == []


# -- optional ops' defaults --------------------------------------------------------------------


class _Sync:
    __slots__ = ("queue",)


def _uth(name: str) -> Uthread:
    return Uthread(UthreadEntry.python(name, _op))


def test_default_sync_ops_are_a_fifo_queue():
    """The default uth_sync_t: enqueue at the tail, get_next from the head, get_uth removes one, is_empty."""
    d = default_ops()
    a, b, c = (_uth(name) for name in "abc")
    s = _Sync()
    d["sync_init"](s)
    assert d["sync_is_empty"](s) is True
    for uth in (a, b, c):
        d["sync_enqueue"](uth, s)
    assert d["sync_is_empty"](s) is False
    assert d["sync_get_uth"](s, b) is True
    assert d["sync_get_uth"](s, b) is False
    assert [d["sync_get_next"](s), d["sync_get_next"](s), d["sync_get_next"](s)] == [a, c, None]
    d["sync_destroy"](s)


def test_default_sync_swap_and_destroy():
    """swap exchanges two queues; destroying a queue with waiters is an error naming how many."""
    d = default_ops()
    a, b = _uth("a"), _uth("b")
    s1, s2 = _Sync(), _Sync()
    d["sync_init"](s1)
    d["sync_init"](s2)
    d["sync_enqueue"](a, s1)
    d["sync_enqueue"](b, s1)
    d["sync_swap"](s2, s1)
    assert (list(s1.queue), list(s2.queue)) == ([], [a, b])
    with pytest.raises(SchedOpsError, match=r"sync_destroy: 2 uthread\(s\) still wait on it"):
        d["sync_destroy"](s2)


def test_absent_optional_ops_get_the_defaults():
    """A table without optional ops gets default_ops(): the FIFO sync ops, a no-op preempt_pending, no bulk op."""
    ops = SchedOps("t")
    defaults = default_ops()
    assert {op: getattr(ops, op) for op in OPTIONAL_OPS} == defaults
    assert ops.thread_bulk_runnable is None
    assert ops.preempt_pending() is None


def test_given_optional_ops_replace_the_defaults():
    """An optional op passed in is used instead of its default."""
    ops = SchedOps("t", sync_enqueue=_op, thread_bulk_runnable=_op)
    assert (ops.sync_enqueue, ops.thread_bulk_runnable, ops.sync_get_next) == (
        _op, _op, default_ops()["sync_get_next"],
    )  # fmt: skip
    assert set(ALL_OPS) == set(REQUIRED_OPS) | set(OPTIONAL_OPS)


# -- the runtime calls ops through the table ----------------------------------------------------


def test_op_order_of_a_simple_run():
    """create -> runnable for each thread, then sched_entry -> run, yield's ops, exit, and an idle yield."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(ScriptedSched())

    def a():
        parlib.uthread_sched_yield()

    sim.spawn_python("a", a)
    sim.spawn_python("b", _op)
    sim.run()
    assert [
        (r.kind, r.get("op") or r.uth, r.get("args"))
        for r in sim.trace.of_kind("op", "run", "uthread_exit", "vcore_offline")
    ] == [
        ("op", "sched_init", ()),
        ("op", "thread_create", ("a",)),
        ("op", "thread_runnable", ("a",)),
        ("op", "thread_create", ("b",)),
        ("op", "thread_runnable", ("b",)),
        ("op", "sched_entry", ()),
        ("run", "a", None),
        ("op", "thread_has_blocked", ("a", parlib.UTH_EXT_BLK_YIELD)),
        ("op", "thread_runnable", ("a",)),
        ("op", "sched_entry", ()),
        ("run", "b", None),
        ("uthread_exit", "b", None),
        ("op", "sched_entry", ()),
        ("run", "a", None),
        ("uthread_exit", "a", None),
        ("op", "sched_entry", ()),
        ("vcore_offline", "", None),
    ]


def test_the_2ls_decides_the_order():
    """The same threads under a LIFO fake 2LS run newest first: the runtime only follows the table."""
    order = []
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(ScriptedSched(lifo=True))
    for name in ("a", "b", "c"):
        sim.spawn_python(name, order.append, name)
    sim.run()
    assert order == ["c", "b", "a"]


def test_an_op_replaced_after_start_takes_effect():
    """A uthread wraps thread_runnable on the live table; later wakeups go through the wrapper."""
    sim = Simulation(vcores=1, seed=1)
    ops = sim.set_sched(PthreadSched())
    calls = []

    def a():
        parlib.uthread_sched_yield()  # not wrapped yet
        inner = ops.thread_runnable

        def logged(uth):
            calls.append(("thread_runnable", uth.name, parlib.in_vcore_context()))
            inner(uth)

        ops.thread_runnable = logged
        parlib.uthread_sched_yield()
        parlib.uthread_sched_yield()

    def b():
        parlib.uthread_sched_yield()
        parlib.uthread_sched_yield()

    sim.spawn_python("a", a)
    sim.spawn_python("b", b)
    sim.run()
    assert calls == [
        ("thread_runnable", "a", True),
        ("thread_runnable", "b", True),
        ("thread_runnable", "a", True),
    ]
    assert [args for op, args in op_records(sim) if op == "thread_runnable"] == [
        ("a",), ("b",), ("a",), ("b",), ("a",),
    ]  # fmt: skip


def test_an_op_removed_at_run_time_is_a_named_error():
    """Clearing a required op mid-run makes its next call (in vcore context) fail naming the 2LS and the op."""
    sim = Simulation(vcores=1, seed=1)
    ops = sim.set_sched(PthreadSched())

    def a():
        ops.thread_has_blocked = None
        parlib.uthread_sched_yield()

    sim.spawn_python("a", a)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.splitlines()[0] == (
        "ProcessError: sched_ops 'pthread': op thread_has_blocked is missing (at trace record #12)"
    )


def test_without_thread_bulk_runnable_broadcast_wakes_each_waiter_through_thread_runnable():
    """A 2LS with no thread_bulk_runnable: broadcast takes waiters oldest first and calls thread_runnable on each."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(ScriptedSched())
    log = []
    box = {}

    def waiter(name):
        with box["m"]:
            box["cv"].wait(box["m"])
            log.append(name)

    def main():
        box["m"], box["cv"] = parlib.Mutex(), parlib.CondVar()
        for name in ("w1", "w2", "w3"):
            parlib.uthread_create(waiter, name, name=name)
        parlib.uthread_sched_yield()
        box["cv"].broadcast()

    sim.spawn_python("main", main)
    sim.run()
    assert log == ["w1", "w2", "w3"]
    ops = op_records(sim)
    start = ops.index(("sync_swap", ("UthSync", "UthSync")))
    assert ops[start : start + 8] == [
        ("sync_swap", ("UthSync", "UthSync")),
        ("sync_get_next", ("UthSync",)),
        ("thread_runnable", ("w1",)),
        ("sync_get_next", ("UthSync",)),
        ("thread_runnable", ("w2",)),
        ("sync_get_next", ("UthSync",)),
        ("thread_runnable", ("w3",)),
        ("sync_get_next", ("UthSync",)),
    ]


# -- thread0: the default 2LS ---------------------------------------------------------------------------


def _thread0_sim() -> Simulation:
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(Thread0Sched())
    return sim


def test_thread0_blocking_syscall_yields_the_vcore_until_completion():
    """thread0 blocks in SYS_block: the vcore yields, the completion wakes the process, thread0 resumes, exit(0)."""
    sim = _thread0_sim()
    log = []

    def main():
        log.append(("calls", sim.now()))
        log.append(("returns", parlib.syscall(SYS_block, 4), sim.now()))

    sim.spawn_python("main", main)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 0)
    recs = sim.trace.of_kind(
        "op", "run", "syscall", "syscall_done", "event", "vcore_online", "vcore_offline", "uthread_exit",
        "uthread_cleanup", "process_exit",
    )  # fmt: skip
    assert [(r.kind, r.get("op") or r.uth) for r in recs] == [
        ("op", "sched_init"),
        ("op", "thread_create"),
        ("vcore_online", ""),
        ("op", "sched_entry"),
        ("run", "main"),
        ("syscall", "main"),
        ("op", "thread_blockon_sysc"),
        ("op", "sched_entry"),
        ("vcore_offline", ""),  # the process is WAITING
        ("syscall_done", ""),
        ("vcore_online", ""),  # EVENT_WAKEUP
        ("event", ""),  # EV_SYSCALL, handled at vcore entry: is_blocked cleared
        ("op", "sched_entry"),
        ("run", "main"),
        ("uthread_exit", "main"),
        ("op", "thread_exited"),
        ("uthread_cleanup", "main"),
        ("process_exit", "main"),
    ]
    (call,) = sim.trace.of_kind("syscall")
    (done,) = sim.trace.of_kind("syscall_done")
    assert done.t == call.t + 4000
    assert log == [("calls", log[0][1]), ("returns", 0, log[1][2])]
    assert log[1][2] > done.t


def test_thread0_refuses_a_second_thread_at_setup():
    """Two threads spawned under thread0: thread_create raises Thread0Error naming both; the process ends with it."""
    sim = _thread0_sim()
    sim.spawn_python("one", _op)
    sim.spawn_python("two", _op)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report == ("Thread0Error in sched_ops.thread_create of 2LS 'thread0': "
                          "thread0 2LS asked to create more threads ('two' after 'one') (at trace record #6)")


def test_thread0_refuses_a_second_thread_at_run_time():
    """uthread_create from thread0 raises in the op: the process exits -1 with a report naming the op."""
    sim = _thread0_sim()
    sim.spawn_python("main", lambda: parlib.uthread_create(_op, name="extra"))
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report.splitlines()[0] == (
        "Thread0Error in sched_ops.thread_create of 2LS 'thread0': "
        "thread0 2LS asked to create more threads ('extra' after 'main') (at trace record #11)"
    )


@pytest.mark.parametrize(
    "src,trap",
    [("entry:\n nop\n ud2\n", "trap 6 (#UD)"), ("entry:\n xor ecx, ecx\n div rcx\n", "trap 0 (#DE)")],
    ids=["ud2", "divide"],
)
def test_thread0_has_no_signals_every_fault_is_fatal(src, trap):
    """Under thread0 a #UD or even a #DE is "Thread has unhandled fault": exit(-1), no signal prepared."""
    sim = _thread0_sim()
    prog = assemble(src)
    sim.load(prog)
    sim.spawn_guest("t0", prog.symbol("entry"))
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report.splitlines()[0] == f"Thread has unhandled fault: uthread 't0' {trap} err 0x0 aux 0x0"
    assert sim.trace.of_kind("signal_prep") == []


def test_thread0_vmr_backed_fault_populates_and_reexecutes():
    """Under thread0 a VMR-backed #PF blocks on SYS_populate_va and the store is re-executed."""
    sim = _thread0_sim()
    prog = assemble("entry:\n mov ebx, 0x50000000\n mov qword ptr [rbx], 7\n mov rax, [rbx]\n ret\n")
    sim.load(prog)
    sim.mem.map(0x5000_0000, 0x1000, Prot.READ | Prot.WRITE, "lazy", backed=False)
    sim.spawn_guest("t0", prog.symbol("entry"))
    res = sim.run()
    assert (res.end, res.exit_status, sim.mem.read_u64(0x5000_0000)) == (RunEnd.PROCESS_EXITED, 0, 7)
    assert [r.get("name") for r in sim.trace.of_kind("syscall")] == ["populate_va"]
    assert len(sim.trace.of_kind("fault")) == 1
