"""Vcore context: vcore_entry, event handling, preemption checks and recovery, vcore_yield.

Vcore context is Akaros's interrupt-like context: notifications disabled,
never blocks, always starts from the top.  Each vcore has one vcore-context
greenlet that begins a fresh pass at `vcore_entry` every time it is entered
(engine.py); `vcore_entry` is the program of a pass:

1. spend vcore_entry_ns and record the entry (why, and the current uthread);
2. run the pending action, if any (the yield callback of uthread_yield);
3. handle_events: clear notif_pending, drain the mailbox, run the handlers;
4. check preempt_pending: hand the current uthread back and yield nicely;
5. sched_ops.sched_entry(), which never returns: it runs a uthread or yields
   the vcore.

A pass restarted by parlib (a reflected fault the 2LS took, a notification
that arrived while popping a uthread) starts again at step 3 after spending
vcore_entry_ns, with no new record.
"""

from __future__ import annotations

from akaros_sim.engine import Entry
from akaros_sim.kernel import EV_ALARM, EV_CHECK_MSGS, EV_POSIX_SIGNAL, EV_VCORE_PREEMPT
from akaros_sim.timeline import BLOCKED
from akaros_sim.uthread import UthFlag, uthread_pause

_DONT_MIGRATE = int(UthFlag.DONT_MIGRATE)
# What a uthread waits for once vcore context starts in its place (timeline.CAUSES); by identity, since
# hashing an enum member is a Python-level call on this hot path.
_LEAVING = ((Entry.YIELD, "yield"), (Entry.FAULT, "fault"), (Entry.NOTIFY, "interrupt"))


def vcore_entry(proc, vc, entry, action, restarted: bool) -> None:
    """Steps 1-4 of a fresh pass of vcore context; the engine then calls sched_entry (step 5),
    from the top of the pass, so a switch to a uthread unwinds as few frames as it can."""
    cur = vc.current_uthread
    if cur is not None and not restarted:
        for why, cause in _LEAVING:
            if entry is why:  # its context just left the vcore
                proc.set_uth_state(cur, BLOCKED, cause, vc)
                break
    proc.engine.advance(proc.costs.vcore_entry_ns)
    record = proc.record
    if record is not None and not restarted:
        name = cur.name if cur is not None else None
        details = proc.entry_details.get((entry, name))
        if details is None:
            details = proc.entry_details[(entry, name)] = (("why", entry.value), ("cur", name))
        record((vc.clock, vc.id, name or "", "vcore_entry", details))
    if action is not None:
        action(vc)
    if vc.mailbox:
        handle_events(proc, vc)
    else:
        vc.notif_pending = False
    if vc.preempt_pending:
        check_preempt_pending(proc, vc)


def handle_events(proc, vc) -> int:
    """Drain vc's mailbox and run the handlers; returns how many messages were handled."""
    vc.notif_pending = False
    handled = 0
    engine = proc.engine
    while vc.mailbox:
        msg = vc.mailbox.popleft()
        handled += 1
        engine.advance(proc.costs.event_delivery_ns)
        proc.trace_event(vc, "event", ev_type=msg.ev_type, arg2=msg.arg2)
        if msg.ev_type == EV_VCORE_PREEMPT:
            handle_vc_preempt(proc, vc, msg.arg2)
        elif msg.ev_type in (EV_ALARM, EV_CHECK_MSGS):
            # vcore ticks are counted by the kernel and polled with vcore_tick_poll
            pass
        elif msg.ev_type == EV_POSIX_SIGNAL:
            proc.call_op("got_posix_signal", msg.arg2, None)
        else:
            for handler in proc.ev_handlers.get(msg.ev_type, ()):
                handler(msg, msg.ev_type)
    return handled


def check_preempt_pending(proc, vc) -> None:
    """__check_preempt_pending: on a warning, hand back the current uthread and yield nicely."""
    if not vc.preempt_pending:
        return
    proc.call_op("preempt_pending")
    uth = vc.current_uthread
    if uth is not None:
        vc.current_uthread = None
        uthread_pause(proc, vc, uth, "preempt_pending")
    while vc.preempt_pending:
        vcore_yield(proc, vc, True)


def handle_vc_preempt(proc, vc, victim_id: int) -> None:
    """Recover the uthread of a preempted vcore (steal it), as Akaros's handle_vc_preempt."""
    if victim_id == vc.id:
        return
    victim = proc.engine.vcores[victim_id]
    if victim.online or victim.in_vcore_ctx:
        # Back online already, or preempted in vcore context: the kernel resumes
        # that context in place when it restarts the vcore.
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        return
    uth = victim.current_uthread
    if uth is None or uth.flags & _DONT_MIGRATE:
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        return
    victim.current_uthread = None
    proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=uth.name)
    uthread_pause(proc, vc, uth, "preempted")


def vcore_yield(proc, vc, preempt_pending: bool = False) -> None:
    """Give the vcore back to the kernel; returns if that fails (events arrived, or it is still wanted)."""
    # Spending the call's time first lets everything due by now arrive: a
    # completion that came while this vcore looked for work is not slept through.
    proc.engine.advance(proc.costs.sched_op_ns)
    if handle_events(proc, vc):
        return
    kernel = proc.kernel
    if not preempt_pending and kernel.amt_wanted > 0:
        kernel.amt_wanted -= 1
    if kernel.sys_yield(vc, preempt_pending):
        proc.engine.vcore_offline(vc)
