"""Program: a guest image ready to load into an address space.

A Program is what the assembler (`asm.py`) and the ELF loader (`elf.py`) both
produce: segments with their protections, a symbol table, an entry point, and
the two tables the later layers consume: exception-table entries (faulting
instruction -> fixup) and restartable atomic sequences.  It is a frozen record:
loading it never changes it, so one Program can be loaded into many
simulations.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping

import attrs

from akaros_sim.memory import PAGE_SIZE, Prot


class ExtableType(enum.Enum):
    """What an exception-table fixup does to the faulting context.

    The values are the `data` word of Linux's 12-byte `__ex_table` entries
    (EX_TYPE_DEFAULT = 1, EX_TYPE_UACCESS = 3); SKIP is ours.
    """

    FIXUP = 1  # rip <- fixup
    UACCESS = 3  # rip <- fixup, rax <- -EFAULT
    SKIP = 0x40  # rip <- rip + length of the faulting instruction

    @classmethod
    def from_name(cls, name: str) -> ExtableType:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(t.name.lower() for t in cls)
            raise ValueError(f"unknown extable type {name.strip()!r} (expected one of {known})") from None


def _nonneg(inst, attribute, value):
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{type(inst).__name__}.{attribute.name}: expected an address >= 0, got {value!r}")


@attrs.frozen
class ExtableEntry:
    """One exception-table entry: a fault at `insn` is fixed up at `fixup`."""

    insn: int = attrs.field(validator=_nonneg)
    fixup: int = attrs.field(validator=_nonneg)
    type: ExtableType = ExtableType.FIXUP


@attrs.frozen
class RasEntry:
    """A restartable atomic sequence [start, end); an interrupted uthread restarts at `restart`."""

    start: int = attrs.field(validator=_nonneg)
    end: int = attrs.field(validator=_nonneg)
    restart: int = attrs.field(validator=_nonneg)

    def __attrs_post_init__(self):
        if not self.start < self.end:
            raise ValueError(f"RasEntry: expected start < end, got start={self.start:#x} end={self.end:#x}")


@attrs.frozen
class Segment:
    """A loadable piece of a Program: `data` at `addr`, zero-filled up to `memsz`."""

    addr: int = attrs.field(validator=_nonneg)
    data: bytes
    prot: Prot
    name: str = ""
    memsz: int = attrs.field(default=attrs.Factory(lambda self: len(self.data), takes_self=True))

    def __attrs_post_init__(self):
        if self.addr % PAGE_SIZE:
            raise ValueError(f"Segment {self.name!r}: expected a page-aligned addr, got {self.addr:#x}")
        if self.memsz < len(self.data):
            raise ValueError(f"Segment {self.name!r}: memsz {self.memsz} is smaller than its data ({len(self.data)} bytes)")

    @property
    def end(self) -> int:
        return self.addr + self.memsz


def _freeze_symbols(value: Mapping[str, int]) -> Mapping[str, int]:
    return types.MappingProxyType(dict(sorted(value.items())))


@attrs.frozen
class Program:
    """A guest image: segments, symbols, entry point, extable and RAS entries."""

    name: str
    segments: tuple[Segment, ...] = attrs.field(converter=tuple)
    symbols: Mapping[str, int] = attrs.field(converter=_freeze_symbols, factory=dict)
    entry: int | None = None
    extable: tuple[ExtableEntry, ...] = attrs.field(converter=tuple, default=())
    ras: tuple[RasEntry, ...] = attrs.field(converter=tuple, default=())

    def symbol(self, name: str) -> int:
        """The address of `name`; KeyError naming the program and the symbol if absent."""
        try:
            return self.symbols[name]
        except KeyError:
            raise KeyError(f"program {self.name!r} has no symbol {name!r}") from None
