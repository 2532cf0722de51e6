"""Exception tables: (faulting instruction -> fixup) entries, sorted once, searched by bisection.

As in Linux and Akaros's kern/src/ex_table.c: a program declares which of
its instructions may fault on purpose (with `.extable` in assembly, or an ELF
`__ex_table`), and where to continue if they do.  The table is built once,
sorted by instruction address and validated; `lookup(rip)` answers and the
caller applies the answer (`apply`).  `ExtableHandler` is the fault handler a
process registers when it loads a program with a table, as Linux does at boot.

A page fault on a valid VMR that is merely not populated (PF_VMR_BACKED) is
not an error: the handler declines it so the 2LS can populate the page and
the access succeeds.  Fixups are for bad addresses.
"""

from __future__ import annotations

import bisect
import errno
from collections import Counter
from collections.abc import Iterable

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.disasm import insn_length
from akaros_sim.interpose import FaultStatus
from akaros_sim.program import ExtableEntry, ExtableType

EFAULT_U64 = -errno.EFAULT & ((1 << 64) - 1)
# Traps (as opposed to faults) report rip after the instruction; a table
# lookup at that rip would name the wrong instruction.
_TRAP_CLASS = frozenset({TrapNr.DB, TrapNr.BP, TrapNr.OF, TrapNr.SYSCALL})


class ExtableError(ValueError):
    """A malformed table: the message names the entry."""


class ExceptionTable:
    """A sorted, validated exception table.  Immutable once built."""

    def __init__(self, entries: Iterable[ExtableEntry], code: Iterable[tuple[int, int]] | None = None) -> None:
        """Build from entries; with `code` ([start, end) ranges), every insn and fixup must lie in code."""
        ordered = sorted(entries, key=lambda e: e.insn)
        ranges = sorted(code) if code is not None else None
        for prev, cur in zip(ordered, ordered[1:], strict=False):
            if prev.insn == cur.insn:
                raise ExtableError(f"extable: two entries for the instruction at {cur.insn:#x}")
        if ranges is not None:
            for entry in ordered:
                for what, addr in (("instruction", entry.insn), ("fixup", entry.fixup)):
                    if entry.type is ExtableType.SKIP and what == "fixup":
                        continue
                    if not any(lo <= addr < hi for lo, hi in ranges):
                        raise ExtableError(f"extable entry {entry.insn:#x}: {what} {addr:#x} is outside the code")
        self.entries: tuple[ExtableEntry, ...] = tuple(ordered)
        self._insns = [e.insn for e in ordered]

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, rip: int) -> ExtableEntry | None:
        """The entry whose instruction address is exactly rip, or None."""
        i = bisect.bisect_left(self._insns, rip)
        if i < len(self._insns) and self._insns[i] == rip:
            return self.entries[i]
        return None


def apply(entry: ExtableEntry, ctx, mem) -> None:
    """Change ctx as the entry says: jump to the fixup (and set rax = -EFAULT), or skip the instruction."""
    if entry.type is ExtableType.SKIP:
        ctx.rip = ctx.rip + insn_length(mem, ctx.rip)
        return
    ctx.rip = entry.fixup
    if entry.type is ExtableType.UACCESS:
        ctx.rax = EFAULT_U64


class ExtableHandler:
    """The process's exception-table fault handler: fixes faults at table sites, counts hits."""

    name = "extable"

    def __init__(self, sim) -> None:
        self.sim = sim
        self.table = ExceptionTable(())
        self.hits: Counter = Counter()

    def add(self, entries: Iterable[ExtableEntry]) -> None:
        self.table = ExceptionTable(self.table.entries + tuple(entries))

    def __call__(self, uth, ctx) -> FaultStatus:
        if ctx.trap_nr == TrapNr.PF and ctx.err & PfErr.VMR_BACKED:
            return FaultStatus.CONTINUE_NEXT_HANDLER  # not an error: the 2LS populates it
        if ctx.trap_nr in _TRAP_CLASS:
            return FaultStatus.CONTINUE_NEXT_HANDLER  # rip is past the instruction: not a faulting site
        entry = self.table.lookup(ctx.rip)
        if entry is None:
            return FaultStatus.CONTINUE_NEXT_HANDLER
        self.hits[entry.insn] += 1
        old = ctx.rip
        apply(entry, ctx, self.sim.mem)
        self.sim.trace_event(None, "extable_fixup", uth=uth, insn=old, fixup=ctx.rip, type=entry.type.name.lower(),
                             trap=ctx.trap_nr)  # fmt: skip
        return FaultStatus.FAULT_FIXED

    def sites(self) -> list[tuple[int, int]]:
        """(instruction address, times fixed) for every site that fired, by address."""
        return sorted(self.hits.items())
