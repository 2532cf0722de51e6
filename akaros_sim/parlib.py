"""parlib: the API a 2LS and a Python uthread call, named as in Akaros's parlib.

Every function finds its simulation through the running greenlet, so code
looks like C code calling parlib: `run_uthread(uth)`, `uthread_yield(...)`,
`Mutex().lock()`.  Calling one outside a simulation is a clear error.

Contexts: functions marked "vcore context" may only be called from vcore
context (2LS ops, yield callbacks); "uthread context" ones only from a
running uthread.  Violations raise ParlibError naming the function.

This module is a thin veneer: the work is done in the rooms it calls
(uthread.py, vcore.py, sync.py, signals.py, the kernel and the engine).
"""

from __future__ import annotations

from akaros_sim import join as _join
from akaros_sim import uthread as _uth
from akaros_sim import vcore as _vcore
from akaros_sim.guestmem import read_for_guest, write_for_guest
from akaros_sim.kernel import EV_SYSCALL, EventQueue, SYS_block
from akaros_sim.process import VDSO_GUEST_RETURN
from akaros_sim.running import ParlibError, current_proc, uthread_ctx, vcore_ctx
from akaros_sim.sync import CondVar, Mutex, UthSync
from akaros_sim.timeline import BLOCK_FLAG_CAUSES, BLOCKED
from akaros_sim.uthread import (
    UTH_EXT_BLK_EVENTQ,
    UTH_EXT_BLK_MISC,
    UTH_EXT_BLK_MUTEX,
    UTH_EXT_BLK_YIELD,
    Uthread,
    UthreadEntry,
)

__all__ = [
    "UTH_EXT_BLK_EVENTQ", "UTH_EXT_BLK_MISC", "UTH_EXT_BLK_MUTEX", "UTH_EXT_BLK_YIELD",
    "SIGILL", "SIGTRAP", "SIGBUS", "SIGFPE", "SIGSEGV", "FPE_INTDIV", "SEGV_MAPERR", "SEGV_ACCERR",
    "CondVar", "Mutex", "ParlibError", "UthSync",
    "assert_failed", "block_uthread_on_async_sysc", "call_guest", "check_preempt_pending", "compute", "current_sim",
    "current_uthread", "exit", "fault_report", "get_eventq", "guest_read", "guest_write", "handle_events", "in_vcore_context",
    "max_vcores", "num_vcores", "register_ev_handler", "register_evq", "run_current_uthread",
    "run_uthread", "stop_current_uthread", "syscall", "syscall_async", "trace", "uthread_2ls_init",
    "uthread_cleanup", "uthread_create", "uthread_detach", "uthread_exit", "uthread_has_blocked",
    "uthread_init", "uthread_join", "uthread_paused", "uthread_prep_pending_signals",
    "uthread_prep_signal_from_fault", "uthread_signal", "trigger_posix_signal",
    "uth_sync_get_next", "uthread_runnable", "uthread_sched_yield", "uthread_self", "uthread_sleep", "uthread_usleep", "uthread_yield",
    "vcore_id", "vcore_request_more", "vcore_request_total", "vcore_tick_disable", "vcore_tick_enable",
    "vcore_tick_poll", "vcore_yield",
]  # fmt: skip

# signals and codes a 2LS reflects faults as
SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV = 4, 5, 7, 8, 11
FPE_INTDIV = 1
SEGV_MAPERR, SEGV_ACCERR = 1, 2


def _checked(call, *args):
    """Run a room's function, reporting a broken rule (UthreadRunError, whose message names the
    function) as the ParlibError a parlib caller expects."""
    try:
        return call(*args)
    except _uth.UthreadRunError as exc:
        raise ParlibError(str(exc)) from None


def current_sim():
    """The Simulation running the caller."""
    return current_proc("current_sim").facade


# -- vcores --------------------------------------------------------------------------------------


def vcore_id() -> int:
    """The id of the vcore the caller runs on."""
    vc = current_proc("vcore_id").engine.current
    if vc is None:
        raise ParlibError("vcore_id: not running on a vcore")
    return vc.id


def in_vcore_context() -> bool:
    vc = current_proc("in_vcore_context").engine.current
    return vc is not None and vc.in_vcore_ctx


def current_uthread() -> Uthread | None:
    """The uthread this vcore runs or was interrupted from (Akaros's current_uthread)."""
    vc = current_proc("current_uthread").engine.current
    return vc.current_uthread if vc is not None else None


def num_vcores() -> int:
    return current_proc("num_vcores").kernel.num_vcores()


def max_vcores() -> int:
    return current_proc("max_vcores").kernel.max_vcores


def vcore_request_total(total: int) -> None:
    """Ask the kernel for `total` vcores in all (capped at max_vcores)."""
    proc = current_proc("vcore_request_total")
    proc.engine.advance(proc.costs.sched_op_ns)
    proc.kernel.request_total(total)


def vcore_request_more(n: int) -> None:
    """Ask for n vcores beyond those online (Akaros: request_total(n + num_vcores()))."""
    proc = current_proc("vcore_request_more")
    proc.engine.advance(proc.costs.sched_op_ns)
    proc.kernel.request_total(n + proc.kernel.num_vcores())


def vcore_yield(preempt_pending: bool = False) -> None:
    """Vcore context: give this vcore back; returns only if the kernel refused (the caller loops)."""
    proc, vc = vcore_ctx("vcore_yield")
    _vcore.vcore_yield(proc, vc, preempt_pending)


def handle_events() -> int:
    """Vcore context: drain this vcore's mailbox; the number of messages handled."""
    proc, vc = vcore_ctx("handle_events")
    if not vc.mailbox:  # the common case, without a call
        vc.notif_pending = False
        return 0
    return _vcore.handle_events(proc, vc)


def check_preempt_pending() -> None:
    """Vcore context: on a preempt_pending warning, hand back the current uthread and yield nicely."""
    proc, vc = vcore_ctx("check_preempt_pending")
    if vc.preempt_pending:
        _vcore.check_preempt_pending(proc, vc)


def vcore_tick_enable(period_ns: int) -> None:
    """Ask for a periodic tick on this vcore that interrupts its uthread into vcore context."""
    proc = current_proc("vcore_tick_enable")
    vc = proc.engine.current or proc.engine.vcores[0]  # from sched_init: thread0's vcore
    if not isinstance(period_ns, int) or isinstance(period_ns, bool) or period_ns <= 0:
        raise ParlibError(f"vcore_tick_enable: expected a period > 0 ns, got {period_ns!r}")
    vc.tick_period = period_ns
    proc.kernel.arm_tick(vc)


def vcore_tick_disable() -> None:
    proc = current_proc("vcore_tick_disable")
    vc = proc.engine.current or proc.engine.vcores[0]
    vc.tick_period = 0
    if vc.tick_event is not None:
        vc.tick_event.cancelled = True
        vc.tick_event = None


def vcore_tick_poll() -> int:
    """Vcore context: the number of tick periods expired since the last poll (then zero)."""
    _, vc = vcore_ctx("vcore_tick_poll")
    n, vc.tick_expired = vc.tick_expired, 0
    return n


# -- running uthreads (vcore context) -----------------------------------------------------------------


def run_uthread(uth: Uthread) -> None:
    """Vcore context: run uth, which must not be running (never returns)."""
    proc, vc = vcore_ctx("run_uthread")
    try:  # (inline, not through _checked: this frame is unwound on every switch)
        _uth.run_uthread(proc, vc, uth)
    except _uth.UthreadRunError as exc:
        raise ParlibError(str(exc)) from None


def run_current_uthread() -> None:
    """Vcore context: resume the uthread this vcore was interrupted from (never returns)."""
    proc, vc = vcore_ctx("run_current_uthread")
    try:
        _uth.run_current_uthread(proc, vc)
    except _uth.UthreadRunError as exc:
        raise ParlibError(str(exc)) from None


def stop_current_uthread() -> Uthread:
    """Vcore context: detach the interrupted uthread from this vcore (SAVED, NOT_RUNNING) and return it."""
    proc, vc = vcore_ctx("stop_current_uthread")
    return _checked(_uth.stop_current_uthread, proc, vc)


def uthread_paused(uth: Uthread) -> None:
    """A uthread was stopped and copied out: hand it to the 2LS's thread_paused."""
    current_proc("uthread_paused").call_op("thread_paused", uth)


def uthread_runnable(uth: Uthread) -> None:
    """Wake uth (sync wakeups, joins, timeouts): the 2LS's thread_runnable."""
    current_proc("uthread_runnable").call_op("thread_runnable", uth)


def uthread_has_blocked(uth: Uthread, flags: int) -> None:
    """A yield callback that is not a 2LS op must report the block (thread_has_blocked)."""
    proc = current_proc("uthread_has_blocked")
    proc.set_uth_state(uth, BLOCKED, BLOCK_FLAG_CAUSES.get(flags, "misc"))
    proc.call_op("thread_has_blocked", uth, flags)


# -- 2LS plumbing ---------------------------------------------------------------------------------


def uthread_2ls_init(handle_sysc) -> None:
    """Register the 2LS's syscall-completion handler for EV_SYSCALL (handle_sysc(sysc))."""
    proc = current_proc("uthread_2ls_init")
    proc.ev_handlers.setdefault(EV_SYSCALL, []).append(lambda msg, _type: handle_sysc(msg.arg3))


def register_ev_handler(ev_type: int, handler) -> None:
    """handler(msg, ev_type) runs in vcore context for every message of ev_type."""
    current_proc("register_ev_handler").ev_handlers.setdefault(ev_type, []).append(handler)


def get_eventq(vcoreid: int = 0, *, spam: bool = True, wakeup: bool = True) -> EventQueue:
    return EventQueue(vcoreid, spam, wakeup)


def register_evq(sysc, evq: EventQueue) -> bool:
    """Ask for EV_SYSCALL on evq when sysc completes; False if it already has (restart the thread)."""
    current_proc("register_evq")
    return sysc.register_evq(evq)


def uthread_init(uth: Uthread) -> None:
    """Make a new uthread known to the runtime (ids, guest stack, initial context)."""
    current_proc("uthread_init").register_uthread(uth)


def uthread_cleanup(uth: Uthread) -> None:
    """The 2LS is done with uth (from thread_exited): its greenlet and stack go now."""
    proc = current_proc("uthread_cleanup")
    proc.trace_event(None, "uthread_cleanup", target=uth.name)
    gl, uth.greenlet = uth.greenlet, None
    proc.engine.retire(gl)


def syscall_async(nr: int, *args):
    """Start a syscall from vcore context (the 2LS's fault path); returns the Syscall."""
    proc = current_proc("syscall_async")
    sysc = proc.kernel.new_syscall(nr, args)
    proc.trace_event(None, "syscall", sysc=sysc.id, name=sysc.name, args=tuple(args))
    proc.kernel.submit(sysc, proc.engine.current)
    return sysc


def block_uthread_on_async_sysc(uth: Uthread, sysc) -> None:
    """__block_uthread_on_async_sysc: uth waits for sysc as if it had made it."""
    _uth.blockon_sysc(current_proc("block_uthread_on_async_sysc"), uth, sysc)


def exit(status: int, report: str | None = None) -> None:  # noqa: A001 - parlib's name
    """End the process with `status` (never returns)."""
    current_proc("exit").exit(status, "exit", report)


def assert_failed(file: str, line: int, msg: str) -> None:
    """parlib's _assert_failed (user/parlib/panic.c): print, breakpoint() (the kernel prints a
    backtrace and the thread carries on), abort(): SIGABRT's default action dumps core (128 + 6)."""
    proc = current_proc("assert_failed")
    vc = proc.engine.current
    where = vc.id if vc is not None else "-"
    proc.exit(128 + 6, "SIGABRT (default action)",
              f"[user] {file}:{line}, vcore {where}, Assertion failed: {msg}: abort() dumps core (exit status 134)")


def guest_write(addr: int, data: bytes | int, what: str) -> bool:
    """A store into guest memory in vcore context (bytes, or an int as a u64): False, and the process
    ends as Akaros's reflect_unhandled_trap -> proc_destroy ends it, if the page faults."""
    return write_for_guest(current_proc("guest_write"), addr, data, what)


def guest_read(addr: int, size: int, what: str) -> bytes | None:
    """A load from guest memory in vcore context: None, and the process ends, if the page faults."""
    return read_for_guest(current_proc("guest_read"), addr, size, what)


def uth_sync_get_next(sync):
    """__uth_sync_get_next (user/parlib/uthread.c): the 2LS's sync_get_next op, a plain call."""
    return current_proc("uth_sync_get_next").ops.sync_get_next(sync)


def fault_report(uth: Uthread, headline: str) -> str:
    """The text a 2LS prints for an unhandled fault: trap, rip, disassembly, registers."""
    return current_proc("fault_report").fault_report(uth, headline)


def uthread_prep_signal_from_fault(uth: Uthread, signo: int, code: int, addr: int) -> None:
    """Arrange for uth to run its guest handler for signo next time it runs (or die by default)."""
    current_proc("uthread_prep_signal_from_fault").signals.prep_from_fault(uth, signo, code, addr)


def uthread_signal(uth: Uthread, signo: int) -> None:
    """pthread_kill: mark signo pending on uth; it is taken when the 2LS next runs uth."""
    if not 1 <= signo < 64:
        raise ParlibError(f"uthread_signal: expected a signal number in 1..63, got {signo!r}")
    current_proc("uthread_signal").signals.send(uth, signo)


def uthread_prep_pending_signals(uth: Uthread) -> None:
    """Call from sched_entry just before running uth (run_uthread / run_current_uthread), as
    pthread's pth_sched_entry does: uth's pending, unmasked signals are taken now."""
    current_proc("uthread_prep_pending_signals").signals.prep_pending(uth)


def trigger_posix_signal(signo: int, uth: Uthread | None) -> None:
    """A process-wide signal, from got_posix_signal: the default action or SIG_IGN happens here
    (in vcore context); a guest handler goes to uth as a pthread_kill would (None: nobody)."""
    current_proc("trigger_posix_signal").signals.posix_signal(signo, uth)


def trace(kind: str, **details) -> None:
    """Add a record of your own to the trace (a 2LS's decisions, a test's markers)."""
    current_proc("trace").user_trace_event(kind, **details)


# -- uthread context ----------------------------------------------------------------------------------


def uthread_self() -> Uthread:
    _, _, uth = uthread_ctx("uthread_self")
    return uth


def uthread_yield(save_state: bool, yield_func, arg=None) -> None:
    """Uthread context: leave for vcore context, where yield_func(uth, arg) decides uth's fate.

    Returns when uth runs again (possibly on another vcore).
    """
    proc, vc, uth = uthread_ctx("uthread_yield")
    proc.engine.advance(proc.costs.python_step_ns)
    _uth.uthread_yield(proc, proc.engine.current, uth, save_state, yield_func, arg)


def uthread_sched_yield() -> None:
    """pthread_yield: go to the back of the 2LS's queue."""
    proc, _, uth = uthread_ctx("uthread_sched_yield")
    _uth.uthread_sched_yield(proc, uth)


def compute(ns: int) -> None:
    """Uthread context: spend ns of virtual time computing (interruptible, preemptible).

    The vcore jumps ahead by ns at once and is cut back exactly if a
    notification or preemption reaches it first; the rest is spent after
    vcore context has handled it (on whatever vcore the uthread runs on then).
    """
    proc, _, uth = uthread_ctx("compute")
    if not isinstance(ns, int) or isinstance(ns, bool) or ns < 0:
        raise ParlibError(f"compute: expected ns >= 0, got {ns!r}")
    engine, guest = proc.engine, proc.guest
    while ns > 0:
        ns = engine.spend(ns)
        guest.preempt_point(uth)


def syscall(nr: int, *args: int) -> int:
    """Uthread context: make a syscall; blocks the uthread if it does not complete at once."""
    proc, _, uth = uthread_ctx("syscall")
    return proc.syscall(uth, nr, args)


def uthread_sleep(ns: int) -> None:
    """Sleep ns of virtual time, rounded up to whole microseconds: SYS_block takes microseconds
    (kern/src/syscall.c, sys_block).  A simulator convenience; Akaros's uthread_sleep takes
    seconds and uthread_usleep microseconds (user/parlib/uthread.c)."""
    syscall(SYS_block, -(-ns // 1000))


def uthread_usleep(usecs: int) -> None:
    """uthread_usleep: sys_block(usecs) (user/parlib/uthread.c)."""
    syscall(SYS_block, usecs)


def call_guest(addr: int, *args: int) -> int:
    """Uthread context: run guest code at addr on this uthread's own context; returns rax."""
    proc, vc, uth = uthread_ctx("call_guest")
    if len(args) > 6:
        raise ParlibError(f"call_guest: at most 6 register arguments, got {len(args)}")
    if not uth.stack_hi:
        proc.setup_guest_stack(uth)
        uth.ctx.rsp = uth.stack_hi
        proc.setup_tls(uth)
        write_for_guest(proc, uth.tls, vc.id, f"writing the vcore id into the TLS of uthread {uth.name!r}")
        uth.tls_vcore = vc.id
    ctx = uth.ctx
    ctx.rip = addr
    ctx.rsp = ((ctx.rsp if ctx.rsp else uth.stack_hi) - 64) & ~0xF
    if not write_for_guest(proc, ctx.rsp - 8, VDSO_GUEST_RETURN, f"pushing the return address of uthread {uth.name!r}"):
        return 0
    ctx.rsp -= 8
    for reg, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
        setattr(ctx, reg, value & ((1 << 64) - 1))
    result = proc.guest.run(uth, call=True)
    ctx.rsp = uth.stack_hi
    return result


def uthread_create(func_or_entry, *args, name: str | None = None, detached: bool = False) -> Uthread:
    """Create a uthread through sched_ops.thread_create (a Python function, or a UthreadEntry)."""
    proc = current_proc("uthread_create")
    if isinstance(func_or_entry, UthreadEntry):
        entry = func_or_entry
    else:
        entry = UthreadEntry.python(name or getattr(func_or_entry, "__name__", "uthread"), func_or_entry, *args,
                                    detached=detached)  # fmt: skip
    uth = proc.create_uthread(entry)
    if uth is None:  # the process has ended (from kernel context, create_uthread returns)
        raise ParlibError(f"sched_ops.thread_create returned no Uthread for {entry.name!r}")
    return uth


def uthread_exit(retval=None) -> None:
    """Uthread context: end the calling uthread with retval (never returns)."""
    proc, _, uth = uthread_ctx("uthread_exit")
    _join.uthread_exit(proc, uth, retval)


def uthread_join(target: Uthread):
    """Uthread context: wait for target to exit; returns its return value."""
    proc, _, uth = uthread_ctx("uthread_join")
    return _checked(_join.uthread_join, proc, uth, target)


def uthread_detach(target: Uthread) -> None:
    """Detach target: its resources go when it exits (now, if it already has)."""
    proc = current_proc("uthread_detach")
    _checked(_join.uthread_detach, proc, target)
