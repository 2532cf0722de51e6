"""akaros-sim: a deterministic simulator of Akaros-style user-level scheduling."""

from akaros_sim.asm import AsmError, assemble
from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, StopReason, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn, disassemble, insn_length
from akaros_sim.elf import ElfError, load_elf
from akaros_sim.memory import AddressSpace, MemError, Prot
from akaros_sim.program import ExtableEntry, ExtableType, Program, RasEntry, Segment

__version__ = "0.1.0"

__all__ = [
    "AddressSpace",
    "AsmError",
    "BudgetSpent",
    "Cpu",
    "ElfError",
    "ExtableEntry",
    "ExtableType",
    "MemError",
    "PfErr",
    "Program",
    "Prot",
    "RasEntry",
    "Segment",
    "StopReason",
    "SyscallStop",
    "TrapNr",
    "TrapStop",
    "UserContext",
    "__version__",
    "assemble",
    "describe_insn",
    "disassemble",
    "insn_length",
    "load_elf",
]
