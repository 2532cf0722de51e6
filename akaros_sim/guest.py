"""The guest executor: run a guest uthread's context, dispatch its syscalls, reflect its traps.

A guest slice runs on the shared CPU for a budget of instructions bounded by
`Engine.guest_limit` (the horizon plus a quantum, never past the next kernel
event), the run's instruction budget, the vcore's tick storm and the
uthread's next instruction trigger.  After the slice the executor first
catches up (`Engine.sync`), so the syscall, fault or notification that ended
the slice is handled at a time no peer has passed: only guest code itself
runs ahead.

Also here: instruction-counted injections (`at_insns`), tick storms (a tick
every K guest instructions), and the TSC, which reads the vcore's clock plus
the instructions retired so far in the running slice.
"""

from __future__ import annotations

from akaros_sim.context import TrapNr
from akaros_sim.cpu import BudgetSpent, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn
from akaros_sim.engine import Entry, Interrupt
from akaros_sim.guest_calls import GUEST_CALL_NAMES, guest_call
from akaros_sim.join import uthread_exit
from akaros_sim.kernel import (
    SYS_guest_return,
    SYS_sigaction,
    SYS_sigprocmask,
    SYS_sigreturn,
    SYS_uthread_exit,
    SYS_uthread_yield,
)
from akaros_sim.timeline import BLOCKED
from akaros_sim.uthread import Uthread, uthread_sched_yield

U64 = (1 << 64) - 1


class Guest:
    """Runs guest contexts for one process.  Lifecycle: built with the process; used while it runs."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.triggers: dict[str, list] = {}  # uthread name -> [(insns, seq, what, fn, args)], sorted
        self._trigger_seq = 0
        self.max_insns: int | None = None  # the run's instruction budget
        # the running slice, for the TSC: the vcore clock and retired count when it started
        self._slice_clock = 0
        self._slice_retired = 0

    # -- running a context --------------------------------------------------------------

    def run(self, uth: Uthread, call: bool = False) -> int:
        """Run uth's guest context until it exits (or, with call, until it returns to call_guest)."""
        proc = self.proc
        engine, cpu, costs = proc.engine, proc.cpu, proc.costs
        insn_ns, slice_insns = costs.insn_ns, costs.slice_insns
        ctx = uth.ctx
        while True:
            vc = uth.vcore
            if uth.sig_pending is not None:
                proc.signals.deliver(uth)
            room = (engine.guest_limit() - vc.clock) // insn_ns  # stop exactly at a kernel event
            budget = slice_insns if room >= slice_insns else (room if room > 1 else 1)
            if self.max_insns is not None:
                budget = max(1, min(budget, self.max_insns - cpu.retired))
            if vc.storm is not None:
                budget = max(1, min(budget, vc.storm_left))
            triggers = self.triggers.get(uth.name)
            if triggers:
                budget = max(1, min(budget, triggers[0][0] - uth.insns))
            self._slice_clock, self._slice_retired = vc.clock, cpu.retired
            stop = cpu.run(ctx, budget)
            engine.run_ahead(stop.insns * insn_ns)  # guest code may run ahead; sync before acting
            uth.insns += stop.insns
            if vc.storm is not None:
                self._storm_account(vc, stop.insns)
            if triggers:
                self._fire_triggers(uth)
            if isinstance(stop, BudgetSpent):
                self.preempt_point(uth)
                continue
            if isinstance(stop, SyscallStop):
                engine.sync()  # the syscall acts on shared state: nobody may be behind
                if call and stop.nr == SYS_guest_return:
                    return stop.args[0]  # the trampoline passes the routine's rax in rdi
                ctx.rax = self._syscall(uth, stop) & U64
                self.preempt_point(uth)
                continue
            if stop.trap_nr == TrapNr.BP:
                self._breakpoint(uth, stop)
                continue
            stop = proc.kernel.mm.handle_page_fault(uth, stop)  # an anonymous page: zero-filled, not reflected
            if stop is None:
                self.preempt_point(uth)
                continue
            self._reflect_fault(uth, stop)

    def preempt_point(self, uth: Uthread) -> None:
        """In uthread context: catch up with the peers, then take a pending notification."""
        proc = self.proc
        engine = proc.engine
        if self.max_insns is not None and proc.cpu.retired >= self.max_insns:
            engine.stop_soon = True
            engine.yield_to_engine()  # the loop sees the budget and ends the run
        engine.sync()
        vc = uth.vcore
        if vc.notif_pending and not vc.notif_disabled:
            proc.trace_event(vc, "notify", uth=uth)
            uth.interrupted = Interrupt.NOTIFY
            engine.enter_vcore_context(vc, Entry.NOTIFY)

    def tsc(self) -> int:
        """What rdtsc reads: the running vcore's clock plus the slice's instructions so far."""
        proc = self.proc
        vc = proc.engine.current
        if vc is None:
            return proc.engine.now
        return self._slice_clock + (proc.cpu.instructions() - self._slice_retired) * proc.costs.insn_ns

    def _syscall(self, uth: Uthread, stop: SyscallStop) -> int:
        proc = self.proc
        nr, a = stop.nr, stop.args
        if nr == SYS_uthread_exit:
            uthread_exit(proc, uth, a[0])
        if nr == SYS_uthread_yield:
            uthread_sched_yield(proc, uth)
            return 0
        if nr == SYS_sigaction:
            return proc.signals.sigaction(a[0], a[1])
        if nr == SYS_sigprocmask:
            return proc.signals.sigprocmask(uth, a[0], a[1])
        if nr == SYS_sigreturn:
            proc.signals.sigreturn(uth)
            return uth.ctx.rax
        if nr in GUEST_CALL_NAMES:
            return guest_call(proc, uth, nr, a)
        return proc.syscall(uth, nr, a)

    def _reflect_fault(self, uth: Uthread, stop: TrapStop) -> None:
        proc = self.proc
        engine = proc.engine
        engine.sync()
        proc.set_uth_state(uth, BLOCKED, "fault", uth.vcore)  # from the trap on: the kernel's reflection is not its time
        engine.advance(proc.costs.fault_reflect_ns)
        vc = uth.vcore
        record = proc.record
        if record is not None:  # (the instruction is described only for the record)
            trap, rip = stop.trap_nr, uth._ctx.rip
            insn = describe_insn(proc.mem, trap_insn_addr(proc.mem, trap, rip))
            record((engine.time(), vc.id, uth.name, "fault",
                    (("trap", trap), ("err", stop.err), ("aux", stop.aux), ("rip", rip), ("insn", insn))))  # fmt: skip
        uth.interrupted = Interrupt.FAULT
        engine.enter_vcore_context(vc, Entry.FAULT)

    def _breakpoint(self, uth: Uthread, stop: TrapStop) -> None:
        """A user int3: the kernel handles it itself (kern/arch/x86/trap.c, trap_dispatch: T_BRKPT ->
        backtrace_user_ctx), records where it was, and the uthread carries on after it."""
        proc = self.proc
        engine = proc.engine
        engine.sync()
        engine.advance(proc.costs.fault_reflect_ns)
        ctx = uth.ctx
        ctx.clear_trap()
        proc.trace_event(uth.vcore, "breakpoint", uth=uth, rip=ctx.rip,
                         insn=describe_insn(proc.mem, trap_insn_addr(proc.mem, TrapNr.BP, ctx.rip)))  # fmt: skip
        self.preempt_point(uth)

    # -- injections at an instruction count --------------------------------------------------

    def at_insns(self, thread: str, insns: int, what: str, fn, args) -> None:
        """Run fn(*args) in kernel context when uthread `thread` has retired `insns` instructions."""
        triggers = self.triggers.setdefault(thread, [])
        triggers.append((insns, self._trigger_seq, what, fn, args))
        self._trigger_seq += 1
        triggers.sort(key=lambda t: (t[0], t[1]))

    def _fire_triggers(self, uth: Uthread) -> None:
        proc = self.proc
        triggers = self.triggers.get(uth.name)
        fired = False
        while triggers and uth.insns >= triggers[0][0]:
            n, _, what, fn, args = triggers.pop(0)

            def inject(what=what, fn=fn, args=args, n=n):
                proc.trace_event(None, "inject", what=what, at_insns=n, thread=uth.name)
                fn(*args)

            proc.engine.schedule(uth.vcore.clock, "inject", inject)
            fired = True
        if fired:
            proc.engine.sync()  # the engine runs the injection before uth goes on

    # -- tick storms -----------------------------------------------------------------------------

    def storm_start(self, vc, end_ns: int, lo: int, hi: int) -> None:
        proc = self.proc
        vc.storm = (end_ns, lo, hi)
        vc.storm_left = proc.rng.randint(lo, hi)
        proc.trace_event(vc, "tick_storm", until=end_ns, min_insns=lo, max_insns=hi)

    def _storm_account(self, vc, insns: int) -> None:
        """Count guest instructions run on vc against its storm; tick when K have run."""
        end_ns, lo, hi = vc.storm
        if vc.clock >= end_ns:
            vc.storm = None
            return
        vc.storm_left -= insns
        if vc.storm_left <= 0:
            self.proc.engine.sync()  # the tick is recorded at a time nobody has passed
            self.proc.kernel.raise_tick(vc, storm=True)
            vc.storm_left = self.proc.rng.randint(lo, hi)


def trap_insn_addr(mem, trap_nr: int, rip: int) -> int:
    """Where the instruction behind a trap is: rip for faults; for a breakpoint
    or `int n` trap (rip already past it) the int3 / int imm8 just before."""
    if trap_nr in (TrapNr.BP, TrapNr.SYSCALL, TrapNr.DB):
        before = mem.read_prefix(rip - 2, 2) if rip >= 2 else b""
        if before[-1:] in (b"\xcc", b"\xf1"):
            return rip - 1
        if len(before) == 2 and before[0] == 0xCD:
            return rip - 2
    return rip
