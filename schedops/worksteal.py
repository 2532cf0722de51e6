"""Work stealing: a deque per vcore; an idle vcore steals from another's (Blumofe & Leiserson 1999).

Reference: R. D. Blumofe and C. E. Leiserson, "Scheduling multithreaded
computations by work stealing", Journal of the ACM 46(5), 1999 (the Cilk
scheduler).  Each vcore owns a deque of ready uthreads.  A uthread made
runnable goes to the bottom of the deque of the vcore that makes it runnable
(its creator's, its waker's, the one that handled its syscall's event); the
owner pops from the top (`owner = "fifo"`, the default: uthreads are threads,
not fork-join tasks, so each vcore serves its own in turn) or from the bottom
(`"lifo"`, the paper's work-first order).  A vcore whose deque is empty steals one uthread from the
other end of a victim's deque: victims are tried starting at one drawn from
the simulation's seeded RNG (`victim = "random"`, the paper's rule; the draw
happens only when there is something to steal) or at the one after the last
victim (`"round_robin"`), then in vcore order, so a thief finds work whenever
any deque has some.  A uthread that yields or is sliced off by a tick
(`tick_ns`) goes to the end the owner takes last, so its peers run first.
Every steal is a `steal` trace record.  Faults, syscalls and signals:
pthread's policy (schedops/base.py).
"""

from __future__ import annotations

from collections import deque

from akaros_sim.parlib import current_sim, max_vcores, trace
from akaros_sim.uthread import Uthread
from schedops.base import PREEMPTED, YIELD, PolicySched, check_choice


class WorkStealSched(PolicySched):
    """Per-vcore deques with stealing.  Methods are the sched_ops."""

    name = "worksteal"

    def __init__(self, *, owner: str = "fifo", victim: str = "random", tick_ns: int = 0) -> None:
        super().__init__(tick_ns=tick_ns)
        self.lifo = check_choice(self.name, "owner", owner, ("lifo", "fifo")) == "lifo"
        self.random = check_choice(self.name, "victim", victim, ("random", "round_robin")) == "random"
        self.deques: list[deque[Uthread]] = []
        self.ready = 0
        self._after: list[int] = []  # round_robin: each thief's next victim

    def sched_init(self) -> None:
        n = max_vcores()
        self.deques = [deque() for _ in range(n)]
        self._after = [(v + 1) % n for v in range(n)]
        super().sched_init()

    def enqueue(self, uth: Uthread, why: str) -> None:
        dq = self.deques[self.here()]
        # the bottom is the right end; a yielder goes where its owner looks last
        if self.lifo and why in (YIELD, PREEMPTED):
            dq.appendleft(uth)
        else:
            dq.append(uth)
        self.ready += 1

    def pick(self, vcore_id: int) -> Uthread | None:
        own = self.deques[vcore_id]
        if own:
            self.ready -= 1
            return own.pop() if self.lifo else own.popleft()
        if not self.ready:
            return None
        n = len(self.deques)
        first = current_sim().rng.randrange(n) if self.random else self._after[vcore_id]
        for i in range(n):
            victim = (first + i) % n
            dq = self.deques[victim]
            if victim != vcore_id and dq:
                uth = dq.popleft() if self.lifo else dq.pop()  # the end its owner takes last
                self.ready -= 1
                self._after[vcore_id] = (victim + 1) % n
                trace("steal", thief=vcore_id, victim=victim, target=uth.name)
                return uth
        return None

    def vcores_wanted(self) -> int:
        return self.ready
