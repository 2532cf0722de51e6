"""Simulation: the façade over one simulated process (build, load, spawn, inject, run, inspect).

A Simulation builds a `Process` (process.py), whose rooms do the work: the
engine (time and every switch), the kernel, vcore context, the guest
executor, signals, sync and parlib.  Nothing lives at module level: two
simulations run side by side in one process, and nothing inside points back
at the Simulation, so dropping it frees it.

Lifecycle: build (programs, 2LS, threads, injections) -> run() once -> inspect results.  After
run(), every greenlet has ended and Unicorn is released; `mem` stays readable (and writable).
"""

from __future__ import annotations

import attrs

from akaros_sim.engine import Costs, RunEnd
from akaros_sim.extable import ExceptionTable, ExtableHandler
from akaros_sim.interpose import HandlerChain, handler_name
from akaros_sim.memory import Prot
from akaros_sim.metrics import Metrics, compute_metrics
from akaros_sim.points import preempt
from akaros_sim.process import DEFAULT_STALL_NS, MAX_STALL_NS, Process
from akaros_sim.program import RasEntry
from akaros_sim.ras import RasHandler, RasTable
from akaros_sim.sched_ops import SchedOps
from akaros_sim.trace import Trace
from akaros_sim.uthread import Uthread, UthreadEntry

__all__ = ["RunEnd", "RunResult", "Simulation", "SimulationError", "VcoreStats"]


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
    metrics: Metrics | None = None  # per-uthread, per-vcore and process figures (metrics.py)


MAX_VCORES = 1024  # more is a typo, not a machine: each vcore costs memory and a peer scan


class SimulationError(RuntimeError):
    """Bad use of the Simulation API (the message names the object at fault)."""


class Simulation:
    """One process: memory, CPU, vcores, kernel, 2LS, trace, seeded RNG."""

    def __init__(self, vcores: int = 1, *, seed: int = 0, costs: Costs | None = None, trace=None,
                 check: bool = True, stall_ns: int = DEFAULT_STALL_NS) -> None:
        """An empty process.  `trace`: None (a fresh Trace), a Trace to fill, or False (none).  `check`: the
        2LS contract checker, whose watchdog reports a runnable uthread unrun for `stall_ns`."""
        for key, value, high in (("vcores", vcores, MAX_VCORES), ("stall_ns", stall_ns, MAX_STALL_NS)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SimulationError(f"Simulation: expected {key} >= 1, got {value!r}")
            if value > high:
                raise SimulationError(f"Simulation: expected {key} <= {high}, got {value!r}")
        self.seed = seed
        self.costs = costs or Costs()
        if trace is None or trace is False:  # False: keep no records at all (results and statistics only)
            trace = Trace({"seed": seed, "vcores": vcores}, enabled=trace is None)
        self.proc = Process(vcores, seed, self.costs, trace, self, check, stall_ns)
        self.result: RunResult | None = None

    # -- what a user inspects (the process's state) ----------------------------------------

    mem = property(lambda self: self.proc.mem, doc="The address space (readable after the run).")
    cpu = property(lambda self: self.proc.cpu, doc="The CPU (released after the run).")
    engine = property(lambda self: self.proc.engine, doc="Clocks, vcores and events.")
    kernel = property(lambda self: self.proc.kernel, doc="The process's kernel state.")
    trace = property(lambda self: self.proc.trace, doc="The run's records.")
    rng = property(lambda self: self.proc.rng, doc="The seeded RNG (the only randomness).")
    ops = property(lambda self: self.proc.ops, doc="The installed 2LS's sched_ops table.")
    uthreads = property(lambda self: self.proc.uthreads, doc="Every uthread, in creation order.")
    programs = property(lambda self: self.proc.programs, doc="Loaded programs by name.")
    extable = property(lambda self: self.proc.extable, doc="The ExtableHandler, once a program has an extable.")
    ras = property(lambda self: self.proc.ras, doc="The RasHandler, once a sequence is declared.")
    resume_chain = property(lambda self: self.proc.resume_chain, doc="Handlers consulted before a resume.")
    report = property(lambda self: self.proc.kernel.report, doc="Why the process died, if it did not just exit.")

    def uthread(self, name: str) -> Uthread:
        """The uthread named `name` (names are unique: a repeated one gets its id as a suffix, `w#3`)."""
        try:
            return self.proc.names[name]
        except KeyError:
            raise KeyError(f"no uthread named {name!r}") from None

    def now(self) -> int:
        """The acting code's virtual time (the running vcore's clock, or the kernel's)."""
        return self.proc.engine.time()

    def trace_event(self, vc, kind: str, /, uth=None, **details) -> None:
        """Add a runtime record (plain values only): for injections and tools."""
        self.proc.trace_event(vc, kind, uth=uth, **details)

    # -- building ---------------------------------------------------------------------

    def load(self, program) -> None:
        """Map a Program's segments (assembled or ELF).  A program's exception-table entries join the
        process's table; the first such program registers the extable fault handler at the head of
        the fault chain, as Linux does at boot."""
        proc = self.proc
        if program.name in proc.programs:
            raise SimulationError(f"Simulation.load: a program named {program.name!r} is already loaded")
        if program.extable:
            code = [(seg.addr, seg.end) for seg in program.segments if seg.prot & Prot.EXEC]
            ExceptionTable(program.extable, code)  # validate against this program's code
        if program.ras:
            RasTable(program.ras)  # validate before mapping anything
        proc.mem.load(program)
        proc.programs[program.name] = program
        if program.ras:
            self._ras_handler().add(program.ras)
        if program.extable:
            if proc.extable is None:
                proc.extable = ExtableHandler(proc)
                self.register_fault_handler(proc.extable)
            proc.extable.add(program.extable)

    def set_sched(self, sched) -> SchedOps:
        """Install a 2LS: a SchedOps table, or an object whose methods are the ops."""
        if self.proc.started:
            raise SimulationError("Simulation.set_sched: the run has started")
        ops = sched if isinstance(sched, SchedOps) else SchedOps.from_object(sched)
        self.proc.ops = ops
        for chain in self.proc.chains.values():
            self._install_chain(chain)
        return ops

    def chain(self, op_name: str) -> HandlerChain:
        """The process's own HandlerChain on sched_ops.<op_name>, interposed when the 2LS is installed."""
        proc = self.proc
        chain = proc.chains.get(op_name)
        if chain is None:
            tracer = proc.trace_chain if proc.tracing else None
            chain = proc.chains[op_name] = HandlerChain(None, op_name, None, tracer)
            if proc.ops is not None:
                self._install_chain(chain)
        return chain

    def _install_chain(self, chain: HandlerChain) -> None:
        ops = self.proc.ops
        if getattr(ops, chain.op_name) is chain:
            return  # already installed on this table (set_sched called twice)
        chain.ops = ops
        chain.previous = getattr(ops, chain.op_name)
        setattr(ops, chain.op_name, chain)

    def register_fault_handler(self, handler, insert_tail: bool = False) -> None:
        """Add handler(uth, ctx) -> FaultStatus to the process's fault chain (head by default)."""
        self.chain("thread_refl_fault").register(handler, insert_tail)
        if self.proc.started:
            self.proc.trace_event(None, "handler_register", handler=handler_name(handler), tail=insert_tail)

    def unregister_fault_handler(self, handler) -> bool:
        """Remove a fault handler; False if it was not registered."""
        chain = self.proc.chains.get("thread_refl_fault")
        removed = chain is not None and chain.unregister(handler)
        if removed and self.proc.started:
            self.proc.trace_event(None, "handler_unregister", handler=handler_name(handler))
        return removed

    def add_ras(self, start: int, end: int, restart: int | None = None) -> None:
        """Declare a restartable atomic sequence [start, end) (restart defaults to start)."""
        self._ras_handler().add([RasEntry(start, end, start if restart is None else restart)])

    def _ras_handler(self) -> RasHandler:
        proc = self.proc
        if proc.ras is None:
            proc.ras = RasHandler(proc)
            self.chain("thread_paused").register(proc.ras.on_paused, insert_tail=True)
            proc.resume_chain.register(proc.ras.on_resume, insert_tail=True)
        return proc.ras

    def spawn(self, entry: UthreadEntry) -> None:
        """Create this uthread (through sched_ops.thread_create) when the run starts."""
        if self.proc.started:
            raise SimulationError("Simulation.spawn: the run has started; use parlib.uthread_create from a uthread")
        if any(e.name == entry.name for e in self.proc.pending_threads):
            raise SimulationError(f"Simulation.spawn: a uthread named {entry.name!r} is already spawned")
        self.proc.pending_threads.append(entry)

    def spawn_guest(self, name: str, entry: int, *args: int) -> None:
        self.spawn(UthreadEntry.guest(name, entry, *args))

    def spawn_python(self, name: str, func, *args) -> None:
        self.spawn(UthreadEntry.python(name, func, *args))

    # -- injections ------------------------------------------------------------------------------

    def at(self, time_ns: int, what: str, fn, *args) -> None:
        """Run fn(*args) in kernel context at time_ns (an injection); `what` names it in the trace."""
        if not isinstance(time_ns, int) or isinstance(time_ns, bool) or time_ns < 0:
            raise SimulationError(f"Simulation.at: expected a time >= 0 ns, got {time_ns!r}")
        proc = self.proc

        def inject():
            proc.trace_event(None, "inject", what=what)
            fn(*args)

        proc.engine.schedule(time_ns, "inject", inject)

    def preempt_at(self, time_ns, vcore: int | None = None, warning_ns: int = 0, duration_ns: int | None = None) -> None:
        """Preempt `vcore` (default: the one running there) at time_ns, or at a point named by meaning such as
        {"ras": "inc", "uthread": "w3", "nth": 2} (docs/explore.md), after a warning of warning_ns if > 0."""
        preempt(self, time_ns, vcore, warning_ns, duration_ns, SimulationError)

    def at_insns(self, thread: str, insns: int, what: str, fn, *args) -> None:
        """Run fn(*args) in kernel context when uthread `thread` has retired `insns` guest instructions.

        The uthread stops exactly there (its slice is cut to fit), the
        injection runs, and only then does it go on.
        """
        if not isinstance(insns, int) or isinstance(insns, bool) or insns < 1:
            raise SimulationError(f"Simulation.at_insns: expected an instruction count >= 1, got {insns!r}")
        self.proc.guest.at_insns(thread, insns, what, fn, args)

    def tick_storm(self, start_ns: int, end_ns: int, min_insns: int, max_insns: int, vcores=None) -> None:
        """From start_ns to end_ns, tick each vcore after every K guest instructions it runs, K seeded in [min, max].

        A tick interrupts the running uthread into vcore context exactly like a
        vcore tick (the 2LS sees it with vcore_tick_poll).  Counting guest
        instructions, not time, puts ticks at many points inside the code
        however long the 2LS's own path is.
        """
        if not 1 <= min_insns <= max_insns:
            raise SimulationError(f"tick_storm: expected 1 <= min_insns <= max_insns, got {min_insns}, {max_insns}")
        engine = self.proc.engine
        for vcoreid in range(len(engine.vcores)) if vcores is None else vcores:
            vc = engine.vcores[vcoreid]
            engine.schedule(start_ns, "tick_storm", self.proc.guest.storm_start, vc, end_ns, min_insns, max_insns)

    def signal_thread(self, thread: str | None, signo: int) -> None:
        """pthread_kill `thread`: marked pending, taken when the 2LS next runs it; None: kill the process."""
        uth = None if thread is None else self.uthread(thread)
        if not 1 <= signo < 64:
            raise SimulationError(f"signal_thread: expected a signal number in 1..63, got {signo}")
        self.proc.signals.send(uth, signo)

    def set_syscall_latency(self, nr: int, ns: int) -> None:
        """Blocking syscall `nr` completes after ns (instead of the Costs default)."""
        self.proc.kernel.latency_override[nr] = ns

    # -- running -----------------------------------------------------------------------------

    def run(self, *, until_ns: int | None = None, max_insns: int | None = None) -> RunResult:
        """Run until every uthread has exited, the process exits, or a budget is reached.

        Whatever happens, the run ends with every greenlet finished and the
        Unicorn instance released; a guest or 2LS error ends the process with
        a report (RunResult.report) instead of raising.
        """
        proc = self.proc
        if proc.started:
            raise SimulationError("Simulation.run: a simulation runs once")
        if proc.ops is None:
            raise SimulationError("Simulation.run: no 2LS installed (set_sched)")
        proc.ops.validate()
        for name, value in (("until_ns", until_ns), ("max_insns", max_insns)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise SimulationError(f"Simulation.run: expected {name} to be an int >= 0 or None, got {value!r}")
        try:
            end = proc.run(until_ns, max_insns)
            time_ns = proc.end_time(end)
        finally:
            proc.close()
        engine = proc.engine
        engine.now = max(engine.now, time_ns)
        metrics = compute_metrics(proc.timeline, time_ns)  # uthread time: running spans (timeline.py)
        vcs = tuple(VcoreStats(vc.id, vc.busy_ns, m.uthread_ns, vc.switches, vc.nr_preempts)
                    for vc, m in zip(engine.vcores, metrics.vcores, strict=True))  # fmt: skip
        proc.trace.add(time_ns, -1, "", "run_end",
                       (("end", end.name), ("status", proc.kernel.exit_status), ("insns", proc.cpu.retired)))  # fmt: skip
        self.result = RunResult(
            end, proc.kernel.exit_status, time_ns, proc.cpu.retired, vcs, proc.trace.counts(), proc.kernel.report,
            tuple(proc.extable.sites()) if proc.extable else (),
            tuple(sorted(proc.ras.restarts.items())) if proc.ras else (), metrics,
        )  # fmt: skip
        return self.result
