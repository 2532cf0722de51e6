"""Engine: Costs, the event heap's order, furthest-behind vcore interleaving and the greenlet waist."""

from __future__ import annotations

import attrs
import pytest
from greenlet import greenlet

from akaros_sim import parlib
from akaros_sim.engine import Costs, Engine, EngineError, Entry, Vcore, VcoreState
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.uthread import Uthread, UthreadEntry
from scripted_2ls import Fifo2LS, spin_insns, spin_sim

# -- Costs -------------------------------------------------------------------------------


def test_costs_defaults_are_the_documented_values():
    """Costs() holds the documented defaults, field by field, in declaration order."""
    assert attrs.asdict(Costs()) == {
        "insn_ns": 1,
        "sched_op_ns": 50,
        "context_switch_ns": 100,
        "vcore_entry_ns": 150,
        "syscall_entry_ns": 200,
        "event_delivery_ns": 300,
        "fault_reflect_ns": 500,
        "syscall_latency_ns": 10_000,
        "populate_latency_ns": 20_000,
        "page_zero_ns": 1_000,
        "vcore_grant_ns": 2_000,
        "preempt_duration_ns": 100_000,
        "slice_insns": 10_000,
        "vcore_quantum_ns": 2_000,
        "python_step_ns": 20,
        "spin_ns": 20,
    }
    assert list(attrs.asdict(Costs())) == [f.name for f in attrs.fields(Costs)]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("insn_ns", -1, "Costs.insn_ns: expected an int >= 0 (ns), got -1"),
        ("sched_op_ns", 1.5, "Costs.sched_op_ns: expected an int >= 0 (ns), got 1.5"),
        ("vcore_grant_ns", True, "Costs.vcore_grant_ns: expected an int >= 0 (ns), got True"),
        ("syscall_latency_ns", "10", "Costs.syscall_latency_ns: expected an int >= 0 (ns), got '10'"),
        ("slice_insns", 0, "Costs.slice_insns: expected an int >= 1, got 0"),
    ],
)
def test_costs_validation_names_the_field(field, value, message):
    """A bad cost raises ValueError naming the field, what was expected and what it got."""
    with pytest.raises(ValueError) as info:
        Costs(**{field: value})
    assert str(info.value) == message


def test_costs_are_frozen():
    """Costs is a frozen record: a scenario's prices cannot change under a running simulation."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Costs().insn_ns = 2


def test_insn_ns_scales_a_guest_loops_virtual_time():
    """Tripling insn_ns triples a guest loop's instruction time and adds 2 ns per instruction to the run.

    Its uthread time is that plus its exit call (python_step_ns): everything with its context loaded."""
    insns = spin_insns(3000)
    results = {}
    for insn_ns in (1, 3):
        sim = spin_sim(Fifo2LS(), costs=Costs(insn_ns=insn_ns), spin=(3000, 1))
        results[insn_ns] = sim.run()
    one, three = results[1], results[3]
    assert (one.end, three.end) == (RunEnd.ALL_EXITED, RunEnd.ALL_EXITED)
    assert (one.insns, three.insns) == (insns, insns)
    step = Costs().python_step_ns
    assert (one.vcores[0].uthread_ns, three.vcores[0].uthread_ns) == (insns + step, 3 * insns + step)
    assert three.time_ns - one.time_ns == 2 * insns


# -- the event heap -------------------------------------------------------------------------


def _engine(nvcores: int = 2) -> Engine:
    return Engine(nvcores, Costs(), owner=None, vcore_entry=None, sched_entry=None, uthread_body=None, crash=None)


def _drain(engine: Engine) -> list:
    """Run every event in heap order, as the simulation loop does; returns what they logged."""
    log = []
    while engine.next_event_time() is not None:
        ev = engine.pop_event()
        engine.now = ev.time
        log.append((ev.time, *ev.fn(*ev.args)))
    return log


def test_event_heap_orders_by_time_then_priority_then_first_come():
    """Events pop by time, then priority, then scheduling order (SimPy's key)."""
    engine = _engine()
    for t, name, prio in [(5, "a", 0), (3, "b", 0), (5, "c", 0), (5, "d", -1), (3, "e", 0), (5, "f", 1)]:
        engine.schedule(t, "test", lambda n: (n,), name, priority=prio)
    assert _drain(engine) == [(3, "b"), (3, "e"), (5, "d"), (5, "a"), (5, "c"), (5, "f")]


def test_cancelled_event_never_runs():
    """A cancelled event is skipped by next_event_time and never runs; its neighbours do."""
    engine = _engine()
    engine.schedule(1, "test", lambda: ("kept 1",))
    gone = engine.schedule(2, "test", lambda: ("cancelled",))
    engine.schedule(2, "test", lambda: ("kept 2",))
    gone.cancelled = True
    assert _drain(engine) == [(1, "kept 1"), (2, "kept 2")]


def test_event_in_the_past_runs_now():
    """An event scheduled before `now` is due at `now`, after the events already due then."""
    engine = _engine()
    engine.now = 100
    engine.schedule(100, "test", lambda: ("due",))
    late = engine.schedule(40, "test", lambda: ("late",))
    assert late.time == 100
    assert _drain(engine) == [(100, "due"), (100, "late")]


def test_schedule_lowers_the_running_vcores_horizon():
    """A new event at or before the horizon pulls it to just before the event (the event goes first at its time)."""
    engine = _engine()
    engine.horizon = 1000
    engine.schedule(600, "test", lambda: ())
    engine.schedule(800, "test", lambda: ())
    assert engine.horizon == 599


def test_injections_run_at_their_time_first_come_first_served_between_uthread_steps():
    """at() events run at their exact virtual time, ties in the order given, a cancelled one never."""
    log = []
    sim = Simulation(1)

    def worker():
        for _ in range(4):
            log.append(("w", sim.now()))
            parlib.compute(1000)

    sim.set_sched(Fifo2LS())
    sim.spawn_python("w", worker)
    sim.at(2000, "first", lambda: log.append(("first", sim.now())))
    sim.at(2000, "second", lambda: log.append(("second", sim.now())))
    sim.at(1500, "early", lambda: log.append(("early", sim.now())))
    sim.engine.schedule(1800, "test", lambda: log.append(("cancelled", sim.now()))).cancelled = True
    assert sim.run().end is RunEnd.ALL_EXITED
    # w starts at 450 (vcore entry 150 + sched_entry 50 + context switch 100 after setup)
    assert log == [("w", 450), ("w", 1450), ("early", 1500), ("first", 2000), ("second", 2000), ("w", 2450),
                   ("w", 3450)]  # fmt: skip
    assert [(r.t, r.get("what")) for r in sim.trace.of_kind("inject")] == [
        (1500, "early"), (2000, "first"), (2000, "second"),
    ]  # fmt: skip


# -- furthest-behind vcore runs next ----------------------------------------------------------


def _online(engine: Engine, clocks: list[int | None]) -> None:
    """Put vcore i online at clock clocks[i] with something to run (None: leave it offline)."""
    for vc, clock in zip(engine.vcores, clocks, strict=True):
        if clock is not None:
            vc.set_state(VcoreState.ONLINE)
            vc.clock = clock
            vc.gl = greenlet(lambda: None)


@pytest.mark.parametrize(
    "clocks,expected",
    [
        ([5, 3, 4], 1),
        ([3, 3, 3], 0),  # tie: lowest id
        ([7, 4, 4], 1),
        ([None, 9, 2], 2),  # offline vcores are not candidates
        ([None, None, None], None),
    ],
)
def test_next_vcore_is_furthest_behind_ties_by_id(clocks, expected):
    """next_vcore picks the online vcore with the smallest clock, the lowest id on a tie."""
    engine = _engine(3)
    _online(engine, clocks)
    picked = engine.next_vcore()
    assert (picked.id if picked else None) == expected


def test_horizon_is_the_next_event_or_the_closest_other_vcore_or_the_budget():
    """A vcore may act up to the earliest of: just before the next event, a higher-numbered peer's clock,
    just before a lower-numbered peer's clock, just before the time budget (turns go by time, events, id)."""
    engine = _engine(3)
    _online(engine, [100, 700, 400])
    assert engine.compute_horizon(engine.vcores[0]) == 400
    assert engine.compute_horizon(engine.vcores[2]) == 99
    engine.schedule(250, "test", lambda: ())
    assert engine.compute_horizon(engine.vcores[0]) == 249
    engine.until = 200
    assert engine.compute_horizon(engine.vcores[0]) == 199


class _Pinned3(Fifo2LS):
    """Fifo2LS that asks for all three vcores at once, so vcores 1 and 2 come online together."""

    def sched_init(self) -> None:
        super().sched_init()
        parlib.vcore_request_total(3)


def test_furthest_behind_vcore_runs_next_with_ties_by_id():
    """Uthreads pinned to three vcores log (name, vcore, time): the log is in time order, ties by vcore id."""
    log = []
    sim = Simulation(3)

    def worker(steps: int, ns: int) -> None:
        for _ in range(steps):
            log.append((parlib.uthread_self().name, parlib.vcore_id(), sim.now()))
            parlib.compute(ns)

    sim.set_sched(_Pinned3(pin={"a": 0, "b": 1, "c": 2}))
    sim.spawn_python("a", worker, 3, 1000)
    sim.spawn_python("b", worker, 3, 500)
    sim.spawn_python("c", worker, 3, 500)
    assert sim.run().end is RunEnd.ALL_EXITED
    # vcores 1 and 2 are granted by two events at the same time; b and c then run in
    # lockstep, vcore 1 first on every tie, and a's steps fall between theirs.
    assert log == [
        ("a", 0, 700), ("a", 0, 1700),
        ("b", 1, 2400), ("c", 2, 2400),
        ("a", 0, 2700),
        ("b", 1, 2900), ("c", 2, 2900),
        ("b", 1, 3400), ("c", 2, 3400),
    ]  # fmt: skip
    assert log == sorted(log, key=lambda e: (e[2], e[1]))
    assert [(r.t, r.vc) for r in sim.trace.of_kind("vcore_online")] == [(400, 0), (2100, 1), (2100, 2)]


# -- vcore state machine and the waist -------------------------------------------------------------


def test_vcore_state_transitions():
    """OFFLINE -> ONLINE -> PREEMPTED -> ONLINE -> OFFLINE are legal; OFFLINE -> PREEMPTED is not."""
    vc = Vcore(3)
    for state in (VcoreState.ONLINE, VcoreState.PREEMPTED, VcoreState.ONLINE, VcoreState.OFFLINE):
        vc.set_state(state)
    assert vc.state is VcoreState.OFFLINE
    with pytest.raises(EngineError) as info:
        vc.set_state(VcoreState.PREEMPTED)
    assert str(info.value) == "vcore 3: illegal transition OFFLINE -> PREEMPTED"


def test_enter_uthread_outside_vcore_context_is_a_named_error():
    """run_uthread's end of the waist refuses a caller that is not the vcore's own vcore context."""
    engine = _engine(1)
    uth = Uthread(UthreadEntry.python("t", lambda: None))
    with pytest.raises(EngineError) as info:
        engine.run_uthread(engine.vcores[0], uth)
    assert str(info.value) == "vcore 0: run_uthread('t') called outside its vcore context"


def test_enter_vcore_context_from_vcore_context_is_a_named_error():
    """The other end of the waist refuses a caller already in vcore context."""
    engine = _engine(1)
    vc = engine.vcores[0]
    vc.in_vcore_ctx = True
    with pytest.raises(EngineError) as info:
        engine.enter_vcore_context(vc, Entry.NOTIFY)
    assert str(info.value) == "vcore 0: entering vcore context (notify) from outside a uthread"


class _ReturningEntry(Fifo2LS):
    def sched_entry(self) -> None:
        return None


def test_sched_entry_that_returns_is_a_named_error():
    """A 2LS whose sched_entry returns (instead of running a uthread or yielding) ends the process with a report."""
    sim = spin_sim(_ReturningEntry(), spin=(10, 1))
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, -1)
    assert result.report.startswith("EngineError: vcore 0: sched_entry returned")


# -- guest code runs ahead at most a quantum ----------------------------------------------------

RACE_SRC = """
inc_loop:                       # rdi = &counter, rsi = iterations: counter += 1, not atomically
    mov rax, qword ptr [rdi]
    add rax, 1
    mov qword ptr [rdi], rax
    dec rsi
    jnz inc_loop
    ret
.data
counter: .quad 0
"""


class _TwoVcores(Fifo2LS):
    """Fifo2LS that asks for both vcores at once, so the two racers overlap."""

    def sched_init(self) -> None:
        super().sched_init()
        parlib.vcore_request_total(2)


def _race(quantum_ns: int) -> tuple[int, str]:
    from akaros_sim import assemble

    program = assemble(RACE_SRC, name="race")
    sim = Simulation(2, costs=Costs(vcore_quantum_ns=quantum_ns))
    sim.load(program)
    sim.set_sched(_TwoVcores(pin={"a": 0, "b": 1}))
    for name in ("a", "b"):
        sim.spawn_guest(name, program.symbol("inc_loop"), program.symbol("counter"), 3000)
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim.mem.read_u64(program.symbol("counter")), sim.trace.digest()


def test_a_two_vcore_guest_race_resolves_by_the_quantum_and_deterministically():
    """Two vcores increment one word without a lock: with a quantum far beyond the loop no update is lost
    (each slice runs whole), at a quantum of zero the loads and stores interleave and updates are lost;
    each outcome is the same every run."""
    whole, lockstep = _race(10_000_000), _race(0)
    assert whole[0] == 6000
    assert 3000 <= lockstep[0] < 6000
    assert (_race(10_000_000), _race(0)) == (whole, lockstep)
