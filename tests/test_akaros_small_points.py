"""Issue 11, item 10: smaller points where the model follows Akaros's source."""

from __future__ import annotations

from akaros_sim import parlib
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched


class _YieldWithWarning(PthreadSched):
    """pthread, whose vcore 1, when it first enters, has a preemption warning and yields (not nicely)."""

    def __init__(self, sim) -> None:
        super().__init__()
        self.sim, self.log, self.tried = sim, [], False

    def sched_entry(self) -> None:
        vc = self.sim.engine.current
        if vc.id == 1 and not self.tried:
            self.tried = True
            kernel = self.sim.kernel
            kernel.request_total(4)  # one more than online: not granted yet
            kernel.preempt(1, warning_ns=1_000_000)
            self.log.append(("before", kernel.amt_wanted, kernel.num_vcores(), bool(vc.preempt_pending)))
            parlib.vcore_yield(False)
            self.log.append(("refused",))
        super().sched_entry()


def test_sys_yield_with_a_preemption_pending_yields_even_when_all_vcores_are_wanted():
    """proc_yield (kern/src/process.c): `if (vc->preempt_pending) vc->preempt_pending = 0; else if
    (amt_wanted >= num_vcores) goto out_failed;`: a pending preemption lets sys_yield(FALSE) through."""
    sim = Simulation(4, seed=1)
    sched = _YieldWithWarning(sim)
    sim.set_sched(sched)
    for name in ("a", "b"):
        sim.spawn_python(name, parlib.compute, 200_000)
    assert sim.run().end is RunEnd.ALL_EXITED
    _, wanted, online, pending = sched.log[0]
    assert pending and wanted - 1 >= online  # vcore_yield takes one off amt_wanted: still >= num_vcores
    assert ("refused",) not in sched.log
    (off,) = [r for r in sim.trace.of_kind("vcore_offline") if r.vc == 1][:1]
    assert (off.get("nice"), off.get("amt_wanted")) == (False, wanted - 1)
    assert not any(r.vc == 1 for r in sim.trace.of_kind("preempt"))  # the warning's deadline finds it gone


class _LifoSyncPthread(PthreadSched):
    """pthread with its own sync_get_next: the most recent waiter first."""

    def __init__(self) -> None:
        super().__init__()
        self.get_next_calls = 0

    def sync_get_next(self, sync):
        self.get_next_calls += 1
        return sync.queue.pop() if sync.queue else None


def test_thread_bulk_runnable_takes_the_wakees_through_the_sync_ops():
    """pth_thread_bulk_runnable (user/pthread/pthread.c) loops on __uth_sync_get_next (uthread.c), i.e. the
    2LS's sync_get_next op: the wakees reach the ready queue in the order that op gives them."""
    sim = Simulation(1, seed=1)
    sched = _LifoSyncPthread()
    sim.set_sched(sched)
    box, order = {}, []

    def waiter(name):
        with box["m"]:
            box["cv"].wait(box["m"])
            order.append(name)

    def main():
        box["m"], box["cv"] = parlib.Mutex("m"), parlib.CondVar("cv")
        for _ in range(3):
            parlib.uthread_sched_yield()  # every waiter waits
        with box["m"]:
            box["cv"].broadcast()

    sim.spawn_python("main", main)
    for name in ("w1", "w2", "w3"):
        sim.spawn_python(name, waiter, name)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert [r.uth for r in sim.trace.of_kind("cv_wait")] == ["w1", "w2", "w3"]
    assert order == ["w3", "w2", "w1"]
    bulk = [r for r in sim.trace.of_kind("op") if r.get("op") == "thread_bulk_runnable"]
    assert len(bulk) == 1


def test_thread0_has_its_own_sync_ops():
    """thread0_sched.c's sync ops: nothing is queued; "the waiter" is thread0 whenever it is blocked.  So, as
    in Akaros, a CV wait under thread0 is handed its own mutex back by the wait's yield callback (the unlock's
    __uth_sync_get_next returns thread0, blocked), returns at once, and its re-lock then blocks for good."""
    from schedops.thread0 import Thread0Sched

    sim = Simulation(1, seed=1)
    sched = Thread0Sched()
    sim.set_sched(sched)
    seen = []

    def main():
        m, cv = parlib.Mutex("m"), parlib.CondVar("cv")
        with m:  # uncontended: no waiter (thread0 runs, so it is not blocked)
            seen.append((sched.sync_is_empty(m.sync), sched.sync_get_next(m.sync)))
        with m:
            cv.wait(m)
        seen.append("never")

    sim.spawn_python("main", main)
    res = sim.run()
    assert res.end is RunEnd.IDLE and res.exit_status is None
    assert seen == [(True, None)]
    kinds = [(r.kind, r.get("op") or r.get("to")) for r in sim.trace if r.kind in ("op", "mutex_handoff", "cv_wait")]
    i = kinds.index(("cv_wait", None))
    assert kinds[i:i + 6] == [
        ("cv_wait", None), ("op", "thread_has_blocked"), ("op", "sync_enqueue"), ("op", "sync_get_next"),
        ("mutex_handoff", "main"), ("op", "thread_runnable"),
    ]  # fmt: skip
    assert sched.is_blocked and sched.sync_get_next(None) is sched.thread0
    assert sched.sync_get_uth(None, sched.thread0) is True


def test_grants_take_the_most_recently_inactive_vcore_first():
    """__proc_give_cores_* take the head of inactive_vcs (kern/src/process.c): it starts in id order (proc
    init's TAILQ_INSERT_TAIL) and proc_yield / a preemption put a vcore at its head (TAILQ_INSERT_HEAD);
    a vcore with mail waiting still comes first."""
    from akaros_sim.engine import VcoreState

    sim = Simulation(4, seed=1)
    sim.set_sched(PthreadSched())
    kernel, vcores = sim.kernel, sim.engine.vcores
    assert [vc.id for vc in kernel._free_vcores()] == [0, 1, 2, 3]  # never online: id order
    for i in (0, 1, 2, 3):
        kernel.set_vcore_state(vcores[i], VcoreState.ONLINE)
    for i in (2, 0, 3):  # yields, in this order
        kernel.set_vcore_state(vcores[i], VcoreState.OFFLINE)
    assert [vc.id for vc in kernel._free_vcores()] == [3, 0, 2]
    kernel.set_vcore_state(vcores[1], VcoreState.PREEMPTED)
    vcores[1].unavailable_until = 0
    assert [vc.id for vc in kernel._free_vcores()] == [1, 3, 0, 2]
    vcores[2].mailbox.append("mail")
    assert [vc.id for vc in kernel._free_vcores()] == [2, 1, 3, 0]


def test_a_broadcast_with_no_waiter_wakes_nobody_and_asks_for_no_vcore():
    """uth_cond_var_broadcast -> __uth_cond_var_wake_all (user/parlib/mutex.c): an empty sync is not swapped
    and thread_bulk_runnable (which would vcore_request_more) is not called."""
    sim = Simulation(2, seed=1)
    sim.set_sched(PthreadSched())

    def main():
        m, cv = parlib.Mutex("m"), parlib.CondVar("cv")
        with m:
            cv.broadcast()

    sim.spawn_python("main", main)
    assert sim.run().end is RunEnd.ALL_EXITED
    ops = [r.get("op") for r in sim.trace.of_kind("op")]
    assert "sync_is_empty" in ops
    assert "sync_swap" not in ops and "thread_bulk_runnable" not in ops
