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

from akaros_sim.engine import Entry, VcoreState
from akaros_sim.kernel import EV_CHECK_MSGS, EV_POSIX_SIGNAL, EV_VCORE_PREEMPT, EventMsg
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
        key = (entry._value_, name)  # (by value: an enum member's hash is a Python-level call)
        details = proc.entry_details.get(key)
        if details is None:
            details = proc.entry_details[key] = (("why", entry._value_), ("cur", name))
        record((vc.clock, vc.id, name or "", "vcore_entry", details))
    if action is not None:
        action(vc)
    if vc.remote_mbox is not None:
        try_handle_remote_mbox(proc, vc)
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
    while vc.mailbox:
        handle_msg(proc, vc, vc.mailbox.popleft())
        handled += 1
    return handled


def handle_msg(proc, vc, msg, mbox: int | None = None) -> None:
    """Run the handler of one message on vc (from vc's mailbox, or from vcore `mbox`'s, for a peer)."""
    proc.engine.advance(proc.costs.event_delivery_ns)
    if mbox is None:
        proc.trace_event(vc, "event", ev_type=msg.ev_type, arg2=msg.arg2)
    else:
        proc.trace_event(vc, "event", ev_type=msg.ev_type, arg2=msg.arg2, mbox=mbox)
    if msg.ev_type == EV_VCORE_PREEMPT:
        handle_vc_preempt(proc, vc, msg.arg2)
    elif msg.ev_type == EV_CHECK_MSGS:
        if msg.arg2 != vc.id:  # handle_vc_indir (also counts as a vcore tick's poke, polled by vcore_tick_poll)
            handle_indirs(proc, vc, msg.arg2)
    elif msg.ev_type == EV_POSIX_SIGNAL:
        proc.call_op("got_posix_signal", msg.arg2, None)
    else:  # EV_SYSCALL, EV_ALARM (parlib's alarm service, alarm.py) and whatever else was registered
        for handler in proc.ev_handlers.get(msg.ev_type, ()):
            handler(msg, msg.ev_type)


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
    """uthread.c's handle_vc_preempt: recover a preempted vcore.  Preempted in vcore context (or holding
    a DONT_MIGRATE uthread): change_to_vcore, so it resumes at once on this pcore.  Otherwise steal its
    uthread, then handle_indirs (its mailbox)."""
    if victim_id == vc.id:
        return
    victim = proc.engine.vcores[victim_id]
    if victim.state is not VcoreState.PREEMPTED:  # back online already (or changed away, not preempted)
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        return
    uth = victim.current_uthread
    if victim.in_vcore_ctx or (uth is not None and uth.flags & _DONT_MIGRATE):
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
        change_to_vcore(proc, vc, victim)
        return
    if uth is not None:
        victim.current_uthread = None
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=uth.name)
        uthread_pause(proc, vc, uth, "preempted")
    else:
        proc.trace_event(vc, "preempt_recover", victim=victim_id, stolen=None)
    handle_indirs(proc, vc, victim_id)


def change_to_vcore(proc, vc, victim) -> None:
    """uthread.c's change_to_vcore: pause our uthread and give our pcore to `victim` (sys_change_vcore
    with enable_my_notif); does not return on success.  A DONT_MIGRATE uthread here (Akaros then
    changes with enable_my_notif=FALSE, to be restarted as if preempted) keeps us where we are."""
    uth = vc.current_uthread
    if uth is not None and uth.flags & _DONT_MIGRATE:
        return
    if uth is not None:
        vc.current_uthread = None
        uthread_pause(proc, vc, uth, "change_to_vcore")
    were_handling = ev_might_not_return(proc, vc)
    if proc.kernel.change_vcore(vc, victim):
        proc.engine.vcore_offline(vc)
    vc.remote_mbox = were_handling  # ev_we_returned (the victim was running already)


def handle_indirs(proc, vc, victim_id: int) -> None:
    """uthread.c's handle_indirs: a peer still preempted (or changed away) has its mailbox handled here."""
    victim = proc.engine.vcores[victim_id]
    if victim.state is VcoreState.PREEMPTED or victim.changed_away:
        handle_vcpd_mbox(proc, vc, victim_id)


def handle_vcpd_mbox(proc, vc, victim_id: int) -> None:
    """event.c's handle_vcpd_mbox: restart vcore context to handle another vcore's mailbox (does not
    return), or, when already handling one, send ourselves EV_CHECK_MSGS for it."""
    if not proc.engine.vcores[victim_id].mailbox or vc.remote_mbox == victim_id:
        return
    if vc.remote_mbox is not None:
        proc.kernel.post(vc, EventMsg(EV_CHECK_MSGS, arg2=victim_id))  # send_self_vc_msg
        return
    vc.remote_mbox = victim_id
    proc.engine.restart_vcore_entry(vc)


def try_handle_remote_mbox(proc, vc) -> None:
    """event.c's try_handle_remote_mbox, from vcore_entry: handle the mailbox handle_vcpd_mbox chose."""
    victim = proc.engine.vcores[vc.remote_mbox]
    while victim.mailbox and vc.remote_mbox is not None:
        handle_msg(proc, vc, victim.mailbox.popleft(), mbox=victim.id)
    vc.remote_mbox = None


def ev_might_not_return(proc, vc) -> int | None:
    """event.c's ev_might_not_return: stop handling a remote mailbox, asking ourselves to finish it later."""
    rem = vc.remote_mbox
    if rem is not None:
        if proc.engine.vcores[rem].mailbox:
            proc.kernel.post(vc, EventMsg(EV_CHECK_MSGS, arg2=rem))
        vc.remote_mbox = None
    return rem


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
