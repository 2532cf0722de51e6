"""Fixed priorities with priority inheritance on Mutex (Sha, Rajkumar & Lehoczky 1990).

Reference: L. Sha, R. Rajkumar and J. P. Lehoczky, "Priority inheritance
protocols: an approach to real-time synchronization", IEEE Transactions on
Computers 39(9), 1990 (the basic inheritance protocol; POSIX's
PTHREAD_PRIO_INHERIT).  Each uthread has a fixed priority, by the name it was
created with (`priorities = { name = n }`, `default` for the rest, 0 unless
set); larger runs first, FIFO within a priority.  With `inherit = true` (the
default) a uthread that holds a Mutex runs at the highest priority of the
uthreads waiting for it, transitively, until it unlocks; a Mutex hands itself
to its highest-priority waiter.  The 2LS learns who waits through its sync
ops (sync_enqueue) and who holds a mutex from `UthSync.of.owner`.  Preemptive
at every scheduling point: when a vcore enters vcore context with a uthread
interrupted (a notification, or a tick with `tick_ns`), a ready uthread of
higher effective priority takes its place.  Faults, syscalls and signals:
pthread's policy (schedops/base.py).
"""

from __future__ import annotations

from collections import deque

from akaros_sim.parlib import Mutex, trace
from akaros_sim.uthread import Uthread
from schedops.base import NEW, PolicySched, check_bool, check_int, check_table

MAX_CHAIN = 64  # a longer chain of holders waiting on holders is a deadlock; stop looking there


class PrioritySched(PolicySched):
    """Highest effective priority first.  Methods are the sched_ops (sync ops included)."""

    name = "priority"

    def __init__(self, *, priorities=None, default: int = 0, inherit: bool = True, tick_ns: int = 0) -> None:
        super().__init__(tick_ns=tick_ns)
        self.priorities = check_table(self.name, "priorities", {} if priorities is None else priorities)
        self.default = check_int(self.name, "default", default)
        self.inherit = check_bool(self.name, "inherit", inherit)
        self.ready: deque[Uthread] = deque()
        self.base: dict[Uthread, int] = {}
        self._mutexes: dict = {}  # the wait queues of every Mutex (an insertion-ordered set)

    def effective(self, uth: Uthread, depth: int = 0) -> int:
        """uth's priority, raised to that of any uthread waiting (transitively) on a mutex it holds."""
        prio = self.base.get(uth, self.default)
        if self.inherit and depth < MAX_CHAIN:
            for sync in self._mutexes:
                if sync.queue and sync.of.owner is uth:
                    for waiter in sync.queue:
                        prio = max(prio, self.effective(waiter, depth + 1))
        return prio

    def _best(self, among) -> Uthread | None:
        best, best_prio = None, None
        for uth in among:
            prio = self.effective(uth)
            if best_prio is None or prio > best_prio:  # strict: the earliest of equals wins
                best, best_prio = uth, prio
        return best

    # -- the queue ---------------------------------------------------------------------------------

    def enqueue(self, uth: Uthread, why: str) -> None:
        if why == NEW:
            self.base[uth] = self.priorities.get(uth.entry.name, self.default)
        self.ready.append(uth)

    def pick(self, vcore_id: int) -> Uthread | None:
        uth = self._best(self.ready)
        if uth is not None:
            self.ready.remove(uth)
        return uth

    def vcores_wanted(self) -> int:
        return len(self.ready)

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        best = self._best(self.ready)
        return best is not None and self.effective(best) > self.effective(uth)

    def thread_exited(self, uth: Uthread) -> None:
        super().thread_exited(uth)
        self.base.pop(uth, None)

    # -- sync ops: who waits on which mutex -----------------------------------------------------------

    def sync_init(self, sync) -> None:
        sync.queue = deque()
        if isinstance(sync.of, Mutex):
            self._mutexes[sync] = None

    def sync_enqueue(self, uth: Uthread, sync) -> None:
        holder = sync.of.owner if isinstance(sync.of, Mutex) else None
        before = self.effective(holder) if holder is not None and self.inherit else None
        sync.queue.append(uth)
        if before is not None and self.effective(holder) > before:
            trace("pi_boost", holder=holder.name, waiter=uth.name, mutex=sync.of.name, prio=self.effective(holder))

    def sync_get_next(self, sync):
        uth = self._best(sync.queue)
        if uth is not None:
            sync.queue.remove(uth)
        return uth
