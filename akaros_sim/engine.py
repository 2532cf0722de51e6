"""Engine: virtual time, the event heap, vcore interleaving and the greenlet waist.

Virtual time is in nanoseconds and nothing reads the host clock.  Each vcore
has its own clock; the engine always advances the online vcore that is
furthest behind (ties: lowest vcore id), and handles a kernel event before any
vcore runs past its time.  Events sit in a heap keyed (time, priority,
sequence), so ties are first-come first-served by construction (SimPy).

Control flow uses greenlets, and only two functions move a vcore between
contexts (STYLE.md 13):

* `Engine.enter_uthread(vc, uth)`: from vcore context, run a uthread
  (run_uthread / run_current_uthread end here);
* `Engine.enter_vcore_context(vc, reason, ...)`: from a uthread, start vcore
  context fresh at vcore_entry (yield, notification, fault, exit).

Each vcore has one vcore-context greenlet that loops back to vcore_entry
whenever it is switched to; uthread and vcore context switch to each other
directly, so a yield costs two greenlet switches and creates nothing.

Everything else that runs on a vcore gives the engine a chance to advance
other vcores through `Engine.yield_to_engine`, which keeps the greenlet to
resume in `vc.gl`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING

import attrs
from greenlet import greenlet, getcurrent

if TYPE_CHECKING:
    from akaros_sim.uthread import Uthread


def _nonneg_int(inst, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Costs.{attribute.name}: expected an int >= 0 (ns), got {value!r}")


def _cost(default: int):
    return attrs.field(default=default, validator=_nonneg_int)


@attrs.frozen
class Costs:
    """The price of everything, in virtual nanoseconds (documented defaults).

    The defaults describe a ~1 GHz core where a user/kernel crossing costs a
    few hundred instructions; change them per scenario under [machine.costs].
    """

    insn_ns: int = _cost(1)  # one emulated instruction
    sched_op_ns: int = _cost(50)  # each sched_ops call
    context_switch_ns: int = _cost(100)  # popping a uthread's context (run_uthread)
    vcore_entry_ns: int = _cost(150)  # entering vcore context (yield, notification, trap)
    syscall_entry_ns: int = _cost(200)  # trapping into the kernel for a syscall
    event_delivery_ns: int = _cost(300)  # posting an event message and its IPI
    fault_reflect_ns: int = _cost(500)  # the kernel reflecting a hardware fault
    syscall_latency_ns: int = _cost(10_000)  # completion time of a blocking syscall
    populate_latency_ns: int = _cost(20_000)  # SYS_populate_va (a page fetched from "disk")
    vcore_grant_ns: int = _cost(2_000)  # from vcore_request_more to the vcore running
    preempt_duration_ns: int = _cost(100_000)  # how long a preempted vcore's pcore stays away
    slice_insns: int = _cost(10_000)  # guest instructions between engine checks
    # How far a guest slice may run a vcore past the furthest-behind peer (a
    # lookahead; kernel events still end slices exactly).  Python uthreads and
    # vcore context interleave exactly; guest code interleaves at this grain.
    # Smaller is finer and slower.
    vcore_quantum_ns: int = _cost(2_000)
    python_step_ns: int = _cost(20)  # a parlib call from a Python uthread

    def __attrs_post_init__(self):
        if self.slice_insns < 1:
            raise ValueError("Costs.slice_insns: expected an int >= 1, got 0")


class VcoreState(enum.Enum):
    """A vcore as the kernel sees it."""

    OFFLINE = "offline"
    ONLINE = "online"
    PREEMPTED = "preempted"


_VC_TRANSITIONS = {
    VcoreState.OFFLINE: {VcoreState.ONLINE},
    VcoreState.ONLINE: {VcoreState.OFFLINE, VcoreState.PREEMPTED},
    VcoreState.PREEMPTED: {VcoreState.ONLINE},
}


class EngineError(RuntimeError):
    """A broken precondition at a context switch (names the vcore, uthread and what was wrong)."""


class Vcore:
    """A virtual core.  Lifecycle: OFFLINE -> ONLINE (granted) -> OFFLINE (yield) or PREEMPTED -> ONLINE."""

    def __init__(self, vcoreid: int) -> None:
        self.id = vcoreid
        # kernel
        self._state = VcoreState.OFFLINE
        self.clock = 0  # this vcore's virtual time, ns
        self.online_since = 0
        self.unavailable_until = 0  # a preempted pcore comes back after this
        self.preempt_pending = 0  # deadline of a preemption warning, 0 = none
        self.pending_duration: int | None = None  # how long the warned pcore will be away
        self.nr_preempts = 0
        # VCPD: notifications and mailbox
        self.notif_disabled = True
        self.notif_pending = False
        self.mailbox: deque = deque()
        # parlib (its TLS): the uthread it runs or was interrupted from
        self.current_uthread: Uthread | None = None
        # vcore tick (time slicing): period and expired-but-unpolled periods
        self.tick_period = 0
        self.tick_expired = 0
        self.tick_event = None
        self.storm: tuple | None = None  # a tick storm: (end_ns, min_insns, max_insns)
        self.storm_left = 0  # guest instructions until its next tick
        # engine: the greenlet to switch to when this vcore runs next
        self.gl: greenlet | None = None
        self.vgl: greenlet | None = None  # its vcore-context greenlet (one, reused)
        self.entry: tuple = ("?", None)  # why vcore context starts next, and the action to run first
        self.in_vcore_ctx = False
        # statistics
        self.busy_ns = 0  # time charged while online
        self.uthread_ns = 0  # ... of it, running uthreads
        self.switches = 0

    @property
    def state(self) -> VcoreState:
        return self._state

    def set_state(self, new: VcoreState) -> None:
        if new not in _VC_TRANSITIONS[self._state]:
            raise EngineError(f"vcore {self.id}: illegal transition {self._state.name} -> {new.name}")
        self._state = new

    @property
    def online(self) -> bool:
        return self._state is VcoreState.ONLINE

    def __repr__(self) -> str:
        return f"<Vcore {self.id} {self._state.name} t={self.clock}>"


@attrs.define(eq=False)
class Event:
    """A kernel event due at `time`; `cancelled` ones are skipped when popped."""

    time: int
    kind: str
    fn: object = attrs.field(repr=False)
    args: tuple = attrs.field(default=(), repr=False)
    cancelled: bool = False


class SimGreenlet(greenlet):
    """A greenlet that knows its simulation (parlib finds it through getcurrent())."""

    def __init__(self, run, parent, sim, uth=None) -> None:
        super().__init__(run, parent)
        self.sim = sim
        self.uth = uth


class _EnterUthread(BaseException):
    """Unwinds a vcore-context greenlet into a uthread (sched_entry never returns).

    A BaseException so that `except Exception` in 2LS code does not catch it.
    """

    def __init__(self, uth) -> None:
        super().__init__(uth)
        self.uth = uth


class _VcoreOffline(BaseException):
    """Unwinds a vcore-context greenlet whose vcore yielded to the kernel."""


class StopSimulation(BaseException):
    """Unwinds whatever greenlet is running when the process ends."""


class Engine:
    """Time, events and the switching of vcores between contexts."""

    def __init__(self, sim, nvcores: int, costs: Costs) -> None:
        self.sim = sim
        self.costs = costs
        self.vcores = [Vcore(i) for i in range(nvcores)]
        self._heap: list[tuple[int, int, int, Event]] = []
        self._seq = itertools.count()
        self.current: Vcore | None = None  # the vcore whose code is running
        self.horizon = 0  # the running vcore yields to the engine once its clock passes this
        self.gl: greenlet | None = None  # the engine's own greenlet
        self.now = 0  # time of the last event handled or vcore step started
        self.until: int | None = None  # the run's virtual-time budget
        self.event_horizon = 0  # the next kernel event (or the budget): guest slices stop there exactly

    # -- events ---------------------------------------------------------------------

    def schedule(self, time: int, kind: str, fn, *args, priority: int = 0) -> Event:
        """Run fn(*args) in kernel context at `time` (never in the past of `now`)."""
        ev = Event(max(time, self.now), kind, fn, args)
        heapq.heappush(self._heap, (ev.time, priority, next(self._seq), ev))
        if ev.time < self.horizon:
            self.horizon = ev.time
        if ev.time < self.event_horizon:
            self.event_horizon = ev.time
        return ev

    def next_event_time(self) -> int | None:
        while self._heap and self._heap[0][3].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_event(self) -> Event:
        return heapq.heappop(self._heap)[3]

    # -- time -----------------------------------------------------------------------

    def charge(self, ns: int, uthread_time: bool = False) -> None:
        """Spend `ns` on the running vcore; from uthread context, let others catch up."""
        vc = self.current
        if vc is None:
            self.now += ns
            return
        vc.clock += ns
        vc.busy_ns += ns
        if uthread_time:
            vc.uthread_ns += ns

    def over_horizon(self) -> bool:
        vc = self.current
        return vc is not None and vc.clock > self.horizon

    def yield_to_engine(self) -> None:
        """Suspend the running code; the engine resumes it when its vcore is furthest behind."""
        vc = self.current
        if vc is None:
            return
        vc.gl = getcurrent()
        self.gl.switch()

    def maybe_yield(self) -> None:
        if self.over_horizon():
            self.yield_to_engine()

    def compute_horizon(self, vc: Vcore, next_event: int | None | bool = False) -> int:
        """The time `vc` may run to before the engine must look elsewhere: the next kernel
        event, the clock of the furthest-behind online peer, or the time budget.
        (A caller that has just looked at the heap passes what it found as next_event.)"""
        horizon = self.next_event_time() if next_event is False else next_event
        for other in self.vcores:
            if other is not vc and other.online and (horizon is None or other.clock < horizon):
                horizon = other.clock
        if self.until is not None and (horizon is None or self.until < horizon):
            horizon = self.until
        return horizon if horizon is not None else 1 << 62

    # -- the waist --------------------------------------------------------------------

    def enter_uthread(self, vc: Vcore, uth) -> None:
        """From vcore context on `vc`: run `uth` (never returns)."""
        if getcurrent() is not vc.gl or not vc.in_vcore_ctx:
            raise EngineError(f"vcore {vc.id}: run_uthread({uth.name!r}) called outside its vcore context")
        if uth.greenlet is None:
            uth.greenlet = self.sim._make_uthread_greenlet(uth)
        elif uth.greenlet.dead:
            raise EngineError(f"vcore {vc.id}: uthread {uth.name!r} has finished and cannot run")
        vc.switches += 1
        raise _EnterUthread(uth)  # unwinds vcore context to the top of _vcore_main

    def enter_vcore_context(self, vc: Vcore, reason: str, action=None) -> None:
        """From uthread context on `vc`: start vcore context fresh; returns when the uthread runs again.

        `action(vc)` runs first in the new vcore context (the yield callback of
        uthread_yield, for instance).
        """
        cur = getcurrent()
        if vc.in_vcore_ctx or cur is not vc.gl:
            raise EngineError(f"vcore {vc.id}: entering vcore context ({reason}) from outside a uthread")
        vc.entry = (reason, action)
        vc.in_vcore_ctx = True
        vc.gl = self._vcore_greenlet(vc)
        vc.gl.switch()  # straight to vcore context; the engine is not involved

    def _vcore_greenlet(self, vc: Vcore) -> SimGreenlet:
        """vc's one vcore-context greenlet; it loops back to vcore_entry each time it is switched to."""
        if vc.vgl is None or vc.vgl.dead:
            vc.vgl = SimGreenlet(lambda: self._vcore_main(vc), self.gl, self.sim)
        return vc.vgl

    def start_vcore(self, vc: Vcore, reason: str) -> None:
        """Kernel side: vc starts fresh at vcore_entry (granted, or restarted after preemption)."""
        vc.entry = (reason, None)
        vc.in_vcore_ctx = True
        vc.gl = self._vcore_greenlet(vc)

    def _vcore_main(self, vc: Vcore):
        """Vcore context's program: each pass is one fresh vcore_entry (the stack starts empty).

        A pass ends by switching away, and whoever switches back means "start
        vcore context again": a uthread entering it, or the kernel restarting vc.
        """
        while True:
            reason, action = vc.entry
            vc.entry = ("?", None)
            try:
                vc.notif_disabled = True
                self.sim._vcore_entry(vc, reason, action)
                raise EngineError(f"vcore {vc.id}: sched_entry returned (it must run a uthread or yield the vcore)")
            except _EnterUthread as enter:
                uth = enter.uth
                vc.in_vcore_ctx = False
                vc.gl = uth.greenlet
                uth.greenlet.switch()
            except _VcoreOffline:
                vc.gl = None
                vc.in_vcore_ctx = False
                self.gl.switch()

    # -- the loop -----------------------------------------------------------------------

    def next_vcore(self) -> Vcore | None:
        best = None
        for vc in self.vcores:
            if vc.online and vc.gl is not None and (best is None or vc.clock < best.clock):
                best = vc
        return best

    def step(self, vc: Vcore) -> None:
        """Run `vc`'s code until it yields to the engine (or its greenlet ends)."""
        self.current = vc
        self.now = max(self.now, vc.clock)
        nxt = self.next_event_time()
        self.horizon = self.compute_horizon(vc, nxt)
        self.event_horizon = min(x for x in (nxt, self.until, 1 << 62) if x is not None)
        gl = vc.gl
        try:
            gl.switch()
        finally:
            self.current = None
