"""A round-robin 2LS with time slicing: a tick on a vcore hands its uthread to the back of the queue.

Not an Akaros 2LS (pthread has no time slicing); it is shaped like the one in
Akaros's user/vmm/sched.c: ask for a vcore tick, and when `vcore_tick_poll`
reports an expired period in sched_entry, `stop_current_uthread` and requeue
it.  Ticks come from `vcore_tick_enable(tick_ns)` (param `tick_ns`, 0 = none)
or from a tick-storm injection.  Faults follow pthread's policy: #DE, #GP and
bad #PF become signals, a VMR-backed #PF is populated, anything else exits(-1).
"""

from __future__ import annotations

from collections import deque

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.kernel import SYS_populate_va
from akaros_sim.parlib import (
    FPE_INTDIV,
    SEGV_ACCERR,
    SEGV_MAPERR,
    SIGFPE,
    SIGSEGV,
    block_uthread_on_async_sysc,
    check_preempt_pending,
    current_uthread,
    exit,
    fault_report,
    get_eventq,
    handle_events,
    max_vcores,
    register_evq,
    run_current_uthread,
    run_uthread,
    stop_current_uthread,
    syscall_async,
    trace,
    uthread_2ls_init,
    uthread_cleanup,
    uthread_init,
    uthread_prep_signal_from_fault,
    vcore_id,
    vcore_request_more,
    vcore_tick_enable,
    vcore_tick_poll,
    vcore_yield,
)
from akaros_sim.uthread import Uthread


class RoundRobinSched:
    """Global FIFO queue; on a tick the running uthread goes to the back.  Methods are the sched_ops."""

    name = "roundrobin"

    def __init__(self, tick_ns: int = 0) -> None:
        if not isinstance(tick_ns, int) or tick_ns < 0:
            raise ValueError(f"roundrobin 2LS: tick_ns: expected an int >= 0, got {tick_ns!r}")
        self.tick_ns = tick_ns
        self.queue: deque[Uthread] = deque()
        self.threads_total = 0
        self.evqs = []
        self._ticking: set[int] = set()

    def sched_init(self) -> None:
        self.evqs = [get_eventq(i) for i in range(max_vcores())]
        uthread_2ls_init(lambda sysc: self.thread_runnable(sysc.u_data))

    def sched_entry(self) -> None:
        vc = vcore_id()
        if self.tick_ns and vc not in self._ticking:
            self._ticking.add(vc)
            vcore_tick_enable(self.tick_ns)
        if current_uthread() is not None:
            if vcore_tick_poll():
                uth = stop_current_uthread()
                trace("rr_switch", off=uth.name)
                self.queue.append(uth)
            else:
                run_current_uthread()
        while True:
            handle_events()
            check_preempt_pending()
            if self.queue:
                run_uthread(self.queue.popleft())
            vcore_yield(False)

    def thread_runnable(self, uth: Uthread) -> None:
        self.queue.append(uth)
        vcore_request_more(len(self.queue))

    def thread_paused(self, uth: Uthread) -> None:
        self.thread_runnable(uth)

    def thread_blockon_sysc(self, uth: Uthread, sysc) -> None:
        if not register_evq(sysc, self.evqs[vcore_id()]):
            self.thread_runnable(uth)

    def thread_has_blocked(self, uth: Uthread, flags: int) -> None:
        pass

    def thread_refl_fault(self, uth: Uthread, ctx) -> None:
        trap, err, aux = ctx.trap_nr, ctx.err, ctx.aux
        if trap == TrapNr.PF and err & PfErr.VMR_BACKED:
            block_uthread_on_async_sysc(uth, syscall_async(SYS_populate_va, aux, 1))
        elif trap in (TrapNr.DE, TrapNr.GP, TrapNr.PF):
            signo, code = {TrapNr.DE: (SIGFPE, FPE_INTDIV), TrapNr.GP: (SIGSEGV, SEGV_ACCERR)}.get(
                trap, (SIGSEGV, SEGV_MAPERR)
            )
            uthread_prep_signal_from_fault(uth, signo, code, aux)
            self.thread_runnable(uth)
        else:
            exit(-1, fault_report(uth, "roundrobin: unhandled fault"))

    def thread_exited(self, uth: Uthread) -> None:
        uthread_cleanup(uth)
        self.threads_total -= 1
        if self.threads_total == 0:
            exit(0)

    def thread_create(self, entry) -> Uthread:
        uth = Uthread(entry)
        uthread_init(uth)
        self.threads_total += 1
        self.thread_runnable(uth)
        return uth

    def got_posix_signal(self, signo: int, info) -> None:
        pass
