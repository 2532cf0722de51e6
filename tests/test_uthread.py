"""Uthread: the one lifecycle (UthState) and the JoinState tables, entries, and a uthread's life in a run."""

from __future__ import annotations

import itertools

import pytest

from akaros_sim import parlib
from akaros_sim.simulation import Simulation, SimulationError
from akaros_sim.uthread import (
    JoinState,
    UthFlag,
    Uthread,
    UthreadEntry,
    UthreadKind,
    UthreadStateError,
    UthState,
)
from schedops.pthread import PthreadSched

UTH_LEGAL = {
    (UthState.NOT_RUNNING, UthState.RUNNING),
    (UthState.NOT_RUNNING, UthState.EXITED),
    (UthState.RUNNING, UthState.NOT_RUNNING),
    (UthState.EXITED, UthState.REAPED),
}
JOIN_LEGAL = {
    (JoinState.JOINABLE, JoinState.HAS_JOINER),
    (JoinState.JOINABLE, JoinState.DETACHED),
}


def _nop():
    return None


def _uth(name: str = "t", state: UthState = UthState.NOT_RUNNING, join: JoinState = JoinState.JOINABLE) -> Uthread:
    """A uthread forced into `state` and `join` (no simulation needed for the state machines)."""
    uth = Uthread(UthreadEntry.python(name, _nop))
    uth._state = state
    uth.join_state = join
    return uth


# -- UthState -----------------------------------------------------------------------------


@pytest.mark.parametrize("old,new", sorted(UTH_LEGAL, key=lambda p: (p[0].value, p[1].value)))
def test_legal_uth_transitions_are_taken(old, new):
    """Every transition in the UthState table changes the state."""
    uth = _uth(state=old)
    uth.set_state(new)
    assert uth.state is new


@pytest.mark.parametrize(
    "old,new",
    [p for p in itertools.product(UthState, UthState) if p not in UTH_LEGAL],
    ids=lambda s: s.name,
)
def test_illegal_uth_transitions_raise_naming_uthread_and_both_states(old, new):
    """Any transition outside the table raises UthreadStateError naming the uthread and both states."""
    uth = _uth("worker-7", state=old)
    with pytest.raises(UthreadStateError) as info:
        uth.set_state(new)
    assert str(info.value) == f"uthread 'worker-7': illegal transition {old.name} -> {new.name}"
    assert uth.state is old


# -- JoinState ----------------------------------------------------------------------------


@pytest.mark.parametrize("old,new", sorted(JOIN_LEGAL, key=lambda p: (p[0].value, p[1].value)))
def test_legal_join_transitions_are_taken(old, new):
    """JOINABLE goes to HAS_JOINER (join) or DETACHED (detach); an exit changes the UthState, not this."""
    uth = _uth(join=old)
    uth.set_join_state(new)
    assert uth.join_state is new


@pytest.mark.parametrize(
    "old,new",
    [p for p in itertools.product(JoinState, JoinState) if p not in JOIN_LEGAL],
    ids=lambda s: s.name,
)
def test_illegal_join_transitions_raise_naming_uthread_and_both_states(old, new):
    """Leaving HAS_JOINER or DETACHED, or staying in JOINABLE, raises UthreadStateError."""
    uth = _uth("joiner-3", join=old)
    with pytest.raises(UthreadStateError) as info:
        uth.set_join_state(new)
    assert str(info.value) == f"uthread 'joiner-3': illegal join transition {old.name} -> {new.name}"
    assert uth.join_state is old


def test_join_state_numbers_are_parlibs():
    """JoinState values are parlib's join_ctl numbers: DETACHED 1, JOINABLE 2, HAS_JOINER 3 (its EXITED is UthState's)."""
    assert [(s.name, s.value) for s in JoinState] == [("DETACHED", 1), ("JOINABLE", 2), ("HAS_JOINER", 3)]


def test_uth_flags_are_parlibs():
    """UthFlag bits are uthread.h's for the flags modelled: DONT_MIGRATE 0x1, SAVED 0x2."""
    assert [(f.name, int(f)) for f in UthFlag if f] == [("DONT_MIGRATE", 1), ("SAVED", 2)]


# -- entries and a new uthread --------------------------------------------------------------


def test_new_uthread_is_not_running_saved_and_joinable():
    """uthread_init's starting point: NOT_RUNNING, SAVED, JOINABLE (DETACHED if asked), no id yet."""
    uth = Uthread(UthreadEntry.guest("g", 0x400000, 1, 2))
    det = Uthread(UthreadEntry.python("p", _nop, detached=True))
    assert (uth.state, uth.flags, uth.join_state, uth.id, uth.kind) == (
        UthState.NOT_RUNNING, UthFlag.SAVED, JoinState.JOINABLE, -1, UthreadKind.GUEST,
    )  # fmt: skip
    assert (det.join_state, det.kind, det.has_exited) == (JoinState.DETACHED, UthreadKind.PYTHON, False)


def test_guest_entry_takes_at_most_six_register_args():
    """A guest entry with 7 arguments is rejected, naming the uthread and the count."""
    with pytest.raises(ValueError, match=r"uthread 'g': at most 6 register arguments, got 7"):
        UthreadEntry.guest("g", 0x400000, *range(7))


def test_python_entry_needs_a_callable():
    """A Python entry whose function is not callable is rejected, naming the uthread."""
    with pytest.raises(ValueError, match=r"uthread 'p': expected a callable, got 42"):
        UthreadEntry.python("p", 42)


# -- the state machine in a run -------------------------------------------------------------


def test_states_seen_over_a_uthreads_life():
    """A uthread is RUNNING while it runs, NOT_RUNNING while another runs, EXITED when done, REAPED once joined."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())
    seen = []

    def a():
        b = sim.uthread("b")
        seen.append(("a sees a", parlib.uthread_self().state.name, "a sees b", b.state.name))
        parlib.uthread_sched_yield()
        seen.append(("a joins b", parlib.uthread_join(b), b.state.name, b.join_state.name))

    def b():
        seen.append(("b sees a", sim.uthread("a").state.name))
        return "b-done"

    sim.spawn_python("a", a)
    sim.spawn_python("b", b)
    sim.run()
    assert seen == [
        ("a sees a", "RUNNING", "a sees b", "NOT_RUNNING"),
        ("b sees a", "NOT_RUNNING"),
        ("a joins b", "b-done", "REAPED", "JOINABLE"),
    ]
    assert (sim.uthread("a").state, sim.uthread("a").has_exited, sim.uthread("a").exit_value) == (
        UthState.EXITED, True, None,
    )  # fmt: skip


def test_uthread_ids_follow_creation_order():
    """uthread_init numbers uthreads 0, 1, 2 ... in creation order, including ones made at run time."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())

    def main():
        parlib.uthread_create(_nop, name="late")

    sim.spawn_python("main", main)
    sim.spawn_python("second", _nop)
    sim.run()
    assert [(u.name, u.id) for u in sim.uthreads] == [("main", 0), ("second", 1), ("late", 2)]


def test_uthread_names_are_unique_a_repeated_one_gets_its_id():
    """Names identify uthreads (triggers, signals, the trace): a name made twice at run time becomes name#id."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())

    def main():
        for _ in range(3):
            parlib.uthread_join(parlib.uthread_create(_nop, name="worker"))

    sim.spawn_python("main", main)
    sim.run()
    assert [u.name for u in sim.uthreads] == ["main", "worker", "worker#2", "worker#3"]
    assert sim.uthread("worker#2").id == 2
    assert [r.uth for r in sim.trace.of_kind("uthread_create")] == ["main", "worker", "worker#2", "worker#3"]


def test_spawning_a_name_twice_is_a_named_error():
    """Two spawns with one name are refused at once, naming it."""
    sim = Simulation(vcores=1, seed=1)
    sim.spawn_python("twin", _nop)
    with pytest.raises(SimulationError, match=r"^Simulation.spawn: a uthread named 'twin' is already spawned$"):
        sim.spawn_python("twin", _nop)
