"""parlib: the API a 2LS and a Python uthread call, named as in Akaros's parlib.

Every function finds its simulation through the running greenlet, so code
looks like C code calling parlib: `run_uthread(uth)`, `uthread_yield(...)`,
`Mutex().lock()`.  Calling one outside a simulation is a clear error.

Contexts: functions marked "vcore context" may only be called from vcore
context (2LS ops, yield callbacks); "uthread context" ones only from a
running uthread.  Violations raise ParlibError naming the function.
"""

from __future__ import annotations

from greenlet import GreenletExit, getcurrent

from akaros_sim.engine import EngineError
from akaros_sim.kernel import EV_SYSCALL, SYS_block, EventQueue
from akaros_sim.uthread import JoinState, Uthread, UthFlag, UthreadEntry, UthState
from akaros_sim.vcore import RestartVcoreEntry, handle_events as _handle_events
from akaros_sim.vcore import vcore_yield as _vcore_yield

# uthread_has_blocked flags (uthread.h)
UTH_EXT_BLK_MUTEX = 1
UTH_EXT_BLK_EVENTQ = 2
UTH_EXT_BLK_YIELD = 3
UTH_EXT_BLK_MISC = 4

# signals and codes a 2LS reflects faults as
SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV = 4, 5, 7, 8, 11
FPE_INTDIV = 1
SEGV_MAPERR, SEGV_ACCERR = 1, 2


# Flags as plain ints on the hot path (IntFlag arithmetic costs microseconds).
_SAVED = int(UthFlag.SAVED)
_DONT_MIGRATE = int(UthFlag.DONT_MIGRATE)
_EXITED = UthState.EXITED


class ParlibError(RuntimeError):
    """A parlib function called from the wrong context, or with a bad argument."""


def _sim(fn: str):
    cur = getcurrent()
    try:
        sim = cur.sim
    except AttributeError:
        raise ParlibError(f"{fn}: not called from inside a running Simulation") from None
    if sim.finished:
        # the run is over and this uthread is being unwound: do nothing more
        raise GreenletExit()
    uth = cur.uth
    if uth is not None and uth._state is _EXITED:
        raise GreenletExit()  # an exited uthread being unwound (its finally blocks must not act)
    return sim


def _vcore_ctx(fn: str):
    sim = _sim(fn)
    vc = sim.engine.current
    if vc is None or not vc.in_vcore_ctx:
        raise ParlibError(f"{fn}: must be called from vcore context")
    return sim, vc


def _uthread_ctx(fn: str):
    sim = _sim(fn)
    uth = getattr(getcurrent(), "uth", None)
    vc = sim.engine.current
    if uth is None or vc is None or vc.in_vcore_ctx or vc.current_uthread is not uth:
        raise ParlibError(f"{fn}: must be called from a running uthread")
    return sim, vc, uth


def current_sim():
    """The Simulation running the caller."""
    return _sim("current_sim")


# -- vcores --------------------------------------------------------------------------------------


def vcore_id() -> int:
    """The id of the vcore the caller runs on."""
    vc = _sim("vcore_id").engine.current
    if vc is None:
        raise ParlibError("vcore_id: not running on a vcore")
    return vc.id


def in_vcore_context() -> bool:
    vc = _sim("in_vcore_context").engine.current
    return vc is not None and vc.in_vcore_ctx


def current_uthread() -> Uthread | None:
    """The uthread this vcore runs or was interrupted from (Akaros's current_uthread)."""
    vc = _sim("current_uthread").engine.current
    return vc.current_uthread if vc is not None else None


def num_vcores() -> int:
    return _sim("num_vcores").kernel.num_vcores()


def max_vcores() -> int:
    return _sim("max_vcores").kernel.max_vcores


def vcore_request_total(total: int) -> None:
    """Ask the kernel for `total` vcores in all (capped at max_vcores)."""
    sim = _sim("vcore_request_total")
    sim.engine.charge(sim.costs.sched_op_ns)
    sim.kernel.request_total(total)


def vcore_request_more(n: int) -> None:
    """Ask for n vcores beyond those online (Akaros: request_total(n + num_vcores()))."""
    sim = _sim("vcore_request_more")
    vcore_request_total(n + sim.kernel.num_vcores())


def vcore_yield(preempt_pending: bool = False) -> None:
    """Vcore context: give this vcore back; returns only if the kernel refused (the caller loops)."""
    sim, vc = _vcore_ctx("vcore_yield")
    _vcore_yield(sim, vc, preempt_pending)


def handle_events() -> int:
    """Vcore context: drain this vcore's mailbox; the number of messages handled."""
    sim, vc = _vcore_ctx("handle_events")
    return _handle_events(sim, vc)


def vcore_tick_enable(period_ns: int) -> None:
    """Ask for a periodic tick on this vcore that interrupts its uthread into vcore context."""
    sim = _sim("vcore_tick_enable")
    vc = sim.engine.current or sim.engine.vcores[0]  # from sched_init: thread0's vcore
    if not isinstance(period_ns, int) or period_ns <= 0:
        raise ParlibError(f"vcore_tick_enable: expected a period > 0 ns, got {period_ns!r}")
    vc.tick_period = period_ns
    sim.arm_tick(vc)


def vcore_tick_disable() -> None:
    sim = _sim("vcore_tick_disable")
    vc = sim.engine.current or sim.engine.vcores[0]
    vc.tick_period = 0
    if vc.tick_event is not None:
        vc.tick_event.cancelled = True
        vc.tick_event = None


def vcore_tick_poll() -> int:
    """Vcore context: the number of tick periods expired since the last poll (then zero)."""
    _, vc = _vcore_ctx("vcore_tick_poll")
    n, vc.tick_expired = vc.tick_expired, 0
    return n


# -- running uthreads (vcore context) -----------------------------------------------------------------


def run_uthread(uth: Uthread) -> None:
    """Vcore context: run uth, which must not be running (never returns)."""
    sim, vc = _vcore_ctx("run_uthread")
    if vc.current_uthread is not None:
        raise ParlibError(f"run_uthread({uth.name!r}): vcore {vc.id} still has current_uthread {vc.current_uthread.name!r}")
    if uth.state is not UthState.NOT_RUNNING or uth.has_exited:
        state = "exited" if uth.has_exited else uth.state.name
        raise ParlibError(f"run_uthread({uth.name!r}): expected NOT_RUNNING, it is {state}")
    if uth.ctx.fault_pending:
        # a reflected fault still to handle (e.g. it was paused before its vcore saw it)
        _handle_refl_fault(sim, vc, uth)
    _pop(sim, vc, uth, "run_uthread")


def run_current_uthread() -> None:
    """Vcore context: resume the uthread this vcore was interrupted from (never returns)."""
    sim, vc = _vcore_ctx("run_current_uthread")
    uth = vc.current_uthread
    if uth is None:
        raise ParlibError(f"run_current_uthread: vcore {vc.id} has no current_uthread")
    if uth.ctx.fault_pending:
        vc.current_uthread = None
        uth.flags |= _SAVED
        uth.set_state(UthState.NOT_RUNNING)
        _handle_refl_fault(sim, vc, uth)
    vc.current_uthread = None
    _pop(sim, vc, uth, "run_current_uthread", resume=True)


def _handle_refl_fault(sim, vc, uth: Uthread) -> None:
    from akaros_sim.interpose import FaultStatus, HandlerFailed

    uth.ctx.fault_pending = False  # clear_refl_fault: the trap fields stay readable
    try:
        status = sim.call_op("thread_refl_fault", uth, uth.ctx)
    except HandlerFailed as failed:
        exit(-1, f"{failed}\n" + sim.fault_report(uth, "fault handler failed"))
    sim.die_if_exited()
    if status is FaultStatus.FAULT_FIXED:
        # fixed by an interposed handler: resume at once here; the 2LS never
        # sees it, and the fix is authoritative (no RAS restart undoes it)
        uth.interrupted = None
        sim.trace_event(vc, "fault_fixed", uth=uth, rip=uth.ctx.rip)
        _pop(sim, vc, uth, "fault_fixed")
    raise RestartVcoreEntry()


def _pop(sim, vc, uth: Uthread, how: str, resume: bool = False) -> None:
    """Load uth on vc and leave vcore context (pop_user_ctx)."""
    if not resume:
        uth.set_state(UthState.RUNNING)
    vc.current_uthread = uth
    uth.vcore = vc
    uth.flags &= ~_SAVED
    sim.engine.charge(sim.costs.context_switch_ns)
    sim.trace_event(vc, "run", uth=uth, how=how)
    if uth.interrupted is not None:
        why, uth.interrupted = uth.interrupted, None
        sim.resume_chain(uth, uth.ctx, why)
    if uth.tls:
        sim.mem.write_u64(uth.tls, vc.id)  # the rseq-like cpu_id the guest reads at fs:[0]
    sim.engine.maybe_yield()  # deliver what fell due in vcore context before leaving it
    if vc.notif_pending:
        # pop_user_ctx never leaves vcore context with a notification pending
        raise RestartVcoreEntry()
    vc.notif_disabled = False
    sim.engine.enter_uthread(vc, uth)


def stop_current_uthread() -> Uthread:
    """Vcore context: detach the interrupted uthread from this vcore (SAVED, NOT_RUNNING) and return it."""
    sim, vc = _vcore_ctx("stop_current_uthread")
    uth = vc.current_uthread
    if uth is None:
        raise ParlibError(f"stop_current_uthread: vcore {vc.id} has no current_uthread")
    vc.current_uthread = None
    uth.flags |= _SAVED
    uth.set_state(UthState.NOT_RUNNING)
    sim.trace_event(vc, "uthread_stop", target=uth.name)
    return uth


def uthread_paused(uth: Uthread) -> None:
    """A uthread was stopped and copied out: hand it to the 2LS's thread_paused."""
    sim = _sim("uthread_paused")
    sim.call_op("thread_paused", uth)


def uthread_runnable(uth: Uthread) -> None:
    """Wake uth (sync wakeups, joins, timeouts): the 2LS's thread_runnable."""
    sim = _sim("uthread_runnable")
    sim.call_op("thread_runnable", uth)


def uthread_has_blocked(uth: Uthread, flags: int) -> None:
    """A yield callback that is not a 2LS op must report the block (thread_has_blocked)."""
    sim = _sim("uthread_has_blocked")
    sim.call_op("thread_has_blocked", uth, flags)


# -- 2LS plumbing ---------------------------------------------------------------------------------


def uthread_2ls_init(handle_sysc) -> None:
    """Register the 2LS's syscall-completion handler for EV_SYSCALL (handle_sysc(sysc))."""
    sim = _sim("uthread_2ls_init")
    sim.ev_handlers.setdefault(EV_SYSCALL, []).append(lambda msg, _type: handle_sysc(msg.arg3))


def register_ev_handler(ev_type: int, handler) -> None:
    """handler(msg, ev_type) runs in vcore context for every message of ev_type."""
    _sim("register_ev_handler").ev_handlers.setdefault(ev_type, []).append(handler)


def get_eventq(vcoreid: int = 0, *, spam: bool = True, wakeup: bool = True) -> EventQueue:
    return EventQueue(vcoreid, spam, wakeup)


def register_evq(sysc, evq: EventQueue) -> bool:
    """Ask for EV_SYSCALL on evq when sysc completes; False if it already has."""
    return _sim("register_evq").register_evq(sysc, evq)


def uthread_init(uth: Uthread) -> None:
    """Make a new uthread known to the runtime (ids, guest stack, initial context)."""
    _sim("uthread_init").register_uthread(uth)


def uthread_cleanup(uth: Uthread) -> None:
    """The 2LS is done with uth (from thread_exited)."""
    sim = _sim("uthread_cleanup")
    uth.set_state(UthState.EXITED)
    sim.trace_event(None, "uthread_cleanup", target=uth.name)
    # Its greenlet is suspended in the exit path forever: end it now, not at
    # the end of the run (a finished uthread should not hold its stack).
    gl, uth.greenlet = uth.greenlet, None
    if gl is not None and not gl.dead and gl is not getcurrent():
        gl.parent = getcurrent()
        try:
            gl.throw(GreenletExit)
        except GreenletExit:
            pass


def syscall_async(nr: int, *args):
    """Start a syscall from vcore context (the 2LS's fault path); returns the Syscall."""
    sim = _sim("syscall_async")
    sysc = sim.kernel.new_syscall(nr, args)
    sim.trace_event(None, "syscall", sysc=sysc.id, name=sysc.name, args=tuple(args))
    sim.kernel.submit(sysc, sim.engine.current)
    return sysc


def block_uthread_on_async_sysc(uth: Uthread, sysc) -> None:
    """__block_uthread_on_async_sysc: uth waits for sysc as if it had made it."""
    sim = _sim("block_uthread_on_async_sysc")
    sim.ops_thread_blockon_sysc(uth, sysc)


def exit(status: int, report: str | None = None) -> None:  # noqa: A001 - parlib's name
    """End the process with `status` (never returns)."""
    from akaros_sim.engine import StopSimulation

    sim = _sim("exit")
    sim.process_exit(status, "exit", report)
    raise StopSimulation()


def fault_report(uth: Uthread, headline: str) -> str:
    """The text a 2LS prints for an unhandled fault: trap, rip, disassembly, registers."""
    return _sim("fault_report").fault_report(uth, headline)


def uthread_prep_signal_from_fault(uth: Uthread, signo: int, code: int, addr: int) -> None:
    """Arrange for uth to run its guest handler for signo next time it runs (or die by default)."""
    sim = _sim("uthread_prep_signal_from_fault")
    if uth.sigdata:
        exit(-1, sim.fault_report(uth, "Uthread sighandler faulted"))
    uth.sig_pending = (signo, code, addr)
    sim.trace_event(None, "signal_prep", target=uth.name, signo=signo, code=code, addr=addr)


def trace(kind: str, **details) -> None:
    """Add a record of your own to the trace (a 2LS's decisions, a test's markers)."""
    _sim("trace").user_trace_event(kind, **details)


# -- uthread context ----------------------------------------------------------------------------------


def uthread_self() -> Uthread:
    _, _, uth = _uthread_ctx("uthread_self")
    return uth


def uthread_yield(save_state: bool, yield_func, arg=None) -> None:
    """Uthread context: leave for vcore context, where yield_func(uth, arg) decides uth's fate.

    Returns when uth runs again (possibly on another vcore).
    """
    sim, vc, uth = _uthread_ctx("uthread_yield")
    uth.flags |= _DONT_MIGRATE
    if save_state:
        uth.flags |= _SAVED
    sim.engine.charge(sim.costs.python_step_ns)

    def action(vc):
        uth.flags &= ~_DONT_MIGRATE
        uth.set_state(UthState.NOT_RUNNING)
        uth.notif_disabled_depth = 0
        yield_func(uth, arg)
        vc.current_uthread = None

    sim.engine.enter_vcore_context(vc, "yield", action)
    sim.die_if_exited()


def _sched_yield_cb(uth, _arg) -> None:
    uthread_has_blocked(uth, UTH_EXT_BLK_YIELD)
    uthread_runnable(uth)


def uthread_sched_yield() -> None:
    """pthread_yield: go to the back of the 2LS's queue."""
    uthread_yield(True, _sched_yield_cb)


def compute(ns: int) -> None:
    """Uthread context: spend ns of virtual time computing (interruptible, preemptible)."""
    sim, vc, uth = _uthread_ctx("compute")
    if not isinstance(ns, int) or ns < 0:
        raise ParlibError(f"compute: expected ns >= 0, got {ns!r}")
    engine = sim.engine
    while ns > 0:
        vc = uth.vcore
        step = max(1, min(ns, engine.horizon - vc.clock + 1))
        engine.charge(step, uthread_time=True)
        ns -= step
        sim.preempt_point(uth)


def syscall(nr: int, *args: int) -> int:
    """Uthread context: make a syscall; blocks the uthread if it does not complete at once."""
    sim, vc, uth = _uthread_ctx("syscall")
    return sim.do_syscall(uth, nr, args)


def uthread_sleep(ns: int) -> None:
    """Sleep ns of virtual time (SYS_block, as Akaros's uthread_sleep)."""
    syscall(SYS_block, ns)


def call_guest(addr: int, *args: int) -> int:
    """Uthread context: run guest code at addr on this uthread's own context; returns rax."""
    from akaros_sim.simulation import _VDSO_GUEST_RETURN

    sim, vc, uth = _uthread_ctx("call_guest")
    if len(args) > 6:
        raise ParlibError(f"call_guest: at most 6 register arguments, got {len(args)}")
    if not uth.stack_hi:
        sim._setup_guest_stack(uth)
        uth.ctx.rsp = uth.stack_hi
        sim.setup_tls(uth)
        sim.mem.write_u64(uth.tls, vc.id)
    ctx = uth.ctx
    ctx.rip = addr
    ctx.rsp = ((ctx.rsp if ctx.rsp else uth.stack_hi) - 64) & ~0xF
    sim.mem.write_u64(ctx.rsp - 8, _VDSO_GUEST_RETURN)
    ctx.rsp -= 8
    for reg, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
        setattr(ctx, reg, value & ((1 << 64) - 1))
    result = sim.guest_loop(uth, call=True)
    ctx.rsp = uth.stack_hi
    return result


def uthread_create(func_or_entry, *args, name: str | None = None, detached: bool = False) -> Uthread:
    """Create a uthread through sched_ops.thread_create (a Python function, or a UthreadEntry)."""
    sim = _sim("uthread_create")
    if isinstance(func_or_entry, UthreadEntry):
        entry = func_or_entry
    else:
        entry = UthreadEntry.python(name or getattr(func_or_entry, "__name__", "uthread"), func_or_entry, *args,
                                    detached=detached)  # fmt: skip
    uth = sim.call_op("thread_create", entry)
    if not isinstance(uth, Uthread):
        raise ParlibError(f"sched_ops.thread_create returned {uth!r} for {entry.name!r}, not a Uthread")
    return uth


def _exit_cb(uth: Uthread, retval) -> None:
    sim = _sim("uthread_exit")
    uth.retval = retval
    uth.exit_value = retval
    uth.has_exited = True
    sim._live -= 1
    sim.trace_event(None, "uthread_exit", target=uth.name, join=uth.join_state.name, retval=_plain(retval))
    if uth.join_state is JoinState.DETACHED:
        sim.call_op("thread_exited", uth)
    elif uth.join_state is JoinState.HAS_JOINER:
        joiner = uth.joiner
        joiner.join_result = retval
        sim.call_op("thread_exited", uth)
        uthread_runnable(joiner)
    else:
        uth.set_join_state(JoinState.EXITED)  # thread_exited waits for join or detach


def uthread_exit(retval=None) -> None:
    """Uthread context: end the calling uthread with retval (never returns)."""
    uthread_yield(False, _exit_cb, retval)
    raise EngineError("uthread_exit: an exited uthread was run again")


def _join_cb(uth: Uthread, target: Uthread) -> None:
    uthread_has_blocked(uth, UTH_EXT_BLK_MISC)


def uthread_join(target: Uthread):
    """Uthread context: wait for target to exit; returns its return value."""
    sim, vc, uth = _uthread_ctx("uthread_join")
    if target is uth:
        raise ParlibError(f"uthread_join: {uth.name!r} cannot join itself")
    if target.state is UthState.EXITED:
        raise ParlibError(f"uthread_join({target.name!r}): it has been reaped already (joined or detached)")
    if target.join_state is JoinState.EXITED:
        sim.call_op("thread_exited", target)
        return target.retval
    if target.join_state is not JoinState.JOINABLE:
        raise ParlibError(f"uthread_join({target.name!r}) from {uth.name!r}: target is {target.join_state.name}")
    target.set_join_state(JoinState.HAS_JOINER)
    target.joiner = uth
    uthread_yield(True, _join_cb, target)
    return uth.__dict__.pop("join_result", None)


def uthread_detach(target: Uthread) -> None:
    """Detach target: its resources go when it exits (now, if it already has)."""
    sim = _sim("uthread_detach")
    if target.state is UthState.EXITED:
        raise ParlibError(f"uthread_detach({target.name!r}): it has been reaped already (joined or detached)")
    if target.join_state is JoinState.EXITED:
        sim.call_op("thread_exited", target)
        return
    if target.join_state is not JoinState.JOINABLE:
        raise ParlibError(f"uthread_detach({target.name!r}): target is {target.join_state.name}")
    target.set_join_state(JoinState.DETACHED)


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, str)) else type(value).__name__


# -- synchronization (through the 2LS's sync ops) ------------------------------------------------------


class UthSync:
    """uth_sync_t: a queue of blocked uthreads whose storage the 2LS's sync ops manage."""

    __slots__ = ("queue", "__dict__")

    def __init__(self) -> None:
        self.queue = None
        _sim("UthSync").call_op("sync_init", self)


class Mutex:
    """A uthread mutex (a semaphore of one): FIFO hand-off to the head waiter, no barging."""

    def __init__(self, name: str = "mutex") -> None:
        self.name = name
        self.count = 1
        self.sync = UthSync()
        self.owner: Uthread | None = None

    def lock(self) -> None:
        sim, vc, uth = _uthread_ctx("Mutex.lock")
        sim.engine.charge(sim.costs.python_step_ns)
        if self.count > 0:
            self.count -= 1
            self.owner = uth
            return
        sim.trace_event(vc, "mutex_block", uth=uth, mutex=self.name)
        uthread_yield(True, self._block_cb)
        self.owner = uth  # handed over by unlock

    def _block_cb(self, uth: Uthread, _arg) -> None:
        uthread_has_blocked(uth, UTH_EXT_BLK_MUTEX)
        _sim("Mutex").call_op("sync_enqueue", uth, self.sync)

    def trylock(self) -> bool:
        sim, vc, uth = _uthread_ctx("Mutex.trylock")
        if self.count > 0:
            self.count -= 1
            self.owner = uth
            return True
        return False

    def unlock(self) -> None:
        sim = _sim("Mutex.unlock")
        self.owner = None
        waiter = sim.call_op("sync_get_next", self.sync)
        if waiter is None:
            self.count += 1
            return
        sim.trace_event(None, "mutex_handoff", mutex=self.name, to=waiter.name)
        uthread_runnable(waiter)

    def __enter__(self) -> Mutex:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


class CondVar:
    """A condition variable (Mesa semantics); the waiter is enqueued before the mutex is released."""

    def __init__(self, name: str = "cv") -> None:
        self.name = name
        self.sync = UthSync()

    def wait(self, mutex: Mutex) -> None:
        sim, vc, uth = _uthread_ctx("CondVar.wait")

        def cb(uth, _arg):
            uthread_has_blocked(uth, UTH_EXT_BLK_MUTEX)
            sim.call_op("sync_enqueue", uth, self.sync)
            mutex.unlock()

        sim.trace_event(vc, "cv_wait", uth=uth, cv=self.name)
        uthread_yield(True, cb)
        mutex.lock()

    def signal(self) -> None:
        sim = _sim("CondVar.signal")
        waiter = sim.call_op("sync_get_next", self.sync)
        if waiter is not None:
            uthread_runnable(waiter)

    def broadcast(self) -> None:
        sim = _sim("CondVar.broadcast")
        local = UthSync()
        sim.call_op("sync_swap", local, self.sync)
        bulk = sim.ops.thread_bulk_runnable
        if bulk is not None:
            sim.call_op("thread_bulk_runnable", local)
            return
        while (waiter := sim.call_op("sync_get_next", local)) is not None:
            uthread_runnable(waiter)


def check_preempt_pending() -> None:
    """Vcore context: on a preempt_pending warning, hand back the current uthread and yield nicely."""
    from akaros_sim.vcore import check_preempt_pending as _check

    sim, vc = _vcore_ctx("check_preempt_pending")
    _check(sim, vc)
