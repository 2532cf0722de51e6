"""Uthread: a user-level thread, its one lifecycle, and the vcore-context half of parlib's uthread.c.

Two kinds share one type, as in the design: a guest uthread runs emulated code
from an entry address on its own guest stack; a Python uthread runs a Python
function that calls the parlib API (and may run guest code on its own context
with `call_guest`).  Names follow Akaros's parlib (user/parlib/uthread.c).

Lifecycle (UthState), one notion of each state:

    NOT_RUNNING --run_uthread--> RUNNING --yield/pause/stop/fault--> NOT_RUNNING
    NOT_RUNNING --exit--> EXITED --join/detach (or detached at exit)--> REAPED

EXITED means its code has finished and nobody has collected it yet; REAPED
means the join or detach consumed it and the 2LS's thread_exited has run.

Join state (JoinState), as parlib's join_ctl less its EXITED (which is
UthState.EXITED here):

    JOINABLE --join--> HAS_JOINER          JOINABLE --detach--> DETACHED

The second half of this module is what Akaros runs in vcore context to start,
resume and stop uthreads: run_uthread, run_current_uthread, the refl-fault
hand-off, stop_current_uthread and __uthread_pause; and uthread_yield, the
uthread-context side that enters vcore context.  Each takes the process.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs

from akaros_sim.context import UserContext
from akaros_sim.engine import Entry, Interrupt
from akaros_sim.guestmem import write_for_guest
from akaros_sim.interpose import FaultStatus, HandlerFailed
from akaros_sim.kernel import SyscState
from akaros_sim.timeline import BLOCKED, RUNNABLE, RUNNING

if TYPE_CHECKING:
    from greenlet import greenlet


class UthState(enum.Enum):
    """A uthread's lifecycle: Akaros's UT_RUNNING / UT_NOT_RUNNING, then EXITED and REAPED."""

    NOT_RUNNING = "not_running"
    RUNNING = "running"
    EXITED = "exited"
    REAPED = "reaped"


_UTH_TRANSITIONS = {
    UthState.NOT_RUNNING: {UthState.RUNNING, UthState.EXITED},
    UthState.RUNNING: {UthState.NOT_RUNNING},
    UthState.EXITED: {UthState.REAPED},
    UthState.REAPED: set(),
}


# The table again, keyed by value and as tuples: a member's own hash is a Python call.
_UTH_NEXT = {old.value: tuple(new) for old, new in _UTH_TRANSITIONS.items()}


class UthFlag(enum.IntFlag):
    """Parlib's uthread flags (uthread.h) that this simulator models."""

    NONE = 0
    DONT_MIGRATE = 0x1  # between deciding to yield and reaching vcore context: no stealing
    SAVED = 0x2  # its context is in uth.ctx (not live on a vcore)


class JoinState(enum.Enum):
    """Parlib's join_ctl states (values as in parlib); its EXITED is UthState.EXITED."""

    DETACHED = 1
    JOINABLE = 2
    HAS_JOINER = 3


_JOIN_TRANSITIONS = {
    JoinState.JOINABLE: {JoinState.HAS_JOINER, JoinState.DETACHED},
    JoinState.HAS_JOINER: set(),
    JoinState.DETACHED: set(),
}


# uthread_has_blocked flags (uthread.h)
UTH_EXT_BLK_MUTEX = 1
UTH_EXT_BLK_EVENTQ = 2
UTH_EXT_BLK_YIELD = 3
UTH_EXT_BLK_MISC = 4


class UthreadStateError(RuntimeError):
    """An illegal transition: names the uthread, the state it was in and the one asked for."""


class UthreadKind(enum.Enum):
    GUEST = "guest"
    PYTHON = "python"


@attrs.frozen
class UthreadEntry:
    """What a new uthread runs: guest code at `entry`, or a Python function, with args."""

    name: str
    kind: UthreadKind
    entry: int = 0  # guest: entry address
    func: Any = None  # python: callable
    args: tuple = ()
    detached: bool = False

    @classmethod
    def guest(cls, name: str, entry: int, *args: int, detached: bool = False) -> UthreadEntry:
        if len(args) > 6:
            raise ValueError(f"uthread {name!r}: at most 6 register arguments, got {len(args)}")
        return cls(name, UthreadKind.GUEST, entry=entry, args=tuple(args), detached=detached)

    @classmethod
    def python(cls, name: str, func, *args, detached: bool = False) -> UthreadEntry:
        if not callable(func):
            raise ValueError(f"uthread {name!r}: expected a callable, got {func!r}")
        return cls(name, UthreadKind.PYTHON, func=func, args=tuple(args), detached=detached)


class Uthread:
    """A user thread.  A 2LS may subclass it to embed its own fields (as pthread_tcb does).

    Fields are grouped by owner, as in xv6's struct proc.  Slots keep a live
    uthread small (a 2LS subclass may add its own `__slots__`, or use the
    instance dict, which is made only when first needed).
    """

    __slots__ = (
        "entry", "name", "kind", "id", "_state", "done", "flags", "sysc", "join_state", "joiner", "join_kref",
        "join_result", "exit_value", "notif_disabled_depth", "_ctx", "stack_lo", "stack_hi", "tls", "tls_vcore", "sig_pending",
        "sig_pending_set", "sig_mask",
        "sigdata", "interrupted", "greenlet", "vcore", "insns", "waits_for", "waiting_since", "runnable_at", "times",
        "__dict__",
    )  # fmt: skip

    def __init__(self, entry: UthreadEntry) -> None:
        # identity (set at creation, never changed)
        self.entry = entry
        self.name = entry.name
        self.kind = entry.kind
        self.id = -1  # assigned by uthread_init, in creation order
        # parlib (uthread.c)
        self._state = UthState.NOT_RUNNING
        self.done = False  # EXITED or REAPED (has_exited; a plain field read on every parlib call)
        self.flags = int(UthFlag.SAVED)  # UthFlag bits, kept as a plain int (cheap arithmetic)
        self.sysc = None  # the syscall it is blocked on, if any
        self.join_state = JoinState.DETACHED if entry.detached else JoinState.JOINABLE
        self.joiner: Uthread | None = None  # who waits in uthread_join for it
        self.join_kref = 0  # a joiner's kicker: runnable when both the exit and its own block are done
        self.join_result: Any = None  # what the joined uthread returned (set for its joiner)
        self.exit_value: Any = None  # what it returned or passed to uthread_exit
        self.notif_disabled_depth = 0
        # saved machine state: registers for guest code (a Python uthread gets one when it needs it)
        self._ctx: UserContext | None = None
        self.stack_lo = 0  # guest stack [stack_lo, stack_hi), a guard page below
        self.stack_hi = 0
        self.tls = 0  # guest address of its TLS block (fs_base): [0] vcore id, [8] uthread id
        self.tls_vcore = -1  # the vcore id last written at fs:[0]
        # signals (parlib sigstate)
        self.sig_pending: tuple[int, int, int] | None = None  # (signo, code, addr) taken: delivered when it runs
        self.sig_pending_set = 0  # sigstate.pending: pthread_kill'd signals (bit signo-1), not yet taken
        self.sig_mask = 0  # sigstate.mask: blocked signals (bit signo-1)
        self.sigdata: int = 0  # guest address of the saved context while a handler runs
        # involuntary stops (RAS): why it was last stopped against its will, until it runs again
        self.interrupted: Interrupt | None = None
        # runtime (engine): the greenlet and where it runs
        self.greenlet: greenlet | None = None
        self.vcore = None  # the vcore it last ran on
        self.insns = 0  # guest instructions it has retired
        # the 2LS contract (the runtime's own view, whatever the 2LS keeps): what it waits for, if
        # anything (None: running, or handed to the 2LS to run), and since which trace record
        self.waits_for: str | None = None
        self.times = None  # its timeline.UthreadTimes, from its registration on
        self.waiting_since = 0
        self.runnable_at = 0  # the virtual time it last became the 2LS's to run (the stall watchdog)

    @property
    def ctx(self) -> UserContext:
        """Its saved registers (made on first use: most Python uthreads never run guest code)."""
        ctx = self._ctx
        if ctx is None:
            ctx = self._ctx = UserContext()
        return ctx

    @ctx.setter
    def ctx(self, ctx: UserContext) -> None:
        self._ctx = ctx

    # -- state machines ------------------------------------------------------------

    @property
    def state(self) -> UthState:
        return self._state

    @property
    def has_exited(self) -> bool:
        """Its code has finished (EXITED or REAPED)."""
        return self.done

    def set_state(self, new: UthState) -> None:
        if new not in _UTH_NEXT[self._state._value_]:
            raise UthreadStateError(f"uthread {self.name!r}: illegal transition {self._state.name} -> {new.name}")
        self._state = new
        self.done = new is UthState.EXITED or new is UthState.REAPED

    def set_join_state(self, new: JoinState) -> None:
        if new not in _JOIN_TRANSITIONS[self.join_state]:
            raise UthreadStateError(
                f"uthread {self.name!r}: illegal join transition {self.join_state.name} -> {new.name}"
            )
        self.join_state = new

    def __repr__(self) -> str:
        return f"<Uthread {self.name!r} {self._state.name} {self.kind.value}>"


class UthreadRunError(RuntimeError):
    """A uthread started, resumed or stopped in a way parlib forbids (names the uthread and vcore)."""


# Flags as plain ints on the hot path (IntFlag arithmetic costs microseconds).
_SAVED = int(UthFlag.SAVED)
_DONT_MIGRATE = int(UthFlag.DONT_MIGRATE)
_NOT_RUNNING = UthState.NOT_RUNNING
_RUNNING = UthState.RUNNING


_HOW = {how: (("how", how),) for how in ("run_uthread", "run_current_uthread", "fault_fixed")}
_DECIDING = "the decision of its yield callback (uthread_runnable, or a block it names)"


def waits(proc, uth: Uthread, what: str | None, cause: str = "") -> None:
    """The 2LS contract's view of uth: it waits for `what` (None: it is the 2LS's to run, or running);
    `cause` is the timeline's word for it (timeline.CAUSES)."""
    uth.waits_for, uth.waiting_since = what, len(proc.trace)
    if what is None:
        cur = proc.engine.current
        uth.runnable_at = cur.clock if cur is not None else proc.engine.now
        proc.set_uth_state(uth, RUNNABLE)
    else:
        proc.set_uth_state(uth, BLOCKED, cause)


# -- vcore context: starting and resuming uthreads -------------------------------------------------


def run_uthread(proc, vc, uth: Uthread) -> None:
    """run_uthread: run uth, which must not be running, on vc (never returns)."""
    if vc.current_uthread is not None:
        raise UthreadRunError(
            f"run_uthread({uth.name!r}): vcore {vc.id} still has current_uthread {vc.current_uthread.name!r}"
        )
    if uth._state is not _NOT_RUNNING:
        raise UthreadRunError(f"run_uthread({uth.name!r}): expected NOT_RUNNING, it is {uth._state.name}")
    ctx = uth._ctx
    if ctx is not None and ctx.fault_pending:
        # a reflected fault still to handle (e.g. it was paused before its vcore saw it)
        handle_refl_fault(proc, vc, uth)
    _pop(proc, vc, uth, "run_uthread")


def run_current_uthread(proc, vc) -> None:
    """run_current_uthread: resume the uthread vc was interrupted from (never returns)."""
    uth = vc.current_uthread
    if uth is None:
        raise UthreadRunError(f"run_current_uthread: vcore {vc.id} has no current_uthread")
    ctx = uth._ctx
    if ctx is not None and ctx.fault_pending:
        vc.current_uthread = None
        uth.flags |= _SAVED
        uth.set_state(_NOT_RUNNING)
        handle_refl_fault(proc, vc, uth)
    vc.current_uthread = None
    _pop(proc, vc, uth, "run_current_uthread", resume=True)


def handle_refl_fault(proc, vc, uth: Uthread) -> None:
    """Give a reflected fault to sched_ops.thread_refl_fault; resume at once if a handler fixed it.

    Otherwise the 2LS decided the uthread's fate and vcore context starts over.
    """
    uth.ctx.fault_pending = False  # clear_refl_fault: the trap fields stay readable
    try:
        status = proc.call_op("thread_refl_fault", uth, uth.ctx)
    except HandlerFailed as failed:
        proc.exit(-1, "exit", f"{failed}\n" + proc.fault_report(uth, "fault handler failed"))
    if status is not None and not isinstance(status, FaultStatus) and proc.checking:
        proc.contract_violation(
            f"2LS {proc.ops.name!r}: thread_refl_fault({uth.name!r}) returned {status!r}; "
            "expected nothing (the 2LS decided) or a FaultStatus"
        )
    if status is FaultStatus.FAULT_FIXED:
        # fixed by an interposed handler: resume at once here; the 2LS never
        # sees it, and the fix is authoritative (no RAS restart undoes it)
        uth.interrupted = None
        record = proc.record
        if record is not None:
            record((vc.clock, vc.id, uth.name, "fault_fixed", (("rip", uth.ctx.rip),)))
        _pop(proc, vc, uth, "fault_fixed")
    proc.engine.restart_vcore_entry(vc)


def _pop(proc, vc, uth: Uthread, how: str, resume: bool = False) -> None:
    """Load uth on vc and leave vcore context (pop_user_ctx)."""
    engine = proc.engine
    if proc.checking:
        if uth.waits_for is not None:
            proc.contract_violation(
                f"2LS {proc.ops.name!r} ran uthread {uth.name!r}, which waits for {uth.waits_for} "
                f"(since trace record #{uth.waiting_since})"
            )
        if not resume:
            proc.runs_to_scan -= 1
            if vc.clock - uth.runnable_at > proc.stall_ns or proc.runs_to_scan <= 0:
                proc.watch_stalls(uth)
    engine.advance(proc.costs.context_switch_ns)
    if not resume:
        uth._state = _RUNNING  # NOT_RUNNING -> RUNNING: checked by the callers
    vc.current_uthread = uth
    uth.vcore = vc
    uth.flags &= ~_SAVED
    proc.set_uth_state(uth, RUNNING, "", vc)
    record = proc.record
    if record is not None:  # last before the resume chain's records (a RAS restart follows its `run`)
        record((vc.clock, vc.id, uth.name, "run", _HOW[how]))
    if uth.interrupted is not None:
        why, uth.interrupted = uth.interrupted, None
        proc.resume_chain(uth, uth.ctx, why.value)
    if uth.tls and uth.tls_vcore != vc.id:
        # the rseq-like cpu_id the guest reads at fs:[0], rewritten when it lands on another vcore
        # the guest unmapped its own TLS: vcore context faults, which kills the process (guestmem.py)
        if not write_for_guest(proc, uth.tls, vc.id, f"writing the vcore id into the TLS of uthread {uth.name!r}"):
            return
        uth.tls_vcore = vc.id
    if vc.notif_pending:
        # pop_user_ctx never leaves vcore context with a notification pending: the uthread did not run,
        # its vcore handles the notification in vcore context first (as after an interrupt)
        proc.set_uth_state(uth, BLOCKED, "interrupt", vc)
        engine.restart_vcore_entry(vc)
    vc.notif_disabled = False
    engine.run_uthread(vc, uth)


def stop_current_uthread(proc, vc) -> Uthread:
    """stop_current_uthread: detach the interrupted uthread from vc (SAVED, NOT_RUNNING) and return it."""
    uth = vc.current_uthread
    if uth is None:
        raise UthreadRunError(f"stop_current_uthread: vcore {vc.id} has no current_uthread")
    vc.current_uthread = None
    uth.flags |= _SAVED
    uth.set_state(_NOT_RUNNING)
    proc.trace_event(vc, "uthread_stop", target=uth.name)
    proc.set_uth_state(uth, RUNNABLE)  # the 2LS holds it now
    return uth


def uthread_pause(proc, vc, uth: Uthread, reason: str) -> None:
    """__uthread_pause: copy the uthread out (SAVED, NOT_RUNNING) and give it to thread_paused."""
    uth.flags |= _SAVED
    uth.set_state(_NOT_RUNNING)
    proc.trace_event(vc, "uthread_pause", target=uth.name, why=reason)
    proc.call_op("thread_paused", uth)


# -- uthread context: into vcore context --------------------------------------------------------------


def uthread_yield(proc, vc, uth: Uthread, save_state: bool, yield_func, arg=None) -> None:
    """uthread_yield: leave for vcore context, where yield_func(uth, arg) decides uth's fate.

    Returns when uth runs again (possibly on another vcore).  Nothing between
    the caller's decision and the switch spends time, so a spinlock the caller
    holds is released by yield_func in vcore context with no window between.
    """
    proc.engine.enter_vcore_context(vc, Entry.YIELD, yield_action(uth, save_state, yield_func, arg))


def yield_action(uth: Uthread, save_state: bool, yield_func, arg):
    """Mark uth as on its way out; the returned action finishes __uthread_yield in vcore context."""
    uth.flags |= _DONT_MIGRATE
    if save_state:
        uth.flags |= _SAVED

    def action(vc):
        uth.flags &= ~_DONT_MIGRATE
        uth._state = _NOT_RUNNING  # RUNNING -> NOT_RUNNING: it was running to call this
        uth.notif_disabled_depth = 0
        uth.waits_for = _DECIDING  # until its callback hands it to the 2LS or blocks it on something
        yield_func(uth, arg)
        vc.current_uthread = None

    return action


def syscall(proc, uth: Uthread, nr: int, args) -> int:
    """A kernel syscall from uthread context; blocks the uthread if it does not complete at once.

    Akaros's __ros_uth_syscall_blockon: the 2LS's thread_blockon_sysc decides
    in vcore context, and the completion event makes the uthread runnable.
    """
    engine = proc.engine
    engine.advance(proc.costs.syscall_entry_ns)
    vc = engine.current
    kernel = proc.kernel
    sysc = kernel.new_syscall(nr, tuple(args))
    proc.trace_event(vc, "syscall", uth=uth, sysc=sysc.id, name=sysc.name, args=tuple(args))
    kernel.submit(sysc, vc)
    if sysc.state is SyscState.PENDING:
        engine.advance(proc.costs.python_step_ns)  # a completion meanwhile is caught by register_evq
        uthread_yield(proc, engine.current, uth, True, lambda uth, sysc: blockon_sysc(proc, uth, sysc), sysc)
    return sysc.retval


def blockon_sysc(proc, uth: Uthread, sysc) -> None:
    """Vcore context: uth waits for sysc (thread_blockon_sysc; also the 2LS's async fault path)."""
    sysc.u_data = uth
    uth.sysc = sysc
    # done already (register_evq will refuse): the 2LS restarts it at once
    # a syscall the fault path started (populate_va) is still the fault's handling
    cause = "fault" if proc.timeline.cause_of(uth.name) == "fault" else "syscall"
    waits(proc, uth, None if sysc.state is SyscState.DONE else f"syscall #{sysc.id} ({sysc.name})", cause)
    proc.call_op("thread_blockon_sysc", uth, sysc)


def uthread_sched_yield(proc, uth: Uthread) -> None:
    """pthread_yield: go to the back of the 2LS's queue (has_blocked YIELD, then runnable)."""
    proc.engine.advance(proc.costs.python_step_ns)

    def cb(uth, _arg):
        proc.call_op("thread_has_blocked", uth, UTH_EXT_BLK_YIELD)
        proc.call_op("thread_runnable", uth)

    uthread_yield(proc, proc.engine.current, uth, True, cb)
