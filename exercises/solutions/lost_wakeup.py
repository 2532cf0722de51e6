"""Exercise 3, model solution: a 2LS that no longer loses wake-ups.

thread_blockon_sysc took the uthread off `on_vcore` only after register_evq.
When the syscall had completed already, it called thread_runnable while the
uthread was still marked as running, and the guard there dropped it.  The
fix is the rule every sleep/wake protocol follows: record that the sleeper
is no longer running before anything can wake it.
"""

from __future__ import annotations

from collections import deque

from akaros_sim import parlib
from akaros_sim.uthread import Uthread


class TidyFifo:
    """One FIFO ready queue shared by every vcore; faults end the process."""

    name = "tidy-fifo"

    def __init__(self) -> None:
        self.ready: deque[Uthread] = deque()
        self.on_vcore: dict[Uthread, None] = {}  # running uthreads (an insertion-ordered set)
        self.evqs = []

    def _off_vcore(self, uth: Uthread) -> None:
        self.on_vcore.pop(uth, None)

    def sched_init(self) -> None:
        self.evqs = [parlib.get_eventq(vcoreid) for vcoreid in range(parlib.max_vcores())]
        parlib.uthread_2ls_init(self._syscall_done)

    def thread_create(self, entry) -> Uthread:
        uth = Uthread(entry)
        parlib.uthread_init(uth)
        self.thread_runnable(uth)
        return uth

    def sched_entry(self) -> None:
        if parlib.current_uthread() is not None:
            parlib.run_current_uthread()
        while not self.ready:
            parlib.handle_events()
            parlib.check_preempt_pending()
            if self.ready:
                break
            parlib.vcore_yield()
        uth = self.ready.popleft()
        self.on_vcore[uth] = None
        parlib.run_uthread(uth)

    def thread_runnable(self, uth: Uthread) -> None:
        if uth in self.on_vcore:
            return  # already running: queueing it as well would run it twice
        self.ready.append(uth)
        parlib.vcore_request_more(len(self.ready))

    def thread_paused(self, uth: Uthread) -> None:
        self._off_vcore(uth)
        self.thread_runnable(uth)

    def thread_has_blocked(self, uth: Uthread, flags: int) -> None:
        self._off_vcore(uth)  # whoever blocked it makes it runnable again

    def thread_blockon_sysc(self, uth: Uthread, sysc) -> None:
        self._off_vcore(uth)  # first: a wake-up may come at once
        if not parlib.register_evq(sysc, self.evqs[parlib.vcore_id()]):
            self.thread_runnable(uth)  # the syscall completed already

    def _syscall_done(self, sysc) -> None:
        self.thread_runnable(sysc.u_data)

    def thread_refl_fault(self, uth: Uthread, ctx) -> None:
        self._off_vcore(uth)
        parlib.exit(-1, parlib.fault_report(uth, "tidy-fifo: unhandled fault"))

    def thread_exited(self, uth: Uthread) -> None:
        self._off_vcore(uth)
        parlib.uthread_cleanup(uth)

    def got_posix_signal(self, signo: int, info) -> None:
        pass
