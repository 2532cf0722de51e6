"""Fault handlers for scenarios/handler_chain.toml, registered on thread_refl_fault in file order.

Each is handler(uth, ctx) -> FaultStatus and keeps no state of its own (the
module is imported once per process and shared by every run): what it needs
it reads from the running simulation.
"""

from __future__ import annotations

from akaros_sim import parlib
from akaros_sim.context import TrapNr
from akaros_sim.disasm import insn_length
from akaros_sim.interpose import FaultStatus


def declines_all(uth, ctx) -> FaultStatus:
    """At the head: sees every fault first and handles none."""
    return FaultStatus.CONTINUE_NEXT_HANDLER


def skip_magic(uth, ctx) -> FaultStatus:
    """Fix a fault at the program's `magic` label by stepping over the faulting instruction."""
    sim = parlib.current_sim()
    if ctx.trap_nr != TrapNr.UD or ctx.rip != sim.programs["main"].symbol("magic"):
        return FaultStatus.CONTINUE_NEXT_HANDLER
    ctx.rip += insn_length(sim.mem, ctx.rip)
    return FaultStatus.FAULT_FIXED


def declines_tail(uth, ctx) -> FaultStatus:
    """At the tail: the last word before the 2LS's own op; it too lets everything through."""
    return FaultStatus.CONTINUE_NEXT_HANDLER
