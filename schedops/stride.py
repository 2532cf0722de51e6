"""Stride scheduling (Waldspurger & Weihl 1995): run the lowest pass; run time advances pass by stride.

Reference: C. A. Waldspurger and W. E. Weihl, "Stride scheduling:
deterministic proportional-share resource management", MIT/LCS/TM-528, 1995.
Each uthread holds tickets, by the name it was created with (`tickets = {
name = n }`, `default_tickets` for the rest, 100 unless set); its stride is
STRIDE1 / tickets.  The ready uthread with the lowest pass runs (FIFO among
equal passes); running ns of virtual time adds ns * stride to its pass (the
paper's fractional-quantum rule, with a quantum of 1 ns), so over a long run
uthreads get run time in proportion to their tickets.  Each vcore ticks every
`tick_ns` (10 µs unless set; 0: none): on a tick the running uthread goes back
if a ready one has a lower pass.  A new uthread starts at the global pass (the
pass of the last uthread picked); one that blocked rejoins at no less than it,
so sleeping earns no credit (the paper's `remain` is not kept).  Faults,
syscalls and signals: pthread's policy (schedops/base.py).
"""

from __future__ import annotations

import heapq

from akaros_sim.uthread import Uthread
from schedops.base import NEW, PREEMPTED, PolicySched, check_int, check_table

STRIDE1 = 1 << 20
MAX_TICKETS = STRIDE1


def ticket_params(sched: str, tickets, default_tickets) -> tuple[dict[str, int], int]:
    """Tickets by uthread name, and for the rest, checked (stride and lottery take the same params)."""
    given = {} if tickets is None else tickets
    return (check_table(sched, "tickets", given, minimum=1, maximum=MAX_TICKETS),
            check_int(sched, "default_tickets", default_tickets, minimum=1, maximum=MAX_TICKETS))  # fmt: skip


class StrideSched(PolicySched):
    """Proportional share by tickets.  Methods are the sched_ops."""

    name = "stride"

    def __init__(self, *, tickets=None, default_tickets: int = 100, tick_ns: int = 10_000) -> None:
        super().__init__(tick_ns=tick_ns)
        self.tickets, self.default_tickets = ticket_params(self.name, tickets, default_tickets)
        self.ready: list[tuple[int, int, Uthread]] = []  # a heap of (pass, arrival, uthread)
        self.pass_: dict[Uthread, int] = {}
        self.stride: dict[Uthread, int] = {}
        self.global_pass = 0
        self._arrivals = 0

    def enqueue(self, uth: Uthread, why: str) -> None:
        if why == NEW:
            self.stride[uth] = STRIDE1 // self.tickets.get(uth.entry.name, self.default_tickets)
            self.pass_[uth] = self.global_pass
        elif why != PREEMPTED:
            self.pass_[uth] = max(self.pass_[uth], self.global_pass)
        self._arrivals += 1
        heapq.heappush(self.ready, (self.pass_[uth], self._arrivals, uth))

    def pick(self, vcore_id: int) -> Uthread | None:
        if not self.ready:
            return None
        pass_, _, uth = heapq.heappop(self.ready)
        self.global_pass = max(self.global_pass, pass_)
        return uth

    def vcores_wanted(self) -> int:
        return len(self.ready)

    def charge(self, uth: Uthread, ns: int) -> None:
        self.pass_[uth] += ns * self.stride[uth]

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        return ticks > 0 and bool(self.ready) and self.ready[0][0] < self.pass_[uth]

    def thread_exited(self, uth: Uthread) -> None:
        super().thread_exited(uth)
        self.pass_.pop(uth, None)
        self.stride.pop(uth, None)
