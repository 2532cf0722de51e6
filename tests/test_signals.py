"""POSIX signals as Akaros delivers them: pthread_kill timing, default actions, SIG_IGN, masks, kill.

Each test cites the Akaros source it follows (github.com/brho/akaros):
user/parlib/signal.c, user/pthread/pthread.c, and glibc-akaros's
tools/compilers/gcc-glibc/glibc-2.19-akaros/sysdeps/akaros/{sigaction,kill}.c.
"""

from __future__ import annotations

import pytest

from akaros_sim.asm import assemble
from akaros_sim.signals import signal_name
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched
from schedops.roundrobin import RoundRobinSched

SIGQUIT, SIGKILL, SIGUSR1, SIGFPE, SIGTERM, SIGCHLD = 3, 9, 10, 8, 15, 17

# "g" installs `install` for SIGNO, spins 1000 times (signals arrive in here),
# records the handler count in `seen`, yields (through vcore context), and
# returns the handler count.
SPIN_YIELD = """
entry:
    mov edi, {signo}
    {install}
    mov eax, 0x1002             # sigaction
    syscall
    mov ecx, 1000
spin:
    dec rcx
    jnz spin
    mov rax, [rip + count]
    mov [rip + seen], rax
    mov eax, 0x1001             # uthread_yield
    syscall
    mov rax, [rip + count]
    ret
handler:                        # rdi = signo, rsi = &siginfo
    inc qword ptr [rip + count]
    mov [rip + got_signo], rdi
    mov rax, [rsi + 8]
    mov [rip + got_code], rax
    ret
.data
count: .quad 0
seen: .quad 99
got_signo: .quad 0
got_code: .quad 99
"""

HANDLER = "lea rsi, [rip + handler]"


def run(src: str, *, sched=None, setup=None, until_ns=None, vcores: int = 1):
    sim = Simulation(vcores=vcores, seed=1)
    sim.set_sched(sched or PthreadSched())
    prog = assemble(src)
    sim.load(prog)
    sim.spawn_guest("g", prog.symbol("entry"))
    if setup is not None:
        setup(sim)
    return sim, prog, sim.run(until_ns=until_ns)


def u64(sim, prog, name: str) -> int:
    return sim.mem.read_u64(prog.symbol(name))


def index(sim, kind: str, **details) -> int:
    """Position in the trace of the first record of kind with these details."""
    for i, rec in enumerate(sim.trace.records):
        if rec.kind == kind and all(rec.get(k) == v or (k == "uth" and rec.uth == v) for k, v in details.items()):
            return i
    raise AssertionError(f"no {kind} {details} in the trace")


def spin_yield(signo: int = SIGUSR1, install: str = HANDLER) -> str:
    return SPIN_YIELD.format(signo=signo, install=install)


def send_at(insns: int, signo: int = SIGUSR1):
    return lambda sim: sim.at_insns("g", insns, "pthread_kill", sim.signal_thread, "g", signo)


# -- item 1: pthread_kill only marks the signal pending ------------------------------------------


def test_pthread_kill_waits_until_sched_entry_runs_the_thread():
    """signal.c, uthread_signal: pthread_kill only sets the bit in sigstate.pending; pthread.c,
    pth_sched_entry calls uthread_prep_pending_signals just before run_uthread.  So the handler
    does not run while the thread spins; it runs when the thread is run again after its yield,
    before the code after the yield."""
    sim, prog, res = run(spin_yield(), setup=send_at(300))
    assert res.end is RunEnd.ALL_EXITED
    assert u64(sim, prog, "seen") == 0  # not taken while spinning in guest code
    assert sim.uthread("g").exit_value == 1  # taken before it went on after the yield
    assert (u64(sim, prog, "got_signo"), u64(sim, prog, "got_code")) == (SIGUSR1, 0)  # SI_USER
    sent = index(sim, "signal_sent", target="g")
    entry = next(i for i, r in enumerate(sim.trace.records) if i > sent and r.kind == "op" and r.get("op") == "sched_entry")
    assert sent < entry < index(sim, "signal_prep", target="g") < index(sim, "signal", uth="g")
    assert sim.trace.of_kind("signal")[0].get("signo") == SIGUSR1


def test_signals_do_not_queue():
    """signal.c, uthread_signal is sigaddset: two pthread_kills before the thread runs again are one handler run."""
    def setup(sim):
        send_at(300)(sim)
        send_at(900)(sim)

    sim, _, _ = run(spin_yield(), setup=setup)
    assert len(sim.trace.of_kind("signal_sent")) == 2
    assert sim.uthread("g").exit_value == 1
    assert len(sim.trace.of_kind("signal")) == 1


def test_a_tick_takes_the_signal_through_run_current_uthread():
    """pthread.c, pth_sched_entry: with a current uthread it calls uthread_prep_pending_signals
    before run_current_uthread, so a notification (here a tick storm) is enough: the spinning
    thread takes the signal on its way back from vcore context, without yielding."""
    src = """
entry:
    mov edi, 10
    lea rsi, [rip + handler]
    mov eax, 0x1002
    syscall
spin:
    cmp qword ptr [rip + count], 0
    je spin
    mov rax, 5
    ret
handler:
    inc qword ptr [rip + count]
    ret
.data
count: .quad 0
"""
    def setup(sim):
        send_at(100)(sim)
        sim.tick_storm(0, 10**9, 500, 500)

    sim, _, res = run(src, setup=setup)
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 5)
    sent = index(sim, "signal_sent", target="g")
    notify = next(i for i, r in enumerate(sim.trace.records) if i > sent and r.kind == "notify")
    assert sent < notify < index(sim, "signal_prep", target="g") < index(sim, "signal", uth="g")


def test_a_2ls_built_on_the_policy_base_takes_pending_signals_too():
    """schedops/base.py follows pth_sched_entry: uthread_prep_pending_signals before run_uthread."""
    sim, prog, res = run(spin_yield(), sched=RoundRobinSched(), setup=send_at(300))
    assert (res.end, u64(sim, prog, "seen"), sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 0, 1)


# -- item 2: default actions (glibc-akaros sysdeps/akaros/sigaction.c, default_handlers) -----------


@pytest.mark.parametrize(
    "signo,status",
    [
        (SIGUSR1, 10),  # default_term_handler: proc_destroy(pid, signr)
        (SIGTERM, 15),
        (SIGKILL, 9),  # pthread_kill(SIGKILL) is an ordinary default_term_handler
        (23, 23),  # SIGURG terminates in Akaros's table (Linux ignores it)
        (SIGQUIT, 128 + 3),  # default_core_handler: proc_destroy(pid, 128 + signr)
        (25, 128 + 25),  # SIGXFSZ dumps core
    ],
    ids=["SIGUSR1", "SIGTERM", "SIGKILL", "SIGURG", "SIGQUIT", "SIGXFSZ"],
)  # fmt: skip
def test_default_action_terminates_with_akaros_status(signo, status):
    """sigaction.c, default_term_handler / default_core_handler: proc_destroy with signr or (1 << 7) + signr,
    when the thread is next run (it never gets past its yield).  The report names the signal, not a trap."""
    sim, prog, res = run(spin_yield(signo, "xor esi, esi"), setup=send_at(300, signo))
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, status)
    assert u64(sim, prog, "seen") == 0
    headline = res.report.splitlines()[0]
    assert headline.startswith(f"{signal_name(signo)} ({signo}) sent to uthread 'g' with no handler")
    assert "trap" not in res.report
    assert index(sim, "signal_prep", target="g") < index(sim, "process_exit")


@pytest.mark.parametrize("signo", [SIGCHLD, 24, 28, 30, 40, 19, 20, 18], ids=[
    "SIGCHLD", "SIGXCPU", "SIGWINCH", "SIGPWR", "signal40", "SIGSTOP", "SIGTSTP", "SIGCONT"])
def test_default_action_ignores(signo):
    """sigaction.c, default_handlers: SIGCHLD, SIGXCPU, SIGWINCH, SIGPWR and 32.. are SIGACT_IGN; the stop
    and continue handlers only print that they are unsupported.  The thread goes on and exits normally."""
    sim, _, res = run(spin_yield(signo, "xor esi, esi"), setup=send_at(300, signo))
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 0)
    assert [r.get("signo") for r in sim.trace.of_kind("signal_ignored")] == [signo]
    assert sim.trace.of_kind("signal") == []


def test_sig_ign_ignores_a_signal():
    """sigaction.c, trigger_posix_signal: SIG_IGN (1) returns at once; before, 1 was taken as a handler address."""
    sim, _, res = run(spin_yield(SIGUSR1, "mov esi, 1"), setup=send_at(300))
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 0)
    assert sim.trace.of_kind("signal_ignored")[0].get("action") == "SIG_IGN"
    assert sim.trace.of_kind("signal") == []


def test_an_unhandled_fault_signal_still_reports_the_fault():
    """default_core_handler for a fault: 128 + signo, and the report shows the trap."""
    sim, _, res = run("entry:\n xor ecx, ecx\n div rcx\n ret\n")
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 128 + SIGFPE)
    assert res.report.startswith("SIGFPE with no handler: the process is destroyed: uthread 'g' trap 0 (#DE)")


# -- masks (signal.c, __sigprocmask; pthread.c, pthread_sigmask) -------------------------------------

MASK_SRC = """
entry:
    mov edi, 10
    lea rsi, [rip + handler]
    mov eax, 0x1002             # sigaction(SIGUSR1, handler)
    syscall
    xor edi, edi                # SIG_BLOCK
    mov esi, 0x200              # sigset {SIGUSR1}: bit 10 - 1
    mov eax, 0x1005             # sigprocmask
    syscall
    mov ecx, 1000
spin:
    dec rcx
    jnz spin
    mov eax, 0x1001             # yield: pending but blocked, not taken
    syscall
    mov rax, [rip + count]
    mov [rip + seen_blocked], rax
    mov edi, 1                  # SIG_UNBLOCK
    mov esi, 0x200
    mov eax, 0x1005
    syscall
    mov [rip + old_mask], rax
    mov eax, 0x1001             # pthread_sigmask's yield: now it is taken
    syscall
    mov rax, [rip + count]
    ret
handler:
    inc qword ptr [rip + count]
    ret
.data
count: .quad 0
seen_blocked: .quad 99
old_mask: .quad 0
"""


def test_a_blocked_signal_stays_pending_until_unblocked():
    """signal.c, uthread_prep_pending_signals takes only pending & ~mask; __sigprocmask changes the mask and
    returns the old one; pthread.c, pthread_sigmask then yields so that sched_entry takes what it unblocked."""
    sim, prog, res = run(MASK_SRC, setup=send_at(300))
    assert res.end is RunEnd.ALL_EXITED
    assert (u64(sim, prog, "seen_blocked"), u64(sim, prog, "old_mask")) == (0, 0x200)
    assert sim.uthread("g").exit_value == 1
    unblock = [i for i, r in enumerate(sim.trace.records) if r.kind == "sigprocmask"][1]
    assert sim.trace.records[unblock].get("mask") == 0
    assert unblock < index(sim, "signal_prep", target="g") < index(sim, "signal", uth="g")


def test_a_masked_fault_signal_restarts_the_faulting_instruction():
    """signal.c, uthread_prep_signal_from_fault does nothing for a masked signal, and pthread.c's
    __signal_and_restart makes the thread runnable anyway: the div faults again, for ever."""
    src = """
entry:
    mov edi, 0                  # SIG_BLOCK
    mov esi, 0x80               # {SIGFPE}: bit 8 - 1
    mov eax, 0x1005
    syscall
    xor ecx, ecx
    div rcx
    ret
"""
    sim, _, res = run(src, until_ns=200_000)
    assert res.end is RunEnd.TIME_BUDGET
    faults = sim.trace.of_kind("fault")
    assert len(faults) > 10 and len({f.get("rip") for f in faults}) == 1
    assert len(sim.trace.of_kind("signal_masked")) in (len(faults), len(faults) - 1)
    assert sim.trace.of_kind("signal") == [] and sim.trace.of_kind("signal_prep") == []


# -- process-wide signals (glibc-akaros kill.c; signal.c handle_event; pthread.c pth_got_posix_signal) -


def kill_at(t: int, signo: int):
    return lambda sim: sim.at(t, "kill", sim.signal_thread, None, signo)


def test_kill_without_a_handler_terminates_from_vcore_context():
    """kill.c sends EV_POSIX_SIGNAL; handle_event calls got_posix_signal, which runs trigger_posix_signal
    in vcore context: SIGTERM's default_term_handler destroys the process with status 15."""
    sim, _, res = run(spin_yield(SIGUSR1), setup=kill_at(500, SIGTERM))
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, SIGTERM)
    assert res.report.splitlines()[0].startswith("SIGTERM (15) sent to the process")
    assert index(sim, "kill") < index(sim, "event", ev_type=12) < index(sim, "posix_signal") < index(sim, "process_exit")


def test_kill_with_a_handler_runs_it_on_the_current_uthread():
    """pth_got_posix_signal hands the handler the current uthread's context; here it goes to that
    uthread (as pthread_kill), which takes it as sched_entry resumes it."""
    src = spin_yield(SIGUSR1).replace("mov ecx, 1000", "mov ecx, 3000")
    sim, prog, res = run(src, setup=kill_at(500, SIGUSR1))
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 1)
    order = [index(sim, "kill"), index(sim, "event", ev_type=12), index(sim, "posix_signal"),
             index(sim, "signal_prep", target="g"), index(sim, "signal", uth="g")]  # fmt: skip
    assert order == sorted(order)


def test_kill_sigkill_destroys_with_status_0():
    """kill.c: kill(pid, SIGKILL) is proc_destroy(pid, 0), so the exit status is 0."""
    sim, _, res = run(spin_yield(SIGUSR1), setup=kill_at(500, SIGKILL))
    assert (res.end, res.exit_status) == (RunEnd.PROCESS_EXITED, 0)
    assert sim.trace.of_kind("posix_signal") == []


def test_kill_sigchld_is_ignored():
    """sigaction.c: SIGCHLD's default is SIGACT_IGN, in vcore context too."""
    sim, _, res = run(spin_yield(SIGUSR1), setup=kill_at(500, SIGCHLD))
    assert (res.end, sim.uthread("g").exit_value) == (RunEnd.ALL_EXITED, 0)
    assert [r.get("signo") for r in sim.trace.of_kind("signal_ignored")] == [SIGCHLD]


def test_same_seed_same_trace():
    traces = []
    for _ in range(2):
        sim, _, _ = run(MASK_SRC, setup=send_at(300))
        traces.append([(r.t, r.kind, r.uth, r.details) for r in sim.trace.records])
    assert traces[0] == traces[1]
