"""Trace invariants: causality and ownership checks over a finished run's records.

`check_trace(records)` reads a list of `akaros_sim.trace.TraceRecord` in
emission order and returns human-readable violations (an empty list: the
trace is consistent).  It is a pure function of the records: it never looks
at a Simulation, so it checks a trace read back from JSONL just as well.

The checks (each message starts with its letter):

(a) per-vcore time never decreases: among the records stamped with a vcore
    (vc >= 0), in emission order, a vcore's t never goes below a t it showed
    before.
(b) global time never decreases: in emission order t never goes below a t
    already shown (the closing `run_end` record is left out).
(c) causality of wake-ups: a uthread is only run (a `run` record other than a
    resume in place) after a record that made it runnable since it last
    stopped, with that record's t <= the run's t.  Also: an event message is
    not handled before it was posted.
(d) exclusive ownership: a uthread is never on two vcores at once, a vcore
    never has two current uthreads, and a resume (`run_current_uthread`) only
    resumes the uthread the vcore was holding.
(e) one place per uthread: a uthread exits at most once, never runs or is
    made runnable after exiting, is never made runnable while it is still on
    a vcore, no vcore goes offline holding one; a run that ended ALL_EXITED
    accounts for every uthread it created as exited, and a run that ended
    IDLE leaves no live uthread held by a vcore or runnable but never run.
(f) the timeline (`uthread_state` records, akaros_sim/timeline.py): a
    uthread's first state is runnable, at its creation; its states' times
    never decrease; it runs only from runnable, or from blocked on
    interrupt/fault/preempted (a resume in place), and at the time of a `run`
    record of its own; it exits only from its yield callback; nothing follows
    exited; and no two uthreads are running on one vcore at once.

The vocabulary (which record kinds wake, stop, block) is read off the runtime
(akaros_sim/parlib.py, vcore.py, simulation.py, kernel.py) and kept in the
module-level constants below so it is easy to adjust when the runtime's
records change.  Uthreads are identified by name: the checker assumes names
are unique within a run (a second `uthread_create` of a name is reported).

Vocabulary gaps, where the trace does not say what happened and the checker
is lenient (see the constants' comments):

* `op thread_bulk_runnable` (a CondVar broadcast under a 2LS that has the op,
  e.g. pthread) names no uthread: it counts as a wake for every uthread then
  waiting on a condition variable (BULK_WAKE_OPS).
* a 2LS's own internal enqueues (pthread calling its own thread_runnable on
  create, on a syscall completion, from thread_paused or a signal;
  roundrobin requeueing after `stop_current_uthread`) leave no record; the
  record that preceded them stands for the wake (uthread_create, the EV_SYSCALL
  `event`, `op thread_paused`, `op thread_refl_fault`, `uthread_stop`).
* an EV_SYSCALL `event` record does not say which syscall it delivers; it is
  matched to the syscall by modelling each vcore's mailbox as the FIFO it is
  (`event_post` appends, `event` pops), and a `syscall_done` is tied to the
  `event_post` that follows it.  An EV_SYSCALL event that cannot be matched
  this way is a lenient wake for any uthread whose syscall is done.
* `op thread_blockon_sysc` names the syscall by its name, not its id; a
  `syscall` record made from vcore context (the 2LS's populate path) carries
  no uthread.  The id is tied to the uthread by the `op thread_blockon_sysc`
  that follows that `syscall` record on the same vcore.
* records about a vcore other than the acting one (VCORE_TARGET_KINDS) carry
  the target vcore's id but the actor's (or the kernel's) time; check (a)
  still applies to them, since in a causal run nothing is done to a vcore
  in its past, and their messages say so.
"""

from __future__ import annotations

from collections import defaultdict, deque

try:  # the number is Akaros's (kern/include/ros/event.h)
    from akaros_sim.kernel import EV_SYSCALL
except ImportError:  # pragma: no cover - the runtime is being redesigned
    EV_SYSCALL = 10

# -- vocabulary ---------------------------------------------------------------------------------------

# Records left out of the time checks: run_end is stamped with the latest clock after the run.
FINAL_KINDS = frozenset({"run_end"})

# `run` records whose `how` resumes a uthread in place on the vcore that was already holding it
# (interrupted by a notification or a fault, or fixed by a fault handler): no wake is needed.
RESUME_HOWS = frozenset({"run_current_uthread", "fault_fixed"})
# `run` of a uthread the vcore was holding (checked in (d)); fault_fixed may also run one that
# run_uthread picked (its reflected fault was still pending), so it is not required to be held.
HELD_HOWS = frozenset({"run_current_uthread"})

# `op` records whose first argument is a uthread the op makes runnable (the 2LS queues it):
# thread_runnable always; thread_paused (pthread and roundrobin requeue); thread_refl_fault (the
# 2LS requeues it after preparing a signal or fixing the fault, unless a thread_blockon_sysc follows).
WAKE_OPS = frozenset({"thread_runnable", "thread_paused", "thread_refl_fault"})
# `op` records whose first argument is a uthread that is now blocked (cancels a pending wake).
BLOCK_OPS = frozenset({"thread_blockon_sysc", "thread_has_blocked"})
# `op` records that detach a uthread from its vcore before the op runs (run_current_uthread with a
# reflected fault pending clears current_uthread, then calls thread_refl_fault).
DETACH_OPS = frozenset({"thread_refl_fault"})
# `op` records that wake uthreads without naming them (lenient: every uthread waiting on a condvar).
BULK_WAKE_OPS = frozenset({"thread_bulk_runnable"})
# Records naming (in a detail; None = the `uth` field) a uthread made runnable by that record.
WAKE_KINDS = {
    "uthread_create": None,  # thread_create queues the new uthread
    "uthread_pause": "target",  # __uthread_pause: copied out, handed to thread_paused
    "uthread_stop": "target",  # stop_current_uthread: saved and handed back to the 2LS
    "preempt_recover": "stolen",  # handle_vc_preempt took it off the preempted vcore
    "mutex_handoff": "to",  # Mutex.unlock hands the mutex to the head waiter
}
# Records naming a uthread that is no longer on the vcore it was on (stopped / detached).
DETACH_KINDS = {
    "uthread_stop": "target",
    "uthread_pause": "target",
    "preempt_recover": "stolen",
}
# vcore_entry `why` values meaning `cur` left the vcore (uthread_yield: its callback decides its fate).
# "fault" and "notify" keep `cur` as the vcore's current_uthread (it may be resumed in place).
YIELD_WHYS = frozenset({"yield"})
# Records whose uthread now waits on a condition variable (for BULK_WAKE_OPS).
CV_WAIT_KINDS = frozenset({"cv_wait"})
# Records with the id of a vcore other than the acting one, stamped with the actor's or kernel's time.
VCORE_TARGET_KINDS = frozenset(
    {"event_post", "preempt", "preempt_warn", "preempt_skipped", "vcore_online", "tick", "tick_storm"}
)
# run_end `end` values meaning nothing was left to run (every vcore yielded, no event pending).
IDLE_ENDS = frozenset({"IDLE"})
EXIT_KIND = "uthread_exit"  # target: the uthread that exited (in its own yield callback)
OFFLINE_KIND = "vcore_offline"

DEFAULT_LIMIT = 25  # violations listed per check before they are summarised


def _where(i: int, rec) -> str:
    vc = f" vc{rec.vc}" if rec.vc >= 0 else ""
    return f"#{i} {rec.kind}{vc} t={rec.t}"


class _Checker:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.out: dict[str, list[str]] = {c: [] for c in "abcdef"}
        self.dropped: dict[str, int] = defaultdict(int)

    def flag(self, check: str, msg: str) -> None:
        bucket = self.out[check]
        if self.limit is not None and len(bucket) >= self.limit:
            self.dropped[check] += 1
        else:
            bucket.append(f"({check}) {msg}")

    def result(self) -> list[str]:
        lines = []
        for c in "abcdef":
            lines.extend(self.out[c])
            if self.dropped[c]:
                lines.append(f"({c}) ... and {self.dropped[c]} more ({c}) violations")
        return lines


def check_time(records, chk: _Checker) -> None:
    """(a) and (b): virtual time never goes backwards in emission order.

    (a) Per vcore: the records stamped with vcore V (vc == V >= 0) show non-decreasing t.  A
        vcore's own clock only moves forward, so a violation is either the runtime rewinding a clock
        or a record about V (VCORE_TARGET_KINDS: an event posted to it, a preemption, a tick, its
        grant) stamped with a time V had already passed: something done to V in its past.
    (b) Globally: every record (but the closing run_end) has t >= every t emitted before it, i.e.
        the trace is a causal history: nothing is recorded after something that happened later.
        Each message names the record and the earlier-emitted record holding the larger time.
    """
    def at(k: int) -> str:
        return _where(k, records[k])

    vc_max: dict[int, tuple[int, int]] = {}  # vcore -> (max t, index of that record)
    g_max: tuple[int, int] | None = None
    for i, rec in enumerate(records):
        if rec.kind in FINAL_KINDS:
            continue
        if rec.vc >= 0:
            prev = vc_max.get(rec.vc)
            if prev is not None and rec.t < prev[0]:
                j = prev[1]
                note = " (stamped with the actor's time, about this vcore)" if rec.kind in VCORE_TARGET_KINDS else ""
                chk.flag("a", f"vcore {rec.vc}: time went back from t={prev[0]} ({at(j)}) "
                              f"to t={rec.t} ({at(i)}){note}")  # fmt: skip
            else:
                vc_max[rec.vc] = (rec.t, i)
        if g_max is not None and rec.t < g_max[0]:
            j = g_max[1]
            chk.flag("b", f"time went back by {g_max[0] - rec.t} ns: {at(i)} after {at(j)}")
        else:
            g_max = (rec.t, i)


def _op_subject(rec) -> str | None:
    args = rec.get("args") or ()
    return args[0] if args and isinstance(args[0], str) else None


def check_uthreads(records, chk: _Checker) -> None:  # noqa: C901 - one pass, one state machine
    """(c), (d) and (e): one pass of a per-uthread state machine.

    (c) Causality of wake-ups.  Every `run` whose how is not in RESUME_HOWS needs a wake for that
        uthread since it last stopped (a yield, a detach, a block), and the wake's t must be <= the
        run's t: a uthread cannot start running at a time before it was made runnable.  Wakes are
        WAKE_KINDS, WAKE_OPS, and the EV_SYSCALL `event` delivering the completion of the syscall it
        blocked on (matched through the mailbox model); BLOCK_OPS cancel a wake.  Also: an `event`
        is never handled at a time before its `event_post`.
    (d) Exclusive ownership.  A run puts the uthread on the vcore; it leaves only by a yield
        (vcore_entry why in YIELD_WHYS with cur = it) or a detach (DETACH_KINDS, DETACH_OPS).  A
        notification or a fault (vcore_entry why=notify/fault) and a preemption keep it on its
        vcore.  Violations: a run on vcore B while it is still on A; a run_uthread of a uthread
        its vcore still holds; a run_current_uthread of one the vcore does not hold; a run on a
        vcore still holding another uthread; a yield from a vcore it was not on.
    (e) One place per uthread.  A uthread exits once, never runs or is made runnable after its
        exit, is not made runnable while still on a vcore (it would be in two places), and no
        vcore goes offline while holding one (it would be nowhere).  At the end: ALL_EXITED means
        every created uthread exited; IDLE means no live uthread is still held by a vcore
        (stranded) or runnable but never run (a lost wake-up).
    """
    def at(k: int) -> str:
        return _where(k, records[k])

    created: dict[str, int] = {}
    exited: dict[str, int] = {}
    on_vcore: dict[str, tuple[int, int]] = {}  # uthread -> (vcore, index of its run)
    vcore_cur: dict[int, str] = {}  # vcore -> uthread it holds
    wake: dict[str, tuple[int, str]] = {}  # uthread -> (index, what) of the wake since it last stopped
    lenient: dict[str, tuple[int, str]] = {}  # uthread -> a wake that names nobody, if no precise one
    cv_waiters: dict[str, int] = {}  # uthread -> index of its cv_wait (until it runs)
    # syscalls: id -> uthread; pending vcore-context syscall per vcore; done-but-undelivered syscalls
    sysc_uth: dict[int, str] = {}
    anon_sysc: dict[int, tuple[int, str]] = {}  # vcore -> (sysc id, name) of a syscall with no uthread
    done_sysc: dict[int, int] = {}  # sysc id -> index of syscall_done, until its event is posted/handled
    last_done: int | None = None  # sysc id of the syscall_done just seen (an event_post may follow)
    unposted: set[int] = set()  # syscalls that completed with no event posted
    mailbox: dict[int, deque] = defaultdict(deque)  # vcore -> (ev_type, index of post, sysc id or None)
    end_kind = None

    def stop(x: str) -> None:
        """x left its vcore (or was detached from it): it owns no vcore; a new wake is needed."""
        held = on_vcore.pop(x, None)
        if held is not None and vcore_cur.get(held[0]) == x:
            del vcore_cur[held[0]]
        wake.pop(x, None)
        lenient.pop(x, None)

    def block(x: str) -> None:
        wake.pop(x, None)
        lenient.pop(x, None)

    def woken(x: str | None, i: int, rec, what: str) -> None:
        if not x:
            return
        if x in exited:
            j = exited[x]
            chk.flag("e", f"uthread {x!r} made runnable ({what}, {at(i)}) after it exited ({at(j)})")
            return
        held = on_vcore.get(x)
        if held is not None:
            j = held[1]
            chk.flag("e", f"uthread {x!r} made runnable ({what}, {at(i)}) while still on vcore {held[0]} "
                          f"(since {at(j)})")  # fmt: skip
        wake[x] = (i, what)

    for i, rec in enumerate(records):
        kind = rec.kind
        if last_done is not None and kind != "event_post":
            # a completion nobody had registered for posts nothing (register_evq will return False
            # and the 2LS restarts the thread from thread_blockon_sysc)
            unposted.add(last_done)
            last_done = None
        if kind == "run":
            x = rec.uth
            how = rec.get("how")
            b = rec.vc
            if x in exited:
                j = exited[x]
                chk.flag("e", f"uthread {x!r} runs on vcore {b} ({at(i)}) after it exited ({at(j)})")
            # (c) a run that is not a resume in place needs an earlier wake, not later in time
            if how not in RESUME_HOWS:
                w = wake.get(x) or lenient.get(x)
                if w is None:
                    if x not in created:
                        chk.flag("c", f"uthread {x!r} runs on vcore {b} ({at(i)}, {how}) but was never created")
                    else:
                        chk.flag("c", f"uthread {x!r} runs on vcore {b} ({at(i)}, {how}) "
                                      "with no record making it runnable since it last stopped")  # fmt: skip
                else:
                    j, what = w
                    if records[j].t > rec.t:
                        chk.flag("c", f"uthread {x!r} runs on vcore {b} at t={rec.t} ({at(i)}) before it was "
                                      f"made runnable at t={records[j].t} ({what}, {at(j)})")  # fmt: skip
            # (d) exclusive ownership
            held = on_vcore.get(x)
            if held is not None and held[0] != b:
                j = held[1]
                chk.flag("d", f"uthread {x!r} runs on vcore {b} ({at(i)}) while still on vcore {held[0]} "
                              f"(since {at(j)})")  # fmt: skip
            elif held is not None and how not in RESUME_HOWS:
                j = held[1]
                chk.flag("d", f"uthread {x!r} run again with {how} on vcore {b} ({at(i)}) "
                              f"without having stopped since {at(j)}")  # fmt: skip
            if how in HELD_HOWS and held is None:
                chk.flag("d", f"vcore {b} resumes {x!r} ({at(i)}, {how}) but was not holding it")
            other = vcore_cur.get(b)
            if other is not None and other != x:
                j = on_vcore[other][1] if other in on_vcore else i
                chk.flag("d", f"vcore {b} runs {x!r} ({at(i)}) while still holding {other!r} "
                              f"(since {at(j)})")  # fmt: skip
                on_vcore.pop(other, None)
            if held is not None and held[0] != b and vcore_cur.get(held[0]) == x:
                del vcore_cur[held[0]]
            on_vcore[x] = (b, i)
            vcore_cur[b] = x
            wake.pop(x, None)
            lenient.pop(x, None)
            cv_waiters.pop(x, None)
        elif kind == "vcore_entry":
            cur = rec.get("cur")
            if cur and rec.get("why") in YIELD_WHYS:
                held = on_vcore.get(cur)
                if held is None or held[0] != rec.vc:
                    where = "no vcore" if held is None else f"vcore {held[0]}"
                    chk.flag("d", f"uthread {cur!r} yields from vcore {rec.vc} ({at(i)}) but was on {where}")
                stop(cur)
        elif kind == "op":
            op = rec.get("op")
            x = _op_subject(rec)
            if op in DETACH_OPS and x:
                stop(x)
            if op in BLOCK_OPS and x:
                block(x)
                if op == "thread_blockon_sysc":
                    pend = anon_sysc.pop(rec.vc, None)
                    args = rec.get("args") or ()
                    if pend is not None and (len(args) < 2 or args[1] == pend[1]):
                        sysc_uth[pend[0]] = x
                        if pend[0] in unposted:  # already done: the 2LS restarts it at once
                            woken(x, i, rec, f"op {op} on syscall {pend[0]}, already done")
            if op in WAKE_OPS and x:
                woken(x, i, rec, f"op {op}")
            if op in BULK_WAKE_OPS:
                for y in cv_waiters:
                    if y not in wake:
                        lenient[y] = (i, f"op {op}, which names no uthread")
        elif kind in WAKE_KINDS or kind in DETACH_KINDS:
            key = WAKE_KINDS.get(kind, DETACH_KINDS.get(kind))
            x = rec.uth if key is None else rec.get(key)
            if x:
                if kind in DETACH_KINDS:
                    stop(x)
                if kind == "uthread_create":
                    if x in created:
                        j = created[x]
                        chk.flag("e", f"uthread {x!r} created twice ({at(j)} and {at(i)}); "
                                      "names must be unique")  # fmt: skip
                    created[x] = i
                if kind in WAKE_KINDS:
                    woken(x, i, rec, kind)
        elif kind in CV_WAIT_KINDS:
            if rec.uth:
                cv_waiters[rec.uth] = i
        elif kind == "syscall":
            sid = rec.get("sysc")
            if rec.uth:
                sysc_uth[sid] = rec.uth
            anon_sysc[rec.vc] = (sid, rec.get("name"))
        elif kind == "syscall_done":
            sid = rec.get("sysc")
            done_sysc[sid] = i
            last_done = sid
            continue  # the event_post that follows, if any, belongs to it
        elif kind == "event_post":
            ev = rec.get("ev_type")
            sid = last_done if ev == EV_SYSCALL else None
            mailbox[rec.vc].append((ev, i, sid))
            last_done = None
        elif kind == "event":
            ev = rec.get("ev_type")
            box = mailbox[rec.vc]
            matched = None
            if box and box[0][0] == ev:
                matched = box.popleft()
                j = matched[1]
                if records[j].t > rec.t:
                    chk.flag("c", f"vcore {rec.vc} handles event {ev} at t={rec.t} ({at(i)}) "
                                  f"before it was posted at t={records[j].t} ({at(j)})")  # fmt: skip
            if ev == EV_SYSCALL:
                sid = matched[2] if matched is not None else None
                if sid is not None:
                    done_sysc.pop(sid, None)
                    woken(sysc_uth.get(sid), i, rec, f"EV_SYSCALL for syscall {sid}")
                else:  # unattributable: any uthread whose syscall is done may be the one
                    for s in list(done_sysc):
                        y = sysc_uth.get(s)
                        if y and y not in wake:
                            lenient[y] = (i, "an EV_SYSCALL event naming no syscall")
        elif kind == EXIT_KIND:
            x = rec.get("target") or rec.uth
            if x in exited:
                j = exited[x]
                chk.flag("e", f"uthread {x!r} exits twice ({at(j)} and {at(i)})")
            held = on_vcore.get(x)
            if held is not None:
                chk.flag("e", f"uthread {x!r} exits ({at(i)}) while still on vcore {held[0]}")
                stop(x)
            exited[x] = i
            wake.pop(x, None)
            lenient.pop(x, None)
        elif kind == OFFLINE_KIND:
            x = vcore_cur.get(rec.vc)
            if x is not None:
                chk.flag("e", f"vcore {rec.vc} goes offline ({at(i)}) still holding {x!r}")
        elif kind == "run_end":
            end_kind = rec.get("end")

    if end_kind == "ALL_EXITED":
        missing = [x for x in created if x not in exited]
        if missing:
            names = ", ".join(missing[:10])
            chk.flag("e", f"the run ended ALL_EXITED but {len(missing)} uthread(s) never exited: {names}")
    elif end_kind in IDLE_ENDS:
        # nothing was left to run: a live uthread must be blocked (a user deadlock is not ours to judge),
        # never still held by a vcore (stranded) nor made runnable and never run (a lost wake-up)
        for x in created:
            if x in exited:
                continue
            if x in on_vcore:
                vc, j = on_vcore[x]
                chk.flag("e", f"the run ended {end_kind} with {x!r} still held by vcore {vc} "
                              f"(since {at(j)}): stranded")  # fmt: skip
            elif x in wake:
                j, what = wake[x]
                chk.flag("e", f"the run ended {end_kind} with {x!r} runnable since {at(j)} ({what}) "
                              "but never run: a lost wake-up")  # fmt: skip


def check_trace(records, limit: int | None = DEFAULT_LIMIT) -> list[str]:
    """The violations of checks (a)-(e) in `records` (TraceRecords in emission order); [] = consistent.

    At most `limit` messages are listed per check, then one line counting the rest (None: all).
    """
    records = list(records)
    chk = _Checker(limit)
    check_time(records, chk)
    check_uthreads(records, chk)
    check_states(records, chk)
    return chk.result()


RESUMABLE_CAUSES = frozenset({"interrupt", "fault", "preempted"})  # blocked in place: may run again directly


def check_states(records, chk: _Checker) -> None:
    """Check (f) over the uthread_state records."""
    state: dict[str, tuple[str, str, int]] = {}  # uthread -> (state, cause, since)
    on_vcore: dict[int, str] = {}  # vcore -> the uthread running on it
    runs = {(r.uth, r.t) for r in records if r.kind == "run"}
    created = {r.uth: r.t for r in records if r.kind == "uthread_create"}
    for i, rec in enumerate(records):
        if rec.kind != "uthread_state":
            continue
        name, new, cause = rec.uth, rec.get("state"), rec.get("cause", "")
        where = _where(i, rec)
        if name not in state:
            if new != "runnable" or created.get(name) != rec.t:
                chk.flag("f", f"{where}: {name!r} starts {new} at t={rec.t}, not runnable at its creation")
            state[name] = (new, cause, rec.t)
            continue
        old, old_cause, since = state[name]
        if rec.t < since:
            chk.flag("f", f"{where}: {name!r}'s time goes back from {since} to {rec.t} ({old} -> {new})")
        if old == "exited":
            chk.flag("f", f"{where}: {name!r} is {new} after it exited")
        if old == "running":
            for vc, who in list(on_vcore.items()):
                if who == name:
                    del on_vcore[vc]
        if new == "running":
            if not (old == "runnable" or (old == "blocked" and old_cause in RESUMABLE_CAUSES)):
                chk.flag("f", f"{where}: {name!r} runs from {old} ({old_cause}): only runnable or a resume in place")
            if (name, rec.t) not in runs:
                chk.flag("f", f"{where}: {name!r} is running with no run record of its own at t={rec.t}")
            other = on_vcore.get(rec.vc)
            if other is not None:
                chk.flag("f", f"{where}: {name!r} runs on vcore {rec.vc} while {other!r} is running there")
            on_vcore[rec.vc] = name
        if new == "exited" and (old, old_cause) != ("blocked", "yield"):
            chk.flag("f", f"{where}: {name!r} exits from {old} ({old_cause}), not from its exit callback")
        state[name] = (new, cause, rec.t)


def check_timeline(trace) -> None:
    """Assert check (f) holds over a Trace (for tests that only want the timeline's rules)."""
    chk = _Checker(DEFAULT_LIMIT)
    check_states(list(trace.records), chk)
    problems = chk.result()
    assert not problems, "\n".join(problems)
