"""The injection point "holding a given mutex" (issue 14, item 1): {"mutex": NAME, "uthread": U, "nth": N} is
right after U acquires the Mutex NAME for the Nth time, so a preemption there lands while U holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from akaros_sim.points import points_of
from akaros_sim.simulation import SimulationError
from akaros_sim.tools.explore import explore
from akaros_sim.tools.explore_run import run_choices
from akaros_sim.tools.scenario import ScenarioError, build, load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "scenarios" / "workload_mutex.toml"  # eight uthreads mutex.0..7 share the Mutex "mutex.0"


def _run(when: dict):
    scenario = load_scenario(WORKLOAD)
    sim = build(scenario)
    sim.preempt_at(when, duration_ns=5_000)
    sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    return sim


def _held_across(records: list, uth: str) -> tuple[int, int, int]:
    """(the injection, the preemption of `uth`, its release of mutex.0): in that order, the preemption at the
    injection's time, and no hand-over of mutex.0 in between but uth's own (the waiters, queued, wait on)."""
    inject = next(i for i, r in enumerate(records) if r.kind == "inject")
    preempt = next(i for i in range(inject, len(records)) if records[i].kind == "preempt")
    assert records[preempt].get("uthread") == uth and records[preempt].t == records[inject].t
    release = next(i for i in range(inject, len(records)) if records[i].kind == "mutex_handoff")
    assert records[release].uth == uth and records[release].get("mutex") == "mutex.0"
    assert preempt < release
    return inject, preempt, release


def test_a_preemption_right_after_a_hand_over_lands_while_the_uthread_holds_the_mutex():
    records = _run({"mutex": "mutex.0", "uthread": "mutex.3", "nth": 2}).trace.records
    inject, _, _ = _held_across(records, "mutex.3")
    acquired = [i for i, r in enumerate(records[:inject]) if r.kind == "mutex_handoff"][-1]
    assert records[acquired].get("to") == "mutex.3"  # its 2nd acquisition: the mutex was handed to it
    runs = [r for r in records[acquired:inject] if r.uth == "mutex.3" and r.kind == "run"]
    assert len(runs) == 1  # it ran again holding it, and was preempted there
    assert records[inject].get("what") == "preempt vcore here at mutex.3 holding mutex mutex.0 (acquisition #2)"


def test_a_preemption_after_the_fast_path_acquisition():
    """mutex.0's second acquisition finds the mutex free (no record says it was ever contended), and while
    mutex.0 is away holding it the others arrive and block on it, until mutex.0 hands it over."""
    records = _run({"mutex": "mutex.0", "uthread": "mutex.0", "nth": 2}).trace.records
    inject, preempt, release = _held_across(records, "mutex.0")
    assert not [r for r in records[:inject] if r.kind in ("mutex_handoff", "mutex_block")]
    blocked = {r.uth for r in records[preempt:release] if r.kind == "mutex_block"}
    assert blocked == {f"mutex.{k}" for k in range(1, 8)}


def test_the_acquisitions_are_counted_per_uthread_and_mutex_in_the_recorded_points():
    scenario = load_scenario(WORKLOAD)
    sim = build(scenario)
    points_of(sim.proc).record(mutexes=("mutex.0",))
    sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    seen = [p for p in sim.proc.points.log if "mutex" in p]
    assert len(seen) == 80  # eight uthreads, ten rounds each
    for k in range(8):
        assert [p["nth"] for p in seen if p["uthread"] == f"mutex.{k}"] == list(range(1, 11))
    assert {p["mutex"] for p in seen} == {"mutex.0"}


def test_a_scenario_file_names_the_point_and_replays_to_the_same_trace(tmp_path):
    text = WORKLOAD.read_text(encoding="utf-8").replace("\n[expect]\n", """
[[injections]]
preempt = "here"
duration_ns = 5000
when = { mutex = "mutex.0", uthread = "mutex.5", nth = 3 }

[expect]
""")
    path = tmp_path / "held.toml"
    path.write_text(text, encoding="utf-8")
    one, two = run_scenario(path), run_scenario(path)
    assert one.sim.trace.digest() == two.sim.trace.digest()
    _held_across(one.sim.trace.records, "mutex.5")
    invariants = {c.name: c.ok for c in one.checks if not c.name.startswith("schedule.")}
    assert invariants and all(invariants.values()), invariants  # held across a preemption, nothing lost


@pytest.mark.parametrize("when, words", [
    ('{ mutex = "mutex.0" }', "expected uthread to be a name"),
    ('{ mutex = "mutex.0", uthread = "mutex.1", nth = 0 }', "expected nth to be an int >= 1"),
    ('{ mutex = "", uthread = "mutex.1" }', "expected mutex to be a name"),
    ('{ mutex = "mutex.0", uthread = "mutex.1", vcore = 1 }', "unknown key(s) vcore"),
])  # fmt: skip
def test_a_bad_mutex_point_in_a_scenario_is_one_line_naming_the_key(tmp_path, when, words):
    text = WORKLOAD.read_text(encoding="utf-8").replace("\n[expect]\n", f"\n[[injections]]\npreempt = \"here\"\n"
                                                                          f"when = {when}\n\n[expect]\n")  # fmt: skip
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message and "injections[0].when" in message and words in message


def test_the_python_api_says_what_is_wrong_with_a_mutex_point():
    sim = build(load_scenario(WORKLOAD))
    with pytest.raises(SimulationError, match=r"^preempt_at: point .*expected mutex to be a name, got 3$"):
        sim.preempt_at({"mutex": 3, "uthread": "mutex.1"})


def test_explore_chooses_mutex_points_only_when_asked():
    scenario = load_scenario(WORKLOAD)
    plain = explore(scenario, "exhaustive", runs=4, max_preemptions=1)
    asked = explore(scenario, "exhaustive", runs=4, max_preemptions=1, mutexes=("mutex.0",))
    assert asked.points == plain.points + 80 and plain.found is None and asked.found is None
    choice = {"preempt": {"vcore": None, "when": {"mutex": "mutex.0", "uthread": "mutex.2", "nth": 4}}}
    one, two = run_choices(scenario, [choice]), run_choices(scenario, [choice])
    assert one.failure is None and one.digest == two.digest
    _held_across(one.sim.trace.records, "mutex.2")


def test_explore_s_mutex_option_adds_the_points(capsys):
    from akaros_sim.tools.cli import main

    args = ["explore", "workload_mutex", "--strategy", "exhaustive", "--runs", "4", "--max-preemptions", "1"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--mutex", "mutex.0"]) == 0
    asked = capsys.readouterr().out
    count = lambda out: int(out.split(" over ")[1].split()[0])  # noqa: E731
    assert count(asked) == count(plain) + 80
