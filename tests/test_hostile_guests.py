"""Hostile guest code: random bytes, syscall stubs with random registers, several threads; run() never raises.

Whatever the guest does, the simulated process ends as Akaros would (a fault
the 2LS cannot handle, an exit, a budget) and `run()` returns a RunResult; no
Python exception escapes and nothing hangs (every run has a time and an
instruction budget, and kernel loops are bounded by what is mapped).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akaros_sim import Program, Prot, RunEnd, Segment, Simulation
from schedops.pthread import PthreadSched
from schedops.roundrobin import RoundRobinSched

CODE = 0x40_0000
# Akaros's and parlib's syscall numbers, and some that mean nothing
SYSCALLS = (1, 2, 8, 12, 13, 18, 19, 20, 32, 36, 101, 0x200, 0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0xBEEF)

guests = st.fixed_dictionaries({
    "stub": st.none() | st.sampled_from(SYSCALLS),
    "code": st.binary(min_size=4, max_size=48),
    "vcores": st.integers(1, 3),
    "threads": st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=6), min_size=1, max_size=3),
    "sched": st.sampled_from(["pthread", "roundrobin"]),
    "tick_ns": st.sampled_from([0, 500, 3_000, 20_000]),  # roundrobin's vcore ticks (0: none)
})  # fmt: skip


def run_guest(g) -> tuple:
    stub = b"" if g["stub"] is None else b"\xb8" + g["stub"].to_bytes(4, "little") + b"\x0f\x05"
    prog = Program("hostile", (Segment(CODE, stub + g["code"], Prot.READ | Prot.EXEC, "text", 0x1000),), entry=CODE)
    sim = Simulation(vcores=g["vcores"], seed=1)
    sim.load(prog)
    sim.set_sched(PthreadSched() if g["sched"] == "pthread" else RoundRobinSched(tick_ns=g["tick_ns"]))
    for i, args in enumerate(g["threads"]):
        sim.spawn_guest(f"g{i}", CODE, *args)
    result = sim.run(until_ns=2_000_000, max_insns=100_000)
    return result, sim.trace.digest()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guests)
def test_any_guest_ends_its_process_without_a_python_exception(g):
    """Random code and syscalls end in a RunResult (exit, death with a report, or a budget), deterministically."""
    result, digest = run_guest(g)
    assert result.end in tuple(RunEnd)
    if result.end is RunEnd.PROCESS_EXITED and result.exit_status == -1:
        assert result.report  # a death says why
    again, digest2 = run_guest(g)
    assert (again.end, again.exit_status, again.time_ns, digest2) == (result.end, result.exit_status,
                                                                      result.time_ns, digest)  # fmt: skip


def test_a_guest_that_unmaps_its_tls_dies_of_a_vcore_context_fault():
    """munmap of the TLS area, then a yield: writing the vcore id into that TLS faults in vcore context,
    which kills the process (as in Akaros), with a report naming the uthread and address; nothing raises."""
    from akaros_sim.asm import assemble
    from akaros_sim.process import TLS_AREA, TLS_AREA_SIZE

    prog = assemble(f"""
    _start:
        mov eax, 19                 # munmap(TLS_AREA, TLS_AREA_SIZE)
        movabs rdi, {TLS_AREA:#x}
        mov esi, {TLS_AREA_SIZE:#x}
        syscall
        mov eax, 0x1001             # yield: the other vcore or this one runs it again
        syscall
        ret
    """, name="untls")  # fmt: skip
    sim = Simulation(2, seed=1)
    sim.load(prog)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("a", prog.entry)
    sim.spawn_guest("b", prog.entry)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    # b is the first uthread whose TLS needs a new vcore id after the unmap
    assert result.report == (
        f"page fault in vcore context (vcore 0) writing the vcore id into the TLS of uthread 'b' at "
        f"{TLS_AREA + 0x40:#x}: write: address {TLS_AREA + 0x40:#x} is not mapped"
    )


@pytest.mark.parametrize("rsp", ["xor esp, esp", "movabs rsp, 0xdead000000000000", "mov rsp, -1"])
def test_a_signal_frame_that_cannot_be_pushed_kills_the_process_with_a_report(rsp):
    """A SIGSEGV handler with rsp at 0 or unmapped: the frame push faults in vcore context and the process
    dies with a report naming the signal, the stack pointer and the faulting instruction (no MemError)."""
    from akaros_sim.asm import assemble

    prog = assemble(f"""
    _start:
        mov eax, 0x1002             # sigaction(SIGSEGV, handler)
        mov edi, 11
        lea rsi, [rip + handler]
        syscall
        {rsp}
        xor ebx, ebx
        mov rax, [rbx]              # #PF at 0: SIGSEGV, whose frame goes below rsp
        ret
    handler:
        ret
    """, name="badstack")  # fmt: skip
    sim = Simulation(1)
    sim.load(prog)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("g", prog.entry)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    first, where = result.report.splitlines()[:2]
    assert first.startswith("SIGSEGV: page fault in vcore context pushing the signal frame below rsp=0x"), first
    assert first.endswith("uthread 'g' trap 14 (#PF) err 0x4 aux 0x0")
    assert where.endswith("mov rax, qword ptr [rbx]")
    assert sim.trace.of_kind("signal") == []
