"""Akaros's thread0 2LS (user/parlib/thread0_sched.c): one uthread, no others.

The default 2LS of a process that never asked for one: it runs thread0 and
nothing else, on vcore 0.  A blocking syscall makes the vcore yield until the
completion event; a VMR-backed page fault blocks on SYS_populate_va; every
other fault prints "Thread has unhandled fault" and the process exits(-1).
An idle vcore 0 calls sys_yield(FALSE) (vcore_yield(False)); the sync ops are
thread0's own (the only waiter there can be is thread0, while it is blocked), so,
as in Akaros, a CV wait gets its own mutex handed back by the wait's unlock and
its re-lock then blocks for good: thread0 programs do not wait on CVs.
Creating a second thread is an error, as in Akaros (a panic there).
"""

from __future__ import annotations

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.kernel import SYS_populate_va
from akaros_sim.parlib import (
    block_uthread_on_async_sysc,
    current_uthread,
    exit,
    fault_report,
    get_eventq,
    handle_events,
    register_evq,
    run_current_uthread,
    run_uthread,
    syscall_async,
    trigger_posix_signal,
    uthread_2ls_init,
    uthread_cleanup,
    uthread_init,
    uthread_prep_pending_signals,
    vcore_yield,
)
from akaros_sim.uthread import JoinState, Uthread


class Thread0Error(RuntimeError):
    """What Akaros's thread0 2LS would panic on."""


class Thread0Sched:
    """The single-thread 2LS.  Its methods are the sched_ops."""

    name = "thread0"

    def __init__(self, **params) -> None:
        if params:
            raise ValueError(f"thread0 2LS: unknown parameter(s) {', '.join(sorted(params))} (it takes none)")
        self.thread0: Uthread | None = None
        self.is_blocked = False
        self.sysc_evq = None

    def sched_init(self) -> None:
        self.sysc_evq = get_eventq(0)
        uthread_2ls_init(self._handle_syscall)

    def _handle_syscall(self, sysc) -> None:
        self.is_blocked = False

    def sched_entry(self) -> None:
        cur = current_uthread()
        if cur is not None:
            uthread_prep_pending_signals(cur)  # thread0_sched_entry
            run_current_uthread()
        while True:
            if not self.is_blocked and self.thread0 is not None:
                uthread_prep_pending_signals(self.thread0)
                run_uthread(self.thread0)
            vcore_yield(False)
            handle_events()

    def thread_runnable(self, uth: Uthread) -> None:
        self.is_blocked = False

    thread_paused = thread_runnable

    def thread_has_blocked(self, uth: Uthread, flags: int) -> None:
        self.is_blocked = True

    def thread_blockon_sysc(self, uth: Uthread, sysc) -> None:
        self.thread_has_blocked(uth, 0)
        if not register_evq(sysc, self.sysc_evq):
            self.thread_runnable(uth)

    def thread_refl_fault(self, uth: Uthread, ctx) -> None:
        if ctx.trap_nr == TrapNr.PF and ctx.err & PfErr.VMR_BACKED:
            sysc = syscall_async(SYS_populate_va, ctx.aux, 1)
            block_uthread_on_async_sysc(uth, sysc)
            return
        exit(-1, fault_report(uth, "Thread has unhandled fault"))

    def thread_exited(self, uth: Uthread) -> None:
        uthread_cleanup(uth)
        exit(0)

    def thread_create(self, entry) -> Uthread:
        if self.thread0 is not None:
            raise Thread0Error(f"thread0 2LS asked to create more threads ({entry.name!r} after {self.thread0.name!r})")
        uth = Uthread(entry)
        uth.join_state = JoinState.DETACHED  # thread0 is detached: its exit ends the process
        uthread_init(uth)
        self.thread0 = uth
        return uth

    # thread0's own sync ops (thread0_sched.c): there is one thread, so a sync object holds nothing;
    # "the waiter" is thread0 whenever it is blocked (is_blocked is cleared by thread_runnable only)

    def sync_enqueue(self, uth: Uthread, sync) -> None:
        pass

    def sync_get_next(self, sync) -> Uthread | None:
        return self.thread0 if self.is_blocked else None

    def sync_get_uth(self, sync, uth: Uthread) -> bool:
        if uth is not self.thread0:
            raise Thread0Error(f"thread0 2LS: sync_get_uth for {uth.name!r}, not thread0")  # its assert
        return self.is_blocked

    def sync_swap(self, a, b) -> None:
        pass

    def sync_is_empty(self, sync) -> bool:
        return not self.is_blocked

    def got_posix_signal(self, signo: int, info) -> None:
        trigger_posix_signal(signo, current_uthread() or self.thread0)  # thread0_got_posix_signal
