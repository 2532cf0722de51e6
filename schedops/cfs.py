"""A CFS-like 2LS: run the lowest weighted virtual runtime (Linux's Completely Fair Scheduler).

Reference: Linux's CFS (Ingo Molnar, 2007; Documentation/scheduler/sched-design-CFS.rst
and kernel/sched/fair.c).  Each uthread has a nice value, by the name it was
created with (`nice = { name = n }`, -20..19, 0 unless set), and the weight
Linux gives that nice value (1024 at nice 0, about 1.25x per step).  Running
ns of virtual time adds ns * 1024 / weight to its vruntime; the ready uthread
with the lowest vruntime runs (FIFO among equals).  Slices come from a vcore
tick (`tick_ns`, 10 µs unless set), as Linux's check_preempt_tick: the running
uthread goes back once it has run its share of the period (period =
`latency_ns`, or `min_granularity_ns` per runnable uthread if more, times its
weight over the runnable weight), or, after at least `min_granularity_ns`,
when it is ahead of the leftmost ready uthread by more than that share.  A new
uthread starts at the queue's min_vruntime; a woken one at no less than
min_vruntime - latency_ns / 2 (Linux's gentle sleeper credit).  No wake-up
preemption: a woken uthread waits for the next tick.  Faults, syscalls and
signals: pthread's policy (schedops/base.py).
"""

from __future__ import annotations

import heapq

from akaros_sim.uthread import Uthread
from schedops.base import NEW, SYSCALL, WAKE, PolicySched, check_int, check_table

NICE_0_WEIGHT = 1024
# Linux's sched_prio_to_weight: nice -20 .. 19, each step about 1.25x (10% of CPU per nice level).
NICE_WEIGHTS = (
    88761, 71755, 56483, 46273, 36291,
    29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906,
    3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423,
    335, 272, 215, 172, 137,
    110, 87, 70, 56, 45,
    36, 29, 23, 18, 15,
)  # fmt: skip


def nice_to_weight(nice: int) -> int:
    return NICE_WEIGHTS[nice + 20]


class CfsSched(PolicySched):
    """Lowest vruntime first, sliced by ticks.  Methods are the sched_ops."""

    name = "cfs"

    def __init__(self, *, nice=None, latency_ns: int = 60_000, min_granularity_ns: int = 7_500,
                 tick_ns: int = 10_000) -> None:  # fmt: skip
        super().__init__(tick_ns=tick_ns)
        self.nice = check_table(self.name, "nice", {} if nice is None else nice, minimum=-20, maximum=19)
        self.latency_ns = check_int(self.name, "latency_ns", latency_ns, minimum=1)
        self.min_granularity_ns = check_int(self.name, "min_granularity_ns", min_granularity_ns, minimum=1)
        self.ready: list[tuple[int, int, Uthread]] = []  # a heap of (vruntime, arrival, uthread)
        self.vruntime: dict[Uthread, int] = {}
        self.weight: dict[Uthread, int] = {}
        self.slice_ran: dict[Uthread, int] = {}  # ns run since it was last picked
        self.min_vruntime = 0
        self.ready_weight = 0
        self._arrivals = 0

    def enqueue(self, uth: Uthread, why: str) -> None:
        if why == NEW:
            self.weight[uth] = nice_to_weight(self.nice.get(uth.entry.name, 0))
            self.vruntime[uth] = self.min_vruntime
        elif why in (WAKE, SYSCALL):
            self.vruntime[uth] = max(self.vruntime[uth], self.min_vruntime - self.latency_ns // 2)
        self._arrivals += 1
        heapq.heappush(self.ready, (self.vruntime[uth], self._arrivals, uth))
        self.ready_weight += self.weight[uth]

    def pick(self, vcore_id: int) -> Uthread | None:
        if not self.ready:
            return None
        vr, _, uth = heapq.heappop(self.ready)
        self.ready_weight -= self.weight[uth]
        self.min_vruntime = max(self.min_vruntime, vr)
        self.slice_ran[uth] = 0
        return uth

    def vcores_wanted(self) -> int:
        return len(self.ready)

    def charge(self, uth: Uthread, ns: int) -> None:
        self.vruntime[uth] += ns * NICE_0_WEIGHT // self.weight[uth]
        self.slice_ran[uth] = self.slice_ran.get(uth, 0) + ns

    def ideal_slice(self, uth: Uthread) -> int:
        """Its share of the scheduling period (Linux's sched_slice), among the ready and itself."""
        nr = len(self.ready) + 1
        period = max(self.latency_ns, nr * self.min_granularity_ns)
        return period * self.weight[uth] // (self.ready_weight + self.weight[uth])

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        if not ticks or not self.ready:
            return False
        ideal, ran = self.ideal_slice(uth), self.slice_ran.get(uth, 0)
        if ran > ideal:
            return True
        if ran < self.min_granularity_ns:
            return False
        return self.vruntime[uth] - self.ready[0][0] > ideal

    def thread_exited(self, uth: Uthread) -> None:
        super().thread_exited(uth)
        for table in (self.vruntime, self.weight, self.slice_ran):
            table.pop(uth, None)
