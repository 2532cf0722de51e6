"""Earliest deadline first (Liu & Layland 1973): the ready uthread with the nearest deadline runs.

Reference: C. L. Liu and J. W. Layland, "Scheduling algorithms for
multiprogramming in a hard-real-time environment", Journal of the ACM 20(1),
1973 (the deadline-driven scheduling algorithm).  A uthread's deadline is its
creation time plus a relative deadline, by the name it was created with
(`deadlines = { name = ns }`); uthreads without one run after every uthread
with one, FIFO among themselves; equal deadlines are FIFO.  Preemptive at
every scheduling point: when a vcore enters vcore context with a uthread
interrupted (a notification such as a syscall completing, or a tick with
`tick_ns`), a ready uthread with an earlier deadline takes its place.
Faults, syscalls and signals: pthread's policy (schedops/base.py).
"""

from __future__ import annotations

import heapq

from akaros_sim.uthread import Uthread
from schedops.base import NEW, PolicySched, check_table

NO_DEADLINE = float("inf")


class EdfSched(PolicySched):
    """Earliest absolute deadline first.  Methods are the sched_ops."""

    name = "edf"

    def __init__(self, *, deadlines=None, tick_ns: int = 0) -> None:
        super().__init__(tick_ns=tick_ns)
        self.deadlines = check_table(self.name, "deadlines", {} if deadlines is None else deadlines, minimum=1)
        self.ready: list[tuple[float, int, Uthread]] = []  # a heap of (deadline, arrival, uthread)
        self.deadline: dict[Uthread, float] = {}  # absolute, in ns of virtual time
        self._arrivals = 0

    def enqueue(self, uth: Uthread, why: str) -> None:
        if why == NEW:
            rel = self.deadlines.get(uth.entry.name)
            self.deadline[uth] = NO_DEADLINE if rel is None else self.now() + rel
        self._arrivals += 1
        heapq.heappush(self.ready, (self.deadline[uth], self._arrivals, uth))

    def pick(self, vcore_id: int) -> Uthread | None:
        return heapq.heappop(self.ready)[2] if self.ready else None

    def vcores_wanted(self) -> int:
        return len(self.ready)

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        return bool(self.ready) and self.ready[0][0] < self.deadline[uth]

    def thread_exited(self, uth: Uthread) -> None:
        super().thread_exited(uth)
        self.deadline.pop(uth, None)
