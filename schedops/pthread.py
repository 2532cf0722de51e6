"""Akaros's pthread 2LS (user/pthread/pthread.c), built on the public akaros_sim API.

A global FIFO ready queue and an active queue; every enqueue asks for
`threads_ready` more vcores; new, woken, yielding, paused and preempted
threads all go to the ready tail; an idle vcore yields.  Its refl-fault
policy is Akaros's:

* #DE -> SIGFPE (FPE_INTDIV)
* #GP -> SIGSEGV (SEGV_ACCERR), except Go's trick: rax>>48 == 0xDEAD fills the
  function table at rax & 0xFFFFFFFFFFFF and skips the 2-byte call
* #PF with PF_VMR_BACKED -> an async SYS_populate_va, the thread blocks on it and
  resumes at the faulting instruction
* other #PF -> SIGSEGV (SEGV_MAPERR, si_addr = the address)
* anything else -> "Pthread has unhandled fault", the process exits(-1)

Difference kept on purpose: Akaros calls __pthread_generic_yield twice on the
populate path (refl fault, then blockon_sysc); here the second call finds the
thread already off the active queue and does nothing.
"""

from __future__ import annotations

import enum
import struct
from collections import deque

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.kernel import SYS_populate_va
from akaros_sim.parlib import (
    FPE_INTDIV,
    SEGV_ACCERR,
    SEGV_MAPERR,
    SIGFPE,
    SIGSEGV,
    UTH_EXT_BLK_MUTEX,
    UTH_EXT_BLK_YIELD,
    assert_failed,
    block_uthread_on_async_sysc,
    check_preempt_pending,
    current_uthread,
    exit,
    fault_report,
    get_eventq,
    guest_read,
    guest_write,
    handle_events,
    max_vcores,
    register_evq,
    run_current_uthread,
    run_uthread,
    syscall_async,
    trace,
    trigger_posix_signal,
    uth_sync_get_next,
    uthread_2ls_init,
    uthread_cleanup,
    uthread_init,
    uthread_prep_pending_signals,
    uthread_prep_signal_from_fault,
    vcore_id,
    vcore_request_more,
    vcore_yield,
)
from akaros_sim.uthread import Uthread

GO_TABLE_MAGIC = 0xDEAD
GO_TABLE_SENTINEL = 0xDEADBEEF
GO_TABLE_ENTRIES = 7
# Where the Go table's function pointers point: the runtime has no such
# functions, so each entry is a distinct recognisable non-canonical address.
GO_TABLE_FUNC_BASE = 0x60D0_0000_0000_0000


class PthState(enum.IntEnum):
    """pthread.h's PTH_* states."""

    CREATED = 1
    RUNNABLE = 2
    RUNNING = 3
    EXITING = 4
    BLK_YIELDING = 5
    BLK_SYSC = 6
    BLK_MUTEX = 7
    BLK_PAUSED = 8
    BLK_MISC = 9


_BLOCKED = frozenset(
    {PthState.CREATED, PthState.BLK_YIELDING, PthState.BLK_SYSC, PthState.BLK_MUTEX, PthState.BLK_PAUSED,
     PthState.BLK_MISC}
)  # fmt: skip


class PthreadTcb(Uthread):
    """pthread_tcb: a uthread plus the 2LS's own fields."""

    __slots__ = ("pth_state", "pth_id")

    def __init__(self, entry, pth_id: int) -> None:
        super().__init__(entry)
        self.pth_state = PthState.CREATED
        self.pth_id = pth_id


class PthreadError(RuntimeError):
    """A broken pthread invariant (Akaros would panic)."""


class PthreadSched:
    """The pthread 2LS.  Its methods are the sched_ops."""

    name = "pthread"

    def __init__(self, **params) -> None:
        if params:
            raise ValueError(f"pthread 2LS: unknown parameter(s) {', '.join(sorted(params))} (it takes none)")
        self.ready_queue: deque[PthreadTcb] = deque()
        self.active_queue: dict[PthreadTcb, None] = {}  # insertion-ordered set
        self.threads_ready = 0
        self.threads_active = 0
        self.threads_total = 0
        self._next_id = 1
        self.sysc_evqs = []

    # -- helpers --------------------------------------------------------------------

    def _generic_yield(self, pth: PthreadTcb) -> None:
        """__pthread_generic_yield: take a thread that leaves its core off the active queue."""
        if pth in self.active_queue:
            del self.active_queue[pth]
            self.threads_active -= 1

    # -- sched_ops ------------------------------------------------------------------------

    def sched_init(self) -> None:
        self.sysc_evqs = [get_eventq(i) for i in range(max_vcores())]
        uthread_2ls_init(self._handle_sysc)

    def sched_entry(self) -> None:
        cur = current_uthread()
        if cur is not None:
            uthread_prep_pending_signals(cur)  # pth_sched_entry: pthread_kill'd signals run when it is run
            run_current_uthread()
        while True:
            handle_events()
            check_preempt_pending()
            if self.ready_queue:
                new = self.ready_queue.popleft()
                self.threads_ready -= 1
                new.pth_state = PthState.RUNNING
                self.active_queue[new] = None
                self.threads_active += 1
                break
            vcore_yield(False)
        uthread_prep_pending_signals(new)
        run_uthread(new)

    def thread_runnable(self, uth: PthreadTcb) -> None:
        if uth.pth_state not in _BLOCKED:
            raise PthreadError(f"pthread {uth.name!r}: made runnable from state {uth.pth_state.name}")
        uth.pth_state = PthState.RUNNABLE
        self.ready_queue.append(uth)
        self.threads_ready += 1
        vcore_request_more(self.threads_ready)

    def thread_paused(self, uth: PthreadTcb) -> None:
        self._generic_yield(uth)
        uth.pth_state = PthState.BLK_PAUSED
        self.thread_runnable(uth)

    def thread_blockon_sysc(self, uth: PthreadTcb, sysc) -> None:
        self._generic_yield(uth)
        uth.pth_state = PthState.BLK_SYSC
        if not register_evq(sysc, self.sysc_evqs[vcore_id()]):
            self._restart_thread(sysc)

    def thread_has_blocked(self, uth: PthreadTcb, flags: int) -> None:
        self._generic_yield(uth)
        if flags == UTH_EXT_BLK_YIELD:
            uth.pth_state = PthState.BLK_YIELDING
        elif flags == UTH_EXT_BLK_MUTEX:
            uth.pth_state = PthState.BLK_MUTEX
        else:
            uth.pth_state = PthState.BLK_MISC

    def thread_refl_fault(self, uth: PthreadTcb, ctx) -> None:
        self._generic_yield(uth)
        uth.pth_state = PthState.BLK_SYSC
        trap, err, aux = ctx.trap_nr, ctx.err, ctx.aux
        if trap == TrapNr.DE:
            self._signal_and_restart(uth, SIGFPE, FPE_INTDIV, aux)
        elif trap == TrapNr.GP:
            self._handle_gp_fault(uth, ctx)
        elif trap == TrapNr.PF:
            if not err & PfErr.VMR_BACKED:
                self._signal_and_restart(uth, SIGSEGV, SEGV_MAPERR, aux)
            else:
                sysc = syscall_async(SYS_populate_va, aux, 1)
                block_uthread_on_async_sysc(uth, sysc)
        else:
            exit(-1, fault_report(uth, "Pthread has unhandled fault"))

    def thread_exited(self, uth: PthreadTcb) -> None:
        self._generic_yield(uth)
        uth.pth_state = PthState.EXITING
        uthread_cleanup(uth)
        self.threads_total -= 1
        if self.threads_total == 0:
            exit(0)

    def thread_create(self, entry) -> PthreadTcb:
        pth = PthreadTcb(entry, self._next_id)
        self._next_id += 1
        uthread_init(pth)
        self.threads_total += 1
        self.thread_runnable(pth)
        return pth

    def got_posix_signal(self, signo: int, info) -> None:
        """pth_got_posix_signal: the signal's action, with the current uthread's context if there is one."""
        trace("posix_signal", signo=signo)
        trigger_posix_signal(signo, current_uthread())

    def thread_bulk_runnable(self, sync) -> None:
        """pth_thread_bulk_runnable: every wakee through __uth_sync_get_next (the sync ops, whichever
        the 2LS has), then vcore_request_more(threads_ready).  Akaros calls it only for a non-empty
        sync (__uth_cond_var_wake_all checks first), so it asks for vcores only when it woke someone."""
        woken = 0
        while (pth := uth_sync_get_next(sync)) is not None:
            pth.pth_state = PthState.RUNNABLE
            self.ready_queue.append(pth)
            self.threads_ready += 1
            woken += 1
        if woken:
            vcore_request_more(self.threads_ready)

    # -- internals ------------------------------------------------------------------------

    def _handle_sysc(self, sysc) -> None:
        self._restart_thread(sysc)

    def _restart_thread(self, sysc) -> None:
        """restart_thread (user/pthread/pthread.c) with its asserts: a failed one is abort()."""
        uth = sysc.u_data
        if uth is None:
            return assert_failed("pthread.c", 230, "ut_restartee")
        if uth.pth_state != PthState.BLK_SYSC:
            return assert_failed("pthread.c", 231, "((struct pthread_tcb*)ut_restartee)->state == PTH_BLK_SYSC")
        if uth.sysc is not sysc:
            return assert_failed("pthread.c", 232, "ut_restartee->sysc == sysc")
        uth.sysc = None
        self.thread_runnable(uth)
        return None

    def _signal_and_restart(self, uth: PthreadTcb, signo: int, code: int, addr: int) -> None:
        uthread_prep_signal_from_fault(uth, signo, code, addr)
        self.thread_runnable(uth)

    def _handle_gp_fault(self, uth: PthreadTcb, ctx) -> None:
        if ctx.rax >> 48 == GO_TABLE_MAGIC:
            # handle_gp_fault -> set_up_go_table (user/pthread/pthread.c), in vcore context: a table
            # that is not mapped faults there (reflect_unhandled_trap -> proc_destroy), and one whose
            # table[7] is not 0xDEADBEEF fails its assert (abort)
            table = ctx.rax & 0xFFFF_FFFF_FFFF
            funcs = [GO_TABLE_FUNC_BASE + i for i in range(GO_TABLE_ENTRIES)]
            if not guest_write(table, struct.pack(f"<{GO_TABLE_ENTRIES}Q", *funcs), "setting up the Go table"):
                return
            sentinel = guest_read(table + 8 * GO_TABLE_ENTRIES, 8, "checking the Go table's table[7]")
            if sentinel is None:
                return
            if int.from_bytes(sentinel, "little") != GO_TABLE_SENTINEL:
                assert_failed("pthread.c", 380, "table[7] == (void*) 0xDEADBEEF")
                return
            trace("go_table", table=table)
            ctx.rip += 2  # skip the 2-byte `call rax`
            self.thread_runnable(uth)
            return
        self._signal_and_restart(uth, SIGSEGV, SEGV_ACCERR, ctx.aux)
