"""Costs: the price of everything a simulation does, in virtual nanoseconds.

One frozen record per simulation; every field is a documented default that a
scenario may change under [machine.costs].  Nothing reads the host clock:
these prices are the only source of virtual time.
"""

from __future__ import annotations

import attrs


def _nonneg_int(inst, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Costs.{attribute.name}: expected an int >= 0 (ns), got {value!r}")


def _cost(default: int):
    return attrs.field(default=default, validator=_nonneg_int)


@attrs.frozen
class Costs:
    """The price of everything, in virtual nanoseconds (documented defaults).

    The defaults describe a ~1 GHz core where a user/kernel crossing costs a
    few hundred instructions; change them per scenario under [machine.costs].
    """

    insn_ns: int = _cost(1)  # one emulated instruction
    sched_op_ns: int = _cost(50)  # each sched_ops call
    context_switch_ns: int = _cost(100)  # popping a uthread's context (run_uthread)
    vcore_entry_ns: int = _cost(150)  # entering vcore context (yield, notification, trap)
    syscall_entry_ns: int = _cost(200)  # trapping into the kernel for a syscall
    event_delivery_ns: int = _cost(300)  # posting an event message and its IPI
    fault_reflect_ns: int = _cost(500)  # the kernel reflecting a hardware fault
    syscall_latency_ns: int = _cost(10_000)  # completion time of a blocking syscall
    populate_latency_ns: int = _cost(20_000)  # SYS_populate_va (a page fetched from "disk")
    page_zero_ns: int = _cost(1_000)  # the kernel zero-filling an anonymous page at its first touch
    vcore_grant_ns: int = _cost(2_000)  # from vcore_request_more to the vcore running
    preempt_duration_ns: int = _cost(100_000)  # how long a preempted vcore's pcore stays away
    slice_insns: int = _cost(10_000)  # guest instructions between engine checks
    # How far a guest slice may run a vcore past the horizon (the earliest time
    # a peer or a kernel event could act).  Guest memory accesses of different
    # vcores interleave at this grain; everything else is strictly causal.
    # Smaller is finer and slower; insn_ns makes the interleaving exact.
    vcore_quantum_ns: int = _cost(2_000)
    python_step_ns: int = _cost(20)  # a parlib call from a Python uthread
    spin_ns: int = _cost(20)  # one look at a held spinlock

    def __attrs_post_init__(self):
        if self.slice_insns < 1:
            raise ValueError("Costs.slice_insns: expected an int >= 1, got 0")
        if self.insn_ns < 1:
            raise ValueError("Costs.insn_ns: expected an int >= 1 (an instruction must take time), got 0")
