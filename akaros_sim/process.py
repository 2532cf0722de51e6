"""Process: what one simulated process's rooms share, its set-up, its run loop and its teardown.

The rooms (engine, kernel, guest executor, signals, vcore context, parlib)
each do one job; the Process holds what they share: memory and CPU, the
clocks, the 2LS's table, the uthreads, the trace, the seeded RNG.  It also
lays out what the runtime owns in guest memory (the vdso trampolines, stacks
with guard pages, per-uthread TLS) and tears everything down after the run:
every greenlet ended, the Unicorn instance released, nothing pointing back
at the Simulation that wraps it (so that is freed by reference counting).
"""

from __future__ import annotations

import functools
import gc
import random
import struct
import traceback
import weakref

from greenlet import getcurrent

from akaros_sim.context import TrapNr, UserContext
from akaros_sim.cpu import Cpu
from akaros_sim.disasm import describe_insn
from akaros_sim.engine import Costs, Engine, Entry, RunEnd, VcoreState
from akaros_sim.guest import Guest, trap_insn_addr
from akaros_sim.guestmem import write_for_guest
from akaros_sim.interpose import HandlerChain
from akaros_sim.join import uthread_exit
from akaros_sim.kernel import Kernel, ProcState, SYS_guest_return, SYS_sigreturn, SYS_uthread_exit
from akaros_sim.memory import PAGE_SIZE, AddressSpace, Prot
from akaros_sim.signals import Signals
from akaros_sim.timeline import BLOCKED, EXITED, RUNNABLE, RUNNING, Timeline
from akaros_sim.uthread import Uthread, UthreadKind
from akaros_sim.uthread import syscall as uthread_syscall
from akaros_sim.vcore import vcore_entry

# Guest layout the runtime owns.
VDSO = 0x7FFF_FFFE_0000  # runtime trampolines (R-X)
STACK_AREA = 0x7FF0_0000_0000  # guest stacks grow down from here, one slot per uthread
DEFAULT_STACK = 64 * 1024
TLS_AREA = 0x7FE0_0000_0000  # per-uthread TLS blocks (fs_base), lazily backed
TLS_AREA_SIZE = 16 << 20
TLS_SLOT = 64

# vdso trampolines: where a returning guest uthread, signal handler or call_guest lands.
VDSO_EXIT = VDSO  # mov rdi, rax; mov eax, SYS_uthread_exit; syscall; ud2
VDSO_SIGRETURN = VDSO + 0x20  # mov eax, SYS_sigreturn; syscall; ud2
VDSO_GUEST_RETURN = VDSO + 0x40  # mov rdi, rax; mov eax, SYS_guest_return; syscall; ud2
_VDSO_CODE = {
    VDSO_EXIT: b"\x48\x89\xc7\xb8" + struct.pack("<I", SYS_uthread_exit) + b"\x0f\x05\x0f\x0b",
    VDSO_SIGRETURN: b"\xb8" + struct.pack("<I", SYS_sigreturn) + b"\x0f\x05\x0f\x0b",
    VDSO_GUEST_RETURN: b"\x48\x89\xc7\xb8" + struct.pack("<I", SYS_guest_return) + b"\x0f\x05\x0f\x0b",
}
DEFAULT_STALL_NS = 1_000_000_000  # a runnable uthread unrun for 1 s of virtual time is a stalled 2LS
MAX_STALL_NS = 1 << 62  # more is a typo: virtual time would never get there
STALL_SCAN_RUNS = 1024  # the watchdog looks at every uthread once per this many runs
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections during a run (CPython's default: 700)
_ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
U64 = (1 << 64) - 1


class ProcessError(RuntimeError):
    """Bad use of a process (the message names the object at fault)."""


class Process:
    """One process's shared state.  Lifecycle: built -> set up (2LS, programs, threads) -> run once -> closed."""

    def __init__(self, vcores: int, seed: int, costs: Costs, trace, facade, check: bool = True,
                 stall_ns: int = DEFAULT_STALL_NS) -> None:
        self.costs = costs
        self.seed = seed
        self.rng = random.Random(seed)
        self.trace = trace
        self.checking = check  # the 2LS contract checker (cheap; off only for speed runs)
        self.stall_ns = stall_ns  # the watchdog's limit on how long a runnable uthread may wait
        self.runs_to_scan = STALL_SCAN_RUNS  # counted down by each run (uthread._pop)
        self.tracing = trace.enabled  # False: no record is built at all (hot paths check this first)
        self.record = trace.appender()  # hot paths append a row tuple themselves (None: tracing off)
        self._rows = self.record.__self__ if self.record is not None else []  # its list: len // 5 records
        self._op_ns = costs.sched_op_ns
        self._op_details: dict[str, dict[str, tuple]] = {}  # op -> uthread name -> its records' details
        self.entry_details: dict[tuple, tuple] = {}  # (why, current uthread) -> a vcore_entry's details
        self.timeline = Timeline(vcores)  # every uthread's and vcore's states over time (timeline.py)
        self._state_details: dict[str, tuple] = {}  # cause (blocked) or state -> a uthread_state record's details
        self._facade = weakref.ref(facade)  # the Simulation: never held strongly from inside
        # the machine
        self.mem = AddressSpace()
        self.cpu = Cpu(self.mem)
        # the rooms
        self.engine = Engine(vcores, costs, owner=self, vcore_entry=functools.partial(vcore_entry, self),
                             sched_entry=functools.partial(self.call_op, "sched_entry"),
                             uthread_body=self._uthread_body, crash=self.crash)  # fmt: skip
        self.kernel = Kernel(self, vcores)
        self.guest = Guest(self)
        self.signals = Signals(self, VDSO_SIGRETURN)
        self.cpu.tsc = self.guest.tsc
        # the 2LS and its interposition
        self.ops = None
        self.ev_handlers: dict[int, list] = {}
        self.chains: dict[str, HandlerChain] = {}  # op name -> the process's own chain on it
        tracer = self.trace_chain if self.tracing else None  # no tracer: a chain skips its register diffs
        self.resume_chain = HandlerChain(None, "resume", lambda uth, ctx, why: None, tracer, False, False)
        self.extable = None  # the ExtableHandler, once a program with an extable is loaded
        self.ras = None  # the RasHandler, once a sequence is declared
        self.points = None  # the Points (points.py), once an injection point is named by meaning
        # uthreads and programs
        self.uthreads: list[Uthread] = []
        self.names: dict[str, Uthread] = {}  # unique uthread names
        self.programs: dict = {}
        self.pending_threads: list = []
        self.live = 0  # uthreads created and not yet exited
        self.started = False
        self.finished = False  # set when run() is over: parlib then refuses to act
        self._next_stack = STACK_AREA
        self._tls_next = 0
        self.mem.map(VDSO, PAGE_SIZE, Prot.READ | Prot.EXEC, "vdso", backing=self._vdso_bytes())

    @property
    def facade(self):
        """The Simulation this process belongs to (None once it has been dropped)."""
        return self._facade()

    @staticmethod
    def _vdso_bytes() -> bytes:
        page = bytearray(PAGE_SIZE)
        for addr, code in _VDSO_CODE.items():
            page[addr - VDSO : addr - VDSO + len(code)] = code
        return bytes(page)

    # -- records ------------------------------------------------------------------------

    def trace_event(self, vc, kind: str, /, uth=None, **details) -> None:
        """Record one transition at the acting code's time; the vcore and uthread default to the running ones.

        Runtime details are plain values by construction, so they skip the checks
        `Trace.emit` makes for records from user code.
        """
        record = self.record
        if record is None:
            return
        engine = self.engine
        cur = engine.current
        if vc is None:
            vc = cur
        if uth is None and vc is not None:
            uth = vc.current_uthread
        record((cur.clock if cur is not None else engine.now, vc.id if vc is not None else -1,
                uth.name if uth is not None else "", kind, tuple(details.items())))  # fmt: skip

    def set_uth_state(self, uth: Uthread, state: str, cause: str = "", vc=None, t: int | None = None) -> None:
        """The runtime's view of uth changed (timeline.py): account for it, and record each change once.

        The time is the acting code's (the vcore's clock, or the kernel's); `vc`
        names the vcore the record goes on (for running: the one it runs on).
        """
        times = uth.times
        if times.state is state and times.cause == cause:
            return
        if vc is None:
            vc = self.engine.current  # (a `vc` given without `t` is the acting vcore too)
        if t is None:
            t = vc.clock if vc is not None else self.engine.now
        vcid = vc.id if vc is not None else -1
        # Timeline.move, inlined: this runs three times a yield (tests/test_metrics.py checks they agree)
        span = t - times.since
        old = times.state
        if old is RUNNING:
            times.run_ns += span
            vcore_run = self.timeline.vcore_run
            vcore_run[times.vcore] = vcore_run.get(times.vcore, 0) + span
        elif old is RUNNABLE:
            times.ready_ns += span
        elif old is BLOCKED:
            times.blocked_ns[times.cause] = times.blocked_ns.get(times.cause, 0) + span
        times.since = t
        times.state, times.cause = state, cause
        if state is RUNNING:
            times.runs += 1
            if times.first_run is None:
                times.first_run = t
            elif vcid != times.vcore:
                times.migrations += 1
            times.vcore = vcid
        elif state is BLOCKED:
            if cause == "fault":
                times.faults += 1
        elif state is EXITED:
            times.exited = t
        if self.record is not None:
            key = cause if state is BLOCKED else state  # one string: its hash is cached
            details = self._state_details.get(key)
            if details is None:
                details = (("state", state), ("cause", cause)) if state is BLOCKED else (("state", state),)
                self._state_details[key] = details
            self.record((t, vcid, uth.name, "uthread_state", details))

    def user_trace_event(self, kind: str, **details) -> None:
        """A record from user code (a 2LS, a handler, a test): its values are checked."""
        engine = self.engine
        vc = engine.current
        uth = vc.current_uthread if vc is not None else None
        self.trace.emit(engine.time(), vc.id if vc is not None else -1, uth.name if uth is not None else "", kind,
                        **details)  # fmt: skip

    def trace_chain(self, kind: str, subject=None, **details) -> None:
        """A handler chain's tracer: trace_event's record, without passing the details on once more."""
        engine = self.engine
        vc = engine.current
        uth = subject if isinstance(subject, Uthread) else (vc.current_uthread if vc is not None else None)
        self.record((vc.clock if vc is not None else engine.now, vc.id if vc is not None else -1,
                     uth.name if uth is not None else "", kind, tuple(details.items())))  # fmt: skip

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

    # -- the 2LS -----------------------------------------------------------------------------

    def call_op(self, name: str, *args):
        """Call sched_ops.<name> (looked up now, so replacing or interposing it takes effect)."""
        op = getattr(self.ops, name)
        if op is None:
            raise ProcessError(f"sched_ops {self.ops.name!r}: op {name} is missing")
        engine = self.engine
        engine.advance(self._op_ns)
        record = self.record
        if record is not None:
            vc = engine.current
            a0 = args[0] if args else None
            if isinstance(a0, Uthread):
                subject = a0.name
                # the key: the uthread's name, then the other arguments when they are plain
                if len(args) == 1:
                    key = subject
                elif len(args) == 2 and type(args[1]) in _KEYED:  # (a context is described by its type)
                    key = (subject, args[1] if type(args[1]) is int else "UserContext")
                else:
                    key = None
            else:
                cur = vc.current_uthread if vc is not None else None
                subject = cur.name if cur is not None else ""
                key = name if not args else None
            by_key = self._op_details.get(name)
            if by_key is None:
                by_key = self._op_details[name] = {}
            details = by_key.get(key) if key is not None else None
            if details is None:  # one tuple per (op, arguments), reused: records stay cheap to build and keep
                described = tuple([a.name if isinstance(a, Uthread) else _describe_arg(a) for a in args])
                details = (("op", name), ("args", described))
                if key is not None:
                    by_key[key] = details
            if vc is not None:
                record((vc.clock, vc.id, subject, "op", details))
            else:
                record((engine.now, -1, subject, "op", details))
        if name in _HANDS_OVER and args and isinstance(args[0], Uthread):
            uth = args[0]
            # the 2LS's to run from this op's record on (the 2LS contract)
            rows = len(self._rows)
            uth.waits_for, uth.waiting_since = None, rows // 5 - 1 if rows else 0
            cur = engine.current
            uth.runnable_at = cur.clock if cur is not None else engine.now
            self.set_uth_state(uth, RUNNABLE)
        if self.points is not None:
            self.points.on_op(name, engine.current)
        try:
            return op(*args)
        except Exception as exc:
            note = f"in sched_ops.{name} of 2LS {self.ops.name!r}"
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise

    def exit(self, status: int, why: str, report: str | None = None) -> None:
        self.kernel.exit(status, why, report)

    def create_uthread(self, entry) -> Uthread | None:
        """sched_ops.thread_create, which must return the Uthread it made (None: the process has ended)."""
        uth = self.call_op("thread_create", entry)
        if isinstance(uth, Uthread):
            return uth
        # nothing could refer to the new thread: the checker or not, the process cannot go on
        self.contract_violation(f"2LS {self.ops.name!r}: sched_ops.thread_create({entry.name!r}) returned {uth!r}; "
                                "expected the Uthread it made")  # fmt: skip
        return None

    def contract_violation(self, what: str) -> None:
        """A 2LS broke its contract: the process ends with a report naming the 2LS, the uthread and the record."""
        self.kernel.exit(-1, "2LS contract", f"2LS contract: {what} (at trace record #{len(self.trace)})")

    def watch_stalls(self, uth: Uthread) -> None:
        """The stall watchdog (as sched_ext's): no uthread waits longer than stall_ns to be run by the 2LS.

        Checked for each uthread as it runs, and for all every max(STALL_SCAN_RUNS, uthreads) runs: O(1)
        a run, and a count, not a time, so the check leaves no mark on the schedule or the trace.
        """
        now, limit = self.engine.time(), self.stall_ns
        if now - uth.runnable_at > limit:
            self._stalled(uth, now)
        if self.runs_to_scan <= 0:
            self.runs_to_scan = max(STALL_SCAN_RUNS, len(self.uthreads))
            held = {vc.current_uthread for vc in self.engine.vcores}
            for other in self.uthreads:
                if (not other.done and other.waits_for is None and other not in held
                        and now - other.runnable_at > limit):
                    self._stalled(other, now)

    def _stalled(self, uth: Uthread, now: int) -> None:
        self.contract_violation(
            f"2LS {self.ops.name!r} left uthread {uth.name!r} unrun for {now - uth.runnable_at:,} ns "
            f"(the stall limit is {self.stall_ns:,} ns; it became the 2LS's to run at t={uth.runnable_at}, "
            f"{self._handed_over(uth)})"
        )

    def check_nothing_lost(self) -> None:
        """At an idle end: every uthread that has not exited waits for something, or runs (none is lost)."""
        engine = self.engine
        engine.now = max([engine.now] + [vc.clock for vc in engine.vcores])  # when the last vcore went idle
        held = {vc.current_uthread for vc in engine.vcores}
        for uth in self.uthreads:
            if not uth.done and uth.waits_for is None and uth not in held:
                self.contract_violation(
                    f"2LS {self.ops.name!r} lost uthread {uth.name!r}: it was the 2LS's to run "
                    f"({self._handed_over(uth)}) and every vcore yielded"
                )
                return

    def _handed_over(self, uth: Uthread) -> str:
        """Where uth became the 2LS's to run: the op that handed it over, when the trace shows one."""
        index = uth.waiting_since
        row = self.trace.row(index) if index < len(self.trace) else None
        if row is not None and row[3] == "op":
            return f"since trace record #{index}, sched_ops.{dict(row[4])['op']}"
        if row is not None and row[3] == "uthread_create":
            return f"since trace record #{index}, its creation in sched_ops.thread_create"
        return f"since trace record #{index}"

    def crash(self, exc: Exception) -> None:
        """An exception escaped vcore context or a uthread: the process ends with a report naming it."""
        notes = list(getattr(exc, "__notes__", ()))
        where = f" {notes[0]}" if notes else ""
        frames = "".join(traceback.format_exception(exc)[-4:-1]) if not notes else ""
        at = f" (at trace record #{len(self.trace)})" if self.tracing else ""
        report = f"{type(exc).__name__}{where}: {exc}{at}\n{frames}".rstrip("\n")
        self.kernel.exit(-1, f"{type(exc).__name__}{where}", report)

    def syscall(self, uth: Uthread, nr: int, args) -> int:
        return uthread_syscall(self, uth, nr, args)

    # -- uthreads ------------------------------------------------------------------------------

    def register_uthread(self, uth: Uthread) -> None:
        """uthread_init: number it, make its name unique, give a guest uthread its stack, TLS and registers.

        Names are how triggers, signals, expectations and the trace refer to a
        uthread, so a name already taken gets its id as a suffix: `worker#7`.
        """
        uth.id = len(self.uthreads)
        if uth.name in self.names:
            uth.name = f"{uth.name}#{uth.id}"
        uth.runnable_at = self.engine.time()  # the 2LS's to run from its creation (record below)
        uth.waiting_since = len(self.trace)
        self.names[uth.name] = uth
        self.uthreads.append(uth)
        self.live += 1
        if uth.kind is UthreadKind.GUEST:
            self.setup_guest_stack(uth)
            uth.ctx = UserContext(rip=uth.entry.entry, rsp=uth.stack_hi - 8)
            self.setup_tls(uth)
            for reg, value in zip(_ARG_REGS, uth.entry.args, strict=False):
                setattr(uth.ctx, reg, value & U64)
            # returning from entry exits the uthread
            write_for_guest(self, uth.ctx.rsp, VDSO_EXIT, f"pushing the exit address of uthread {uth.name!r}")
        self.trace_event(None, "uthread_create", uth=uth, type=uth.kind.value, id=uth.id)
        t = self.engine.time()
        uth.times = self.timeline.created(t, uth.name)
        if self.record is not None:
            self.record((t, -1, uth.name, "uthread_state", (("state", RUNNABLE),)))

    def setup_tls(self, uth: Uthread) -> None:
        """Give uth a TLS block at fs_base: [0] the vcore it runs on (rseq's cpu_id), [8] its id."""
        if uth.tls:
            return
        if self._tls_next == 0:
            self.mem.map(TLS_AREA, TLS_AREA_SIZE, Prot.READ | Prot.WRITE, "tls", backed=False)
            self._tls_next = TLS_AREA
        if self._tls_next + TLS_SLOT > TLS_AREA + TLS_AREA_SIZE:
            raise ProcessError(f"setup_tls: more than {TLS_AREA_SIZE // TLS_SLOT} guest uthreads need TLS")
        uth.tls = self._tls_next
        self._tls_next += TLS_SLOT
        write_for_guest(self, uth.tls + 8, uth.id, f"writing the id into the TLS of uthread {uth.name!r}")
        uth.ctx.fs_base = uth.tls

    def setup_guest_stack(self, uth: Uthread, size: int = DEFAULT_STACK) -> None:
        """A stack for uth, with an unmapped guard page below it."""
        top = self._next_stack
        self._next_stack -= size + PAGE_SIZE
        self.mem.map(top - size, size, Prot.READ | Prot.WRITE, f"stack:{uth.name}")
        uth.stack_lo, uth.stack_hi = top - size, top

    def _uthread_body(self, uth: Uthread) -> None:
        """What a uthread's greenlet runs: its guest code, or its Python function, then exit."""
        if uth.kind is UthreadKind.GUEST:
            self.guest.run(uth)
            return
        try:
            ret = uth.entry.func(*uth.entry.args)
        except Exception as exc:  # a bug: the process ends with a report
            if getattr(exc, "__notes__", None):
                self.crash(exc)  # raised by a 2LS op this uthread's parlib call made: named as the op, as anywhere
            report = f"uthread {uth.name!r} raised {type(exc).__name__}: {exc}\n" + "".join(
                traceback.format_exception(exc)[-3:]
            )
            self.kernel.exit(-1, f"uthread {uth.name!r} raised {type(exc).__name__}", report)
        uthread_exit(self, uth, ret)

    # -- running ---------------------------------------------------------------------------------

    def run(self, until_ns: int | None, max_insns: int | None) -> RunEnd:
        """Set up (sched_init, the initial threads), then run the engine until an end; always tear down."""
        engine = self.engine
        self.started = True
        engine.until = until_ns
        self.guest.max_insns = max_insns
        engine.gl = engine_caller = getcurrent()
        # A run makes many small long-lived records and few reference cycles: a
        # rarer young-generation collection saves a third of a yield's cost.
        # Restored when the run ends, so nothing outside it sees the change.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD), *thresholds[1:])
        try:
            engine.run_setup(self._setup)
            engine.gl = engine_caller
            end = engine.run(self._stop_check)
            if end is RunEnd.IDLE and self.checking:
                self.check_nothing_lost()
                if self.kernel.state is ProcState.DYING:
                    end = RunEnd.PROCESS_EXITED
            return end
        finally:
            gc.set_threshold(*thresholds)
            self.finished = True

    def _setup(self) -> None:
        """The SCP phase on vcore 0: sched_init, then the initial threads (thread0 making them)."""
        try:
            self._scp_phase()
        except Exception as exc:  # a 2LS that fails in sched_init or thread_create: a report, not a traceback
            self.crash(exc)

    def _scp_phase(self) -> None:
        engine = self.engine
        vc0 = engine.vcores[0]
        self.kernel.set_vcore_state(vc0, VcoreState.ONLINE)
        self.trace_event(None, "sched_init", sched=self.ops.name)
        self.call_op("sched_init")
        for entry in self.pending_threads:
            if self.create_uthread(entry) is None:
                return
        vc0.clock = engine.now
        engine.start_vcore(vc0, Entry.PROCESS_START)
        self.timeline.vcore(engine.time(), vc0.id, "online")
        self.trace_event(vc0, "vcore_online", how="start", amt_wanted=self.kernel.amt_wanted)

    def _stop_check(self) -> RunEnd | None:
        if self.kernel.state is ProcState.DYING:
            return RunEnd.PROCESS_EXITED
        if self.uthreads and self.live == 0:
            return RunEnd.ALL_EXITED
        if self.guest.max_insns is not None and self.cpu.retired >= self.guest.max_insns:
            return RunEnd.INSN_BUDGET
        return None

    def end_time(self, end: RunEnd) -> int:
        """The virtual time the run ended at."""
        engine = self.engine
        if end is RunEnd.PROCESS_EXITED and self.kernel.exit_time is not None:
            return self.kernel.exit_time
        if end is RunEnd.TIME_BUDGET and engine.until is not None:
            return engine.until
        clocks = [vc.spending[1] if vc.spending else vc.clock for vc in engine.vcores]
        return max(clocks + [engine.now])

    def close(self) -> None:
        """End every greenlet, drop every pending event and trigger, release the Unicorn instance."""
        self.finished = True
        self.engine.kill_all()
        self.engine.clear_events()
        self.guest.triggers.clear()
        for uth in self.uthreads:
            uth.greenlet = None
        self.cpu.release()


_PLAIN = frozenset({int, str, bool, type(None)})
_KEYED = frozenset({int, UserContext})  # second arguments an op record's details are cached by
_HANDS_OVER = frozenset({"thread_runnable", "thread_paused"})  # ops after which a uthread is the 2LS's to run


def _describe_arg(arg):
    """A deterministic short form of an op argument for the trace."""
    if type(arg) in _PLAIN or isinstance(arg, (bool, int, str)):
        return arg
    name = getattr(arg, "name", None)
    if isinstance(name, str):
        return name
    sysc_id = getattr(arg, "id", None)
    if isinstance(sysc_id, int):
        return f"{type(arg).__name__}#{sysc_id}"
    return type(arg).__name__
