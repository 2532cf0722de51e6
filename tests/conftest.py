"""Shared fixtures: a small machine with code, data and stack regions."""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import pytest
from hypothesis import settings

from akaros_sim import asm_clang
from akaros_sim.asm_keystone import keystone
from akaros_sim.context import UserContext
from akaros_sim.cpu import Cpu
from akaros_sim.memory import AddressSpace, Prot

# Property tests draw the same examples on every run and every machine: a red CI
# is a reproducible failure, never luck.  (HYPOTHESIS_PROFILE=explore draws anew.)
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

CODE = 0x400000
DATA = 0x600000
STACK_TOP = 0x800000
STACK_SIZE = 0x10000


@functools.cache
def _ks():
    return keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


@functools.cache
def assemble_bytes(source: str, addr: int) -> bytes:
    """Raw keystone assembly, for CPU tests that need no labels or directives; where keystone has no wheel
    (arm64 hosts), the assembler's clang backend on the raw statements."""
    if keystone is not None:
        return bytes(_ks().asm(source, addr, as_bytes=True)[0])
    statements = tuple(s.strip() for s in source.replace("\n", ";").split(";") if s.strip())
    return asm_clang.assemble_sections([_RawLine(1, source, statements, ())], [], addr, None)[0]


class _RawLine(NamedTuple):
    """One source line as akaros_sim.asm's parser would hand it to a backend (none of its checks: raw)."""

    lineno: int
    text: str
    statements: tuple[str, ...]
    labels: tuple[str, ...]


class Machine:
    """An address space + CPU with code (R-X), data (RW) and a stack (RW) mapped."""

    def __init__(self) -> None:
        self.mem = AddressSpace()
        self.cpu = Cpu(self.mem)
        self.mem.map(CODE, 0x2000, Prot.READ | Prot.EXEC, "code")
        self.mem.map(DATA, 0x2000, Prot.READ | Prot.WRITE, "data")
        self.mem.map(STACK_TOP - STACK_SIZE, STACK_SIZE, Prot.READ | Prot.WRITE, "stack")

    def load(self, source: str, at: int = CODE, **regs: int) -> UserContext:
        """Assemble `source` at `at` and return a context ready to run it."""
        self.mem.write(at, assemble_bytes(source, at))
        return UserContext(rip=at, rsp=STACK_TOP - 8, **regs)


@pytest.fixture
def machine() -> Machine:
    return Machine()
