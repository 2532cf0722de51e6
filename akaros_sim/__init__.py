"""akaros-sim: a deterministic simulator of Akaros-style user-level scheduling.

The public API is what `__all__` lists (docs/api.md describes each name), plus
the modules a 2LS is written against: `akaros_sim.parlib` (the functions a 2LS
and a Python uthread call), `akaros_sim.kernel` (syscall and event numbers),
`akaros_sim.context`, `akaros_sim.uthread` and `akaros_sim.interpose`.
"""

from akaros_sim.asm import AsmError, assemble
from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, StopReason, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn, disassemble, insn_length
from akaros_sim.elf import ElfError, load_elf
from akaros_sim.engine import Costs
from akaros_sim.extable import ExceptionTable, ExtableHandler
from akaros_sim.interpose import FaultStatus, HandlerChain, interpose, uninterpose
from akaros_sim.memory import AddressSpace, MemError, Prot
from akaros_sim.program import ExtableEntry, ExtableType, Program, RasEntry, Segment
from akaros_sim.ras import RasTable
from akaros_sim.sched_ops import SchedOps, SchedOpsError
from akaros_sim.simulation import RunEnd, RunResult, Simulation, SimulationError
from akaros_sim.trace import Trace, TraceRecord
from akaros_sim.uaccess import uaccess_program
from akaros_sim.uthread import Uthread, UthreadEntry, UthState

__version__ = "0.1.0"

__all__ = [
    "AddressSpace",
    "AsmError",
    "BudgetSpent",
    "Costs",
    "Cpu",
    "ElfError",
    "ExceptionTable",
    "ExtableEntry",
    "ExtableHandler",
    "ExtableType",
    "FaultStatus",
    "HandlerChain",
    "MemError",
    "PfErr",
    "Program",
    "Prot",
    "RasEntry",
    "RasTable",
    "RunEnd",
    "RunResult",
    "SchedOps",
    "SchedOpsError",
    "Segment",
    "Simulation",
    "SimulationError",
    "StopReason",
    "SyscallStop",
    "Trace",
    "TraceRecord",
    "TrapNr",
    "TrapStop",
    "UserContext",
    "UthState",
    "Uthread",
    "UthreadEntry",
    "__version__",
    "assemble",
    "describe_insn",
    "disassemble",
    "insn_length",
    "interpose",
    "load_elf",
    "uaccess_program",
    "uninterpose",
]
