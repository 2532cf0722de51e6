"""Stop records: why a guest slice (`Cpu.run`) stopped, as a kernel would see it."""

from __future__ import annotations

import attrs

from akaros_sim.context import PfErr, TrapNr


@attrs.frozen
class BudgetSpent:
    """The run used its whole budget (or a watch stopped it early); `insns` is what ran."""

    insns: int


@attrs.frozen
class SyscallStop:
    """A `syscall` instruction: number and the six argument registers (Linux order)."""

    insns: int
    nr: int
    args: tuple[int, int, int, int, int, int]


@attrs.frozen
class TrapStop:
    """A hardware trap as a kernel sees it: vector, error code, aux (CR2 for #PF)."""

    insns: int
    trap_nr: int = attrs.field(converter=int)
    err: int = attrs.field(default=0, converter=int)
    aux: int = 0

    def describe(self) -> str:
        try:
            name = TrapNr(self.trap_nr).name
        except ValueError:
            name = f"vector {self.trap_nr}"
        text = f"#{name} (trap {self.trap_nr}) err={self.err:#x}"
        if self.trap_nr == TrapNr.PF:
            bits = "|".join(b.name for b in PfErr if b & self.err) or "0"
            text += f" [{bits}] addr={self.aux:#x}"
        return text


StopReason = BudgetSpent | SyscallStop | TrapStop
