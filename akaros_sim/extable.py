"""Exception tables: (faulting instruction -> fixup) entries, sorted and validated once, looked up by address.

As in Linux and Akaros's kern/src/ex_table.c: a program declares which of
its instructions may fault on purpose (with `.extable` in assembly, or an ELF
`__ex_table`), and where to continue if they do.  The table is built once,
sorted by instruction address and validated; `lookup(rip)` answers and the
caller applies the answer (`apply`).  Linux bisects its sorted table; here
every entry names one exact instruction address, so `lookup` probes a dict
kept beside the sorted `entries` (constant time, whether the table holds a
thousand entries or a million).  `ExtableHandler` is the fault handler a
process registers when it loads a program with a table, as Linux does at boot.

A page fault on a valid VMR that is merely not populated (PF_VMR_BACKED) is
not an error: the handler declines it so the 2LS can populate the page and
the access succeeds.  Fixups are for bad addresses.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Iterable

from akaros_sim.context import PfErr, TrapNr
from akaros_sim.disasm import insn_length
from akaros_sim.interpose import FaultStatus
from akaros_sim.program import ExtableEntry, ExtableType

EFAULT_U64 = -errno.EFAULT & ((1 << 64) - 1)
# Traps (as opposed to faults) report rip after the instruction; a table
# lookup at that rip would name the wrong instruction.  Plain ints: the fault
# path compares ints, not enum members (IntEnum/IntFlag arithmetic is slow).
_TRAP_CLASS = frozenset(int(t) for t in (TrapNr.DB, TrapNr.BP, TrapNr.OF, TrapNr.SYSCALL))
_PF = int(TrapNr.PF)
_VMR_BACKED = int(PfErr.VMR_BACKED)
_SKIP, _UACCESS = ExtableType.SKIP, ExtableType.UACCESS
_TYPE_NAME = {kind._value_: kind.name.lower() for kind in ExtableType}  # the extable_fixup record's `type`, by value
# (an enum member's hash is a Python-level call; its value's is not)


class ExtableError(ValueError):
    """A malformed table: the message names the entry."""


class ExceptionTable:
    """A sorted, validated exception table.  Immutable once built.

    `entries` is the table sorted by instruction address; `lookup` answers
    from a dict of the same entries keyed by that address.
    """

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
        self._by_insn: dict[int, ExtableEntry] = {e.insn: e for e in ordered}
        # Each table's lookup is its dict's own get: the method below, without a Python frame per call
        # (a third of a lookup's cost).  The instance attribute shadows the method; both answer alike.
        self.lookup = self._by_insn.get

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, rip: int) -> ExtableEntry | None:  # shadowed per table by its dict.get, see __init__
        """The entry whose instruction address is exactly rip, or None."""
        return self._by_insn.get(rip)


def apply(entry: ExtableEntry, ctx, mem) -> None:
    """Change ctx as the entry says: jump to the fixup (and set rax = -EFAULT), or skip the instruction."""
    kind = entry.type
    if kind is _SKIP:
        ctx.rip = ctx.rip + insn_length(mem, ctx.rip)
        return
    ctx.rip = entry.fixup
    if kind is _UACCESS:
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
        trap = ctx.trap_nr
        if trap == _PF and ctx.err & _VMR_BACKED:
            return FaultStatus.CONTINUE_NEXT_HANDLER  # not an error: the 2LS populates it
        if trap in _TRAP_CLASS:
            return FaultStatus.CONTINUE_NEXT_HANDLER  # rip is past the instruction: not a faulting site
        old = ctx.rip
        entry = self.table.lookup(old)
        if entry is None:
            return FaultStatus.CONTINUE_NEXT_HANDLER
        self.hits[old] += 1
        proc = self.sim
        apply(entry, ctx, proc.mem)
        if proc.tracing:  # with the trace off, no record is built at all
            proc.trace_event(None, "extable_fixup", uth=uth, insn=old, fixup=ctx.rip,
                             type=_TYPE_NAME[entry.type._value_], trap=trap)  # fmt: skip
        return FaultStatus.FAULT_FIXED

    def sites(self) -> list[tuple[int, int]]:
        """(instruction address, times fixed) for every site that fired, by address."""
        return sorted(self.hits.items())
