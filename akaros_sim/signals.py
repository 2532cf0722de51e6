"""Signals for guest code (parlib's sigstate): sigaction, handler frames, sigreturn.

A 2LS turns a fault into a signal with `prep_from_fault` (Akaros's
uthread_prep_signal_from_fault); the handler runs the next time the uthread
runs guest code, on its own stack below a saved-context frame, and returns
through the vdso's sigreturn trampoline, which restores the (possibly edited)
context and hands the uthread back to the 2LS with thread_paused.  A signal
with no handler destroys the process.
"""

from __future__ import annotations

import struct

from akaros_sim.context import REG_NAMES
from akaros_sim.memory import MemError
from akaros_sim.uthread import Uthread, uthread_yield

RED_ZONE = 128
SIGNAL_NAMES = {4: "SIGILL", 5: "SIGTRAP", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}
_EINVAL = -22 & ((1 << 64) - 1)


class Signals:
    """One process's signal state.  Lifecycle: built with the process; sigactions change while it runs."""

    def __init__(self, proc, sigreturn_trampoline: int) -> None:
        self.proc = proc
        self.sigactions: dict[int, int] = {}  # signo -> guest handler address
        self._trampoline = sigreturn_trampoline

    def sigaction(self, signo: int, handler: int) -> int:
        """Install (or, with 0, remove) the guest handler for signo; returns the old one."""
        if not 1 <= signo < 64:
            return _EINVAL
        old = self.sigactions.get(signo, 0)
        if handler:
            self.sigactions[signo] = handler
        else:
            self.sigactions.pop(signo, None)
        self.proc.trace_event(None, "sigaction", signo=signo, handler=handler)
        return old

    def send(self, uth: Uthread, signo: int) -> None:
        """pthread_kill: the handler runs the next time uth runs guest code."""
        uth.sig_pending = (signo, 0, 0)  # SI_USER
        self.proc.trace_event(None, "signal_sent", target=uth.name, signo=signo)

    def prep_from_fault(self, uth: Uthread, signo: int, code: int, addr: int) -> None:
        """Arrange for uth to run its handler for signo next time it runs (or die by default)."""
        proc = self.proc
        if uth.sigdata:
            proc.exit(-1, "exit", proc.fault_report(uth, "Uthread sighandler faulted"))
        uth.sig_pending = (signo, code, addr)
        proc.trace_event(None, "signal_prep", target=uth.name, signo=signo, code=code, addr=addr)

    def deliver(self, uth: Uthread) -> None:
        """Run the guest's handler for uth's pending signal on uth's stack (Akaros's __prep_sighandler)."""
        proc = self.proc
        signo, code, addr = uth.sig_pending
        uth.sig_pending = None
        handler = self.sigactions.get(signo)
        ctx = uth.ctx
        if handler is None:
            name = SIGNAL_NAMES.get(signo, f"signal {signo}")
            report = proc.fault_report(uth, f"{name} with no handler: the process is destroyed")
            proc.exit(128 + signo, f"{name} (default action)", report)
        # sigdata below the red zone: saved registers (trapframe order) + trap fields, then siginfo
        regs = ctx.regs()
        frame = struct.pack(f"<{len(regs)}Q", *regs.values()) + struct.pack("<3Q", ctx.trap_nr, ctx.err, ctx.aux)
        info = struct.pack("<3Q", signo, code, addr)
        base = (ctx.rsp - RED_ZONE - len(frame) - len(info)) & ~0xF
        sp = (base - 8) & ~0xF
        try:
            proc.mem.write(base, frame + info)
            proc.mem.write_u64(sp - 8, self._trampoline)  # the handler's return address
        except MemError as exc:  # vcore context faults on the uthread's stack: the process dies (as in Akaros)
            name = SIGNAL_NAMES.get(signo, f"signal {signo}")
            proc.exit(-1, "exit", proc.fault_report(
                uth, f"{name}: page fault in vcore context pushing the signal frame below rsp={ctx.rsp:#x} ({exc})"))
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
