"""A zoo of buggy 2LSes: each bug ends the process with a report that names what went wrong and where.

Every 2LS here is Fifo2LS (tests/scripted_2ls.py) with one bug.  Whatever the
bug, `run()` returns: the process ends (PROCESS_EXITED, status -1) with a
report naming the op at fault and the 2LS, and for a broken contract (a lost
uthread, a wrong return type) the uthread and the trace record too.  An
exception from an op is reported the same way whatever called the op
(start-up, vcore context, a uthread's parlib call) and whatever its type.
"""

from __future__ import annotations

import re

import pytest

from akaros_sim import Simulation, parlib
from akaros_sim.asm import assemble
from akaros_sim.simulation import RunEnd
from scripted_2ls import Fifo2LS, spin_sim

DIV = assemble("f:\n xor ecx, ecx\n div ecx\n ret\n", name="div")  # #DE at its second instruction


class ZooBug(Exception):
    """An exception type no runtime code knows of."""


def _died(result) -> str:
    """The report of a run that must have ended its process with status -1."""
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1), (result.end, result.report)
    assert result.report, "a death says why"
    return result.report


def _assert_names(report: str, *needles: str) -> None:
    missing = [needle for needle in needles if needle not in report]
    assert not missing, f"the report does not name {missing}:\n{report}"


def _cited(report: str, label: str) -> int:
    """The trace record index the report cites after `label` (e.g. "since trace record #")."""
    found = re.search(re.escape(label) + r"(\d+)", report)
    assert found, f"the report cites no {label!r}:\n{report}"
    return int(found.group(1))


def _index(sim: Simulation, kind: str, uth: str, **details) -> int:
    """The index of the last trace record of `kind` for `uth` whose details include `details`."""
    found = [i for i, rec in enumerate(sim.trace)
             if rec.kind == kind and uth in (rec.uth, *dict(rec.details).get("args", ()))
             and details.items() <= dict(rec.details).items()]  # fmt: skip
    assert found, f"no {kind} record for {uth!r} with {details}"
    return found[-1]


def _noop() -> None:
    return None


# -- an exception in each kind of op ----------------------------------------------------------------


class _RaisesIn(Fifo2LS):
    """Fifo2LS whose op `op` raises once armed (armed at start, or by a uthread just before it calls the op)."""

    def __init__(self, op: str, exc: BaseException) -> None:
        super().__init__()
        self.name = f"raises-in-{op}"
        self.armed = False
        fine = getattr(self, op)

        def buggy(*args):
            if self.armed:
                raise exc
            return fine(*args)

        setattr(self, op, buggy)  # SchedOps.from_object reads the instance's attribute

    # optional ops, given here so that they can be made to raise (parlib's defaults otherwise)
    def sync_enqueue(self, uth, sync) -> None:
        sync.queue.append(uth)

    def sync_get_next(self, sync):
        return sync.queue.popleft() if sync.queue else None

    def thread_bulk_runnable(self, sync) -> None:
        while sync.queue:
            self.thread_runnable(sync.queue.popleft())


def _armed_at_start(zoo, sim) -> None:
    zoo.armed = True
    sim.spawn_python("main", _noop)


def _armed_then(action):
    """A workload: uthread 'main' arms the bug, then calls action() (which reaches the op)."""

    def setup(zoo, sim) -> None:
        def main():
            zoo.armed = True
            action()

        sim.spawn_python("main", main)

    return setup


def _refl_fault(zoo, sim) -> None:
    zoo.armed = True
    sim.load(DIV)
    sim.spawn_guest("div", DIV.symbol("f"))


def _paused(zoo, sim) -> None:
    """'main' computes on vcore 0, which is preempted: vcore 1 recovers it through thread_paused."""
    _armed_then(lambda: parlib.compute(10_000))(zoo, sim)
    sim.preempt_at(2000, 0, duration_ns=1000)


def _exited_by_join(zoo, sim) -> None:
    def main():
        kid = parlib.uthread_create(_noop, name="kid")
        zoo.armed = True
        parlib.uthread_join(kid)

    sim.spawn_python("main", main)


def _exited_detached(zoo, sim) -> None:
    def main():
        zoo.armed = True
        parlib.uthread_create(_noop, name="kid", detached=True)
        parlib.uthread_sched_yield()

    sim.spawn_python("main", main)


def _mutex(arm_holder: bool):
    """'holder' locks m and yields; 'main' blocks on m (sync_enqueue); holder unlocks (sync_get_next)."""

    def setup(zoo, sim) -> None:
        box = {}

        def holder():
            box["m"] = m = parlib.Mutex("m")
            m.lock()
            parlib.uthread_sched_yield()
            if arm_holder:
                zoo.armed = True
            m.unlock()

        def main():
            if not arm_holder:
                zoo.armed = True
            with box["m"]:
                pass

        sim.spawn_python("holder", holder)
        sim.spawn_python("main", main)

    return setup


def _broadcast(zoo, sim) -> None:
    box = {}

    def waiter():
        box["m"], box["cv"] = m, cv = parlib.Mutex("m"), parlib.CondVar("cv")
        with m:
            cv.wait(m)

    def waker():
        zoo.armed = True
        with box["m"]:
            box["cv"].broadcast()

    sim.spawn_python("waiter", waiter)
    sim.spawn_python("waker", waker)


RAISES = [
    pytest.param("sched_init", ZooBug, _armed_at_start, id="sched_init"),
    pytest.param("sched_entry", IndexError, _armed_at_start, id="sched_entry"),
    pytest.param("thread_create", KeyError, _armed_at_start, id="thread_create-at-start"),
    pytest.param("thread_create", ZooBug, _armed_then(lambda: parlib.uthread_create(_noop, name="kid")),
                 id="thread_create-from-a-uthread"),
    pytest.param("thread_runnable", ZeroDivisionError, _armed_then(parlib.uthread_sched_yield), id="thread_runnable"),
    pytest.param("thread_paused", AttributeError, _paused, id="thread_paused"),
    pytest.param("thread_blockon_sysc", AssertionError, _armed_then(lambda: parlib.uthread_sleep(100)),
                 id="thread_blockon_sysc"),
    pytest.param("thread_has_blocked", TypeError, _armed_then(parlib.uthread_sched_yield), id="thread_has_blocked"),
    pytest.param("thread_refl_fault", ValueError, _refl_fault, id="thread_refl_fault"),
    pytest.param("thread_exited", RuntimeError, _exited_by_join, id="thread_exited-by-a-join"),
    pytest.param("thread_exited", RuntimeError, _exited_detached, id="thread_exited-detached"),
    pytest.param("sync_enqueue", LookupError, _mutex(arm_holder=False), id="sync_enqueue"),
    pytest.param("sync_get_next", ZooBug, _mutex(arm_holder=True), id="sync_get_next"),
    pytest.param("thread_bulk_runnable", OverflowError, _broadcast, id="thread_bulk_runnable"),
]  # fmt: skip


@pytest.mark.parametrize(("op", "exc_type", "setup"), RAISES)
def test_an_exception_in_any_op_ends_the_process_with_a_report_naming_the_op(op, exc_type, setup):
    """An op that raises (any type, from any caller) ends the process: "<Type> in sched_ops.<op> of 2LS '<name>': <msg>"."""
    exc = exc_type(f"zoo bug in {op}")
    zoo = _RaisesIn(op, exc)
    sim = Simulation(2 if op == "thread_paused" else 1)
    sim.set_sched(zoo)
    setup(zoo, sim)
    report = _died(sim.run())
    assert report.startswith(f"{exc_type.__name__} in sched_ops.{op} of 2LS 'raises-in-{op}': {exc}"), report


# -- lost uthreads ------------------------------------------------------------------------------------


class _DropsRequeued(Fifo2LS):
    """Queues a uthread the first time it is made runnable (its creation) and drops it every time after."""

    name = "drops-requeued"

    def thread_runnable(self, uth) -> None:
        if getattr(uth, "queued_once", False):
            return
        uth.queued_once = True
        super().thread_runnable(uth)


def test_a_uthread_dropped_by_thread_runnable_is_reported_lost_where_it_was_handed_over():
    """thread_runnable drops a yielder: a lost-uthread report naming it, thread_runnable and the hand-over record."""
    sim = Simulation(1)
    sim.set_sched(_DropsRequeued())
    sim.spawn_python("yielder", parlib.uthread_sched_yield)
    report = _died(sim.run())
    assert report.startswith("2LS contract: 2LS 'drops-requeued' lost uthread 'yielder'"), report
    handed = _index(sim, "op", "yielder", op="thread_runnable")
    since = _cited(report, "since trace record #")
    assert since in (handed, handed + 1), (
        f"the report cites record #{since}, not the thread_runnable that handed 'yielder' to the 2LS "
        f"(record #{handed}):\n{report}"
    )
    _assert_names(report, "thread_runnable")


class _NeverRuns(Fifo2LS):
    """sched_entry only handles events and yields the vcore: nothing is ever run."""

    name = "never-runs"

    def sched_entry(self) -> None:
        while True:
            parlib.handle_events()
            parlib.vcore_yield(False)


def test_a_2ls_that_never_runs_anything_is_reported_losing_the_uthread_it_created():
    """sched_entry that only yields: a lost-uthread report naming the uthread, thread_create and its record."""
    sim = spin_sim(_NeverRuns(), 2, main=(10, 1))
    report = _died(sim.run())
    assert report.startswith("2LS contract: 2LS 'never-runs' lost uthread 'main'"), report
    op, created = _index(sim, "op", "main", op="thread_create"), _index(sim, "uthread_create", "main")
    since = _cited(report, "since trace record #")
    assert op <= since <= created + 1, (
        f"the report cites record #{since}, not the creation of 'main' (records #{op}-#{created}):\n{report}"
    )
    _assert_names(report, "thread_create")


# -- running a uthread twice ---------------------------------------------------------------------------


class _DoubleEnqueue(Fifo2LS):
    """Appends every runnable uthread to its queue twice."""

    name = "double-enqueue"

    def thread_runnable(self, uth) -> None:
        self.ready.append(uth)
        super().thread_runnable(uth)


def test_a_uthread_enqueued_twice_is_refused_its_second_run():
    """Queued twice, a uthread that has exited is popped again: run_uthread refuses it, in sched_entry."""
    sim = Simulation(1)
    sim.set_sched(_DoubleEnqueue())
    sim.spawn_python("a", parlib.compute, 1000)
    sim.spawn_python("b", parlib.compute, 1000)
    report = _died(sim.run())
    assert report.startswith(
        "ParlibError in sched_ops.sched_entry of 2LS 'double-enqueue': run_uthread('a'): expected NOT_RUNNING, "
        "it is EXITED"
    ), report


def test_a_uthread_enqueued_twice_is_not_run_on_two_vcores_at_once():
    """Queued twice on 2 vcores, a running uthread is popped by the other vcore: run_uthread refuses it."""
    sim = spin_sim(_DoubleEnqueue(), 2, a=(1000, 1))
    report = _died(sim.run())
    assert report.startswith(
        "ParlibError in sched_ops.sched_entry of 2LS 'double-enqueue': run_uthread('a'): expected NOT_RUNNING, "
        "it is RUNNING"
    ), report


# -- wrong return types ---------------------------------------------------------------------------------


class _CreateReturnsNone(Fifo2LS):
    """thread_create makes and queues the uthread but returns nothing (uthreads named in `bad`)."""

    name = "create-returns-none"

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    def thread_create(self, entry):
        uth = super().thread_create(entry)
        return None if entry.name == self.bad else uth


@pytest.mark.parametrize("creator", ["start-up", "a uthread"])
def test_thread_create_returning_none_is_a_contract_violation_reported_the_same_from_any_caller(creator):
    """thread_create returning None: a report naming the op, the 2LS, the uthread, None and the trace record."""
    sim = Simulation(1)
    if creator == "start-up":
        sim.set_sched(_CreateReturnsNone("main"))
        sim.spawn_python("main", _noop)
        bad = "main"
    else:
        sim.set_sched(_CreateReturnsNone("kid"))
        sim.spawn_python("main", lambda: parlib.uthread_create(_noop, name="kid"))
        bad = "kid"
    report = _died(sim.run())
    _assert_names(report, "thread_create", "'create-returns-none'", f"'{bad}'", "None", "trace record #")


class _SaysHandled(Fifo2LS):
    """thread_refl_fault skips the faulting `div ecx`, requeues the uthread and returns "handled"."""

    name = "says-handled"

    def thread_refl_fault(self, uth, ctx):
        ctx.rip += 2
        self.thread_runnable(uth)
        return "handled"


def test_thread_refl_fault_returning_a_string_is_a_contract_violation():
    """thread_refl_fault returning "handled": a 2LS contract report naming the op, the uthread and the record."""
    sim = Simulation(1)
    sim.load(DIV)
    sim.set_sched(_SaysHandled())
    sim.spawn_guest("div", DIV.symbol("f"))
    report = _died(sim.run())
    assert report.startswith(
        "2LS contract: 2LS 'says-handled': thread_refl_fault('div') returned 'handled'; "
        "expected nothing (the 2LS decided) or a FaultStatus (at trace record #"
    ), report


# -- the wrong context ------------------------------------------------------------------------------------


class _StartsAtOnce(Fifo2LS):
    """thread_create runs a uthread's new uthread at once, with run_uthread: from uthread context."""

    name = "starts-at-once"

    def thread_create(self, entry):
        uth = super().thread_create(entry)
        if parlib.current_uthread() is not None:  # created by a uthread (not at start-up)
            self.ready.remove(uth)
            parlib.run_uthread(uth)
        return uth


def test_a_vcore_context_call_from_an_op_run_in_uthread_context_is_a_parlib_error_naming_both():
    """run_uthread called by thread_create on behalf of a uthread: a ParlibError report naming run_uthread and the op."""
    sim = Simulation(1)
    sim.set_sched(_StartsAtOnce())
    sim.spawn_python("main", lambda: parlib.uthread_create(_noop, name="kid"))
    report = _died(sim.run())
    assert report.startswith(
        "ParlibError in sched_ops.thread_create of 2LS 'starts-at-once': run_uthread: must be called from vcore context"
    ), report
