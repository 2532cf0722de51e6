"""Faults in vcore context end the process as Akaros ends it (issue 11, item 9).

A store parlib or the 2LS makes into guest memory in vcore context faults in
the kernel's eyes with the vcore in vcore context: kern/arch/x86/trap.c's
`reflect_unhandled_trap` prints the trap and calls `proc_destroy` (status -1
here, with a report naming the trap, the address and the context).  A failed
`assert` in parlib or pthread is `_assert_failed` (user/parlib/panic.c):
`breakpoint()` then `abort()`, SIGABRT's default action (exit status 134).
Every such store goes through akaros_sim/guestmem.py; nothing raises out of run().
"""

from __future__ import annotations

import re
from pathlib import Path

from akaros_sim.asm import assemble
from akaros_sim.kernel import Syscall
from akaros_sim.memory import Prot
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import GO_TABLE_FUNC_BASE, PthreadSched

ROOT = Path(__file__).resolve().parents[1]


def run_go(table_src: str, data: str = "", setup=None):
    """`call rax` with rax = 0xDEAD<<48 | table: pthread's handle_gp_fault -> set_up_go_table."""
    prog = assemble(f"""
entry:
    {table_src}
    movabs rax, 0xDEAD000000000000
    or rax, rbx
go_call:
    call rax
    mov eax, 3
    ret
{data}
""")
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())
    sim.load(prog)
    if setup is not None:
        setup(sim)
    sim.spawn_guest("g", prog.symbol("entry"))
    return sim, prog, sim.run()


def test_go_table_that_is_not_mapped_destroys_the_process():
    """set_up_go_table stores into an unmapped table in vcore context: reflect_unhandled_trap -> proc_destroy."""
    sim, _, res = run_go("mov ebx, 0x1000")
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report == (
        "page fault in vcore context (vcore 0) setting up the Go table at 0x1000: "
        "write: address 0x1000 is not mapped"
    )
    assert sim.trace.of_kind("go_table") == []
    assert sim.uthread("g").exit_value is None  # the call was never skipped


def test_go_table_without_its_sentinel_fails_pthreads_assert():
    """table[7] != 0xDEADBEEF: set_up_go_table's assert fails after filling table[0..6]; abort() -> 134."""
    sim, prog, res = run_go("lea rbx, [rip + table]", ".data\ntable: .quad 0, 0, 0, 0, 0, 0, 0, 0")
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 128 + 6)
    assert res.report == (
        "[user] pthread.c:380, vcore 0, Assertion failed: table[7] == (void*) 0xDEADBEEF: "
        "abort() dumps core (exit status 134)"
    )
    table = prog.symbol("table")
    assert [sim.mem.read_u64(table + 8 * i) for i in range(8)] == [GO_TABLE_FUNC_BASE + i for i in range(7)] + [0]
    assert sim.trace.of_kind("go_table") == []


def test_go_table_whose_sentinel_is_not_mapped_destroys_the_process():
    """table[0..6] fill the end of a page, table[7] is on the unmapped next one: the assert's load faults."""
    page, end = 0x20_0000, 0x20_1000
    sim, _, res = run_go(f"mov ebx, {end - 56:#x}", setup=lambda sim: sim.mem.map(page, 0x1000, Prot.READ | Prot.WRITE, "go"))
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report == (
        f"page fault in vcore context (vcore 0) checking the Go table's table[7] at {end:#x}: "
        f"read: address {end:#x} is not mapped"
    )
    assert [sim.mem.read_u64(end - 56 + 8 * i) for i in range(7)] == [GO_TABLE_FUNC_BASE + i for i in range(7)]


def test_restart_thread_asserts_its_thread_is_blocked_on_that_syscall():
    """restart_thread's asserts (user/pthread/pthread.c): the thread must be PTH_BLK_SYSC on this sysc."""
    sim = Simulation(vcores=1, seed=1)
    sched = PthreadSched()
    sim.set_sched(sched)

    def body():
        me = sim.uthread("a")
        sched._restart_thread(Syscall(id=99, nr=1, args=(), u_data=me))  # a is RUNNING

    sim.spawn_python("a", body)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 134)
    assert res.report.startswith(
        "[user] pthread.c:231, vcore 0, Assertion failed: ((struct pthread_tcb*)ut_restartee)->state == PTH_BLK_SYSC"
    )
    assert sim.trace.of_kind("process_exit")[0].get("status") == 134


def test_restart_thread_asserts_the_syscall_is_the_threads():
    sim = Simulation(vcores=1, seed=1)
    sched = PthreadSched()
    sim.set_sched(sched)

    def body():
        me = sim.uthread("a")
        from schedops.pthread import PthState

        me.pth_state = PthState.BLK_SYSC  # as if blocked on another syscall
        sched._restart_thread(Syscall(id=99, nr=1, args=(), u_data=me))

    sim.spawn_python("a", body)
    res = sim.run()
    assert (res.exit_status, res.report.split(": ", 1)[1]) == (
        134, "ut_restartee->sysc == sysc: abort() dumps core (exit status 134)")  # fmt: skip


def test_guest_memory_is_written_for_the_guest_only_through_guestmem():
    """One checked path: no runtime module stores into guest memory except akaros_sim/guestmem.py."""
    allowed = {"memory.py", "guestmem.py", "cpu.py"}  # the address space itself; the machine's boot stub
    store = re.compile(r"\bmem(?:ory)?\.write(?:_u\d+)?\(|\.mem_write\(")
    offenders = []
    for path in sorted([*ROOT.joinpath("akaros_sim").rglob("*.py"), *ROOT.joinpath("schedops").glob("*.py")]):
        if path.name in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if store.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
