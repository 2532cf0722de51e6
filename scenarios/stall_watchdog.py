"""A 2LS with a starvation bug, for scenarios/stall_watchdog.toml.

`HogFirst` is pthread with a biased queue: any uthread but "victim" made
runnable goes to the head, so while "hog" keeps yielding, "victim" is ready
and never runs.
The contract checker's stall watchdog reports it.
"""

from __future__ import annotations

from akaros_sim import parlib
from schedops.pthread import PthreadSched


class HogFirst(PthreadSched):
    name = "hog-first"

    def thread_runnable(self, uth) -> None:
        super().thread_runnable(uth)
        if uth.name != "victim":  # the bug: everyone else jumps the queue
            self.ready_queue.remove(uth)
            self.ready_queue.appendleft(uth)


def hog() -> None:
    """Yield forever: the 2LS always has someone else to run."""
    while True:
        parlib.uthread_sched_yield()


def victim() -> int:
    return 42
