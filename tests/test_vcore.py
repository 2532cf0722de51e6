"""Vcore context: preemption recovery, preempt_pending warnings, notifications, events and vcore ticks."""

from __future__ import annotations

import pytest

from akaros_sim import parlib
from akaros_sim.engine import Costs
from akaros_sim.kernel import EV_PREEMPT_PENDING, EV_USER_IPI, EventMsg
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched
from scripted_2ls import SPIN, Fifo2LS, spin_insns, spin_sim


def _story(sim: Simulation, *kinds: str, ops: tuple[str, ...] = ()) -> list[tuple]:
    """(t, vc, uth, kind, details) for records of `kinds` and "op" records of `ops`, in trace order."""
    return [
        (r.t, r.vc, r.uth, r.kind, dict(r.details))
        for r in sim.trace.records
        if r.kind in kinds or (r.kind == "op" and r.get("op") in ops)
    ]


class _ListeningPthread(PthreadSched):
    """pthread that registers a handler for EV_PREEMPT_PENDING, so a warning is delivered at once."""

    def sched_init(self) -> None:
        super().sched_init()
        parlib.register_ev_handler(EV_PREEMPT_PENDING, lambda msg, ev_type: None)


def _long_and_short(listen: bool = False, **preempt) -> Simulation:
    """pthread on two vcores: `long` on vcore 0, `short` on vcore 1, optionally one preempt_at."""
    sim = spin_sim(_ListeningPthread() if listen else PthreadSched(), 2, long=(20_000, 7), short=(2000, 9))
    if preempt:
        sim.preempt_at(**preempt)
    return sim


@pytest.fixture(scope="module")
def unpreempted():
    """The reference run: nobody is preempted."""
    sim = _long_and_short()
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim


# -- preemption recovery ---------------------------------------------------------------------------


def test_peer_steals_a_preempted_guest_uthread_which_finishes_exactly_as_unpreempted(unpreempted):
    """Vcore 1 gets EV_VCORE_PREEMPT, steals `long` (thread_paused), and runs it later from the same instruction."""
    sim = _long_and_short(time_ns=5000, vcore=0, duration_ns=1_000_000)
    result = sim.run()
    assert result.end is RunEnd.ALL_EXITED
    kinds = ("preempt", "event_post", "notify", "event", "preempt_recover", "uthread_pause", "run", "uthread_exit")
    assert _story(sim, *kinds, ops=("thread_paused",)) == [
        (550, 0, "long", "run", {"how": "run_uthread"}),
        (2450, 1, "short", "run", {"how": "run_uthread"}),
        (5000, 0, "long", "preempt", {"in_vcore_ctx": False, "uthread": "long", "until": 1_005_000}),
        (5000, 1, "short", "event_post", {"ev_type": 3, "arg2": 0}),
        (5000, 1, "short", "notify", {}),
        (5450, 1, "short", "event", {"ev_type": 3, "arg2": 0}),
        (5450, 1, "short", "preempt_recover", {"victim": 0, "stolen": "long"}),
        (5450, 1, "short", "uthread_pause", {"target": "long", "why": "preempted"}),
        (5500, 1, "long", "op", {"op": "thread_paused", "args": ("long",)}),
        (5700, 1, "short", "run", {"how": "run_current_uthread"}),  # the interrupted uthread, not the stolen one
        (15_327, 1, "short", "uthread_exit", {"target": "short", "join": "JOINABLE",
                                              "retval": unpreempted.uthread("short").exit_value}),
        (15_477, 1, "long", "run", {"how": "run_uthread"}),  # on the other vcore
        (131_204, 1, "long", "uthread_exit", {"target": "long", "join": "JOINABLE",
                                              "retval": unpreempted.uthread("long").exit_value}),
    ]  # fmt: skip
    # not one instruction lost or repeated: same count, same final registers
    assert result.insns == spin_insns(20_000) + spin_insns(2000)
    for name in ("long", "short"):
        assert sim.uthread(name).ctx.regs() == unpreempted.uthread(name).ctx.regs()
    assert [(s.vcore, s.uthread_ns, s.preemptions) for s in result.vcores] == [
        (0, 4450, 1),
        (1, result.insns - 4450 + 2 * Costs().python_step_ns, 0),  # and the two exit calls
    ]


def test_preempted_vcore_comes_back_after_the_duration_while_still_wanted(unpreempted):
    """With work queued, the preempted vcore is granted again at until + vcore_grant_ns and runs the stolen uthread."""
    sim = _long_and_short(time_ns=5000, vcore=0, duration_ns=5000)
    assert sim.run().end is RunEnd.ALL_EXITED
    back = 5000 + 5000 + Costs().vcore_grant_ns
    assert _story(sim, "preempt", "vcore_online", "run") == [
        (250, 0, "", "vcore_online", {"how": "start", "amt_wanted": 2}),
        (550, 0, "long", "run", {"how": "run_uthread"}),
        (2150, 1, "", "vcore_online", {"how": "start", "amt_wanted": 2}),
        (2450, 1, "short", "run", {"how": "run_uthread"}),
        (5000, 0, "long", "preempt", {"in_vcore_ctx": False, "uthread": "long", "until": 10_000}),
        (5700, 1, "short", "run", {"how": "run_current_uthread"}),
        (back, 0, "", "vcore_online", {"how": "start", "amt_wanted": 2}),
        (back + 300, 0, "long", "run", {"how": "run_uthread"}),  # back on vcore 0, from where it stopped
    ]
    assert [r.get("why") for r in sim.trace.of_kind("vcore_entry") if r.vc == 0 and r.t == back + 150] == ["restart"]
    assert sim.uthread("long").ctx.regs() == unpreempted.uthread("long").ctx.regs()


# -- preempt_pending warnings ----------------------------------------------------------------------------


def test_without_a_handler_a_warning_is_not_delivered_and_the_deadline_preempts(unpreempted):
    """As in Akaros (parlib registers no EV_PREEMPT_PENDING handler; kern/src/process.c __proc_preempt_warn
    sends the event only to one), a busy uthread runs on through the warning, is preempted at the deadline
    and stolen by the peer, and finishes exact."""
    sim = _long_and_short(time_ns=5000, vcore=0, warning_ns=3000, duration_ns=5000)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert [(r.t, r.vc, r.kind) for r in sim.trace.of_kind("preempt_warn", "preempt", "preempt_recover")] == [
        (5000, 0, "preempt_warn"), (8000, 0, "preempt"), (8450, 1, "preempt_recover"),
    ]  # fmt: skip
    assert [r for r in sim.trace.of_kind("event_post") if r.get("ev_type") == EV_PREEMPT_PENDING] == []
    assert sim.uthread("long").ctx.regs() == unpreempted.uthread("long").ctx.regs()


def test_preempt_warning_hands_the_uthread_back_and_yields_nicely(unpreempted):
    """With a handler registered, a warning interrupts at once: the vcore pauses its uthread
    (why=preempt_pending) and yields nicely; amt_wanted is kept."""
    sim = _long_and_short(listen=True, time_ns=5000, vcore=0, warning_ns=3000, duration_ns=5000)
    assert sim.run().end is RunEnd.ALL_EXITED
    kinds = ("preempt_warn", "preempt", "event_post", "notify", "vcore_entry", "event", "uthread_pause",
             "vcore_offline")  # fmt: skip
    assert _story(sim, *kinds, ops=("preempt_pending", "thread_paused"))[2:10] == [
        (5000, 0, "long", "preempt_warn", {"deadline": 8000}),
        (5000, 0, "long", "event_post", {"ev_type": 1, "arg2": 0}),
        (5000, 0, "long", "notify", {}),
        (5150, 0, "long", "vcore_entry", {"why": "notify", "cur": "long"}),
        (5450, 0, "long", "event", {"ev_type": 1, "arg2": 0}),
        (5500, 0, "long", "op", {"op": "preempt_pending", "args": ()}),
        (5500, 0, "", "uthread_pause", {"target": "long", "why": "preempt_pending"}),
        (5550, 0, "long", "op", {"op": "thread_paused", "args": ("long",)}),
    ]
    offline = sim.trace.of_kind("vcore_offline")[0]
    assert (offline.t, offline.vc, offline.details) == (5650, 0, (("nice", True), ("amt_wanted", 2)))
    assert sim.trace.of_kind("preempt") == []  # it left before the deadline: nothing to take by force
    assert sim.uthread("long").ctx.regs() == unpreempted.uthread("long").ctx.regs()


def test_nicely_yielded_vcore_is_away_only_for_the_requested_duration():
    """A vcore that yields on a warning comes back within the preemption's duration_ns (plus the grant)."""
    sim = _long_and_short(listen=True, time_ns=5000, vcore=0, warning_ns=3000, duration_ns=5000)
    sim.run()
    returns = [r.t for r in sim.trace.of_kind("vcore_online") if r.vc == 0][1:]
    assert returns and returns[0] <= 8000 + 5000 + Costs().vcore_grant_ns


class _SlowToNotice(Fifo2LS):
    """Fifo2LS that listens for warnings, and whose preempt_pending op spends 5 us in vcore context
    before giving the uthread back."""

    def sched_init(self) -> None:
        super().sched_init()
        parlib.register_ev_handler(EV_PREEMPT_PENDING, lambda msg, ev_type: None)

    def preempt_pending(self) -> None:
        engine = parlib.current_sim().engine
        for _ in range(5):
            engine.advance(1000)  # the engine runs the deadline meanwhile


def test_warning_not_acted_on_in_time_becomes_a_preemption_in_vcore_context(unpreempted):
    """Still in vcore context at the deadline: preempted there; the peer that handles EV_VCORE_PREEMPT
    change_to_vcore's to it (user/parlib/uthread.c handle_vc_preempt -> change_to_vcore, kern/src/process.c
    proc_change_to_vcore), so it resumes in place at once, on the peer's pcore, and then pauses the uthread."""
    sim = spin_sim(_SlowToNotice(), 2, long=(20_000, 7), short=(2000, 9))
    sim.preempt_at(5000, 0, warning_ns=2000, duration_ns=4000)
    result = sim.run()
    assert result.end is RunEnd.ALL_EXITED
    kinds = ("preempt_warn", "preempt", "preempt_recover", "vcore_online", "uthread_pause", "run")
    assert _story(sim, *kinds)[4:12] == [
        (5000, 0, "long", "preempt_warn", {"deadline": 7000}),
        (7000, 0, "long", "preempt", {"in_vcore_ctx": True, "uthread": "long", "until": 11_000}),
        (7450, 1, "short", "preempt_recover", {"victim": 0, "stolen": None}),  # nothing to steal: change to it
        (7450, 1, "", "uthread_pause", {"target": "short", "why": "change_to_vcore"}),
        (7550, 0, "long", "vcore_online", {"how": "resume_vcore_ctx", "amt_wanted": 2}),  # not 13_000
        (10_550, 0, "", "uthread_pause", {"target": "long", "why": "preempt_pending"}),
        (11_100, 0, "short", "run", {"how": "run_uthread"}),
        (13_000, 1, "", "vcore_online", {"how": "start", "amt_wanted": 2}),  # vcore 0's pcore back, to vcore 1
    ]
    assert [r.details for r in sim.trace.of_kind("vcore_offline") if r.get("nice")] == []
    assert sim.uthread("long").ctx.regs() == unpreempted.uthread("long").ctx.regs()


def test_nice_yield_without_a_warning_is_refused():
    """vcore_yield(preempt_pending=True) with no warning pending returns: the vcore stays online."""
    outcomes = []

    class NiceFirst(Fifo2LS):
        def sched_entry(self) -> None:
            if not outcomes:
                parlib.vcore_yield(True)
                outcomes.append(("still online", parlib.vcore_id(), parlib.num_vcores()))
            super().sched_entry()

    sim = spin_sim(NiceFirst(), 1, spin=(10, 1))
    assert sim.run().end is RunEnd.ALL_EXITED
    assert outcomes == [("still online", 0, 1)]
    assert [r.get("nice") for r in sim.trace.of_kind("vcore_offline")] == [False]


# -- notifications and events -----------------------------------------------------------------------------


def test_event_for_a_busy_vcore_interrupts_its_uthread_and_pthread_resumes_the_same_one():
    """A syscall completion for vcore 0 interrupts `spin`; pthread requeues the sleeper and resumes spin in place."""
    alone = spin_sim(PthreadSched(), 1, spin=(2000, 7))
    alone.run()
    sim = Simulation(1)
    sim.load(SPIN)
    sim.set_sched(PthreadSched())
    sim.spawn_python("sleeper", parlib.uthread_sleep, 3000)
    sim.spawn_guest("spin", SPIN.symbol("_start"), 2000, 7)
    assert sim.run().end is RunEnd.ALL_EXITED
    kinds = ("syscall_done", "event_post", "notify", "vcore_entry", "event", "run")
    assert _story(sim, *kinds, ops=("sched_entry",))[5:] == [
        (1120, 0, "spin", "run", {"how": "run_uthread"}),
        (3750, -1, "", "syscall_done", {"sysc": 1, "name": "block", "ret": 0}),
        (3750, 0, "spin", "event_post", {"ev_type": 10, "arg2": 0}),
        (3750, 0, "spin", "notify", {}),
        (3900, 0, "spin", "vcore_entry", {"why": "notify", "cur": "spin"}),
        (4200, 0, "spin", "event", {"ev_type": 10, "arg2": 0}),
        (4300, 0, "spin", "op", {"op": "sched_entry", "args": ()}),
        (4400, 0, "spin", "run", {"how": "run_current_uthread"}),  # same uthread, same vcore
        (13_947, 0, "spin", "vcore_entry", {"why": "yield", "cur": "spin"}),
        (13_997, 0, "", "op", {"op": "sched_entry", "args": ()}),
        (14_097, 0, "sleeper", "run", {"how": "run_uthread"}),
        (14_267, 0, "sleeper", "vcore_entry", {"why": "yield", "cur": "sleeper"}),
        (14_317, 0, "", "op", {"op": "sched_entry", "args": ()}),
    ]
    assert sim.uthread("spin").ctx.regs() == alone.uthread("spin").ctx.regs()


def test_handle_events_runs_registered_handlers_in_posting_order_in_vcore_context():
    """Two EV_USER_IPI messages posted at once reach the registered handler in order, in vcore context, cur set."""
    seen = []
    sim = Simulation(1)

    def handler(msg, ev_type):
        cur = parlib.current_uthread()
        seen.append((msg.arg2, ev_type, sim.now(), parlib.in_vcore_context(), cur.name if cur else None))

    class WithHandler(Fifo2LS):
        def sched_init(self) -> None:
            super().sched_init()
            parlib.register_ev_handler(EV_USER_IPI, handler)

    sim.set_sched(WithHandler())
    sim.spawn_python("worker", parlib.compute, 5000)
    for arg in (1, 2):
        sim.at(2000, f"ipi {arg}", sim.kernel.send_event, parlib.get_eventq(0), EventMsg(EV_USER_IPI, arg2=arg))
    assert sim.run().end is RunEnd.ALL_EXITED
    # notify at 2000, vcore entry 150, then 300 per message delivered
    assert seen == [(1, EV_USER_IPI, 2450, True, "worker"), (2, EV_USER_IPI, 2750, True, "worker")]
    # then sched_entry (50) and the context switch (100) back into the same uthread
    assert [(r.t, r.get("how")) for r in sim.trace.of_kind("run")] == [(450, "run_uthread"),
                                                                     (2900, "run_current_uthread")]


# -- vcore ticks ----------------------------------------------------------------------------------------


class _Tick2LS(Fifo2LS):
    """Fifo2LS that enables a vcore tick in sched_entry and polls it there; with `rr`, a tick requeues the uthread."""

    name = "tick"

    def __init__(self, period_ns: int, rr: bool) -> None:
        super().__init__()
        self.period_ns = period_ns
        self.rr = rr
        self.polls: list[tuple[int, int]] = []
        self._ticking: set[int] = set()

    def sched_entry(self) -> None:
        vcoreid = parlib.vcore_id()
        if vcoreid not in self._ticking:
            self._ticking.add(vcoreid)
            parlib.vcore_tick_enable(self.period_ns)
        ticks = parlib.vcore_tick_poll()
        self.polls.append((parlib.current_sim().now(), ticks))
        if ticks and self.rr and parlib.current_uthread() is not None:
            self.ready.append(parlib.stop_current_uthread())
        super().sched_entry()


def test_vcore_tick_interrupts_the_uthread_and_vcore_tick_poll_counts_it():
    """A 3 us tick enabled in sched_entry interrupts a guest loop every period; each entry polls one tick."""
    sched = _Tick2LS(3000, rr=False)
    sim = spin_sim(sched, 1, spin=(2000, 1))
    assert sim.run().end is RunEnd.ALL_EXITED
    # the tick is periodic in virtual time: 350 (enabled) + k * 3000, however long each entry took
    assert sched.polls == [(350, 0), (3550, 1), (6550, 1), (9550, 1), (12_550, 1), (13_877, 0)]
    assert [(r.t, r.kind, r.get("how")) for r in sim.trace.of_kind("tick", "run")] == [
        (450, "run", "run_uthread"),
        (3350, "tick", None), (3650, "run", "run_current_uthread"),
        (6350, "tick", None), (6650, "run", "run_current_uthread"),
        (9350, "tick", None), (9650, "run", "run_current_uthread"),
        (12_350, "tick", None), (12_650, "run", "run_current_uthread"),
    ]  # fmt: skip


def test_round_robin_on_ticks_alternates_two_spinning_guest_uthreads_on_one_vcore():
    """A tick-driven 2LS on one vcore runs a, b, a, b, ...: each tick stops the current uthread and requeues it."""
    alone = spin_sim(Fifo2LS(), 1, a=(2000, 1), b=(2000, 2))
    alone.run()
    sched = _Tick2LS(3000, rr=True)
    sim = spin_sim(sched, 1, a=(2000, 1), b=(2000, 2))
    result = sim.run()
    assert (result.end, result.vcores[0].vcore) == (RunEnd.ALL_EXITED, 0)
    assert [r.uth for r in sim.trace.of_kind("run")] == ["a", "b"] * 5
    assert [r.get("target") for r in sim.trace.of_kind("uthread_stop")] == ["a", "b"] * 4
    assert [r.uth for r in sim.trace.of_kind("uthread_exit")] == ["a", "b"]
    assert {r.vc for r in sim.trace.records if r.vc != -1} == {0}
    for name in ("a", "b"):
        assert sim.uthread(name).ctx.regs() == alone.uthread(name).ctx.regs()


class _TickFromInit(Fifo2LS):
    def sched_init(self) -> None:
        super().sched_init()
        parlib.vcore_tick_enable(3000)

    def sched_entry(self) -> None:
        parlib.trace("poll", ticks=parlib.vcore_tick_poll())
        super().sched_entry()


def test_vcore_tick_enabled_in_sched_init_ticks_on_vcore_0():
    """Enabling the tick in sched_init (thread0, on vcore 0) makes vcore 0 tick once it runs."""
    sim = spin_sim(_TickFromInit(), 1, spin=(2000, 1))
    assert sim.run().end is RunEnd.ALL_EXITED
    assert [r.vc for r in sim.trace.of_kind("tick")] == [0, 0, 0, 0]


def test_vcore_preempted_in_vcore_context_with_a_uthread_is_restarted_and_the_uthread_finishes():
    """A vcore preempted inside vcore context keeps its uthread; a peer handling EV_VCORE_PREEMPT gives it
    its pcore at once (user/parlib/uthread.c handle_vc_preempt -> change_to_vcore)."""
    from akaros_sim.asm import assemble
    from akaros_sim.simulation import RunEnd, Simulation
    from schedops.pthread import PthreadSched

    prog = assemble("spin:\n mov rcx, rdi\nagain:\n dec rcx\n jnz again\n mov rax, rdi\n ret\n", name="p")
    sim = Simulation(3)
    sim.load(prog)
    sim.set_sched(PthreadSched())
    for name, n in (("y", 1000), ("z", 9000), ("w", 9000)):
        sim.spawn_guest(name, prog.symbol("spin"), n)
    sim.tick_storm(0, 1 << 40, 400, 400)  # ticks keep vcore 2 entering vcore context
    sim.preempt_at(5052, 2, duration_ns=1000)  # lands while vcore 2 is in vcore context holding w
    res = sim.run(until_ns=10_000_000)
    assert res.end is RunEnd.ALL_EXITED
    assert [(u.name, u.exit_value) for u in sim.uthreads] == [("y", 1000), ("z", 9000), ("w", 9000)]
    story = [(r.t, r.kind, r.get("in_vcore_ctx"), r.get("how")) for r in sim.trace.records
             if r.vc == 2 and r.kind in ("preempt", "vcore_online")]  # fmt: skip
    # resumed in place on vcore 1's pcore at 5500 (before change_to_vcore: its own pcore back at 8052)
    assert story == [(2250, "vcore_online", None, "start"), (5052, "preempt", True, None),
                     (5500, "vcore_online", None, "resume_vcore_ctx")]  # fmt: skip
    assert [(r.t, r.get("from"), r.get("to")) for r in sim.trace.of_kind("change_to_vcore")] == [(5500, 1, 2)]
