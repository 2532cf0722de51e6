"""Simulation: one process on the simulated machine, owning everything (SimPy's Environment).

A Simulation holds the address space and CPU, the engine (clocks, events,
vcores), the kernel, the 2LS's `sched_ops` table, the trace and a seeded
`random.Random`.  Nothing lives at module level: two simulations run side by
side in one process.

Lifecycle: build (programs, 2LS, threads) -> run() once -> inspect results.
"""

from __future__ import annotations

import enum
import random
import struct
import traceback

import attrs
from greenlet import GreenletExit, getcurrent

from akaros_sim.context import TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn
from akaros_sim.engine import Costs, Engine, EngineError, SimGreenlet, StopSimulation, VcoreState
from akaros_sim.kernel import (
    SYS_guest_return,
    SYS_sigaction,
    SYS_sigreturn,
    SYS_uthread_exit,
    SYS_uthread_yield,
    EventQueue,
    Kernel,
    ProcState,
    SyscState,
)
from akaros_sim.memory import PAGE_SIZE, AddressSpace, Prot
from akaros_sim.sched_ops import SchedOps
from akaros_sim.uthread import Uthread, UthreadEntry, UthreadKind
from akaros_sim import vcore as vcore_mod

# Guest layout the runtime owns.
VDSO = 0x7FFF_FFFE_0000  # runtime trampolines (R-X)
STACK_AREA = 0x7FF0_0000_0000  # guest stacks grow down from here, one slot per uthread
DEFAULT_STACK = 64 * 1024
TLS_AREA = 0x7FE0_0000_0000  # per-uthread TLS blocks (fs_base), lazily backed
TLS_AREA_SIZE = 16 << 20
TLS_SLOT = 64
RED_ZONE = 128

# vdso trampolines: where a returning guest uthread, signal handler or call_guest lands.
_VDSO_EXIT = VDSO  # mov rdi, rax; mov eax, SYS_uthread_exit; syscall; ud2
_VDSO_SIGRETURN = VDSO + 0x20  # mov eax, SYS_sigreturn; syscall; ud2
_VDSO_GUEST_RETURN = VDSO + 0x40  # mov rdi, rax; mov eax, SYS_guest_return; syscall; ud2
_VDSO_CODE = {
    _VDSO_EXIT: b"\x48\x89\xc7\xb8" + struct.pack("<I", SYS_uthread_exit) + b"\x0f\x05\x0f\x0b",
    _VDSO_SIGRETURN: b"\xb8" + struct.pack("<I", SYS_sigreturn) + b"\x0f\x05\x0f\x0b",
    _VDSO_GUEST_RETURN: b"\x48\x89\xc7\xb8" + struct.pack("<I", SYS_guest_return) + b"\x0f\x05\x0f\x0b",
}

SIGNAL_NAMES = {4: "SIGILL", 5: "SIGTRAP", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}


class RunEnd(enum.Enum):
    """Why Simulation.run returned."""

    ALL_EXITED = "all uthreads exited"
    PROCESS_EXITED = "process exited"
    TIME_BUDGET = "virtual-time budget reached"
    INSN_BUDGET = "instruction budget reached"
    IDLE = "nothing left to run (every vcore yielded, no event pending)"


@attrs.frozen
class VcoreStats:
    vcore: int
    busy_ns: int
    uthread_ns: int
    switches: int
    preemptions: int


@attrs.frozen
class RunResult:
    """What a run did: why it ended, exit status, time, instructions, per-vcore statistics."""

    end: RunEnd
    exit_status: int | None
    time_ns: int
    insns: int
    vcores: tuple[VcoreStats, ...]
    counts: dict
    report: str | None = None
    extable_sites: tuple[tuple[int, int], ...] = ()  # (instruction, times fixed) for each site that fired
    ras_restarts: tuple[tuple[int, int], ...] = ()  # (sequence start, restarts)


class SimulationError(RuntimeError):
    """Bad use of the Simulation API (the message names the object at fault)."""


class Simulation:
    """One process: memory, CPU, vcores, kernel, 2LS, trace, seeded RNG."""

    def __init__(self, vcores: int = 1, *, seed: int = 0, costs: Costs | None = None, trace=None) -> None:
        from akaros_sim.trace import Trace

        if not isinstance(vcores, int) or vcores < 1:
            raise SimulationError(f"Simulation: expected vcores >= 1, got {vcores!r}")
        self.costs = costs or Costs()
        self.rng = random.Random(seed)
        self.seed = seed
        self.mem = AddressSpace()
        self.cpu = Cpu(self.mem)
        self.engine = Engine(self, vcores, self.costs)
        self.kernel = Kernel(self, vcores)
        self.cpu.tsc = self._tsc
        self.trace = trace if trace is not None else Trace({"seed": seed, "vcores": vcores})
        self.ops: SchedOps | None = None
        self.ev_handlers: dict[int, list] = {}
        self.uthreads: list[Uthread] = []
        self.programs: dict = {}
        self.sigactions: dict[int, int] = {}  # signo -> guest handler address
        self._fault_chain = None  # the HandlerChain behind register_fault_handler
        self._chains: dict = {}  # op name -> the process's own HandlerChain on it
        self.ras = None  # the RasHandler, once a sequence is declared
        from akaros_sim.interpose import HandlerChain

        # the resume path: consulted (uth, ctx, why) before a uthread runs after an involuntary stop
        self.resume_chain = HandlerChain(None, "resume", lambda uth, ctx, why: None, self._trace_chain, False, False)
        self.extable = None  # the ExtableHandler, once a program with an extable is loaded
        self.report: str | None = None
        self._started = False
        self.finished = False  # set when run() is over: parlib then refuses to act
        self._next_stack = STACK_AREA
        self._tls_next = 0
        self._pending_threads: list[UthreadEntry] = []
        self._max_insns: int | None = None
        self._live = 0  # uthreads created and not yet exited
        self._insn_triggers: dict[str, list] = {}  # uthread name -> [(insns, seq, what, fn, args)]
        self.mem.map(VDSO, PAGE_SIZE, Prot.READ | Prot.EXEC, "vdso", backing=self._vdso_bytes())

    # -- building ---------------------------------------------------------------------

    @staticmethod
    def _vdso_bytes() -> bytes:
        page = bytearray(PAGE_SIZE)
        for addr, code in _VDSO_CODE.items():
            page[addr - VDSO : addr - VDSO + len(code)] = code
        return bytes(page)

    def load(self, program) -> None:
        """Map a Program's segments (assembled or ELF).

        A program with exception-table entries gets them added to the process's
        table, and the first such program registers the extable fault handler
        (at the head of the fault chain), as Linux does at boot.
        """
        from akaros_sim.extable import ExceptionTable

        if program.name in self.programs:
            raise SimulationError(f"Simulation.load: a program named {program.name!r} is already loaded")
        if program.extable:
            code = [(seg.addr, seg.end) for seg in program.segments if seg.prot & Prot.EXEC]
            ExceptionTable(program.extable, code)  # validate against this program's code
        if program.ras:
            from akaros_sim.ras import RasTable

            RasTable(program.ras)  # validate before mapping anything
        self.mem.load(program)
        self.programs[program.name] = program
        if program.ras:
            self._ras_handler().add(program.ras)
        if program.extable:
            if self.extable is None:
                from akaros_sim.extable import ExtableHandler

                self.extable = ExtableHandler(self)
                self.register_fault_handler(self.extable)
            self.extable.add(program.extable)

    def set_sched(self, sched) -> SchedOps:
        """Install a 2LS: a SchedOps table, or an object whose methods are the ops."""
        ops = sched if isinstance(sched, SchedOps) else SchedOps.from_object(sched)
        self.ops = ops
        for chain in self._chains.values():
            self._install_chain(chain)
        return ops

    # -- fault handlers (interposed on thread_refl_fault) ------------------------------------

    def chain(self, op_name: str):
        """The process's own HandlerChain on sched_ops.<op_name>, interposed when the 2LS is installed."""
        from akaros_sim.interpose import HandlerChain

        chain = self._chains.get(op_name)
        if chain is None:
            chain = self._chains[op_name] = HandlerChain(None, op_name, None, self._trace_chain)
            if self.ops is not None:
                self._install_chain(chain)
        return chain

    def register_fault_handler(self, handler, insert_tail: bool = False) -> None:
        """Add handler(uth, ctx) -> FaultStatus to the process's fault chain (head by default)."""
        self._fault_chain = self.chain("thread_refl_fault")
        self._fault_chain.register(handler, insert_tail)
        if self._started:
            self.trace_event(None, "handler_register", handler=_handler_name(handler), tail=insert_tail)

    def unregister_fault_handler(self, handler) -> bool:
        """Remove a fault handler; False if it was not registered."""
        if self._fault_chain is None:
            return False
        removed = self._fault_chain.unregister(handler)
        if removed and self._started:
            self.trace_event(None, "handler_unregister", handler=_handler_name(handler))
        return removed

    def _install_chain(self, chain) -> None:
        if getattr(self.ops, chain.op_name) is chain:
            return  # already installed on this table (set_sched called twice)
        chain.ops = self.ops
        chain.previous = getattr(self.ops, chain.op_name)
        setattr(self.ops, chain.op_name, chain)

    # -- restartable atomic sequences ----------------------------------------------------------

    def add_ras(self, start: int, end: int, restart: int | None = None) -> None:
        """Declare a restartable atomic sequence [start, end) (restart defaults to start)."""
        from akaros_sim.program import RasEntry

        self._ras_handler().add([RasEntry(start, end, start if restart is None else restart)])

    def _ras_handler(self):
        from akaros_sim.ras import RasHandler

        if self.ras is None:
            self.ras = RasHandler(self)
            self.chain("thread_paused").register(self.ras.on_paused, insert_tail=True)
            self.resume_chain.register(self.ras.on_resume, insert_tail=True)
        return self.ras

    # -- tick storms ------------------------------------------------------------------------------

    def tick_storm(self, start_ns: int, end_ns: int, min_insns: int, max_insns: int, vcores=None) -> None:
        """From start_ns to end_ns, tick each vcore after every K guest instructions it runs, K seeded in [min, max].

        A tick interrupts the running uthread into vcore context exactly like a
        vcore tick (the 2LS sees it with vcore_tick_poll).  Counting guest
        instructions, not time, puts ticks at many points inside the code
        however long the 2LS's own path is.
        """
        if not 1 <= min_insns <= max_insns:
            raise SimulationError(f"tick_storm: expected 1 <= min_insns <= max_insns, got {min_insns}, {max_insns}")
        targets = range(len(self.engine.vcores)) if vcores is None else vcores
        for vcoreid in targets:
            vc = self.engine.vcores[vcoreid]
            self.engine.schedule(start_ns, "tick_storm", self._storm_start, vc, end_ns, min_insns, max_insns)

    def _storm_start(self, vc, end_ns: int, lo: int, hi: int) -> None:
        vc.storm = (end_ns, lo, hi)
        vc.storm_left = self.rng.randint(lo, hi)
        self.trace_event(vc, "tick_storm", until=end_ns, min_insns=lo, max_insns=hi)

    def _storm_account(self, vc, insns: int) -> None:
        """Count guest instructions run on vc against its storm; tick when K have run."""
        end_ns, lo, hi = vc.storm
        if vc.clock >= end_ns:
            vc.storm = None
            return
        vc.storm_left -= insns
        if vc.storm_left <= 0:
            self._raise_tick(vc, storm=True)
            vc.storm_left = self.rng.randint(lo, hi)

    def _trace_chain(self, kind: str, subject=None, **details) -> None:
        self.trace_event(None, kind, uth=subject if isinstance(subject, Uthread) else None, **details)

    def spawn(self, entry: UthreadEntry) -> None:
        """Create this uthread (through sched_ops.thread_create) when the run starts."""
        if self._started:
            raise SimulationError("Simulation.spawn: the run has started; use parlib.uthread_create from a uthread")
        self._pending_threads.append(entry)

    def spawn_guest(self, name: str, entry: int, *args: int) -> None:
        self.spawn(UthreadEntry.guest(name, entry, *args))

    def spawn_python(self, name: str, func, *args) -> None:
        self.spawn(UthreadEntry.python(name, func, *args))

    # -- injections (kernel events at a virtual time) ----------------------------------------

    def at(self, time_ns: int, what: str, fn, *args) -> None:
        """Run fn(*args) in kernel context at time_ns (an injection); `what` names it in the trace."""
        if not isinstance(time_ns, int) or time_ns < 0:
            raise SimulationError(f"Simulation.at: expected a time >= 0 ns, got {time_ns!r}")

        def inject():
            self.trace_event(None, "inject", what=what)
            fn(*args)

        self.engine.schedule(time_ns, "inject", inject)

    def preempt_at(self, time_ns: int, vcore: int, warning_ns: int = 0, duration_ns: int | None = None) -> None:
        """Preempt `vcore` at time_ns, after a preempt_pending warning of warning_ns if > 0."""
        if not 0 <= vcore < len(self.engine.vcores):
            raise SimulationError(f"preempt_at: no vcore {vcore} (the machine has {len(self.engine.vcores)})")
        self.at(time_ns, f"preempt vcore {vcore}", self.kernel.preempt, vcore, warning_ns, duration_ns)

    def at_insns(self, thread: str, insns: int, what: str, fn, *args) -> None:
        """Run fn(*args) in kernel context when uthread `thread` has retired `insns` guest instructions.

        The uthread stops exactly there (its slice is cut to fit), the
        injection runs, and only then does it go on.
        """
        if not isinstance(insns, int) or insns < 1:
            raise SimulationError(f"Simulation.at_insns: expected an instruction count >= 1, got {insns!r}")
        self._insn_triggers.setdefault(thread, []).append((insns, len(self._insn_triggers.get(thread, ())), what,
                                                          fn, args))  # fmt: skip
        self._insn_triggers[thread].sort(key=lambda t: (t[0], t[1]))

    def _fire_insn_triggers(self, uth: Uthread) -> None:
        triggers = self._insn_triggers.get(uth.name)
        fired = False
        while triggers and uth.insns >= triggers[0][0]:
            n, _, what, fn, args = triggers.pop(0)

            def inject(what=what, fn=fn, args=args, n=n):
                self.trace_event(None, "inject", what=what, at_insns=n, thread=uth.name)
                fn(*args)

            self.engine.schedule(uth.vcore.clock, "inject", inject)
            fired = True
        if fired:
            self.engine.yield_to_engine()  # the engine runs the injection before uth goes on

    def signal_thread(self, thread: str, signo: int) -> None:
        """Send signo to a uthread (pthread_kill): its guest handler runs the next time it runs guest code."""
        uth = self.uthread(thread)
        if not 1 <= signo < 64:
            raise SimulationError(f"signal_thread: expected a signal number in 1..63, got {signo}")
        uth.sig_pending = (signo, 0, 0)  # SI_USER
        self.trace_event(None, "signal_sent", target=uth.name, signo=signo)

    def set_syscall_latency(self, nr: int, ns: int) -> None:
        """Blocking syscall `nr` completes after ns (instead of the Costs default)."""
        self.kernel.latency_override[nr] = ns

    def uthread(self, name: str) -> Uthread:
        for uth in self.uthreads:
            if uth.name == name:
                return uth
        raise KeyError(f"no uthread named {name!r}")

    # -- tracing ------------------------------------------------------------------------

    def now(self) -> int:
        vc = self.engine.current
        return vc.clock if vc is not None else self.engine.now

    def _where(self, vc, uth) -> tuple[int, int, str]:
        """(time, vcore id, uthread name) for a record: the time is the acting code's
        (the running vcore's clock, or the kernel's), the vcore and uthread default to the running ones."""
        if vc is None:
            vc = self.engine.current
        if uth is None and vc is not None:
            uth = vc.current_uthread
        return self.now(), vc.id if vc is not None else -1, uth.name if uth is not None else ""

    def trace_event(self, vc, kind: str, /, uth=None, **details) -> None:
        """Record one transition.  Runtime details are plain values by construction, so they go
        through `Trace.add`, without the checks `Trace.emit` makes for records from user code."""
        self.trace.add(*self._where(vc, uth), kind, tuple(details.items()))

    def user_trace_event(self, kind: str, **details) -> None:
        """A record from user code (a 2LS, a handler, a test): its values are checked."""
        self.trace.emit(*self._where(None, None), kind, **details)

    def engine_error(self, message: str) -> EngineError:
        return EngineError(message)

    def _tsc(self) -> int:
        return self.now()

    # -- ops ------------------------------------------------------------------------------

    def call_op(self, name: str, *args):
        """Call sched_ops.<name> (looked up now, so replacing or interposing it takes effect)."""
        op = getattr(self.ops, name)
        if op is None:
            raise SimulationError(f"sched_ops {self.ops.name!r}: op {name} is missing")
        self.engine.charge(self.costs.sched_op_ns)
        subject = args[0] if args and isinstance(args[0], Uthread) else None
        self.trace_event(None, "op", uth=subject, op=name, args=tuple(map(_describe_arg, args)))
        try:
            return op(*args)
        except Exception as exc:
            note = f"in sched_ops.{name} of 2LS {self.ops.name!r}"
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise

    # -- running -----------------------------------------------------------------------------

    def run(self, *, until_ns: int | None = None, max_insns: int | None = None) -> RunResult:
        """Run until every uthread has exited, the process exits, or a budget is reached."""
        if self._started:
            raise SimulationError("Simulation.run: a simulation runs once")
        if self.ops is None:
            raise SimulationError("Simulation.run: no 2LS installed (set_sched)")
        self.ops.validate()
        self._started = True
        engine = self.engine
        engine.gl = getcurrent()
        self._until = engine.until = until_ns
        self._max_insns = max_insns
        end = None
        try:
            self._in_greenlet(self._setup)
            end = self._loop()
        finally:
            self.finished = True
            self._kill_greenlets()
        vcs = tuple(
            VcoreStats(vc.id, vc.busy_ns, vc.uthread_ns, vc.switches, vc.nr_preempts) for vc in engine.vcores
        )
        time_ns = max([vc.clock for vc in engine.vcores] + [engine.now])
        engine.now = time_ns
        self.trace_event(None, "run_end", end=end.name, status=self.kernel.exit_status, insns=self.cpu.retired)
        return RunResult(
            end, self.kernel.exit_status, time_ns, self.cpu.retired, vcs, self.trace.counts(), self.report,
            tuple(self.extable.sites()) if self.extable else (),
            tuple(sorted(self.ras.restarts.items())) if self.ras else (),
        )  # fmt: skip

    def _in_greenlet(self, fn) -> None:
        """Run fn in a SimGreenlet so parlib can find this simulation (the SCP phase)."""
        gl = SimGreenlet(fn, getcurrent(), self)
        gl.switch()

    def _setup(self) -> None:
        # The SCP phase on vcore 0: sched_init, then the initial threads (thread0 making them).
        vc0 = self.engine.vcores[0]
        vc0.set_state(VcoreState.ONLINE)
        self.trace_event(None, "sched_init", sched=self.ops.name)
        self.call_op("sched_init")
        for entry in self._pending_threads:
            uth = self.call_op("thread_create", entry)
            if not isinstance(uth, Uthread):
                raise SimulationError(f"sched_ops.thread_create returned {uth!r} for {entry.name!r}, not a Uthread")
        vc0.clock = vc0.online_since = self.engine.now
        self.engine.start_vcore(vc0, "process_start")
        self.trace_event(vc0, "vcore_online", how="start", amt_wanted=self.kernel.amt_wanted)

    def _loop(self) -> RunEnd:
        engine, kernel = self.engine, self.kernel
        while True:
            if kernel.state is ProcState.DYING:
                return RunEnd.PROCESS_EXITED
            if self.uthreads and self._live == 0:
                return RunEnd.ALL_EXITED
            if self._max_insns is not None and self.cpu.retired >= self._max_insns:
                return RunEnd.INSN_BUDGET
            vc = engine.next_vcore()
            t_ev = engine.next_event_time()
            if vc is None and t_ev is None:
                return RunEnd.IDLE
            t_next = t_ev if vc is None or (t_ev is not None and t_ev <= vc.clock) else vc.clock
            if self._until is not None and t_next >= self._until:
                return RunEnd.TIME_BUDGET
            if vc is None or (t_ev is not None and t_ev <= vc.clock):
                ev = engine.pop_event()
                engine.now = max(engine.now, ev.time)
                ev.fn(*ev.args)
                continue
            engine.step(vc)

    def _kill_greenlets(self) -> None:
        """End every suspended greenlet now, deterministically, instead of at GC time."""
        here = getcurrent()
        for uth in self.uthreads:
            gl = uth.greenlet
            if gl is not None and not gl.dead and gl is not here:
                try:
                    gl.parent = here
                    gl.throw(GreenletExit)
                except (GreenletExit, ValueError):
                    pass
        for vc in self.engine.vcores:
            gl = vc.gl
            if gl is not None and not gl.dead and gl is not here and getattr(gl, "uth", None) is None:
                try:
                    gl.parent = here
                    gl.throw(GreenletExit)
                except (GreenletExit, ValueError):
                    pass

    def process_exit(self, status: int, why: str, report: str | None = None) -> None:
        """The process ends (exit syscall, fatal fault, or the last thread exiting)."""
        if self.kernel.state is ProcState.DYING:
            return
        self.kernel.state = ProcState.DYING
        self.kernel.exit_status = status
        if report is not None:
            self.report = report
        self.trace_event(None, "process_exit", status=status, why=why)

    def die_if_exited(self) -> None:
        """From vcore or uthread context: leave for the engine if the process has ended."""
        if self.kernel.state is ProcState.DYING and getcurrent() is not self.engine.gl:
            raise StopSimulation()

    # -- vcore context --------------------------------------------------------------------------

    def _vcore_entry(self, vc, reason: str, action) -> None:
        try:
            vcore_mod.vcore_entry(self, vc, reason, action)
        except StopSimulation:
            self.engine.gl.switch()

    def arm_tick(self, vc, base: int | None = None) -> None:
        """Schedule vc's next tick one period after base (default: its clock)."""
        if vc.tick_event is not None:
            vc.tick_event.cancelled = True
        start = vc.clock if base is None else base
        vc.tick_event = self.engine.schedule(start + vc.tick_period, "tick", self._tick, vc)

    def _tick(self, vc) -> None:
        vc.tick_event = None
        if not vc.online or not vc.tick_period:
            return
        self._raise_tick(vc)
        self.arm_tick(vc, base=self.engine.now)  # periodic in time, no drift

    def _raise_tick(self, vc, storm: bool = False) -> None:
        """A tick on vc: count it for vcore_tick_poll and interrupt the running uthread (notif_pending)."""
        vc.tick_expired += 1
        vc.notif_pending = True
        if storm:
            self.trace_event(vc, "tick", expired=vc.tick_expired, storm=True)
        else:
            self.trace_event(vc, "tick", expired=vc.tick_expired)

    # -- uthreads -----------------------------------------------------------------------------

    def register_uthread(self, uth: Uthread) -> None:
        uth.id = len(self.uthreads)
        self.uthreads.append(uth)
        self._live += 1
        if uth.kind is UthreadKind.GUEST:
            self._setup_guest_stack(uth)
            uth.ctx = UserContext(rip=uth.entry.entry, rsp=uth.stack_hi - 8)
            self.setup_tls(uth)
            for reg, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), uth.entry.args, strict=False):
                setattr(uth.ctx, reg, value & ((1 << 64) - 1))
            self.mem.write_u64(uth.ctx.rsp, _VDSO_EXIT)  # returning from entry exits the uthread
        self.trace_event(None, "uthread_create", uth=uth, type=uth.kind.value, id=uth.id)

    def setup_tls(self, uth: Uthread) -> None:
        """Give uth a TLS block at fs_base: [0] the vcore it runs on (rseq's cpu_id), [8] its id."""
        if uth.tls:
            return
        if self._tls_next == 0:
            self.mem.map(TLS_AREA, TLS_AREA_SIZE, Prot.READ | Prot.WRITE, "tls", backed=False)
            self._tls_next = TLS_AREA
        if self._tls_next + TLS_SLOT > TLS_AREA + TLS_AREA_SIZE:
            raise SimulationError(f"setup_tls: more than {TLS_AREA_SIZE // TLS_SLOT} guest uthreads need TLS")
        uth.tls = self._tls_next
        self._tls_next += TLS_SLOT
        self.mem.write_u64(uth.tls + 8, uth.id)
        uth.ctx.fs_base = uth.tls

    def _setup_guest_stack(self, uth: Uthread, size: int = DEFAULT_STACK) -> None:
        """A stack for uth, with an unmapped guard page below it."""
        top = self._next_stack
        self._next_stack -= size + PAGE_SIZE
        self.mem.map(top - size, size, Prot.READ | Prot.WRITE, f"stack:{uth.name}")
        uth.stack_lo, uth.stack_hi = top - size, top

    def _make_uthread_greenlet(self, uth: Uthread) -> SimGreenlet:
        run = self._guest_main if uth.kind is UthreadKind.GUEST else self._python_main
        return SimGreenlet(lambda: run(uth), self.engine.gl, self, uth)

    def _guest_main(self, uth: Uthread) -> None:
        try:
            self.guest_loop(uth)
        except StopSimulation:
            self.engine.gl.switch()

    def _python_main(self, uth: Uthread) -> None:
        from akaros_sim import parlib

        try:
            try:
                ret = uth.entry.func(*uth.entry.args)
            except (StopSimulation, GreenletExit):
                raise
            except Exception as exc:  # a bug in the uthread: the process ends with a report
                report = f"uthread {uth.name!r} raised {type(exc).__name__}: {exc}\n" + "".join(
                    traceback.format_exception(exc)[-3:]
                )
                self.process_exit(-1, f"uthread {uth.name!r} raised {type(exc).__name__}", report)
                raise StopSimulation() from None
            parlib.uthread_exit(ret)
        except StopSimulation:
            self.engine.gl.switch()

    def preempt_point(self, uth: Uthread) -> None:
        """In uthread context: let other vcores run, then take a pending notification."""
        engine = self.engine
        if engine.over_horizon() or (self._max_insns is not None and self.cpu.retired >= self._max_insns):
            engine.yield_to_engine()
        self.die_if_exited()
        vc = uth.vcore
        if vc.notif_pending and not vc.notif_disabled:
            self.trace_event(vc, "notify", uth=uth)
            uth.interrupted = "notify"
            engine.enter_vcore_context(vc, "notify")
            self.die_if_exited()

    def guest_loop(self, uth: Uthread, call: bool = False) -> int:
        """Run uth's guest context until it exits (or, with call, until it returns to call_guest)."""
        engine, cpu, costs = self.engine, self.cpu, self.costs
        ctx = uth.ctx
        while True:
            vc = uth.vcore
            if uth.sig_pending is not None:
                self._deliver_signal(uth)
            limit = min(engine.horizon + costs.vcore_quantum_ns, engine.event_horizon)
            room = (limit - vc.clock) // costs.insn_ns + 1 if costs.insn_ns else costs.slice_insns
            budget = max(1, min(costs.slice_insns, room))
            if self._max_insns is not None:
                budget = max(1, min(budget, self._max_insns - cpu.retired))
            if vc.storm is not None:
                budget = max(1, min(budget, vc.storm_left))
            triggers = self._insn_triggers.get(uth.name)
            if triggers:
                budget = max(1, min(budget, triggers[0][0] - uth.insns))
            stop = cpu.run(ctx, budget)
            engine.charge(stop.insns * costs.insn_ns, uthread_time=True)
            uth.insns += stop.insns
            if vc.storm is not None:
                self._storm_account(vc, stop.insns)
            if triggers:
                self._fire_insn_triggers(uth)
            if isinstance(stop, BudgetSpent):
                self.preempt_point(uth)
                continue
            if isinstance(stop, SyscallStop):
                if call and stop.nr == SYS_guest_return:
                    return stop.args[0]  # the trampoline passes the routine's rax in rdi
                ctx.rax = self._guest_syscall(uth, stop) & ((1 << 64) - 1)
                self.preempt_point(uth)
                continue
            self._reflect_fault(uth, stop)

    def _reflect_fault(self, uth: Uthread, stop: TrapStop) -> None:
        vc = uth.vcore
        self.engine.charge(self.costs.fault_reflect_ns)
        self.trace_event(
            vc, "fault", uth=uth, trap=stop.trap_nr, err=stop.err, aux=stop.aux, rip=uth.ctx.rip,
            insn=describe_insn(self.mem, trap_insn_addr(self.mem, stop.trap_nr, uth.ctx.rip)),
        )  # fmt: skip
        uth.interrupted = "fault"
        self.engine.enter_vcore_context(vc, "fault")
        self.die_if_exited()

    def fault_report(self, uth: Uthread, headline: str) -> str:
        ctx = uth.ctx
        try:
            name = TrapNr(ctx.trap_nr).name
        except ValueError:
            name = "?"
        return (
            f"{headline}: uthread {uth.name!r} trap {ctx.trap_nr} (#{name}) err {ctx.err:#x} aux {ctx.aux:#x}\n"
            f"  at {describe_insn(self.mem, trap_insn_addr(self.mem, ctx.trap_nr, ctx.rip))}\n{ctx}"
        )

    # -- syscalls ---------------------------------------------------------------------------------

    def _guest_syscall(self, uth: Uthread, stop: SyscallStop) -> int:
        from akaros_sim import parlib

        nr, a = stop.nr, stop.args
        if nr == SYS_uthread_exit:
            parlib.uthread_exit(a[0])
        if nr == SYS_uthread_yield:
            parlib.uthread_sched_yield()
            return 0
        if nr == SYS_sigaction:
            return self._sigaction(a[0], a[1])
        if nr == SYS_sigreturn:
            self._sigreturn(uth)
            return uth.ctx.rax
        return self.do_syscall(uth, nr, a)

    def do_syscall(self, uth: Uthread, nr: int, args) -> int:
        """A kernel syscall from uthread context; blocks the uthread if it does not complete at once."""
        from akaros_sim import parlib

        vc = uth.vcore
        self.engine.charge(self.costs.syscall_entry_ns)
        sysc = self.kernel.new_syscall(nr, tuple(args))
        self.trace_event(vc, "syscall", uth=uth, sysc=sysc.id, name=sysc.name, args=tuple(args))
        self.kernel.submit(sysc, vc)
        self.die_if_exited()
        if sysc.state is SyscState.PENDING:
            # ros_syscall_blockon: the 2LS decides the uthread's fate in vcore context
            parlib.uthread_yield(True, self.ops_thread_blockon_sysc, sysc)
        return sysc.retval

    def ops_thread_blockon_sysc(self, uth, sysc) -> None:
        sysc.u_data = uth
        uth.sysc = sysc
        self.call_op("thread_blockon_sysc", uth, sysc)

    def register_evq(self, sysc, evq: EventQueue) -> bool:
        """Ask for an event when sysc completes; False if it already has (the caller restarts the thread)."""
        if sysc.state is SyscState.DONE:
            return False
        sysc.ev_q = evq
        return True


    # -- signals (parlib's sigstate, for guest handlers) ----------------------------------------------

    def _sigaction(self, signo: int, handler: int) -> int:
        if not 1 <= signo < 64:
            return -22 & ((1 << 64) - 1)
        old = self.sigactions.get(signo, 0)
        if handler:
            self.sigactions[signo] = handler
        else:
            self.sigactions.pop(signo, None)
        self.trace_event(None, "sigaction", signo=signo, handler=handler)
        return old

    def _deliver_signal(self, uth: Uthread) -> None:
        """Run the guest's handler for uth's pending signal on uth's stack (Akaros's __prep_sighandler)."""
        signo, code, addr = uth.sig_pending
        uth.sig_pending = None
        handler = self.sigactions.get(signo)
        ctx = uth.ctx
        if handler is None:
            name = SIGNAL_NAMES.get(signo, f"signal {signo}")
            report = self.fault_report(uth, f"{name} with no handler: the process is destroyed")
            self.process_exit(128 + signo, f"{name} (default action)", report)
            raise StopSimulation()
        # sigdata below the red zone: saved registers (trapframe order) + trap fields, then siginfo
        regs = ctx.regs()
        frame = struct.pack(f"<{len(regs)}Q", *regs.values()) + struct.pack("<3Q", ctx.trap_nr, ctx.err, ctx.aux)
        info = struct.pack("<3Q", signo, code, addr)
        base = ((ctx.rsp - RED_ZONE - len(frame) - len(info)) & ~0xF)
        self.mem.write(base, frame + info)
        sp = (base - 8) & ~0xF
        self.mem.write_u64(sp - 8, _VDSO_SIGRETURN)  # the handler's return address
        uth.sigdata = base
        self.trace_event(uth.vcore, "signal", uth=uth, signo=signo, code=code, addr=addr, handler=handler, frame=base)
        ctx.rip, ctx.rsp = handler, sp - 8
        ctx.rdi, ctx.rsi, ctx.rdx = signo, base + len(frame), base
        ctx.clear_trap()

    def _sigreturn(self, uth: Uthread) -> None:
        """Back from a guest handler: restore the (possibly edited) saved context, then uthread_paused."""
        from akaros_sim import parlib
        from akaros_sim.context import REG_NAMES

        base = uth.sigdata
        if not base:
            return
        values = struct.unpack(f"<{len(REG_NAMES)}Q", self.mem.read(base, 8 * len(REG_NAMES)))
        uth.sigdata = 0
        self.cpu.forget(uth.ctx)
        for name, value in zip(REG_NAMES, values, strict=True):
            setattr(uth.ctx, name, value)
        uth.ctx.clear_trap()
        self.trace_event(uth.vcore, "sigreturn", uth=uth, rip=uth.ctx.rip)
        parlib.uthread_yield(True, _exit_sighandler_cb, None)


def _exit_sighandler_cb(uth, _arg) -> None:
    from akaros_sim import parlib

    parlib.uthread_paused(uth)


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


def _handler_name(handler) -> str:
    from akaros_sim.interpose import handler_name

    return handler_name(handler)


def _describe_arg(arg):
    """A deterministic short form of an op argument for the trace."""
    if arg is None or isinstance(arg, (bool, int, str)):
        return arg
    name = getattr(arg, "name", None)
    if isinstance(name, str):
        return name
    sysc_id = getattr(arg, "id", None)
    if isinstance(sysc_id, int):
        return f"{type(arg).__name__}#{sysc_id}"
    return type(arg).__name__
