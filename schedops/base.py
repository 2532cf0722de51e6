"""A base for 2LSes that differ only in their queueing: pthread's fault, syscall and signal policy, shared.

`PolicySched` implements the ten required sched_ops the way Akaros's pthread
2LS (user/pthread/pthread.c) does everything that is not a queueing decision:

* a syscall that blocks registers for EV_SYSCALL on the current vcore's event
  queue; its completion (or the registration race) makes the uthread runnable;
* faults: #DE -> SIGFPE, #GP -> SIGSEGV (SEGV_ACCERR), #PF on a VMR-backed page
  -> an async SYS_populate_va the uthread blocks on, other #PF -> SIGSEGV
  (SEGV_MAPERR, the address), anything else ends the process with a report
  ("<name>: unhandled fault").  pthread's Go function-table trick on #GP is
  pthread's alone and is not here;
* a paused (preempted, end of a signal handler) uthread is queued again; an
  exited one is freed, and the last exit ends the process with exit(0);
* a process-wide POSIX signal is recorded (`posix_signal`), as pthread does.

On top of that it offers time slicing: with `tick_ns` > 0 each vcore asks for
a vcore tick, and whenever sched_entry finds an interrupted uthread it asks
`should_preempt(uth, ticks)` (default: on any expired tick, round-robin's rule)
whether to put it back in the queue and pick again.

A subclass supplies the queueing (see docs/policies.md):

* `enqueue(uth, why)`: uth may run; `why` says how it got here (NEW, WAKE,
  YIELD, SYSCALL, FAULT, PAUSED, PREEMPTED);
* `pick(vcore_id)`: the uthread this vcore runs next, taken off the queue, or None;
* `vcores_wanted()`: how many more vcores to ask for after an enqueue;

and optionally `charge(uth, ns)` (uth ran ns of virtual time, for policies that
account run time), `should_preempt(uth, ticks)` and `new_uthread(entry)`.
"""

from __future__ import annotations

from collections.abc import Mapping

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.kernel import SYS_populate_va
from akaros_sim.parlib import (
    FPE_INTDIV,
    SEGV_ACCERR,
    SEGV_MAPERR,
    SIGFPE,
    SIGSEGV,
    UTH_EXT_BLK_YIELD,
    ParlibError,
    block_uthread_on_async_sysc,
    check_preempt_pending,
    current_sim,
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
    trigger_posix_signal,
    uthread_2ls_init,
    uthread_cleanup,
    uthread_init,
    uthread_prep_pending_signals,
    uthread_prep_signal_from_fault,
    vcore_id,
    vcore_request_more,
    vcore_tick_enable,
    vcore_tick_poll,
    vcore_yield,
)
from akaros_sim.uthread import Uthread

# Why a uthread is handed to `enqueue`.
NEW = "new"  # just created
WAKE = "wake"  # a mutex, condition variable or join let it go
YIELD = "yield"  # it yielded (uthread_sched_yield)
SYSCALL = "syscall"  # the syscall it blocked on completed
FAULT = "fault"  # its fault became a signal it will take when it runs
PAUSED = "paused"  # stopped involuntarily: preempted vcore, end of a signal handler
PREEMPTED = "preempted"  # the 2LS took it off its vcore (should_preempt said so)

# A fault that becomes a POSIX signal, as pthread reflects it.
FAULT_SIGNALS = {
    TrapNr.DE: (SIGFPE, FPE_INTDIV),
    TrapNr.GP: (SIGSEGV, SEGV_ACCERR),
    TrapNr.PF: (SIGSEGV, SEGV_MAPERR),
}


class PolicySched:
    """pthread's policy for everything but the queue; subclasses decide who runs.  Methods are the sched_ops."""

    name = "policy"
    switch_record = "sched_switch"  # the trace record of a uthread taken off its vcore by should_preempt

    def __init__(self, *, tick_ns: int = 0) -> None:
        self.tick_ns = check_int(self.name, "tick_ns", tick_ns, minimum=0)
        self.threads_total = 0
        self.evqs = []
        self._ticking: set[int] = set()
        self._blocked_why: dict[Uthread, str] = {}  # YIELD for a uthread whose has_blocked said so
        self._occupant: list = []  # per vcore: (uthread, when it started running there) or None

    # -- what a policy supplies ------------------------------------------------------------

    def enqueue(self, uth: Uthread, why: str) -> None:
        raise NotImplementedError(f"{type(self).__name__}.enqueue")

    def pick(self, vcore_id: int) -> Uthread | None:
        raise NotImplementedError(f"{type(self).__name__}.pick")

    def vcores_wanted(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}.vcores_wanted")

    def charge(self, uth: Uthread, ns: int) -> None:
        """uth ran ns of virtual time (called when it leaves a vcore, and at each look by should_preempt)."""

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        """sched_entry found uth interrupted (ticks: tick periods expired since the last look): requeue it?"""
        return ticks > 0

    def new_uthread(self, entry) -> Uthread:
        return Uthread(entry)

    # -- helpers for policies ---------------------------------------------------------------

    def now(self) -> int:
        return current_sim().now()

    def here(self) -> int:
        """The caller's vcore; 0 from kernel context (a uthread spawned before the run)."""
        try:
            return vcore_id()
        except ParlibError:
            return 0

    def make_runnable(self, uth: Uthread, why: str) -> None:
        self.enqueue(uth, why)
        vcore_request_more(self.vcores_wanted())

    # -- sched_ops ----------------------------------------------------------------------------

    def sched_init(self) -> None:
        self.evqs = [get_eventq(i) for i in range(max_vcores())]
        self._occupant = [None] * max_vcores()
        uthread_2ls_init(self._handle_sysc)

    def sched_entry(self) -> None:
        vc = vcore_id()
        if self.tick_ns and vc not in self._ticking:
            self._ticking.add(vc)
            vcore_tick_enable(self.tick_ns)
        cur = current_uthread()
        if cur is not None:
            self._account(vc, cur)
            if self.should_preempt(cur, vcore_tick_poll()):
                uth = stop_current_uthread()
                trace(self.switch_record, off=uth.name)
                self._occupant[vc] = None
                self.enqueue(uth, PREEMPTED)  # no vcore request: this vcore picks again at once
            else:
                uthread_prep_pending_signals(cur)  # as pth_sched_entry does before running a uthread
                run_current_uthread()
        else:
            self._stop_clock(vc)  # whoever ran here has yielded, blocked or exited
        while True:
            handle_events()
            check_preempt_pending()
            uth = self.pick(vc)
            if uth is not None:
                self._occupant[vc] = (uth, self.now())
                uthread_prep_pending_signals(uth)
                run_uthread(uth)
            vcore_yield(False)

    def thread_runnable(self, uth: Uthread) -> None:
        self.make_runnable(uth, self._blocked_why.pop(uth, WAKE))

    def thread_paused(self, uth: Uthread) -> None:
        self._left(uth)
        self.thread_runnable_as(uth, PAUSED)

    def thread_runnable_as(self, uth: Uthread, why: str) -> None:
        self._blocked_why.pop(uth, None)
        self.make_runnable(uth, why)

    def thread_blockon_sysc(self, uth: Uthread, sysc) -> None:
        self._left(uth)
        if not register_evq(sysc, self.evqs[vcore_id()]):
            self.thread_runnable_as(uth, SYSCALL)  # it completed before we registered

    def thread_has_blocked(self, uth: Uthread, flags: int) -> None:
        self._left(uth)
        if flags == UTH_EXT_BLK_YIELD:
            self._blocked_why[uth] = YIELD

    def thread_refl_fault(self, uth: Uthread, ctx) -> None:
        self._left(uth)
        trap, err, aux = ctx.trap_nr, ctx.err, ctx.aux
        if trap == TrapNr.PF and err & PfErr.VMR_BACKED:
            block_uthread_on_async_sysc(uth, syscall_async(SYS_populate_va, aux, 1))
        elif trap in FAULT_SIGNALS:
            signo, code = FAULT_SIGNALS[trap]
            uthread_prep_signal_from_fault(uth, signo, code, aux)
            self.thread_runnable_as(uth, FAULT)
        else:
            exit(-1, fault_report(uth, f"{self.name}: unhandled fault"))

    def thread_exited(self, uth: Uthread) -> None:
        self._left(uth)
        self._blocked_why.pop(uth, None)
        uthread_cleanup(uth)
        self.threads_total -= 1
        if self.threads_total == 0:
            exit(0)

    def thread_create(self, entry) -> Uthread:
        uth = self.new_uthread(entry)
        uthread_init(uth)
        self.threads_total += 1
        self.make_runnable(uth, NEW)
        return uth

    def got_posix_signal(self, signo: int, info) -> None:
        trace("posix_signal", signo=signo)
        trigger_posix_signal(signo, current_uthread())  # as pth_got_posix_signal

    # -- internals ------------------------------------------------------------------------------

    def _handle_sysc(self, sysc) -> None:
        uth = sysc.u_data
        uth.sysc = None
        self.thread_runnable_as(uth, SYSCALL)

    def _account(self, vc: int, uth: Uthread) -> None:
        """Charge uth for its run so far on vc; it goes on running."""
        occ = self._occupant[vc]
        if occ is not None and occ[0] is uth:
            now = self.now()
            self.charge(uth, now - occ[1])
            self._occupant[vc] = (uth, now)

    def _stop_clock(self, vc: int) -> None:
        occ = self._occupant[vc]
        if occ is not None:
            self._occupant[vc] = None
            self.charge(occ[0], self.now() - occ[1])

    def _left(self, uth: Uthread) -> None:
        """uth left its vcore (blocked, faulted, paused, exited): charge its run before it is queued."""
        for vc, occ in enumerate(self._occupant):
            if occ is not None and occ[0] is uth:
                self._stop_clock(vc)
                return


# -- parameter checks: each error names the 2LS and the parameter ------------------------------------


def check_int(sched: str, key: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{sched} 2LS: {key}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{sched} 2LS: {key}: expected an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{sched} 2LS: {key}: expected an integer <= {maximum}, got {value!r}")
    return value


def check_table(sched: str, key: str, value, *, minimum: int | None = None,
                maximum: int | None = None) -> dict[str, int]:
    """A table of uthread name -> integer (a TOML inline table, or a dict)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{sched} 2LS: {key}: expected a table of uthread name = integer, got {value!r}")
    out = {}
    for name, v in value.items():
        if not isinstance(name, str):
            raise ValueError(f"{sched} 2LS: {key}: expected uthread names as keys, got {name!r}")
        out[name] = check_int(sched, f"{key}.{name}", v, minimum=minimum, maximum=maximum)
    return out


def check_choice(sched: str, key: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{sched} 2LS: {key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_bool(sched: str, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{sched} 2LS: {key}: expected true or false, got {value!r}")
    return value
