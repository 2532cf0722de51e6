"""parlib's alarm service (user/parlib/alarm.c): timers for uthread code, driven by one kernel alarm.

Akaros's parlib keeps one timer chain (a `tchain`) of `alarm_waiter`s sorted by
wake time and arms a single kernel alarm (`#alarm`, devalarm) for its head.
The kernel alarm fires an EV_ALARM event on an event queue with
EVENT_SPAM_INDIR | EVENT_WAKEUP (vcore 0, or an online vcore; a waiting
process is woken); `handle_user_alarm` runs in vcore context and
`__trigger_tchain` runs every expired waiter's handler there, then re-arms the
kernel alarm for the new head.  `set_alarm` adds a waiter; `unset_alarm`
takes it off the chain, True if it had not fired (after it returns, the
handler either never runs or has run).

Here the kernel alarm is an engine event at the head's wake time that sends
EV_ALARM (kernel.py's number, 7) through `Kernel.send_event`.
"""

from __future__ import annotations

import bisect

import attrs

from akaros_sim.kernel import EV_ALARM, EventMsg, EventQueue, ProcState


@attrs.define(eq=False)
class AlarmWaiter:
    """An alarm_waiter: run `func(waiter)` in vcore context at `wake_ns` (virtual time)."""

    wake_ns: int
    func: object
    on_tchain: bool = False


def _wake_ns(waiter: AlarmWaiter) -> int:
    return waiter.wake_ns


class AlarmService:
    """One process's tchain and its kernel alarm.  Made on the first set_alarm (init_alarm_service)."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.tchain: list[AlarmWaiter] = []  # by wake_ns; equal times in the order they were set
        self._kernel_alarm = None  # the engine event armed for the head
        # init_alarm_service: register_ev_handler(EV_ALARM, handle_user_alarm, 0)
        proc.ev_handlers.setdefault(EV_ALARM, []).append(self._handle_user_alarm)

    def set_alarm(self, waiter: AlarmWaiter) -> None:
        waiter.on_tchain = True
        bisect.insort(self.tchain, waiter, key=_wake_ns)
        self._rearm()

    def unset_alarm(self, waiter: AlarmWaiter) -> bool:
        if not waiter.on_tchain:
            return False
        waiter.on_tchain = False
        self.tchain.remove(waiter)
        self._rearm()
        return True

    def _rearm(self) -> None:
        """reset_tchain_interrupt: the kernel alarm goes off at the head's time (or is disarmed)."""
        head = self.tchain[0].wake_ns if self.tchain else None
        if self._kernel_alarm is not None:
            if head is not None and self._kernel_alarm.time == max(head, self.proc.engine.now):
                return
            self._kernel_alarm.cancelled = True
            self._kernel_alarm = None
        if head is not None:
            self._kernel_alarm = self.proc.engine.schedule(head, "alarm", self._fire)

    def _fire(self) -> None:
        """The kernel alarm (devalarm's proc_alarm_handler): post EV_ALARM, spammed to an online vcore."""
        self._kernel_alarm = None
        if self.proc.kernel.state is ProcState.DYING:
            return
        self.proc.kernel.send_event(EventQueue(0, spam=True, wakeup=True), EventMsg(EV_ALARM))

    def _handle_user_alarm(self, _msg, _ev_type) -> None:
        """handle_user_alarm -> __trigger_tchain: run every expired waiter's handler, then re-arm."""
        now = self.proc.engine.time()
        while self.tchain and self.tchain[0].wake_ns <= now:
            waiter = self.tchain.pop(0)
            waiter.on_tchain = False
            waiter.func(waiter)
        self._rearm()


def alarm_service(proc) -> AlarmService:
    svc = proc.__dict__.get("alarm_service")
    if svc is None:
        svc = proc.__dict__["alarm_service"] = AlarmService(proc)
    return svc


def set_alarm(proc, wake_ns: int, func) -> AlarmWaiter:
    """init_awaiter + set_awaiter_abs + set_alarm: func(waiter) runs in vcore context at wake_ns."""
    waiter = AlarmWaiter(wake_ns, func)
    alarm_service(proc).set_alarm(waiter)
    return waiter


def unset_alarm(proc, waiter: AlarmWaiter) -> bool:
    """unset_alarm: True if the waiter was still pending (its handler will never run)."""
    return alarm_service(proc).unset_alarm(waiter)
