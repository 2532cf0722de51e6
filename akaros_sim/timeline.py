"""Uthread and vcore states over virtual time: one account for the trace, the metrics, Perfetto and the report.

From its creation on, a uthread is in exactly one state at every instant:

    runnable   the 2LS's to run (created, woken, paused, handed back) and not running
    running    its context is loaded on a vcore: from its `run` record until
               vcore context starts on that vcore (or the vcore is preempted)
    blocked    waiting for something other than the 2LS; the cause says what (CAUSES)
    exited

The runtime, not the 2LS, reports every change (`Process.set_uth_state`), so
the account never depends on what a 2LS chooses to record.  The same changes
are `uthread_state` records in the trace, and `Timeline.from_trace` replays
them through the same code: a trace file gives the metrics the live run gave.

A vcore is offline, online or preempted (the kernel's view, from its
vcore_online / vcore_offline / preempt records); its online time splits into
time running uthreads (their running spans on it) and the rest, vcore context.
"""

from __future__ import annotations

RUNNABLE, RUNNING, BLOCKED, EXITED = "runnable", "running", "blocked", "exited"
STATES = (RUNNABLE, RUNNING, BLOCKED, EXITED)

# What a blocked uthread waits for.
CAUSES = {
    "yield": "in vcore context while its yield callback decides its fate (uthread_yield, exit)",
    "mutex": "a mutex held by another uthread",
    "cv": "a condition variable's signal",
    "join": "another uthread's exit",
    "syscall": "a blocking syscall's completion",
    "fault": "its fault's handling: the handler chain, then any syscall it started (populate_va)",
    "interrupt": "its vcore, in vcore context since a notification interrupted it",
    "preempted": "the kernel's return of its preempted vcore, or a peer's recovery of it",
    "eventq": "an event queue (uthread_has_blocked with UTH_EXT_BLK_EVENTQ)",
    "misc": "something a yield callback named with UTH_EXT_BLK_MISC",
}
BLOCK_FLAG_CAUSES = {1: "mutex", 2: "eventq", 3: "yield", 4: "misc"}  # uthread_has_blocked flags

VCORE_STATES = ("offline", "online", "preempted")
# (change_to_vcore is recorded on the vcore that gives its pcore away: it is offline from there)
_VCORE_RECORDS = {"vcore_online": "online", "vcore_offline": "offline", "preempt": "preempted",
                  "change_to_vcore": "offline"}  # fmt: skip


class UthreadTimes:
    """One uthread's account so far: when things happened and how long it spent in each state."""

    __slots__ = ("name", "created", "first_run", "exited", "state", "cause", "since", "vcore", "runs",
                 "migrations", "faults", "signals", "run_ns", "ready_ns", "blocked_ns")  # fmt: skip

    def __init__(self, name: str, t: int) -> None:
        self.name = name
        self.created = t
        self.first_run: int | None = None
        self.exited: int | None = None
        self.state, self.cause, self.since = RUNNABLE, "", t
        self.vcore = -1  # where it last ran
        self.runs = self.migrations = self.faults = self.signals = 0
        self.run_ns = self.ready_ns = 0
        self.blocked_ns: dict[str, int] = {}



class VcoreTimes:
    """One vcore's account so far."""

    __slots__ = ("vcore", "state", "since", "ns")

    def __init__(self, vcore: int) -> None:
        self.vcore = vcore
        self.state, self.since = "offline", 0
        self.ns = dict.fromkeys(VCORE_STATES, 0)


class Timeline:
    """The live account of a run (or one replayed from its trace).  Lifecycle: fed changes, then read."""

    def __init__(self, nvcores: int = 0) -> None:
        self.uthreads: dict[str, UthreadTimes] = {}  # in creation order
        self.vcores: dict[int, VcoreTimes] = {vc: VcoreTimes(vc) for vc in range(nvcores)}
        self.vcore_run: dict[int, int] = {}  # vcore -> closed running spans on it

    def created(self, t: int, name: str) -> UthreadTimes:
        u = self.uthreads[name] = UthreadTimes(name, t)
        return u

    def change(self, t: int, name: str, state: str, cause: str = "", vcore: int = -1) -> bool:
        """name is now in `state` (and `cause`, if blocked); False if it already was."""
        u = self.uthreads[name]
        if u.state is state and u.cause == cause:
            return False
        self.move(u, t, state, cause, vcore)
        return True

    def move(self, u: UthreadTimes, t: int, state: str, cause: str, vcore: int) -> None:
        """u leaves its state for `state` at t (the caller saw that it changes).  Process.set_uth_state
        does the same inline on the runtime's hot path; tests/test_metrics.py checks the two agree."""
        span = t - u.since
        old = u.state
        if old is RUNNING:
            u.run_ns += span
            self.vcore_run[u.vcore] = self.vcore_run.get(u.vcore, 0) + span
        elif old is RUNNABLE:
            u.ready_ns += span
        elif old is BLOCKED:
            u.blocked_ns[u.cause] = u.blocked_ns.get(u.cause, 0) + span
        u.since = t
        u.state, u.cause = state, cause
        if state is RUNNING:
            u.runs += 1
            if u.first_run is None:
                u.first_run = t
            elif vcore != u.vcore:
                u.migrations += 1
            u.vcore = vcore
        elif state is BLOCKED:
            if cause == "fault":
                u.faults += 1
        elif state is EXITED:
            u.exited = t

    def cause_of(self, name: str) -> str:
        return self.uthreads[name].cause

    def signal(self, name: str) -> None:
        u = self.uthreads.get(name)
        if u is not None:
            u.signals += 1

    def vcore(self, t: int, vcore: int, state: str) -> None:
        v = self.vcores.get(vcore)
        if v is None:
            v = self.vcores[vcore] = VcoreTimes(vcore)
        v.ns[v.state] += t - v.since
        v.state, v.since = state, t

    @classmethod
    def from_trace(cls, trace) -> Timeline:
        """Replay a trace's uthread_state, vcore and signal records (a trace file gives what the run gave)."""
        nvcores = trace.header.get("vcores", 0)
        timeline = cls(nvcores if isinstance(nvcores, int) else 0)
        intern = {s: s for s in STATES}  # `is` comparisons, as the live path makes
        for rec in trace.records:
            kind = rec.kind
            if kind == "uthread_state":
                state = intern[rec.get("state")]
                if rec.uth not in timeline.uthreads:
                    timeline.created(rec.t, rec.uth)
                else:
                    timeline.change(rec.t, rec.uth, state, rec.get("cause", ""), rec.vc)
            elif kind in _VCORE_RECORDS:
                timeline.vcore(rec.t, rec.vc, _VCORE_RECORDS[kind])
            elif kind == "signal":
                timeline.signal(rec.uth)
        return timeline


def spans(trace) -> tuple[dict[str, list[tuple]], dict[int, list[tuple]], int]:
    """The states of a trace as spans: per uthread (start, end, state, cause, vcore), in creation order, and
    per vcore (start, end, state); open ones end at the run's end (its run_end record), which is returned too.

    A uthread's exited state is not a span (its life ends there); zero-length spans are left out.
    """
    records = trace.records
    end = next((r.t for r in reversed(records) if r.kind == "run_end"), max((r.t for r in records), default=0))
    uths: dict[str, list[tuple]] = {}
    open_uth: dict[str, tuple] = {}  # name -> (since, state, cause, vcore)
    vcores: dict[int, list[tuple]] = {}
    open_vc: dict[int, tuple] = {}  # vcore -> (since, state)
    nvcores = trace.header.get("vcores", 0)
    for vc in range(nvcores if isinstance(nvcores, int) else 0):
        vcores[vc], open_vc[vc] = [], (0, "offline")
    for rec in records:
        if rec.kind == "uthread_state":
            name = rec.uth
            was = open_uth.get(name)
            if was is None:
                uths.setdefault(name, [])
            elif rec.t != was[0]:  # (a negative span is a causality bug: kept, for checkers to see)
                uths[name].append((was[0], rec.t, *was[1:]))
            state = rec.get("state")
            if state == EXITED:
                open_uth.pop(name, None)
            else:
                open_uth[name] = (rec.t, state, rec.get("cause", ""), rec.vc)
        elif rec.kind in _VCORE_RECORDS:
            vc, new = rec.vc, _VCORE_RECORDS[rec.kind]
            vcores.setdefault(vc, [])
            since, state = open_vc.get(vc, (0, "offline"))
            if rec.t != since:
                vcores[vc].append((since, rec.t, state))
            open_vc[vc] = (rec.t, new)
    for name, (since, *rest) in open_uth.items():
        if end > since:
            uths[name].append((since, end, *rest))
    for vc, (since, state) in open_vc.items():
        if end > since:
            vcores[vc].append((since, end, state))
    return uths, dict(sorted(vcores.items())), end
