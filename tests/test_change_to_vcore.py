"""Preemption recovery as Akaros's handle_vc_preempt does it: change_to_vcore for a vcore preempted in
vcore context, and handle_indirs for the mail of a preempted vcore (issue 11, item 3)."""

from __future__ import annotations

from pathlib import Path

from akaros_sim import parlib
from akaros_sim.kernel import EV_SYSCALL
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.tools.scenario import run_scenario
from schedops.pthread import PthreadSched
from invariants import check_trace

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def _records(sim, *kinds):
    return [(r.t, r.vc, r.uth, r.kind, dict(r.details)) for r in sim.trace.records if r.kind in kinds]


def test_a_peer_change_to_vcore_resumes_a_vcore_preempted_in_vcore_context_at_once():
    """user/parlib/uthread.c handle_vc_preempt: the victim had notifications disabled (vcore context), so
    the peer calls change_to_vcore, which pauses its own uthread (__uthread_pause) and makes
    sys_change_vcore (kern/src/process.c proc_change_to_vcore): the victim resumes on the peer's pcore
    at once, not when its own pcore is back, and the peer's uthread is runnable and runs again."""
    run = run_scenario(SCENARIOS / "change_to_vcore.toml")
    assert run.ok, [c for c in run.checks if not c.ok]
    kinds = ("preempt", "preempt_recover", "uthread_pause", "change_to_vcore", "vcore_online", "run")
    story = [x for x in _records(run.sim, *kinds) if x[0] >= 8676][:8]
    assert story == [
        (8676, 1, "", "preempt", {"in_vcore_ctx": True, "uthread": None, "until": 108_676}),
        (10_907, 0, "a", "preempt_recover", {"victim": 1, "stolen": None}),
        (10_907, 0, "", "uthread_pause", {"target": "a", "why": "change_to_vcore"}),  # the peer's uthread
        (11_007, 0, "", "change_to_vcore", {"from": 0, "to": 1}),
        (11_007, 1, "", "vcore_online", {"how": "resume_vcore_ctx", "amt_wanted": 2}),  # not 108_676 + grant
        (11_407, 1, "c", "run", {"how": "run_uthread"}),
        (35_733, 1, "a", "run", {"how": "run_uthread"}),  # the paused uthread, runnable again
        (110_676, 0, "", "vcore_online", {"how": "start", "amt_wanted": 2}),  # vcore 1's pcore, back to vcore 0
    ]
    # the changed-away vcore is marked for its mail: the kernel sends the victim EV_CHECK_MSGS about it
    assert [(r.t, r.vc, r.get("ev_type"), r.get("arg2")) for r in run.sim.trace.of_kind("event") if r.t > 11_000] == [
        (11_307, 1, 11, 0)
    ]
    assert check_trace(run.sim.trace.records) == []


def test_change_to_vcore_is_deterministic():
    """Two runs of the rescue write the same trace."""
    first = run_scenario(SCENARIOS / "change_to_vcore.toml")
    second = run_scenario(SCENARIOS / "change_to_vcore.toml")
    assert first.sim.trace.digest() == second.sim.trace.digest()


def _sleeper() -> None:
    parlib.uthread_sleep(5000)
    parlib.compute(1000)


def _mail_for_a_preempted_vcore() -> Simulation:
    """pthread on two vcores: "s" blocks on vcore 1 (its EV_SYSCALL goes to vcore 1's queue), and vcore 1
    is preempted right after the completion is posted there, before it could look."""
    sim = Simulation(2)
    sim.set_sched(PthreadSched())
    sim.spawn_python("a", parlib.compute, 40_000)
    sim.spawn_python("s", _sleeper)
    sim.spawn_python("b", parlib.compute, 40_000)
    # armed late so that it is due after the completion scheduled at the same time (7650)
    sim.at(6650, "arm", lambda: sim.engine.schedule(7650, "preempt", sim.kernel.preempt, 1))
    return sim


def test_mail_posted_to_a_preempted_vcore_is_handled_by_the_recovering_peer():
    """user/parlib/uthread.c handle_vc_preempt -> handle_indirs -> user/parlib/event.c handle_vcpd_mbox:
    after stealing the uthread, the peer restarts its vcore context and handles the victim's mailbox
    there (try_handle_remote_mbox, in its own vcore context): the EV_SYSCALL is handled at once, not
    when the victim is back ~100 us later (107_650 + the grant latency)."""
    sim = _mail_for_a_preempted_vcore()
    assert sim.run().end is RunEnd.ALL_EXITED
    assert _records(sim, "syscall_done", "event_post", "preempt", "event", "preempt_recover", "uthread_pause") == [
        (7650, -1, "", "syscall_done", {"sysc": 1, "name": "block", "ret": 0}),
        (7650, 1, "b", "event_post", {"ev_type": EV_SYSCALL, "arg2": 0}),
        (7650, 1, "b", "preempt", {"in_vcore_ctx": False, "uthread": "b", "until": 107_650}),
        (7650, 0, "a", "event_post", {"ev_type": 3, "arg2": 1}),
        (8100, 0, "a", "event", {"ev_type": 3, "arg2": 1}),
        (8100, 0, "a", "preempt_recover", {"victim": 1, "stolen": "b"}),
        (8100, 0, "a", "uthread_pause", {"target": "b", "why": "preempted"}),
        (8650, 0, "a", "event", {"ev_type": EV_SYSCALL, "arg2": 0, "mbox": 1}),  # vcore 1's mail, on vcore 0
    ]
    assert not sim.engine.vcores[1].mailbox
    assert check_trace(sim.trace.records) == []


def test_handle_indirs_is_deterministic():
    """Two runs with the remote mailbox handled write the same trace."""
    first, second = _mail_for_a_preempted_vcore(), _mail_for_a_preempted_vcore()
    first.run()
    second.run()
    assert first.trace.digest() == second.trace.digest()
