"""The pthread 2LS: FIFO scheduling, blocking syscalls, process exit, and its refl-fault policy."""

from __future__ import annotations

import pytest

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.kernel import SYS_block, SyscState
from akaros_sim.memory import Prot
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.uthread import UthreadEntry
from schedops.pthread import GO_TABLE_FUNC_BASE, PthreadSched, PthState

LAZY = 0x5000_0000  # a VMR whose page is not backed until SYS_populate_va


def make_sim(vcores: int = 1) -> tuple[Simulation, PthreadSched]:
    sim = Simulation(vcores=vcores, seed=1)
    sched = PthreadSched()
    sim.set_sched(sched)
    return sim, sched


def run_guest(src: str, *, vcores: int = 1, setup=None):
    """Load src, spawn its `entry` as guest uthread "g", run; returns (sim, program, result)."""
    sim, _ = make_sim(vcores)
    prog = assemble(src)
    sim.load(prog)
    if setup is not None:
        setup(sim)
    sim.spawn_guest("g", prog.symbol("entry"))
    return sim, prog, sim.run()


# The record kinds these tests follow (others, e.g. interposition records, are left out).
CORE_KINDS = (
    "sched_init", "op", "uthread_create", "vcore_online", "vcore_entry", "vcore_offline", "run", "inject",
    "syscall", "syscall_done", "event_post", "notify", "event", "fault", "signal_prep", "signal", "sigreturn",
    "sigaction", "go_table", "uthread_exit", "uthread_cleanup", "process_exit", "run_end",
)  # fmt: skip


def kinds(sim, *only: str) -> list[tuple[str, str]]:
    """(kind, uthread) of the records of the given kinds (default CORE_KINDS), ops shown as "op <name>"."""
    recs = sim.trace.of_kind(*(only or CORE_KINDS))
    return [(f"op {r.get('op')}" if r.kind == "op" else r.kind, r.uth) for r in recs]


def u64(sim, prog, name: str) -> int:
    return sim.mem.read_u64(prog.symbol(name))


# -- FIFO ---------------------------------------------------------------------------------------


def test_threads_run_in_creation_order_on_one_vcore():
    """With one vcore, new threads go to the ready tail and run in the order they were created."""
    sim, _ = make_sim()
    log = []
    for name in ("a", "b", "c", "d"):
        sim.spawn_python(name, log.append, name)
    sim.run()
    assert log == ["a", "b", "c", "d"]
    assert [r.uth for r in sim.trace.of_kind("run")] == ["a", "b", "c", "d"]


def test_yield_goes_to_the_tail_even_when_alone():
    """A lone thread's yield still goes through has_blocked(YIELD) + runnable + sched_entry, and it runs again."""
    sim, _ = make_sim()

    def a():
        parlib.uthread_sched_yield()

    sim.spawn_python("a", a)
    sim.run()
    assert kinds(sim, "op", "run", "uthread_exit") == [
        ("op sched_init", ""),
        ("op thread_create", ""),
        ("op sched_entry", ""),
        ("run", "a"),
        ("op thread_has_blocked", "a"),
        ("op thread_runnable", "a"),
        ("op sched_entry", ""),
        ("run", "a"),
        ("uthread_exit", "a"),
        ("op sched_entry", ""),
    ]
    assert sim.trace.of_kind("op")[3].get("args") == ("a", parlib.UTH_EXT_BLK_YIELD)


def test_yield_lets_every_ready_thread_run_first():
    """A yielding thread resumes only after each thread already queued has run once."""
    sim, _ = make_sim()
    log = []

    def worker(name):
        for i in range(2):
            log.append((name, i))
            parlib.uthread_sched_yield()

    for name in ("a", "b", "c"):
        sim.spawn_python(name, worker, name)
    sim.run()
    assert log == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]


def test_woken_thread_goes_to_the_tail():
    """A thread handed a mutex is queued behind threads that were already ready."""
    sim, _ = make_sim()
    log = []
    box = {}

    def b():
        box["m"] = m = parlib.Mutex()
        m.lock()
        parlib.uthread_sched_yield()  # a blocks on m, c runs
        log.append("b unlocks")
        m.unlock()  # a is woken: behind c, which yielded before
        log.append("b exits")

    def a():
        box["m"].lock()
        log.append("a has the lock")

    def c():
        log.append("c first")
        parlib.uthread_sched_yield()
        log.append("c second")

    sim.spawn_python("b", b)
    sim.spawn_python("a", a)
    sim.spawn_python("c", c)
    sim.run()
    assert log == ["c first", "b unlocks", "b exits", "c second", "a has the lock"]


def test_paused_thread_goes_to_the_tail():
    """A thread handed to thread_paused (state BLK_PAUSED) is queued behind the ready ones."""
    sim, _ = make_sim()
    log = []
    states = []

    def pause_cb(uth, _arg):
        parlib.uthread_paused(uth)
        states.append(uth.pth_state.name)

    def a():
        log.append("a before")
        parlib.uthread_yield(True, pause_cb)
        log.append("a after")

    sim.spawn_python("a", a)
    sim.spawn_python("b", log.append, "b")
    sim.spawn_python("c", log.append, "c")
    sim.run()
    assert log == ["a before", "b", "c", "a after"]
    assert states == ["RUNNABLE"]
    assert [r.get("args") for r in sim.trace.of_kind("op") if r.get("op") == "thread_paused"] == [("a",)]


def test_thread_runnable_on_a_running_thread_is_an_error():
    """Making a RUNNING pthread runnable breaks pthread's invariant: the process exits -1 with a report."""
    sim, _ = make_sim()

    def a():
        parlib.uthread_runnable(parlib.uthread_self())

    sim.spawn_python("a", a)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert res.report.splitlines()[0] == (
        "PthreadError in sched_ops.thread_runnable of 2LS 'pthread': pthread 'a': made runnable from state RUNNING (at trace record #12)"
    )


def test_each_enqueue_asks_for_more_vcores():
    """Two ready threads on a 2-vcore machine: vcore 1 is granted and they run in parallel."""
    sim, _ = make_sim(vcores=2)
    log = []

    def worker(name):
        log.append((name, "start", parlib.vcore_id()))
        parlib.compute(3000)
        log.append((name, "end", parlib.vcore_id()))

    sim.spawn_python("a", worker, "a")
    sim.spawn_python("b", worker, "b")
    res = sim.run()
    assert log == [("a", "start", 0), ("b", "start", 1), ("a", "end", 0), ("b", "end", 1)]
    assert [(r.vc, r.get("amt_wanted")) for r in sim.trace.of_kind("vcore_online")] == [(0, 2), (1, 2)]
    assert res.time_ns < 2 * 3000 + 2000  # overlapped, not back to back


# -- blocking syscalls --------------------------------------------------------------------------


def test_blocked_syscall_resumes_after_its_latency_while_others_run():
    """SYS_block(5000): the sleeper leaves its vcore, busy runs, the completion (at +5000) requeues the sleeper."""
    sim, _ = make_sim()
    log = []

    def sleeper():
        log.append(("sleeper calls", sim.now()))
        log.append(("sleeper returns", parlib.syscall(SYS_block, 5), sim.now()))

    def busy():
        log.append(("busy starts", sim.now()))
        parlib.compute(10_000)
        log.append(("busy ends", sim.now()))

    probe = []
    sim.at(3000, "probe", lambda: probe.append((sim.uthread("s").pth_state, sim.uthread("s").sysc.name)))
    sim.spawn_python("s", sleeper)
    sim.spawn_python("b", busy)
    sim.run()
    assert [entry[0] for entry in log] == ["sleeper calls", "busy starts", "busy ends", "sleeper returns"]
    assert probe == [(PthState.BLK_SYSC, "block")]
    first = kinds(sim).index(("syscall", "s"))
    assert kinds(sim)[first:] == [
        ("syscall", "s"),
        ("vcore_entry", "s"),
        ("op thread_blockon_sysc", "s"),
        ("op sched_entry", ""),
        ("run", "b"),
        ("inject", ""),
        ("syscall_done", ""),
        ("event_post", "b"),  # EV_SYSCALL to vcore 0's mailbox, with an IPI
        ("notify", "b"),
        ("vcore_entry", "b"),
        ("event", "b"),  # the handler requeues s; pthread then resumes b (no time slicing)
        ("op sched_entry", "b"),
        ("run", "b"),
        ("vcore_entry", "b"),
        ("uthread_exit", "b"),
        ("op sched_entry", ""),
        ("run", "s"),
        ("vcore_entry", "s"),
        ("uthread_exit", "s"),
        ("op sched_entry", ""),
        ("vcore_offline", ""),
        ("run_end", ""),
    ]
    (call,) = sim.trace.of_kind("syscall")
    (done,) = sim.trace.of_kind("syscall_done")
    (resume,) = [r for r in sim.trace.of_kind("run") if r.uth == "s"][1:]
    assert done.t == call.t + 5000
    assert log[-1] == ("sleeper returns", 0, resume.t)
    assert resume.t > log[2][1] > done.t


def test_thread_blockon_sysc_gets_the_pending_syscall():
    """thread_blockon_sysc is called in vcore context with the uthread and its pending Syscall."""
    sim, _ = make_sim()
    seen = []
    ops = sim.ops
    inner = ops.thread_blockon_sysc

    def spy(uth, sysc):
        seen.append((uth.name, sysc.nr, sysc.args, sysc.state, sysc.u_data is uth, uth.sysc is sysc))
        inner(uth, sysc)

    ops.thread_blockon_sysc = spy
    sim.spawn_python("s", parlib.uthread_sleep, 700)
    sim.run()
    assert seen == [("s", SYS_block, (1,), SyscState.PENDING, True, True)]
    assert sim.uthread("s").sysc is None  # restart_thread cleared it


def test_syscall_done_before_register_evq_restarts_at_once():
    """A zero-latency SYS_block is DONE before thread_blockon_sysc registers: requeued at once, no event."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())
    sim.set_syscall_latency(SYS_block, 0)
    rets = []
    sim.spawn_python("z", lambda: rets.append(parlib.syscall(SYS_block, 0)))
    sim.run()
    assert rets == [0]
    assert kinds(sim) == [
        ("sched_init", ""),
        ("op sched_init", ""),
        ("op thread_create", ""),
        ("uthread_create", "z"),
        ("vcore_online", ""),
        ("vcore_entry", ""),
        ("op sched_entry", ""),
        ("run", "z"),
        ("syscall", "z"),
        ("syscall_done", ""),  # done at once, before register_evq, which fails: restart_thread right away
        ("vcore_entry", "z"),
        ("op thread_blockon_sysc", "z"),
        ("op sched_entry", ""),
        ("run", "z"),
        ("vcore_entry", "z"),
        ("uthread_exit", "z"),
        ("op sched_entry", ""),
        ("vcore_offline", ""),
        ("run_end", ""),
    ]


def test_vcore_does_not_yield_past_a_due_syscall_completion():
    """An idle vcore never goes offline later (in virtual time) than a syscall completion it has not handled."""
    late = []
    for sleep_ns in range(5000, 6500, 100):  # completions around the moment busy exits
        sim, _ = make_sim()
        sim.spawn_python("s", parlib.uthread_sleep, sleep_ns)
        sim.spawn_python("b", parlib.compute, 5000)
        sim.run()
        recs = sim.trace.records
        done = recs.index(sim.trace.of_kind("syscall_done")[0])
        if any(r.kind == "vcore_offline" and r.t > recs[done].t for r in recs[:done]):
            late.append(sleep_ns)
    assert late == []


# -- process exit ---------------------------------------------------------------------------------


def test_process_exits_0_when_the_last_thread_is_cleaned_up():
    """Detached threads are cleaned up at exit; when threads_total reaches 0 pthread calls exit(0)."""
    sim, sched = make_sim()
    totals = []

    def worker(name):
        totals.append((name, sched.threads_total))

    for name in ("a", "b"):
        sim.spawn(UthreadEntry.python(name, worker, name, detached=True))
    res = sim.run()
    assert (res.end, res.exit_status, res.report) == (RunEnd.PROCESS_EXITED, 0, None)
    assert totals == [("a", 2), ("b", 1)]
    assert sched.threads_total == 0
    assert kinds(sim)[-5:] == [
        ("uthread_exit", "b"),
        ("op thread_exited", "b"),
        ("uthread_cleanup", "b"),
        ("process_exit", "b"),
        ("run_end", ""),
    ]
    assert sim.trace.of_kind("process_exit")[0].details == (("status", 0), ("why", "exit"))


def test_an_unjoined_joinable_thread_keeps_the_process_from_exit_0():
    """A joinable thread that exits unjoined is never cleaned up: threads_total stays 1, the run just ends."""
    sim, sched = make_sim()
    sim.spawn_python("a", lambda: 5)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.ALL_EXITED, None)
    assert sched.threads_total == 1
    assert sim.trace.of_kind("uthread_exit")[0].details == (("target", "a"), ("join", "JOINABLE"), ("retval", 5))


def test_main_that_joins_its_workers_and_detaches_itself_exits_0():
    """main joins two workers (each cleaned up at join), detaches itself, returns: exit(0) at its cleanup."""
    sim, sched = make_sim()
    log = []

    def main():
        workers = [parlib.uthread_create(lambda n=n: n * 10, name=f"w{n}") for n in (1, 2)]
        log.extend(parlib.uthread_join(w) for w in workers)
        log.append(sched.threads_total)
        parlib.uthread_detach(parlib.uthread_self())

    sim.spawn_python("main", main)
    res = sim.run()
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 0)
    assert log == [10, 20, 1]
    assert [r.get("args") for r in sim.trace.of_kind("op") if r.get("op") == "thread_exited"] == [
        ("w1",), ("w2",), ("main",),
    ]  # fmt: skip


# -- refl faults: signals ---------------------------------------------------------------------------

# #DE with a SIGFPE handler: the handler records what it got and sets the saved
# rcx to 5, so the re-executed `div rcx` gives 100 / 5 = 20.
DIVIDE_SRC = """
.text
entry:
    mov edi, 8                  # SIGFPE
    lea rsi, [rip + handler]
    mov eax, 0x1002             # sigaction
    syscall
    mov [rip + entry_rsp], rsp
    mov eax, 100
    xor ecx, ecx
    xor edx, edx
div_insn:
    div rcx                     # #DE
    ret                         # exits with rax
handler:                        # rdi = signo, rsi = &siginfo, rdx = &saved regs
    mov [rip + h_rsp], rsp
    mov [rip + h_signo], rdi
    mov [rip + h_frame], rdx
    mov rax, [rsi]
    mov [rip + si_signo], rax
    mov rax, [rsi + 8]
    mov [rip + si_code], rax
    mov rax, [rsi + 16]
    mov [rip + si_addr], rax
    mov rax, [rdx + 120]        # saved rip
    mov [rip + saved_rip], rax
    mov rax, [rdx + 160]        # trap_nr, after the 20 registers
    mov [rip + saved_trap], rax
    mov qword ptr [rdx + 16], 5 # saved rcx
    ret
.data
entry_rsp: .quad 0
h_rsp: .quad 0
h_signo: .quad 0
h_frame: .quad 0
si_signo: .quad 0
si_code: .quad 0
si_addr: .quad 0
saved_rip: .quad 0
saved_trap: .quad 0
"""


def test_divide_error_runs_the_sigfpe_handler_on_the_uthread_stack():
    """#DE -> SIGFPE(8, FPE_INTDIV, 0) handler on g's stack below the saved frame; its rcx edit makes div give 20."""
    sim, prog, res = run_guest(DIVIDE_SRC)
    g = sim.uthread("g")
    assert (res.end, g.exit_value) == (RunEnd.ALL_EXITED, 20)
    info = [u64(sim, prog, n) for n in ("h_signo", "si_signo", "si_code", "si_addr", "saved_rip", "saved_trap")]
    assert info == [8, 8, parlib.FPE_INTDIV, 0, prog.symbol("div_insn"), 0]
    h_rsp, frame, entry_rsp = (u64(sim, prog, n) for n in ("h_rsp", "h_frame", "entry_rsp"))
    assert g.stack_lo <= h_rsp < frame < entry_rsp - 128 < g.stack_hi  # below the red zone
    assert kinds(sim)[7:] == [
        ("run", "g"),
        ("sigaction", "g"),
        ("fault", "g"),
        ("vcore_entry", "g"),
        ("op sched_entry", "g"),
        ("op thread_refl_fault", "g"),
        ("signal_prep", ""),
        ("op sched_entry", ""),
        ("run", "g"),
        ("signal", "g"),
        ("sigreturn", "g"),
        ("vcore_entry", "g"),
        ("op thread_paused", "g"),
        ("op sched_entry", ""),
        ("run", "g"),
        ("vcore_entry", "g"),
        ("uthread_exit", "g"),
        ("op sched_entry", ""),
        ("vcore_offline", ""),
        ("run_end", ""),
    ]
    (sig,) = sim.trace.of_kind("signal")
    assert sig.details[:4] == (("signo", 8), ("code", 1), ("addr", 0), ("handler", prog.symbol("handler")))


# hlt in ring 3 is #GP: the SIGSEGV handler skips it (1 byte) by editing the saved rip.
GP_SRC = """
entry:
    mov edi, 11                 # SIGSEGV
    lea rsi, [rip + handler]
    mov eax, 0x1002
    syscall
    hlt                         # #GP
    mov eax, 7
    ret
handler:
    mov rax, [rsi]
    mov [rip + si_signo], rax
    mov rax, [rsi + 8]
    mov [rip + si_code], rax
    mov rax, [rsi + 16]
    mov [rip + si_addr], rax
    add qword ptr [rdx + 120], 1
    ret
.data
si_signo: .quad 0
si_code: .quad 0
si_addr: .quad 0
"""


def test_gp_fault_is_sigsegv_accerr():
    """hlt (#GP) -> SIGSEGV with SEGV_ACCERR and si_addr 0; skipping it in the handler lets g return 7."""
    sim, prog, res = run_guest(GP_SRC)
    assert [u64(sim, prog, n) for n in ("si_signo", "si_code", "si_addr")] == [11, parlib.SEGV_ACCERR, 0]
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 7)
    assert [(r.get("trap"), r.get("insn").split("  ")[-1]) for r in sim.trace.of_kind("fault")] == [(13, "hlt")]


# A load from an unmapped address: SIGSEGV, and the handler points the saved rbx at `value`.
PF_SRC = """
entry:
    mov edi, 11
    lea rsi, [rip + handler]
    mov eax, 0x1002
    syscall
    movabs rbx, 0x12345678      # nothing is mapped there
    mov rax, [rbx]              # #PF
    ret
handler:
    mov rax, [rsi + 8]
    mov [rip + si_code], rax
    mov rax, [rsi + 16]
    mov [rip + si_addr], rax
    lea rax, [rip + value]
    mov [rdx + 8], rax          # saved rbx
    ret
.data
si_code: .quad 0
si_addr: .quad 0
value: .quad 99
"""


def test_unmapped_page_fault_is_sigsegv_maperr_with_the_address():
    """#PF on an unmapped address -> SIGSEGV SEGV_MAPERR with si_addr = that address; the load is retried."""
    sim, prog, res = run_guest(PF_SRC)
    assert [u64(sim, prog, n) for n in ("si_code", "si_addr")] == [parlib.SEGV_MAPERR, 0x12345678]
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 99)
    assert [(r.get("trap"), r.get("aux")) for r in sim.trace.of_kind("fault")] == [(14, 0x12345678)]


@pytest.mark.parametrize(
    "src,status,headline",
    [
        ("entry:\n xor ecx, ecx\n div rcx\n ret\n", 128 + 8,
         "SIGFPE with no handler: the process is destroyed: uthread 'g' trap 0 (#DE) err 0x0 aux 0x0"),
        ("entry:\n mov ebx, 0x1000\n mov rax, [rbx]\n ret\n", 128 + 11,
         "SIGSEGV with no handler: the process is destroyed: uthread 'g' trap 14 (#PF) err 0x4 aux 0x1000"),
    ],
    ids=["SIGFPE", "SIGSEGV"],
)  # fmt: skip
def test_signal_without_handler_exits_128_plus_signo(src, status, headline):
    """No handler installed: the default action destroys the process with 128+signo and a report."""
    sim, _, res = run_guest(src)
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, status)
    assert res.report.splitlines()[0] == headline
    assert kinds(sim)[-3:] == [("run", "g"), ("process_exit", "g"), ("run_end", "")]


# The SIGFPE handler itself divides by zero.
HANDLER_FAULT_SRC = """
entry:
    mov edi, 8
    lea rsi, [rip + handler]
    mov eax, 0x1002
    syscall
    xor ecx, ecx
entry_div:
    div rcx
    ret
handler:
    xor ecx, ecx
handler_div:
    div rcx
    ret
"""


def test_fault_inside_a_signal_handler_exits_minus_1():
    """A fault while the handler runs cannot be signalled again: exit(-1), "Uthread sighandler faulted"."""
    sim, prog, res = run_guest(HANDLER_FAULT_SRC)
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    lines = res.report.splitlines()
    assert lines[0] == "Uthread sighandler faulted: uthread 'g' trap 0 (#DE) err 0x0 aux 0x0"
    assert lines[1] == f"  at {prog.symbol('handler_div'):#x}: 48 f7 f1  div rcx"
    assert [r.get("rip") for r in sim.trace.of_kind("fault")] == [prog.symbol("entry_div"), prog.symbol("handler_div")]


# -- refl faults: Go's table trick ------------------------------------------------------------------

# `call rax` with rax = 0xDEAD<<48 | table is a #GP; pthread fills the table and skips the call.
GO_SRC = """
entry:
    lea rbx, [rip + table]
    movabs rax, 0xDEAD000000000000
    or rax, rbx
go_call:
    call rax                    # 2 bytes, non-canonical target: #GP
    mov eax, 3
    ret
.data
table: .quad 0, 0, 0, 0, 0, 0, 0
    .quad 0xDEADBEEF            # table[7]: the sentinel pthread checks
"""


def test_go_table_trick_fills_the_table_and_skips_the_call():
    """#GP with rax>>48 == 0xDEAD: 7 entries written, table[7] kept, rip += 2, requeued with no signal."""
    sim, prog, res = run_guest(GO_SRC)
    table = prog.symbol("table")
    assert [sim.mem.read_u64(table + 8 * i) for i in range(8)] == [GO_TABLE_FUNC_BASE + i for i in range(7)] + [
        0xDEADBEEF
    ]
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 3)
    assert kinds(sim, "fault", "op", "go_table", "signal_prep", "signal", "run")[3:] == [
        ("run", "g"),
        ("fault", "g"),
        ("op sched_entry", "g"),
        ("op thread_refl_fault", "g"),
        ("go_table", ""),
        ("op sched_entry", ""),
        ("run", "g"),
        ("op sched_entry", ""),
    ]
    (fault,) = sim.trace.of_kind("fault")
    assert (fault.get("trap"), fault.get("rip")) == (13, prog.symbol("go_call"))
    assert sim.trace.of_kind("go_table")[0].get("table") == table


# -- refl faults: VMR-backed page faults --------------------------------------------------------------

POPULATE_SRC = f"""
entry:
    mov ebx, {LAZY:#x}
store:
    mov qword ptr [rbx + 8], 42 # #PF on a VMR-backed page: populate, then this is re-executed
    mov rax, [rbx + 8]
    ret
"""


def test_vmr_backed_fault_blocks_on_populate_va_and_reexecutes():
    """#PF on an unbacked VMR: populate_va, g is BLK_SYSC while others run, then resumes at the store."""
    sim, _ = make_sim()
    prog = assemble(POPULATE_SRC)
    sim.load(prog)
    sim.mem.map(LAZY, 0x1000, Prot.READ | Prot.WRITE, "lazy", backed=False)
    sim.spawn_guest("g", prog.symbol("entry"))
    log = []

    def other():
        for _ in range(2):
            g = sim.uthread("g")
            log.append((g.pth_state.name, g.sysc.name if g.sysc else None))
            parlib.uthread_sched_yield()

    sim.spawn_python("o", other)
    res = sim.run()
    assert (res.end, sim.uthread("g").exit_value, sim.mem.read_u64(LAZY + 8)) == (RunEnd.ALL_EXITED, 42, 42)
    assert log == [("BLK_SYSC", "populate_va"), ("BLK_SYSC", "populate_va")]
    (fault,) = sim.trace.of_kind("fault")  # the store succeeds on its second execution
    assert (fault.get("trap"), fault.get("rip"), fault.get("aux")) == (14, prog.symbol("store"), LAZY + 8)
    (sysc,) = sim.trace.of_kind("syscall")
    assert (sysc.get("name"), sysc.get("args")) == ("populate_va", (LAZY + 8, 1))
    assert [r.uth for r in sim.trace.of_kind("run")] == ["g", "o", "o", "o", "g"]
    seq = kinds(sim, "op", "run", "fault", "syscall", "syscall_done")
    start = seq.index(("fault", "g"))
    assert seq[start:] == [
        ("fault", "g"),
        ("op sched_entry", "g"),
        ("op thread_refl_fault", "g"),
        ("syscall", ""),  # SYS_populate_va, from vcore context
        ("op thread_blockon_sysc", "g"),
        ("op sched_entry", ""),
        ("run", "o"),
        ("op thread_has_blocked", "o"),
        ("op thread_runnable", "o"),
        ("op sched_entry", ""),
        ("run", "o"),
        ("op thread_has_blocked", "o"),
        ("op thread_runnable", "o"),
        ("op sched_entry", ""),
        ("run", "o"),
        ("op sched_entry", ""),
        ("syscall_done", ""),
        ("op sched_entry", ""),
        ("run", "g"),
        ("op sched_entry", ""),
    ]


# -- refl faults: everything else -----------------------------------------------------------------------


def test_undefined_opcode_exits_minus_1_with_a_report():
    """#UD (ud2) under pthread: "Pthread has unhandled fault", trap 6, and the disassembled ud2; exit(-1)."""
    sim, prog, res = run_guest("entry:\n nop\n ud2\n ret\n")
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    lines = res.report.splitlines()
    assert lines[:2] == [
        "Pthread has unhandled fault: uthread 'g' trap 6 (#UD) err 0x0 aux 0x0",
        f"  at {prog.symbol('entry') + 1:#x}: 0f 0b  ud2",
    ]
    assert "  rip     0x0000000000400001" in lines
    assert kinds(sim)[-4:] == [("op sched_entry", "g"), ("op thread_refl_fault", "g"), ("process_exit", ""),
                               ("run_end", "")]  # fmt: skip


def test_a_breakpoint_is_handled_by_the_kernel_and_the_thread_carries_on():
    """int3 in user code: Akaros's kernel handles T_BRKPT itself (kern/arch/x86/trap.c, trap_dispatch:
    backtrace_user_ctx, handled), so nothing is reflected to pthread and the uthread runs on after it."""
    sim, _, res = run_guest("entry:\n nop\n int3\n mov rax, 7\n ret\n")
    assert (res.end, res.exit_status, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, None, 7)
    assert [r.get("op") for r in sim.trace.of_kind("op") if r.get("op") == "thread_refl_fault"] == []


def test_the_breakpoint_record_names_the_int3():
    """The kernel's breakpoint record carries the rip after it and the int3's disassembly."""
    sim, prog, _ = run_guest("entry:\n nop\n int3\n ret\n")
    (rec,) = sim.trace.of_kind("breakpoint")
    assert (rec.uth, rec.get("rip"), rec.get("insn")) == ("g", prog.symbol("entry") + 2,
                                                          f"{prog.symbol('entry') + 1:#x}: cc  int3")  # fmt: skip
