"""The vcore record and the runtime's small vocabularies: vcore states, why vcore context starts,
why a uthread was stopped, why a run ended.

A `Vcore` holds what the kernel, parlib's VCPD and the engine keep per
virtual core, grouped by owner.  The enums are what trace records and error
messages name (each member's value is the word a record carries).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenlet import greenlet


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


class Entry(enum.Enum):
    """Why a fresh pass of vcore context starts (the `why` of a vcore_entry record)."""

    PROCESS_START = "process_start"  # vcore 0 when the process becomes an MCP
    GRANTED = "granted"  # the kernel granted an offline vcore
    RESTART = "restart"  # a vcore preempted in uthread context is back
    YIELD = "yield"  # a uthread called uthread_yield
    NOTIFY = "notify"  # a notification interrupted the running uthread
    FAULT = "fault"  # a hardware fault was reflected


class Interrupt(enum.Enum):
    """Why a uthread was stopped against its will (what a RAS restart reports as `why`)."""

    NOTIFY = "notify"
    FAULT = "fault"
    PREEMPTED = "preempted"


class RunEnd(enum.Enum):
    """Why a run stopped."""

    ALL_EXITED = "all uthreads exited"
    PROCESS_EXITED = "process exited"
    TIME_BUDGET = "virtual-time budget reached"
    INSN_BUDGET = "instruction budget reached"
    IDLE = "nothing left to run (every vcore yielded, no event pending)"


class EngineError(RuntimeError):
    """A broken precondition at a context switch (names the vcore, uthread and what was wrong)."""


class Vcore:
    """A virtual core.  Lifecycle: OFFLINE -> ONLINE (granted) -> OFFLINE (yield) or PREEMPTED -> ONLINE."""

    def __init__(self, vcoreid: int) -> None:
        self.id = vcoreid
        # kernel
        self._state = VcoreState.OFFLINE
        self.online = False  # state is ONLINE (kept as a plain field: the engine reads it every turn)
        self.clock = 0  # this vcore's virtual time, ns
        self.unavailable_until = 0  # a preempted pcore comes back after this
        self.preempt_pending = 0  # deadline of a preemption warning, 0 = none
        self.pending_duration: int | None = None  # how long the warned pcore will be away
        self.nr_preempts = 0
        self.inactive_at = -vcoreid  # its place on inactive_vcs: the latest to go offline is granted first
        self.changed_away = False  # VC_PREEMPTED after a change_to_vcore: its mailbox is for a peer to check
        # VCPD: notifications and mailbox
        self.notif_disabled = True
        self.notif_pending = False
        self.mailbox: deque = deque()
        self.remote_mbox: int | None = None  # parlib's __vc_rem_vcoreid while __vc_handle_an_mbox is set
        # parlib (its TLS): the uthread it runs or was interrupted from
        self.current_uthread = None
        # vcore tick (time slicing): period and expired-but-unpolled periods
        self.tick_period = 0
        self.tick_expired = 0
        self.tick_event = None
        self.storm: tuple | None = None  # a tick storm: (end_ns, min_insns, max_insns)
        self.storm_left = 0  # guest instructions until its next tick
        # engine: the greenlet to switch to when this vcore runs next
        self.gl: greenlet | None = None
        self.vgl: greenlet | None = None  # its vcore-context greenlet (one, reused)
        self.entry: tuple[Entry, object] | None = None  # the next pass's reason and first action
        self.in_vcore_ctx = False
        self.next_uth = None  # the uthread a pass chose to run (read when the pass has unwound)
        self.spending: list | None = None  # [start, reached] of a spend() in progress
        # statistics
        self.busy_ns = 0  # time spent while online
        self.switches = 0

    @property
    def state(self) -> VcoreState:
        return self._state

    def set_state(self, new: VcoreState) -> None:
        if new not in _VC_TRANSITIONS[self._state]:
            raise EngineError(f"vcore {self.id}: illegal transition {self._state.name} -> {new.name}")
        self._state = new
        self.online = new is VcoreState.ONLINE


    def __repr__(self) -> str:
        return f"<Vcore {self.id} {self._state.name} t={self.clock}>"
