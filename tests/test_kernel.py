"""Kernel: vcore grants and yields, a waiting process woken by an event, preemption, and syscalls from guest code."""

from __future__ import annotations

import contextlib
import signal
import struct

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.engine import Costs, VcoreState
from akaros_sim.kernel import MMAP_BASE, ProcState
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched
from scripted_2ls import Fifo2LS, spin_insns, spin_sim


def _story(sim: Simulation, *kinds: str) -> list[tuple]:
    """(t, vc, uth, kind, details) of the records of `kinds`, in trace order."""
    return [(r.t, r.vc, r.uth, r.kind, dict(r.details)) for r in sim.trace.of_kind(*kinds)]


def _guest(program, sched=None, vcores: int = 1, **threads) -> Simulation:
    sim = Simulation(vcores)
    sim.load(program)
    sim.set_sched(sched or PthreadSched())
    for name, entry in threads.items():
        sim.spawn_guest(name, program.symbol(entry))
    return sim


# -- vcore grants ----------------------------------------------------------------------------------


class _Quiet2LS(Fifo2LS):
    """Fifo2LS that never asks for vcores on its own: only the test's uthread does."""

    def thread_runnable(self, uth) -> None:
        self.ready.append(uth)


def test_vcore_request_more_raises_amt_wanted_up_to_max_vcores():
    """request_more(n) asks for n beyond those online, capped at max_vcores; it never lowers amt_wanted."""
    log = []
    sim = Simulation(3)

    def main():
        log.append(("start", sim.kernel.amt_wanted, parlib.num_vcores(), parlib.max_vcores()))
        parlib.vcore_request_more(1)
        log.append(("more(1)", sim.kernel.amt_wanted))
        parlib.vcore_request_more(5)
        log.append(("more(5)", sim.kernel.amt_wanted))
        parlib.vcore_request_total(1)
        log.append(("total(1)", sim.kernel.amt_wanted))

    sim.set_sched(_Quiet2LS())
    sim.spawn_python("main", main)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert log == [("start", 1, 1, 3), ("more(1)", 2), ("more(5)", 3), ("total(1)", 3)]


def test_granted_vcores_come_online_after_vcore_grant_ns_and_idle_ones_yield():
    """Vcores asked for at t come online at t + vcore_grant_ns; finding no work, each yields, lowering amt_wanted."""
    costs = Costs(vcore_grant_ns=7000)
    sim = Simulation(3, costs=costs)
    asked = []

    def main():
        parlib.vcore_request_more(2)
        asked.append(sim.now())  # request_total charged sched_op_ns before the kernel saw it
        parlib.compute(20_000)

    sim.set_sched(_Quiet2LS())
    sim.spawn_python("main", main)
    assert sim.run().end is RunEnd.ALL_EXITED
    t = asked[0] + costs.vcore_grant_ns
    assert _story(sim, "vcore_online", "vcore_offline") == [
        (100, 0, "", "vcore_online", {"how": "start", "amt_wanted": 1}),
        (t, 1, "", "vcore_online", {"how": "start", "amt_wanted": 3}),
        (t, 2, "", "vcore_online", {"how": "start", "amt_wanted": 3}),
        # vcore_entry 150 + sched_entry 50 + vcore_yield 50
        (t + 250, 1, "", "vcore_offline", {"nice": False, "amt_wanted": 2}),
        (t + 250, 2, "", "vcore_offline", {"nice": False, "amt_wanted": 1}),
        (sim.now(), 0, "", "vcore_offline", {"nice": False, "amt_wanted": 0}),
    ]
    assert [vc.state for vc in sim.engine.vcores] == [VcoreState.OFFLINE] * 3


def test_last_vcore_yielding_leaves_the_process_waiting_until_a_wakeup_event():
    """A sleeper's only vcore yields (WAITING, nothing online); the syscall's completion wakes the process."""
    probes = []
    sim = Simulation(1)
    sim.set_sched(Fifo2LS())
    sim.spawn_python("sleeper", parlib.uthread_sleep, 5000)
    kernel = sim.kernel
    sim.at(3000, "probe", lambda: probes.append((kernel.state, kernel.amt_wanted, kernel.num_vcores())))
    assert sim.run().end is RunEnd.ALL_EXITED
    assert probes == [(ProcState.WAITING, 0, 0)]
    # sleep at 650 + 5000 -> EV_SYSCALL posted to offline vcore 0, granted 2000 later
    assert _story(sim, "vcore_offline", "syscall_done", "event_post", "vcore_online", "event", "run")[1:] == [
        (450, 0, "sleeper", "run", {"how": "run_uthread"}),
        (970, 0, "", "vcore_offline", {"nice": False, "amt_wanted": 0}),
        (5650, -1, "", "syscall_done", {"sysc": 1, "name": "block", "ret": 0}),
        (5650, 0, "", "event_post", {"ev_type": 10, "arg2": 0}),
        (7650, 0, "", "vcore_online", {"how": "start", "amt_wanted": 1}),
        (8100, 0, "", "event", {"ev_type": 10, "arg2": 0}),
        (8300, 0, "sleeper", "run", {"how": "run_uthread"}),
        (8570, 0, "", "vcore_offline", {"nice": False, "amt_wanted": 0}),
    ]
    assert kernel.state is ProcState.WAITING  # the last vcore yielded again after the sleeper exited


# -- preemption, kernel side ---------------------------------------------------------------------------


def test_preempting_an_offline_vcore_is_skipped():
    """preempt_at on a vcore that is not online leaves a preempt_skipped record and changes nothing."""
    sim = spin_sim(PthreadSched(), 2, spin=(2000, 7))
    sim.preempt_at(1000, 1)  # not granted yet
    sim.preempt_at(8000, 1)  # granted, found nothing to do, yielded
    result = sim.run()
    assert result.end is RunEnd.ALL_EXITED
    assert _story(sim, "preempt_skipped", "preempt", "vcore_online", "vcore_offline")[:5] == [
        (150, 0, "", "vcore_online", {"how": "start", "amt_wanted": 2}),
        (1000, 1, "", "preempt_skipped", {"why": "offline"}),
        (2150, 1, "", "vcore_online", {"how": "start", "amt_wanted": 2}),
        (2400, 1, "", "vcore_offline", {"nice": False, "amt_wanted": 1}),
        (8000, 1, "", "preempt_skipped", {"why": "offline"}),
    ]
    assert [s.preemptions for s in result.vcores] == [0, 0]


def test_preempting_the_only_vcore_regrants_it_after_the_duration_and_resumes_its_uthread():
    """With no peer to recover it, the uthread waits for its vcore, which comes back and runs it as current."""
    alone = spin_sim(PthreadSched(), 1, spin=(2000, 7))
    alone.run()
    sim = spin_sim(PthreadSched(), 1, spin=(2000, 7))
    sim.preempt_at(3000, 0, duration_ns=20_000)
    result = sim.run()
    assert (result.end, result.insns, result.vcores[0].preemptions) == (RunEnd.ALL_EXITED, spin_insns(2000), 1)
    back = 3000 + 20_000 + Costs().vcore_grant_ns
    kinds = ("preempt", "event_post", "vcore_online", "vcore_entry", "event", "run")
    assert _story(sim, *kinds)[3:] == [
        (3000, 0, "spin", "preempt", {"in_vcore_ctx": False, "uthread": "spin", "until": 23_000}),
        (3000, 0, "spin", "event_post", {"ev_type": 3, "arg2": 0}),  # to itself: nobody else is online
        (back, 0, "spin", "vcore_online", {"how": "start", "amt_wanted": 1}),
        (back + 150, 0, "spin", "vcore_entry", {"why": "restart", "cur": "spin"}),
        (back + 450, 0, "spin", "event", {"ev_type": 3, "arg2": 0}),  # about itself: ignored
        (back + 600, 0, "spin", "run", {"how": "run_current_uthread"}),
        (sim.trace.of_kind("uthread_exit")[0].t, 0, "spin", "vcore_entry", {"why": "yield", "cur": "spin"}),
    ]
    assert sim.uthread("spin").exit_value == alone.uthread("spin").exit_value
    assert sim.uthread("spin").ctx.regs() == alone.uthread("spin").ctx.regs()


@contextlib.contextmanager
def _host_time_limit(seconds: float):
    """Turn a livelocked run into a TimeoutError (SIGALRM interrupts the Python run loop)."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"Simulation.run still running after {seconds} s of host time")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_preempting_the_only_online_vcore_while_a_grant_is_in_flight_does_not_livelock():
    """Vcore 0 preempted while vcore 1's grant is pending: vcore 1 arrives, recovers the uthread, the run ends."""
    sim = spin_sim(Fifo2LS(), 2, spin=(300, 1))  # the 2LS asks for vcore 1 at t=100; it arrives at 2150
    sim.preempt_at(1000, 0, duration_ns=5000)
    result = None
    try:
        with _host_time_limit(2.0):
            result = sim.run()
    except TimeoutError:
        pass  # handled here: a traceback through the greenlets' frames confuses pytest's report
    assert result is not None, "Simulation.run livelocked (virtual time stopped advancing)"
    assert result.end is RunEnd.ALL_EXITED


# -- syscalls from guest code ----------------------------------------------------------------------------

SYSCALLS = assemble(
    """
.data
results:
    .zero 8*5
msg:
    .ascii "hello\\n"
.text
_start:
    lea r12, [rip + results]
    mov eax, 101             # write(1, msg, 6)
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, 6
    syscall
    mov [r12], rax
    mov eax, 101             # write(7, msg, 6): no such fd
    mov edi, 7
    syscall
    mov [r12 + 8], rax
    mov eax, 8               # getvcoreid()
    syscall
    mov [r12 + 16], rax
    mov eax, 0x200           # gettime(): virtual ns
    syscall
    mov [r12 + 24], rax
    mov eax, 999             # no such syscall
    syscall
    mov [r12 + 32], rax
    ret
""",
    name="syscalls",
)


def _u64s(sim: Simulation, addr: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}Q", sim.mem.read(addr, 8 * n)))


def test_simple_syscalls_from_guest_code():
    """write reaches the console, a bad fd is -EBADF, getvcoreid/gettime answer, an unknown number is -ENOSYS."""
    sim = _guest(SYSCALLS, g="_start")
    assert sim.run().end is RunEnd.ALL_EXITED
    calls = sim.trace.of_kind("syscall")
    assert [(r.get("name"), r.get("args")[:3]) for r in calls] == [
        ("write", (1, SYSCALLS.symbol("msg"), 6)),
        ("write", (7, SYSCALLS.symbol("msg"), 6)),
        ("getvcoreid", (7, SYSCALLS.symbol("msg"), 6)),
        ("gettime", (7, SYSCALLS.symbol("msg"), 6)),
        ("999", (7, SYSCALLS.symbol("msg"), 6)),
    ]
    gettime_at = calls[3].t
    assert _u64s(sim, SYSCALLS.symbol("results"), 5) == [6, 2**64 - 9, 0, gettime_at, 2**64 - 38]
    assert sim.kernel.console == ["hello\n"]
    assert _story(sim, "console") == [(calls[0].t, 0, "g", "console", {"fd": 1, "text": "hello\n"})]


VCOREID = assemble(
    """
_start:
    mov eax, 8               # getvcoreid()
    syscall
    ret                      # exit with it
""",
    name="vcoreid",
)


def test_getvcoreid_answers_the_vcore_the_uthread_runs_on():
    """Two uthreads pinned to vcores 0 and 1 read back 0 and 1."""
    sim = _guest(VCOREID, Fifo2LS(pin={"on0": 0, "on1": 1}), 2, on0="_start", on1="_start")
    assert sim.run().end is RunEnd.ALL_EXITED
    assert [(u.name, u.vcore.id, u.exit_value) for u in sim.uthreads] == [("on0", 0, 0), ("on1", 1, 1)]


MEMORY = assemble(
    """
.data
results:
    .zero 8*8
.text
_start:
    lea r12, [rip + results]
    mov eax, 18              # mmap(0, 8192, RW, 0, fd 0): a file (no MAP_ANONYMOUS), pages not cached
    xor edi, edi
    mov esi, 8192
    mov edx, 3
    xor r10d, r10d
    xor r8d, r8d
    xor r9d, r9d
    syscall
    mov [r12], rax
    mov qword ptr [rax + 4096], 77   # VMR-backed fault -> populate_va -> the store again
    mov eax, 18              # mmap(0x30000000, 4096, RW, MAP_FIXED | MAP_POPULATE)
    mov edi, 0x30000000
    mov esi, 4096
    mov edx, 3
    mov r10d, 0x8010
    syscall
    mov [r12 + 8], rax
    mov qword ptr [rax], 88          # backed already: no fault
    mov eax, 18              # mmap(0, 4096, RW, 0, fd 0): a file again
    xor edi, edi
    mov esi, 4096
    mov edx, 3
    xor r10d, r10d
    syscall
    mov [r12 + 16], rax
    mov rbx, rax
    mov eax, 32              # populate_va(rbx, 1): blocks until backed
    mov rdi, rbx
    mov esi, 1
    syscall
    mov [r12 + 24], rax
    mov qword ptr [rbx], 99          # backed now: no fault
    mov eax, 20              # mprotect(0x30000000, 4096, PROT_READ)
    mov edi, 0x30000000
    mov esi, 4096
    mov edx, 1
    syscall
    mov [r12 + 32], rax
    mov rcx, 0x30000000
    mov rcx, [rcx]                   # reading a read-only page is fine
    mov [r12 + 40], rcx
    mov eax, 20              # mprotect(0x50000000, 4096, PROT_READ): nothing mapped there
    mov edi, 0x50000000
    mov esi, 4096
    mov edx, 1
    syscall
    mov [r12 + 48], rax
    mov eax, 19              # munmap(rbx, 4096)
    mov rdi, rbx
    mov esi, 4096
    syscall
    mov [r12 + 56], rax
    ret
""",
    name="memory",
)


def test_mmap_populate_mprotect_munmap_from_guest_code():
    """mmap places/fixes/populates; a lazy page faults once, populate_va backs another; mprotect, munmap answer."""
    sim = _guest(MEMORY, g="_start")
    assert sim.run().end is RunEnd.ALL_EXITED
    lazy, second = MMAP_BASE, MMAP_BASE + 8192 + 4096  # a one-page hole after each region
    assert _u64s(sim, MEMORY.symbol("results"), 8) == [lazy, 0x3000_0000, second, 0, 0, 88, 2**64 - 12, 0]
    assert (sim.mem.read_u64(lazy + 4096), sim.mem.read_u64(0x3000_0000)) == (77, 88)
    assert sim.mem.lookup(second) is None
    # only the first store faulted: VMR-backed write from user mode, at the second page
    assert [(r.get("trap"), r.get("err"), r.get("aux")) for r in sim.trace.of_kind("fault")] == [
        (14, 0x8000_0006, lazy + 4096),
    ]
    assert [(r.vc, r.uth, r.get("name")) for r in sim.trace.of_kind("syscall", "syscall_done")] == [
        (0, "g", "mmap"),
        (0, "", "populate_va"),  # pthread's fault path, issued from vcore context
        (-1, "", "populate_va"),
        (0, "g", "mmap"),
        (0, "g", "mmap"),
        (0, "g", "populate_va"),
        (-1, "", "populate_va"),
        (0, "g", "mprotect"),
        (0, "g", "mprotect"),
        (0, "g", "munmap"),
    ]


USE_AFTER_MUNMAP = assemble(
    """
_start:
    mov eax, 18              # mmap(0, 4096, RW, MAP_POPULATE)
    xor edi, edi
    mov esi, 4096
    mov edx, 3
    mov r10d, 0x8000
    syscall
    mov rbx, rax
    mov qword ptr [rbx], 1
    mov eax, 19              # munmap(rbx, 4096)
    mov rdi, rbx
    mov esi, 4096
    syscall
    mov qword ptr [rbx], 2   # no VMR any more: SIGSEGV
    ret
""",
    name="use_after_munmap",
)

WRITE_READ_ONLY = assemble(
    """
_start:
    mov eax, 18              # mmap(0, 4096, RW, MAP_POPULATE)
    xor edi, edi
    mov esi, 4096
    mov edx, 3
    mov r10d, 0x8000
    syscall
    mov rbx, rax
    mov eax, 20              # mprotect(rbx, 4096, PROT_READ)
    mov rdi, rbx
    mov esi, 4096
    mov edx, 1
    syscall
    mov rcx, [rbx]           # a read is allowed
    mov qword ptr [rbx], 2   # a write is not: SIGSEGV
    ret
""",
    name="write_read_only",
)


def test_access_after_munmap_takes_the_sigsegv_path():
    """A store to an unmapped page: #PF without PF_VMR_BACKED, SIGSEGV SEGV_MAPERR, no handler, exit 128+11."""
    sim = _guest(USE_AFTER_MUNMAP, g="_start")
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, 139)
    assert result.report.startswith("SIGSEGV with no handler: the process is destroyed: uthread 'g' trap 14 (#PF)")
    assert [(r.kind, r.get("err"), r.get("signo"), r.get("code"), r.get("addr"), r.get("status"))
            for r in sim.trace.of_kind("fault", "signal_prep", "process_exit")] == [
        ("fault", 0x6, None, None, None, None),  # not present, write, user
        ("signal_prep", None, 11, 1, MMAP_BASE, None),
        ("process_exit", None, None, None, None, 139),
    ]  # fmt: skip


def test_write_to_an_mprotected_page_takes_the_sigsegv_path():
    """After mprotect(PROT_READ) a read works and a store faults with P|W|U and ends the process with 139."""
    sim = _guest(WRITE_READ_ONLY, g="_start")
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, 139)
    assert [(r.kind, r.get("err"), r.get("aux")) for r in sim.trace.of_kind("fault")] == [
        ("fault", 0x7, MMAP_BASE),
    ]
    assert sim.trace.of_kind("process_exit")[0].get("why") == "SIGSEGV (default action)"


def test_exit_syscall_ends_the_process_while_a_peer_is_still_running():
    """SYS_proc_destroy on vcore 1 ends the run PROCESS_EXITED; the loop on vcore 0 never finishes."""
    exiter = assemble("_start:\n    mov eax, 12\n    mov edi, 5\n    syscall\n", name="exiter", base=0x500000)
    sim = spin_sim(Fifo2LS(pin={"long": 0, "exit": 1}), 2, long=(50_000, 1))
    sim.load(exiter)
    sim.spawn_guest("exit", exiter.symbol("_start"))
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, 5)
    exit_rec = sim.trace.of_kind("process_exit")[0]
    assert (exit_rec.vc, exit_rec.uth, exit_rec.get("why")) == (1, "exit", "exit syscall")
    assert result.insns < spin_insns(50_000)
    assert not sim.uthread("long").has_exited


POPULATE_ALL = assemble(
    """
    # populate_va(the stack's page, npages = 2**64 - 1): every page from there to the top of user space
    mov rdi, rsp
    mov rsi, -1
    mov eax, 32
    syscall
    ret
    """,
    name="populate_all",
)


def test_populate_va_with_a_huge_count_is_bounded_by_what_is_mapped():
    """A guest's populate_va over 2**64 pages backs only the mapped pages from its address, and the run ends."""
    sim = Simulation(1)
    sim.load(POPULATE_ALL)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("p", POPULATE_ALL.entry)
    result = sim.run(until_ns=10_000_000)
    assert (result.end, sim.uthread("p").exit_value) == (RunEnd.ALL_EXITED, 0)
    done = sim.trace.of_kind("syscall_done")
    assert [(r.get("name"), r.get("ret")) for r in done] == [("populate_va", 0)]


EXIT_MINUS_ONE = assemble(
    """
    mov rdi, -1
    mov eax, 12        # SYS_proc_destroy (exit)
    syscall
    """,
    name="exit_minus_one",
)


def test_a_guest_exit_status_is_a_signed_int():
    """exit(-1) from guest code ends the process with status -1, not 2**64 - 1."""
    sim = Simulation(1)
    sim.load(EXIT_MINUS_ONE)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("e", EXIT_MINUS_ONE.entry)
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert sim.trace.of_kind("process_exit")[0].get("status") == -1
