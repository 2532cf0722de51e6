"""Schedule exploration: named injection points, strategies, shrinking and replay (docs/explore.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from akaros_sim.tools import explore as ex
from akaros_sim.tools.scenario import load_scenario, run_scenario
from conftest import CODE, Machine

ROOT = Path(__file__).resolve().parents[1]


def small(tmp_path: Path, name: str, extra: str = "", rename: str | None = None, nop: bool = False) -> Path:
    """ras_counter(_unprotected) shrunk to 4 x 3 increments on 2 vcores, no tick storm: only a chosen
    preemption can split a load from its store."""
    text = (ROOT / "scenarios" / f"{name}.toml").read_text(encoding="utf-8")
    text = text.replace("args = [2000]", "args = [3]").replace("vcores = 1", "vcores = 2")
    text = re.sub(r"\[\[injections\]\].*?\n\n", "", text, flags=re.S)
    text = re.sub(r"\[expect\].*", '[expect]\nend = "all_exited"\n\n[[expect.memory]]\nsymbol = "main:counter"\n'
                  "value = 12\n", text, flags=re.S)  # fmt: skip
    if rename:
        text = text.replace('name = "w3"', f'name = "{rename}"')
    if nop:  # an extra instruction in code no uthread runs before the sequence
        text = text.replace("worker:                     # rdi", "unused:\n    nop\n    ret\nworker:  # rdi")
    path = tmp_path / f"{name}.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def test_cpu_watch_stops_before_the_watched_instruction():
    m = Machine()
    ctx = m.load("inc rax\ninc rax\ninc rax\ninc rax\n", rax=0)
    seen = []
    m.cpu.watch(CODE + 6, lambda ran: seen.append(ran) or len(seen) == 1)
    stop = m.cpu.run(ctx, 4)
    assert (stop.insns, ctx.rax, ctx.rip, seen) == (2, 2, CODE + 6, [2])
    stop = m.cpu.run(ctx, 2)  # the same instruction again: the watch says go on
    assert (stop.insns, ctx.rax, seen) == (2, 4, [2, 0])


def test_random_finds_the_lost_update_and_shrinks_it_to_one_preemption_inside_the_sequence(tmp_path):
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    assert ex.run_choices(scenario, ()).failure is None  # unperturbed, the counter is exact
    found = ex.explore(scenario, "random", seed=1, runs=40, watch=["seq_start..seq_end"])
    assert found.found is not None and found.found.failure.startswith("memory[0].main:counter")
    (choice,) = found.shrunk.choices
    when = choice["preempt"]["when"]
    assert (when["code"], when["nth"]) == ("seq_start", 1) and when["offset"] in (1, 2)  # between load and store


@pytest.mark.parametrize("strategy", ["random", "pct", "exhaustive"])
def test_the_ras_protected_counter_survives_the_same_budget(tmp_path, strategy):
    scenario = load_scenario(small(tmp_path, "ras_counter"))
    result = ex.explore(scenario, strategy, seed=1, runs=40, max_preemptions=1)
    assert result.found is None and result.points > 0


def test_exhaustive_with_one_preemption_finds_it(tmp_path):
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    result = ex.explore(scenario, "exhaustive", runs=60, max_preemptions=1, watch=["seq_start..seq_end"])
    assert result.found is not None and len(result.shrunk.choices) == 1


def test_the_saved_schedule_replays_the_same_failure_and_trace(tmp_path):
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    result = ex.explore(scenario, "pct", seed=3, runs=40, watch=["seq_start..seq_end"])
    out = tmp_path / "cx.json"
    ex.save(out, scenario, result.shrunk)
    again = ex.run_choices(scenario, ex.load(out))
    assert (again.failure, again.digest) == (result.shrunk.failure, result.shrunk.digest)


def test_the_schedule_survives_a_renamed_uthread_and_an_extra_instruction(tmp_path):
    """Named by meaning ("w0's first entry into seq_start, one instruction in"), the point is still there after
    an unrelated uthread is renamed and code addresses shift; a step index or a time would have moved."""
    choice = {"preempt": {"vcore": None, "when": {"code": "seq_start", "uthread": "w0", "nth": 1, "offset": 1}}}
    base = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    changed = load_scenario(small(tmp_path / "..", "ras_counter_unprotected", rename="w9", nop=True))
    assert ex.run_choices(base, [choice]).failure is not None
    assert ex.run_choices(changed, [choice]).failure is not None


def test_same_seed_same_exploration(tmp_path):
    scenario = load_scenario(small(tmp_path, "ras_counter_unprotected"))
    a = ex.explore(scenario, "random", seed=5, runs=30, watch=["seq_start..seq_end"])
    b = ex.explore(scenario, "random", seed=5, runs=30, watch=["seq_start..seq_end"])
    assert (a.runs, a.found.choices, a.shrunk.choices) == (b.runs, b.found.choices, b.shrunk.choices)


def test_a_scenario_names_a_point_by_meaning(tmp_path):
    inj = '\n[[injections]]\npreempt = "here"\nwhen = { code = "seq_start", uthread = "w1", nth = 2, offset = 2 }\n'
    path = small(tmp_path, "ras_counter_unprotected")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[expect]", inj + "\n[expect]"), encoding="utf-8")
    run = run_scenario(path)
    assert not run.ok  # the preemption split w1's second increment
    assert any(r.kind == "preempt" for r in run.sim.trace.records)


def test_a_bad_schedule_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "akaros-sim-schedule/1", "choices": [{"preempt": {"when": {"nth": 2}}}]}')
    with pytest.raises(ex.ExploreError, match=r"choices\[0\]: point"):
        ex.load(bad)
