"""Restartable atomic sequences (Bershad, Redell and Ellis 1992; Linux rseq).

A sequence [start, end) of guest code is atomic with respect to this
process's scheduling if whenever a uthread is stopped involuntarily inside it
(vcore preemption, a tick or notification entering vcore context, migration
to another vcore, a reflected fault) its rip is moved to the sequence's
restart address before it runs again.  The restart address is `start`
(re-run the whole sequence, Bershad's RAS) or an rseq-style abort handler
outside the sequence; an address strictly inside its own sequence is
rejected, as rseq rejects an abort_ip inside the critical section.

This is not a special case inside any 2LS: the Simulation installs
`RasHandler` on the same HandlerChain interposition as fault handlers, on
`thread_paused` (a uthread handed back to the 2LS after preemption) and on
the resume path (a uthread about to run again after an involuntary stop), so
it works under any 2LS, including one a user writes.

A fault inside a sequence that a fault handler fixes (FAULT_FIXED, e.g. an
extable fixup) is not restarted: the handler's context is authoritative.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

from akaros_sim.interpose import FaultStatus
from akaros_sim.program import RasEntry


class RasError(ValueError):
    """A malformed sequence or table: the message names the sequence."""


class RasTable:
    """Sequences sorted by start, validated (no overlap, restart not strictly inside)."""

    def __init__(self, entries: Iterable[RasEntry] = ()) -> None:
        ordered = sorted(entries, key=lambda e: e.start)
        for entry in ordered:
            if entry.start < entry.restart < entry.end:
                raise RasError(
                    f"RAS [{entry.start:#x}, {entry.end:#x}): restart {entry.restart:#x} lies inside the sequence "
                    "(use its start, or an abort handler outside it)"
                )
        for prev, cur in zip(ordered, ordered[1:], strict=False):
            if cur.start < prev.end:
                raise RasError(
                    f"RAS [{cur.start:#x}, {cur.end:#x}) overlaps [{prev.start:#x}, {prev.end:#x})"
                )
        self.entries: tuple[RasEntry, ...] = tuple(ordered)
        self._starts = [e.start for e in ordered]

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, rip: int) -> RasEntry | None:
        """The sequence containing rip ([start, end)), or None."""
        i = bisect.bisect_right(self._starts, rip) - 1
        if i >= 0 and rip < self.entries[i].end:
            return self.entries[i]
        return None

    def with_entries(self, entries: Iterable[RasEntry]) -> RasTable:
        return RasTable(self.entries + tuple(entries))


class RasHandler:
    """Moves an involuntarily stopped uthread's rip to its sequence's restart address."""

    name = "ras"

    def __init__(self, sim) -> None:
        self.sim = sim
        self.table = RasTable()
        self.restarts: Counter = Counter()  # sequence start -> restarts

    def add(self, entries: Iterable[RasEntry]) -> None:
        self.table = self.table.with_entries(entries)

    def check(self, uth, why: str) -> None:
        """Restart uth if its saved rip lies inside a sequence."""
        ctx = uth.ctx
        entry = self.table.lookup(ctx.rip)
        if entry is None or ctx.rip == entry.restart:
            return
        old = ctx.rip
        ctx.rip = entry.restart
        self.restarts[entry.start] += 1
        self.sim.trace_event(None, "ras_restart", uth=uth, seq=entry.start, old_rip=old, new_rip=entry.restart, why=why)

    def on_paused(self, uth) -> FaultStatus:
        """thread_paused handler: the uthread was stopped against its will and handed back
        (preemption, migration).  A pause it asked for (returning from a signal
        handler, whose chosen context is authoritative) is left alone."""
        if uth.interrupted is not None:
            self.check(uth, uth.interrupted.value)
        return FaultStatus.CONTINUE_NEXT_HANDLER

    def on_resume(self, uth, ctx, why) -> FaultStatus:
        """Resume-path handler: the uthread is about to run after an involuntary stop."""
        self.check(uth, why)
        return FaultStatus.CONTINUE_NEXT_HANDLER
