"""Vcore context: vcore_entry, event handling, preemption checks and recovery, vcore_yield.

Vcore context is Akaros's interrupt-like context: notifications disabled,
never blocks, always starts from the top.  Here each vcore has one
vcore-context greenlet that begins a fresh pass at `vcore_entry` every time it
is switched to (engine.py); `vcore_entry` is the program of a pass:

1. run the pending action, if any (the yield callback of uthread_yield);
2. handle_events: clear notif_pending, drain the mailbox, run the handlers;
3. check preempt_pending: hand the current uthread back and yield nicely;
4. sched_ops.sched_entry(), which never returns: it runs a uthread or yields
   the vcore.
"""

from __future__ import annotations

from akaros_sim.engine import _VcoreOffline
from akaros_sim.kernel import EV_ALARM, EV_CHECK_MSGS, EV_POSIX_SIGNAL, EV_PREEMPT_PENDING, EV_VCORE_PREEMPT
from akaros_sim.uthread import UthFlag, UthState


class RestartVcoreEntry(BaseException):
    """Unwind vcore context back to the top of vcore_entry (parlib resets the stack)."""


def vcore_entry(sim, vc, reason: str, action) -> None:
    """The program of a fresh vcore context (never returns normally)."""
    sim.engine.charge(sim.costs.vcore_entry_ns)
    sim.trace_event(vc, "vcore_entry", why=reason, cur=vc.current_uthread.name if vc.current_uthread else None)
    if action is not None:
        # The yield callback runs before any other vcore can: a uthread's
        # decision to block and its callback's enqueue are atomic, as with the
        # spinlock Akaros holds across uthread_yield (a lock checked in uthread
        # context, its waiter enqueued here).
        action(vc)
    sim.engine.maybe_yield()
    while True:
        try:
            handle_events(sim, vc)
            check_preempt_pending(sim, vc)
            sim.call_op("sched_entry")
        except RestartVcoreEntry:
            sim.engine.charge(sim.costs.vcore_entry_ns)
            sim.engine.maybe_yield()
            continue
        raise sim.engine_error(f"vcore {vc.id}: sched_entry returned")


def handle_events(sim, vc) -> int:
    """Drain vc's mailbox and run the handlers; returns how many messages were handled."""
    vc.notif_pending = False
    handled = 0
    while vc.mailbox:
        msg = vc.mailbox.popleft()
        handled += 1
        sim.engine.charge(sim.costs.event_delivery_ns)
        sim.trace_event(vc, "event", ev_type=msg.ev_type, arg2=msg.arg2)
        if msg.ev_type == EV_VCORE_PREEMPT:
            handle_vc_preempt(sim, vc, msg.arg2)
        elif msg.ev_type == EV_PREEMPT_PENDING:
            pass  # parlib registers no handler; the warning is polled (check_preempt_pending)
        elif msg.ev_type == EV_ALARM:
            pass  # vcore ticks are counted by the kernel and polled with vcore_tick_poll
        elif msg.ev_type == EV_CHECK_MSGS:
            pass
        elif msg.ev_type == EV_POSIX_SIGNAL:
            sim.call_op("got_posix_signal", msg.arg2, None)
        else:
            for handler in sim.ev_handlers.get(msg.ev_type, ()):
                handler(msg, msg.ev_type)
    return handled


def uthread_pause(sim, vc, uth, reason: str) -> None:
    """__uthread_pause: copy the uthread out (SAVED, NOT_RUNNING) and give it to thread_paused."""
    uth.flags |= int(UthFlag.SAVED)
    uth.set_state(UthState.NOT_RUNNING)
    sim.trace_event(vc, "uthread_pause", target=uth.name, why=reason)
    sim.call_op("thread_paused", uth)


def check_preempt_pending(sim, vc) -> None:
    """__check_preempt_pending: on a warning, hand back the current uthread and yield nicely."""
    if not vc.preempt_pending:
        return
    sim.call_op("preempt_pending")
    uth = vc.current_uthread
    if uth is not None:
        vc.current_uthread = None
        uthread_pause(sim, vc, uth, "preempt_pending")
    while vc.preempt_pending:
        vcore_yield(sim, vc, True)


def handle_vc_preempt(sim, vc, victim_id: int) -> None:
    """Recover the uthread of a preempted vcore (steal it), as Akaros's handle_vc_preempt."""
    if victim_id == vc.id:
        return
    victim = sim.engine.vcores[victim_id]
    if victim.online or victim.in_vcore_ctx:
        # Back online already, or preempted in vcore context: the kernel resumes
        # that context in place when it restarts the vcore.
        sim.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        return
    uth = victim.current_uthread
    if uth is None or uth.flags & UthFlag.DONT_MIGRATE:
        sim.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        return
    victim.current_uthread = None
    sim.trace_event(vc, "preempt_recover", victim=victim_id, stolen=uth.name)
    uthread_pause(sim, vc, uth, "preempted")


def vcore_yield(sim, vc, preempt_pending: bool = False) -> None:
    """Give the vcore back to the kernel; returns if that fails (events arrived, or it is still wanted)."""
    sim.engine.charge(sim.costs.sched_op_ns)
    # Let the engine deliver anything due by now first: a completion that
    # arrived while this vcore looked for work must not be slept through.
    sim.engine.maybe_yield()
    if handle_events(sim, vc):
        return
    kernel = sim.kernel
    if not preempt_pending and kernel.amt_wanted > 0:
        kernel.amt_wanted -= 1
    if kernel.sys_yield(vc, preempt_pending):
        raise _VcoreOffline()
    sim.engine.maybe_yield()
