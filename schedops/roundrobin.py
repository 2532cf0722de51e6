"""A round-robin 2LS with time slicing: a tick on a vcore hands its uthread to the back of the queue.

Not an Akaros 2LS (pthread has no time slicing); it is shaped like the one in
Akaros's user/vmm/sched.c: ask for a vcore tick, and when `vcore_tick_poll`
reports an expired period in sched_entry, `stop_current_uthread` and requeue
it.  Ticks come from `vcore_tick_enable(tick_ns)` (param `tick_ns`, 0 = none)
or from a tick-storm injection.  Faults, syscalls and signals follow pthread's
policy (schedops/base.py): #DE, #GP and bad #PF become signals, a VMR-backed
#PF is populated, anything else exits(-1).
"""

from __future__ import annotations

from collections import deque

from akaros_sim.uthread import Uthread
from schedops.base import PolicySched


class RoundRobinSched(PolicySched):
    """Global FIFO queue; on a tick the running uthread goes to the back.  Methods are the sched_ops."""

    name = "roundrobin"
    switch_record = "rr_switch"

    def __init__(self, tick_ns: int = 0) -> None:
        super().__init__(tick_ns=tick_ns)
        self.queue: deque[Uthread] = deque()

    def enqueue(self, uth: Uthread, why: str) -> None:
        self.queue.append(uth)

    def pick(self, vcore_id: int) -> Uthread | None:
        return self.queue.popleft() if self.queue else None

    def vcores_wanted(self) -> int:
        return len(self.queue)
