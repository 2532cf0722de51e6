"""Engine: virtual time, the event heap, vcore interleaving, and every greenlet switch.

Each vcore has its own clock (ns; never the host's).  Turns go by time, a
kernel event before a vcore at the same time, then by vcore id.  Events sit in
a heap keyed (time, priority, sequence): ties are first-come first-served.

Time advances only by suspending: `advance(ns)` past the *horizon* (the last
time before a peer or a kernel event could act) suspends the caller until it
is furthest behind again, so nothing touches shared state at a time a peer
that is behind could still precede.  Two things may look ahead without acting:

* guest slices (`guest_limit`) run up to `Costs.vcore_quantum_ns` past the
  horizon; guest loads and stores of different vcores interleave at that grain;
* `spend(ns)` (a Python uthread computing) jumps straight to its end and is
  cut short, exactly, if a notification or preemption reaches its vcore first.

This module is the one narrow waist: every greenlet switch and throw is here.
Vcore context is one looping greenlet per vcore; a pass ends in `run_uthread`,
`vcore_offline` or `restart_vcore_entry`, and a uthread enters it with
`enter_vcore_context`.  The engine knows greenlets, clocks and the callables
it is built with, nothing above it.
"""

from __future__ import annotations

import heapq
import itertools

import attrs
from greenlet import GreenletExit, getcurrent, greenlet

from akaros_sim.costs import Costs
from akaros_sim.vcore_state import EngineError, Entry, Interrupt, RunEnd, Vcore, VcoreState

__all__ = ["Costs", "Engine", "EngineError", "Entry", "Event", "Interrupt", "RunEnd", "SimGreenlet", "Vcore",
           "VcoreState"]  # the vocabulary lives in vcore_state.py and costs.py; the engine is where it is used


@attrs.define(eq=False)
class Event:
    """A kernel event due at `time`; `cancelled` ones are skipped when popped."""

    time: int
    kind: str
    fn: object = attrs.field(repr=False)
    args: tuple = attrs.field(default=(), repr=False)
    cancelled: bool = False


class SimGreenlet(greenlet):
    """A greenlet of one simulation: parlib finds its process through getcurrent()."""

    def __init__(self, run, parent, proc, uth=None) -> None:
        super().__init__(run, parent)
        self.proc = proc
        self.uth = uth


class _EndPass(BaseException):
    """Unwinds a vcore-context pass to the top of its greenlet (sched_entry never returns).

    A BaseException so that `except Exception` in 2LS code does not catch it.
    Raised only here and caught only by `Engine._vcore_main`; one subclass per
    way a pass ends, raised as a class (no per-raise Python __init__).
    """


class _RunNext(_EndPass):
    """The pass ends by running vc.next_uth."""


class _Offline(_EndPass):
    """The pass ends with the vcore given back to the kernel."""


class _Restart(_EndPass):
    """The pass starts over at vcore_entry."""


class _UthreadDone(BaseException):
    """Unwinds a finished uthread's greenlet to its top, where it ends (raised and caught only here)."""


_FAR = 1 << 62  # "no limit": beyond any time a run can reach


class Engine:
    """Time, events and the switching of vcores between contexts.

    Built with the callables it runs and knows nothing else about:
    `vcore_entry(vc, entry, action, restarted)` then `sched_entry()` are the
    program of a vcore-context pass; `uthread_body(uth)` the program of a uthread's greenlet; `crash(exc)`
    is told of an exception that escaped either, and ends the process.
    """

    def __init__(self, nvcores: int, costs: Costs, *, owner, vcore_entry, sched_entry, uthread_body, crash) -> None:
        self.costs = costs
        self.vcores = [Vcore(i) for i in range(nvcores)]
        self._owner = owner  # what SimGreenlet.proc holds (the engine never looks inside it)
        self._vcore_entry = vcore_entry
        self._sched_entry = sched_entry
        self._uthread_body = uthread_body
        self._crash = crash
        self._heap: list[tuple[int, int, int, Event]] = []
        self._seq = itertools.count()
        self._greenlets: dict[greenlet, None] = {}  # every greenlet made and not yet retired, in order
        self.current: Vcore | None = None  # the vcore whose code is running
        self.horizon = 0  # the running vcore suspends once its clock passes this
        self.event_horizon = 0  # the next kernel event (or the budget): guest slices stop there exactly
        self.gl: greenlet | None = None  # the engine's own greenlet (the caller of run)
        self.now = 0  # the time of the last event handled or vcore step started
        self.until: int | None = None  # the run's virtual-time budget
        self._stop_check = lambda: None  # the run's end test (set by run)
        self.stop_soon = False  # set when the run may have ended: a suspension then goes back to the loop

    # -- events ---------------------------------------------------------------------

    def schedule(self, time: int, kind: str, fn, *args, priority: int = 0) -> Event:
        """Run fn(*args) in kernel context at `time` (never in the past of `now`)."""
        ev = Event(max(time, self.now), kind, fn, args)
        heapq.heappush(self._heap, (ev.time, priority, next(self._seq), ev))
        if ev.time <= self.horizon:
            self.horizon = ev.time - 1  # the event goes before anything at its time
        if ev.time < self.event_horizon:
            self.event_horizon = ev.time
        return ev

    def next_event_time(self) -> int | None:
        heap = self._heap
        while heap and heap[0][3].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_event(self) -> Event:
        return heapq.heappop(self._heap)[3]

    def clear_events(self) -> None:
        """Drop every pending event (the run is over)."""
        self._heap.clear()

    # -- time -----------------------------------------------------------------------

    def time(self) -> int:
        """The acting code's time: the running vcore's clock, or the kernel's."""
        vc = self.current
        return vc.clock if vc is not None else self.now

    def advance(self, ns: int) -> None:
        """Spend ns on the running vcore; suspend if that passes the horizon.

        On return the caller is furthest behind (nobody can act before it), but
        it may be on another vcore: a uthread suspended here can be preempted,
        recovered and resumed elsewhere.  Re-read the vcore after calling.
        """
        vc = self.current
        if vc is None:  # kernel context and set-up: no vcore to charge
            self.now += ns
            return
        vc.clock += ns
        vc.busy_ns += ns
        if vc.clock > self.horizon:
            self._suspend(vc)

    def run_ahead(self, ns: int) -> None:
        """Guest time: spend ns on the running vcore without suspending (the caller syncs before acting)."""
        vc = self.current
        vc.clock += ns
        vc.busy_ns += ns

    def yield_to_engine(self) -> None:
        """Suspend the running code now; the engine resumes it when its vcore is furthest behind."""
        self._suspend(self.current)

    def sync(self) -> None:
        """Suspend until the running vcore is furthest behind (after a guest slice ran ahead)."""
        vc = self.current
        if vc is not None and vc.clock > self.horizon:
            self._suspend(vc)

    def spend(self, ns: int) -> int:
        """Uthread context: spend ns computing; returns the ns not spent if interrupted.

        The vcore jumps to the end at once (nothing it does can be seen until
        then) and is cut back, exactly, by `cut_short` if a notification or a
        preemption reaches it first.
        """
        vc = self.current
        start = vc.clock
        end = start + ns
        stop = end if self.until is None else min(end, max(self.until, start))
        box = [start, stop]
        vc.spending = box
        vc.clock = stop
        vc.busy_ns += stop - start
        if stop > self.horizon:
            self._suspend(vc)
        if vc.spending is box:
            vc.spending = None
        return end - box[1]

    def cut_short(self, vc: Vcore) -> None:
        """A notification or preemption reached vc now: end a spend() in progress at this time."""
        box = vc.spending
        if box is None:
            return
        vc.spending = None
        t = max(self.time(), box[0])
        if t < box[1]:
            back = box[1] - t
            vc.clock -= back
            vc.busy_ns -= back
            box[1] = t

    def guest_limit(self) -> int:
        """The time a guest slice may run the current vcore to: the horizon plus a quantum,
        and never past the next kernel event."""
        return min(self.horizon + 1 + self.costs.vcore_quantum_ns, self.event_horizon)

    def compute_horizon(self, vc: Vcore, next_event: int | None | bool = False) -> int:
        """The last time `vc` may act at before the engine must look elsewhere.

        Turns are taken in the order (time, events first, vcore id): so the
        horizon is just before the next kernel event, just before the clock of
        a lower-numbered online peer, at the clock of a higher-numbered one,
        and just before the time budget.  (A caller that has just looked at the
        heap passes what it found as next_event.)
        """
        nxt = self.next_event_time() if next_event is False else next_event
        horizon = _FAR if nxt is None else nxt - 1
        me = vc.id
        for other in self.vcores:
            if other.online and other is not vc:
                limit = other.clock if other.id > me else other.clock - 1
                if limit < horizon:
                    horizon = limit
        until = self.until
        if until is not None and until - 1 < horizon:
            horizon = until - 1
        return horizon

    # -- the loop -----------------------------------------------------------------------

    def next_vcore(self) -> Vcore | None:
        """The online vcore with something to run that is furthest behind (ties: lowest id)."""
        best = None
        for vc in self.vcores:
            if vc.online and vc.gl is not None and (best is None or vc.clock < best.clock):
                best = vc
        return best

    def run(self, stop_check) -> RunEnd:
        """Handle events and run vcores in time order until stop_check() names an end.

        Each turn: the earliest of (the next event, the furthest-behind vcore)
        goes first, an event on a tie.  Returns TIME_BUDGET or IDLE itself.
        """
        self.gl = getcurrent()
        self._stop_check = stop_check
        while True:
            end = stop_check()
            if end is not None:
                return end
            vc = self.next_vcore()
            t_ev = self.next_event_time()
            if vc is None and t_ev is None:
                return RunEnd.IDLE
            event_first = vc is None or (t_ev is not None and t_ev <= vc.clock)
            t_next = t_ev if event_first else vc.clock
            if self.until is not None and t_next >= self.until:
                return RunEnd.TIME_BUDGET
            if event_first:
                ev = self.pop_event()
                self.now = max(self.now, ev.time)
                try:
                    ev.fn(*ev.args)
                except Exception as exc:  # kernel work or an injection failed: the process ends with a report
                    exc.add_note(f"in kernel event {ev.kind!r} at t={ev.time}")
                    self._crash(exc)
            else:
                self.step(vc, t_ev)

    def step(self, vc: Vcore, next_event: int | None | bool = False) -> None:
        """Run `vc`'s code until it suspends (or its greenlet ends)."""
        self.current = vc
        if vc.clock > self.now:
            self.now = vc.clock
        nxt = self.next_event_time() if next_event is False else next_event
        self.horizon = self.compute_horizon(vc, nxt)
        limit = _FAR if nxt is None else nxt
        until = self.until
        self.event_horizon = limit if until is None or limit < until else until
        try:
            vc.gl.switch()
        finally:
            self.current = None

    def _suspend(self, vc: Vcore) -> None:
        """Leave vc's code here until it is furthest behind again.

        When the next turn is another vcore's (no event due first, no end in
        sight), hand over to it directly: what the loop would do, one greenlet
        switch cheaper.  Anything else goes back to the loop.  (The loop's
        next_vcore and compute_horizon, inlined: this runs on every suspension.)
        """
        me = vc.gl = getcurrent()
        # One pass: the furthest-behind online vcore (ties: the lowest id) and the next one by
        # (clock, id), which is all the horizon needs.  (An online vcore with nothing to run,
        # a moment's state, sends the turn to the loop instead.)
        best, bclock, c2, id2 = None, _FAR, _FAR, 0
        for v in self.vcores:
            if v.online:
                if v.gl is None:
                    best = None
                    break
                c = v.clock
                if c < bclock:
                    if best is not None:
                        c2, id2 = bclock, best.id
                    best, bclock = v, c
                elif c < c2:
                    c2, id2 = c, v.id
        heap = self._heap
        while heap and heap[0][3].cancelled:
            heapq.heappop(heap)
        t_ev = heap[0][0] if heap else None
        until = self.until
        if (best is None or (t_ev is not None and t_ev <= bclock) or (until is not None and bclock >= until)
                or self.stop_soon):
            self.gl.switch()
            return
        horizon = c2 - 1 if c2 > bclock and id2 < best.id else c2
        if t_ev is not None and t_ev - 1 < horizon:
            horizon = t_ev - 1
        if until is not None and until - 1 < horizon:
            horizon = until - 1
        self.current = best
        if bclock > self.now:
            self.now = bclock
        self.horizon = horizon
        limit = _FAR if t_ev is None else t_ev
        self.event_horizon = limit if until is None or limit < until else until
        if best.gl is not me:
            best.gl.switch()

    # -- the waist: vcore context ----------------------------------------------------------

    def start_vcore(self, vc: Vcore, entry: Entry) -> None:
        """Kernel side: vc starts fresh at vcore_entry when it next runs."""
        vc.entry = (entry, None)
        vc.in_vcore_ctx = True
        vc.gl = self._vcore_greenlet(vc)

    def enter_vcore_context(self, vc: Vcore, entry: Entry, action=None) -> None:
        """From uthread context on `vc`: start vcore context fresh; returns when the uthread runs again.

        `action(vc)` runs first in the new vcore context (the yield callback of
        uthread_yield, for instance).
        """
        if vc.in_vcore_ctx or getcurrent() is not vc.gl:
            raise EngineError(f"vcore {vc.id}: entering vcore context ({entry.value}) from outside a uthread")
        vc.entry = (entry, action)
        vc.in_vcore_ctx = True
        vc.gl = self._vcore_greenlet(vc)
        vc.gl.switch()  # straight to vcore context; the engine's loop is not involved

    def run_uthread(self, vc: Vcore, uth) -> None:
        """From vcore context on `vc`: end this pass and run `uth` (never returns)."""
        if getcurrent() is not vc.gl or not vc.in_vcore_ctx:
            raise EngineError(f"vcore {vc.id}: run_uthread({uth.name!r}) called outside its vcore context")
        if uth.greenlet is None:
            uth.greenlet = self._new_greenlet(self._uthread_main, uth)
        elif uth.greenlet.dead:
            raise EngineError(f"vcore {vc.id}: uthread {uth.name!r} has finished and cannot run")
        vc.switches += 1
        vc.next_uth = uth
        raise _RunNext

    def vcore_offline(self, vc: Vcore) -> None:
        """From vcore context: the kernel took the vcore back; end this pass (never returns)."""
        raise _Offline

    def restart_vcore_entry(self, vc: Vcore) -> None:
        """From vcore context: start this pass over at vcore_entry, on a fresh stack (never returns)."""
        raise _Restart

    def _vcore_greenlet(self, vc: Vcore) -> greenlet:
        if vc.vgl is None or vc.vgl.dead:
            vc.vgl = self._new_greenlet(lambda: self._vcore_main(vc))
        return vc.vgl

    def _vcore_main(self, vc: Vcore) -> None:
        """Vcore context's program: each pass is one fresh vcore_entry (the stack starts empty).

        A pass ends by switching away, and whoever switches back means "start
        vcore context again": a uthread entering it, or the kernel starting vc.
        """
        vcore_entry, sched_entry = self._vcore_entry, self._sched_entry
        try:
            while True:
                entry, action = vc.entry
                vc.entry = None
                restarted = False
                while True:
                    try:
                        vc.notif_disabled = True
                        vcore_entry(vc, entry, action, restarted)
                        sched_entry()
                        raise EngineError(
                            f"vcore {vc.id}: sched_entry returned (it must run a uthread or yield the vcore)"
                        )
                    except _RunNext:
                        uth, vc.next_uth = vc.next_uth, None
                        break
                    except _Offline:
                        uth = None
                        break
                    except _Restart:
                        restarted, action = True, None
                vc.in_vcore_ctx = False
                if uth is not None:
                    vc.gl = uth.greenlet
                    uth.greenlet.switch()
                else:  # offline: wait for the kernel to start this vcore again
                    vc.gl = None
                    self.gl.switch()
        except Exception as exc:  # anything escaping vcore context ends the process with a report
            self._crash(exc)
            self.park()

    def exit_uthread(self, vc: Vcore, entry: Entry, action) -> None:
        """From uthread context: the uthread is done; end its greenlet and start vcore context (never returns).

        The greenlet unwinds and dies into vc's vcore context instead of staying
        suspended: nothing of a finished uthread is left to end at teardown.
        """
        cur = getcurrent()
        if vc.in_vcore_ctx or cur is not vc.gl:
            raise EngineError(f"vcore {vc.id}: a uthread exiting from outside uthread context")
        vc.entry = (entry, action)
        vc.in_vcore_ctx = True
        vc.gl = self._vcore_greenlet(vc)
        cur.parent = vc.gl  # where a finished greenlet goes
        raise _UthreadDone()

    def _uthread_main(self) -> None:
        uth = getcurrent().uth  # (not a closure per uthread: a live uthread stays small)
        try:
            self._uthread_body(uth)
            raise EngineError(f"uthread {uth.name!r}: its body returned instead of exiting")
        except _UthreadDone:
            return  # the greenlet ends here, and its parent, vcore context, runs the exit
        except Exception as exc:  # anything escaping a uthread ends the process with a report
            self._crash(exc)
            self.park()

    # -- the waist: greenlets' lives --------------------------------------------------------

    def _new_greenlet(self, run, uth=None) -> greenlet:
        gl = SimGreenlet(run, self.gl, self._owner, uth)
        self._greenlets[gl] = None
        return gl

    def run_setup(self, fn) -> None:
        """Run fn in a greenlet of this simulation (so parlib finds it), outside any vcore."""
        self._new_greenlet(fn).switch()

    def park(self) -> None:
        """The process has ended: leave for the engine for good (the greenlet is ended at teardown)."""
        if getcurrent() is self.gl:
            return  # kernel context: the loop sees the process is dying
        self.gl.switch()
        raise EngineError("a parked greenlet was resumed")

    def retire(self, gl: greenlet | None) -> None:
        """End a suspended greenlet now (its finally blocks run), unless it is the caller."""
        if gl is None:
            return
        self._greenlets.pop(gl, None)
        if gl.dead or not gl or gl is getcurrent():
            return
        try:
            gl.parent = getcurrent()
            gl.throw(GreenletExit)
        except (GreenletExit, ValueError):
            pass

    def kill_all(self) -> None:
        """End every greenlet this engine made, in creation order, and forget them."""
        for gl in list(self._greenlets):
            self.retire(gl)
        self._greenlets.clear()
        for vc in self.vcores:
            vc.gl = vc.vgl = None
            vc.entry = None
        self.gl = None
