"""Exercise 1, model solution: a #DE inside safe_div returns -1 from safe_div.

The handler finishes the call on the function's behalf: rax = -1, then what
safe_div's `ret` would do (pop the return address).  That is sound because
safe_div is a leaf that pushes nothing, so at the faulting idiv [rsp] is its
return address.  An exception-table fixup would need a fixup label and code
in safe_div to load -1; this needs no change to the guest.
"""

from __future__ import annotations

from akaros_sim import parlib
from akaros_sim.context import U64, TrapNr
from akaros_sim.interpose import FaultStatus


def div_fixup(uth, ctx) -> FaultStatus:
    sim = parlib.current_sim()
    main = sim.programs["main"]
    # Only safe_div's faults are ours: a #DE anywhere else is a real error for pthread.
    if ctx.trap_nr != TrapNr.DE or not main.symbol("safe_div") <= ctx.rip < main.symbol("safe_div_end"):
        return FaultStatus.CONTINUE_NEXT_HANDLER
    ctx.rax = U64  # -1 as the unsigned 64-bit value a register holds
    ctx.rip = sim.mem.read_u64(ctx.rsp)
    ctx.rsp += 8
    return FaultStatus.FAULT_FIXED
