"""Exercise 1 (docs/exercises.md): make safe_div(a, 0) return -1.

Grade it with `akaros-sim run exercises/div_by_zero.toml`.

div_fixup is registered at the head of the process's thread_refl_fault chain,
so it sees every reflected fault before pthread does.  Make a #DE inside
safe_div (the symbols safe_div and safe_div_end of program "main" bound it)
return -1 from safe_div to its caller, and let every other fault go on down
the chain.
"""

from __future__ import annotations

from akaros_sim.interpose import FaultStatus


def div_fixup(uth, ctx) -> FaultStatus:
    # TODO: recognise a #DE inside safe_div and make safe_div return -1.
    return FaultStatus.CONTINUE_NEXT_HANDLER
