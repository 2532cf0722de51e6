"""Lottery scheduling (Waldspurger & Weihl 1994): each pick is a draw weighted by the ready uthreads' tickets.

Reference: C. A. Waldspurger and W. E. Weihl, "Lottery scheduling: flexible
proportional-share resource management", OSDI 1994.  Each uthread holds
tickets, by the name it was created with (`tickets = { name = n }`,
`default_tickets` for the rest, 100 unless set).  A vcore that needs work
draws a winning ticket uniformly among the ready uthreads' tickets and runs
its holder, so over many draws each gets run time in proportion to its
tickets, in expectation rather than exactly as stride does.  The draw uses
the simulation's seeded RNG: the same seed gives the same lotteries.  Each
vcore ticks every `tick_ns` (10 µs unless set; 0: none) and a tick holds a
new lottery when others are ready; an interrupted uthread is in it too.
Faults, syscalls and signals: pthread's policy (schedops/base.py).
"""

from __future__ import annotations

from akaros_sim.parlib import current_sim
from akaros_sim.uthread import Uthread
from schedops.base import PolicySched
from schedops.stride import ticket_params


class LotterySched(PolicySched):
    """Proportional share by randomized draws.  Methods are the sched_ops."""

    name = "lottery"

    def __init__(self, *, tickets=None, default_tickets: int = 100, tick_ns: int = 10_000) -> None:
        super().__init__(tick_ns=tick_ns)
        self.tickets, self.default_tickets = ticket_params(self.name, tickets, default_tickets)
        self.ready: list[Uthread] = []  # in arrival order: the draw walks it

    def _tickets(self, uth: Uthread) -> int:
        return self.tickets.get(uth.entry.name, self.default_tickets)

    def enqueue(self, uth: Uthread, why: str) -> None:
        self.ready.append(uth)

    def pick(self, vcore_id: int) -> Uthread | None:
        if not self.ready:
            return None
        winner = current_sim().rng.randrange(sum(self._tickets(u) for u in self.ready))
        for i, uth in enumerate(self.ready):
            winner -= self._tickets(uth)
            if winner < 0:
                return self.ready.pop(i)
        raise AssertionError("lottery: the winning ticket was not held")  # unreachable: the draw is < the total

    def vcores_wanted(self) -> int:
        return len(self.ready)

    def should_preempt(self, uth: Uthread, ticks: int) -> bool:
        return ticks > 0 and bool(self.ready)
