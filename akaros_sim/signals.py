"""Signals for guest code (parlib's sigstate): sigaction, masks, pending signals, handler frames, sigreturn.

Two ways in, as in Akaros (user/parlib/signal.c):

* a fault: the 2LS calls `prep_from_fault` (uthread_prep_signal_from_fault)
  from thread_refl_fault; unless the signal is masked, the handler frame is
  pushed the next time the uthread runs guest code.  A masked fault signal is
  dropped and the 2LS restarts the faulting instruction, which faults again.
* pthread_kill (`send`, uthread_signal) only marks the signal pending on the
  uthread.  The 2LS's sched_entry calls `prep_pending` (parlib's
  uthread_prep_pending_signals) when it is about to run the uthread: the
  lowest pending, unmasked signal is taken then.  A uthread spinning in guest
  code does not see it until it next passes through vcore context.

A process-wide signal (kill, EV_POSIX_SIGNAL) reaches the 2LS's
got_posix_signal, which calls `posix_signal`.

What a taken signal does is its sigaction: a guest handler runs on the
uthread's stack below a saved-context frame and returns through the vdso's
sigreturn trampoline, which restores the (possibly edited) context and hands
the uthread back with thread_paused; SIG_IGN (1) ignores it; SIG_DFL (0) does
glibc's default (sysdeps/akaros/sigaction.c, default_handlers): terminate
with the signal number as exit status, dump core (128 + signo), or ignore
(stop and continue signals print a message there and do nothing).
"""

from __future__ import annotations

import struct

from akaros_sim.context import REG_NAMES
from akaros_sim.guestmem import write_for_guest
from akaros_sim.kernel import EV_POSIX_SIGNAL, EventMsg, EventQueue
from akaros_sim.memory import MemError
from akaros_sim.uthread import Uthread, UthreadKind, uthread_yield

RED_ZONE = 128
SIG_DFL, SIG_IGN = 0, 1
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
SI_USER = 0
SIGKILL = 9
SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
    9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
    16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
    23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO",
    30: "SIGPWR", 31: "SIGSYS",
}  # fmt: skip
# glibc-akaros's default_handlers (sysdeps/akaros/sigaction.c); signals 32..63 are ignored
TERM, CORE, IGNORE, STOP, CONT = "terminate", "core", "ignore", "stop", "continue"
DEFAULT_ACTIONS = {
    1: TERM, 2: TERM, 3: CORE, 4: CORE, 5: CORE, 6: CORE, 7: CORE, 8: CORE, 9: TERM, 10: TERM, 11: CORE,
    12: TERM, 13: TERM, 14: TERM, 15: TERM, 16: TERM, 17: IGNORE, 18: CONT, 19: STOP, 20: STOP, 21: STOP,
    22: STOP, 23: TERM, 24: IGNORE, 25: CORE, 26: TERM, 27: TERM, 28: IGNORE, 29: TERM, 30: IGNORE, 31: CORE,
}  # fmt: skip
_EINVAL = -22 & ((1 << 64) - 1)
_ALL = (1 << 64) - 1


def signal_name(signo: int) -> str:
    return SIGNAL_NAMES.get(signo, f"signal {signo}")


def sigbit(signo: int) -> int:
    """A signal's bit in a sigset_t (glibc's __sigmask: bit signo - 1)."""
    return 1 << (signo - 1)


def default_action(signo: int) -> str:
    return DEFAULT_ACTIONS.get(signo, IGNORE)


class Signals:
    """One process's signal state.  Lifecycle: built with the process; sigactions change while it runs."""

    def __init__(self, proc, sigreturn_trampoline: int) -> None:
        self.proc = proc
        self.sigactions: dict[int, int] = {}  # signo -> guest handler address or SIG_IGN; absent: SIG_DFL
        self._trampoline = sigreturn_trampoline

    def sigaction(self, signo: int, handler: int) -> int:
        """Install the guest handler for signo (SIG_DFL 0, SIG_IGN 1, or an address); returns the old one."""
        if not 1 <= signo < 64:
            return _EINVAL
        old = self.sigactions.get(signo, SIG_DFL)
        if handler != SIG_DFL:
            self.sigactions[signo] = handler
        else:
            self.sigactions.pop(signo, None)
        self.proc.trace_event(None, "sigaction", signo=signo, handler=handler)
        return old

    def sigprocmask(self, uth: Uthread, how: int, sigset: int) -> int:
        """signal.c's __sigprocmask on uth's mask (a sigset_t value, bit signo-1); returns the old mask.

        Like Akaros it does not run newly unblocked signals itself: pthread_sigmask
        yields afterwards so that sched_entry preps them."""
        old = uth.sig_mask
        if how == SIG_BLOCK:
            uth.sig_mask = old | sigset
        elif how == SIG_UNBLOCK:
            uth.sig_mask = old & ~sigset & _ALL
        elif how == SIG_SETMASK:
            uth.sig_mask = sigset & _ALL
        else:
            return _EINVAL
        self.proc.trace_event(None, "sigprocmask", uth=uth, how=how, mask=uth.sig_mask)
        return old

    def send(self, uth: Uthread | None, signo: int) -> None:
        """pthread_kill (uthread_signal): mark signo pending on uth; nothing runs yet.  None: kill."""
        if uth is None:
            self.kill(signo)
            return
        uth.sig_pending_set |= sigbit(signo)
        self.proc.trace_event(None, "signal_sent", target=uth.name, signo=signo)

    def prep_pending(self, uth: Uthread) -> None:
        """uthread_prep_pending_signals: called by sched_entry before it runs uth.

        Unless uth is already in a handler, take its lowest pending, unmasked
        signal: its action happens when uth runs guest code next.  (Akaros runs
        every pending handler in one handler context; here each is taken on a
        separate pass, lowest first, which is the same order.)"""
        if uth.sigdata or uth.sig_pending is not None:
            return
        ready = uth.sig_pending_set & ~uth.sig_mask
        if not ready:
            return
        signo = (ready & -ready).bit_length()
        uth.sig_pending_set &= ~sigbit(signo)
        uth.sig_pending = (signo, SI_USER, 0)
        self.proc.trace_event(None, "signal_prep", target=uth.name, signo=signo, code=SI_USER, addr=0)

    def prep_from_fault(self, uth: Uthread, signo: int, code: int, addr: int) -> None:
        """Arrange for uth to run its handler for signo next time it runs (or die by default).

        A masked signal is not prepared at all (uthread_prep_signal_from_fault):
        the uthread restarts at the faulting instruction."""
        proc = self.proc
        if uth.sig_mask & sigbit(signo):
            proc.trace_event(None, "signal_masked", target=uth.name, signo=signo, code=code, addr=addr)
            return
        if uth.sigdata:
            proc.exit(-1, "exit", proc.fault_report(uth, "Uthread sighandler faulted"))
        uth.sig_pending = (signo, code, addr)
        proc.trace_event(None, "signal_prep", target=uth.name, signo=signo, code=code, addr=addr)

    def kill(self, signo: int) -> None:
        """glibc-akaros's kill (sysdeps/akaros/kill.c): SIGKILL is proc_destroy(pid, 0), so the
        status is 0; any other signal is an EV_POSIX_SIGNAL event (SYS_notify) for the 2LS."""
        proc = self.proc
        proc.trace_event(None, "kill", signo=signo)
        if signo == SIGKILL:
            proc.exit(0, "SIGKILL", "SIGKILL sent to the process: proc_destroy(pid, 0)")
        else:
            proc.kernel.send_event(EventQueue(), EventMsg(EV_POSIX_SIGNAL, arg2=signo))

    def posix_signal(self, signo: int, uth: Uthread | None) -> None:
        """A process-wide signal, from the 2LS's got_posix_signal (in vcore context).

        Default and ignored actions happen here, as trigger_posix_signal does them
        in vcore context.  A guest handler cannot run in vcore context here, so it
        goes as a pthread_kill would to uth (the vcore's current uthread, whose
        context Akaros hands the handler) or, with none, to the oldest live guest
        uthread (where Akaros would build a fake context)."""
        proc = self.proc
        if uth is None or uth.done or uth.kind is not UthreadKind.GUEST:
            uth = next((u for u in proc.uthreads if not u.done and u.kind is UthreadKind.GUEST), None)
        action = self.sigactions.get(signo, SIG_DFL)
        if action == SIG_DFL:
            self._default(signo, None, f"{signal_name(signo)} ({signo}) sent to the process")
        elif action == SIG_IGN:
            proc.trace_event(None, "signal_ignored", signo=signo, action="SIG_IGN")
        elif uth is None:
            proc.trace_event(None, "signal_ignored", signo=signo, action="no guest uthread")
        else:
            self.send(uth, signo)

    def _default(self, signo: int, uth: Uthread | None, what: str, fault: bool = False) -> None:
        """glibc-akaros's default action for signo: proc_destroy with signo (terminate) or 128 + signo (core)."""
        proc = self.proc
        action = default_action(signo)
        if action not in (TERM, CORE):
            proc.trace_event(None, "signal_ignored", signo=signo, action=f"default {action}")
            return
        status = signo if action == TERM else 128 + signo
        name = signal_name(signo)
        if fault:
            report = proc.fault_report(uth, f"{name} with no handler: the process is destroyed")
        else:
            verb = "terminates the process" if action == TERM else "dumps core"
            report = f"{what} with no handler: the default action {verb} (exit status {status})"
        proc.exit(status, f"{name} (default action)", report)

    def deliver(self, uth: Uthread) -> None:
        """Run the action for uth's taken signal on uth's stack (Akaros's __prep_sighandler + trigger_posix_signal)."""
        proc = self.proc
        signo, code, addr = uth.sig_pending
        uth.sig_pending = None
        handler = self.sigactions.get(signo, SIG_DFL)
        ctx = uth.ctx
        name = signal_name(signo)
        if handler in (SIG_DFL, SIG_IGN):
            if handler == SIG_DFL:
                self._default(signo, uth, f"{name} ({signo}) sent to uthread {uth.name!r}", fault=code != SI_USER)
            else:
                proc.trace_event(uth.vcore, "signal_ignored", uth=uth, signo=signo, action="SIG_IGN")
            ctx.clear_trap()  # the context goes on as it was: a fault's instruction runs again
            return
        # sigdata below the red zone: saved registers (trapframe order) + trap fields, then siginfo
        regs = ctx.regs()
        frame = struct.pack(f"<{len(regs)}Q", *regs.values()) + struct.pack("<3Q", ctx.trap_nr, ctx.err, ctx.aux)
        info = struct.pack("<3Q", signo, code, addr)
        base = (ctx.rsp - RED_ZONE - len(frame) - len(info)) & ~0xF
        sp = (base - 8) & ~0xF
        def died(exc) -> str:  # vcore context faults on the uthread's stack: the process dies (as in Akaros)
            return proc.fault_report(
                uth, f"{name}: page fault in vcore context pushing the signal frame below rsp={ctx.rsp:#x} ({exc})")

        what = "pushing the signal frame"
        if not (write_for_guest(proc, base, frame + info, what, report=died)
                and write_for_guest(proc, sp - 8, self._trampoline, what, report=died)):  # the handler's return address
            return
        uth.sigdata = base
        proc.timeline.signal(uth.name)
        proc.trace_event(uth.vcore, "signal", uth=uth, signo=signo, code=code, addr=addr, handler=handler, frame=base)
        ctx.rip, ctx.rsp = handler, sp - 8
        ctx.rdi, ctx.rsi, ctx.rdx = signo, base + len(frame), base
        ctx.clear_trap()

    def sigreturn(self, uth: Uthread) -> None:
        """Back from a guest handler: restore the (possibly edited) saved context, then thread_paused."""
        proc = self.proc
        base = uth.sigdata
        if not base:
            return
        try:
            values = struct.unpack(f"<{len(REG_NAMES)}Q", proc.mem.read(base, 8 * len(REG_NAMES)))
        except MemError as exc:  # the handler unmapped its own signal frame
            proc.exit(-1, "exit", proc.fault_report(
                uth, f"sigreturn: page fault in vcore context reading the signal frame at {base:#x} ({exc})"))
        uth.sigdata = 0
        proc.cpu.forget(uth.ctx)
        for name, value in zip(REG_NAMES, values, strict=True):
            setattr(uth.ctx, name, value)
        uth.ctx.clear_trap()
        proc.trace_event(uth.vcore, "sigreturn", uth=uth, rip=uth.ctx.rip)
        proc.engine.advance(proc.costs.python_step_ns)
        uthread_yield(proc, proc.engine.current, uth, True, self._exit_sighandler_cb)

    def _exit_sighandler_cb(self, uth: Uthread, _arg) -> None:
        self.proc.call_op("thread_paused", uth)
