"""Schedule exploration: named injection points, strategies, shrinking and replay (docs/explore.md)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from akaros_sim.tools import explore as ex
from akaros_sim.tools.cli import main
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


LOSSY_2LS = '''
from akaros_sim.parlib import vcore_id
from schedops.roundrobin import RoundRobinSched


class LossyRecovery(RoundRobinSched):
    """Round-robin whose thread_paused forgets a uthread recovered from ANOTHER vcore (uthread_pause why
    "preempted", by handle_vc_preempt): it assumes the uthread's own vcore will run it again."""

    name = "lossy-recovery"

    def thread_paused(self, uth):
        ran_on = [vc for vc, occ in enumerate(self._occupant) if occ is not None and occ[0] is uth]
        if ran_on and ran_on[0] != vcore_id():
            self._left(uth)  # the bug: not queued again
            return
        super().thread_paused(uth)
'''


def test_exhaustive_finds_a_wake_up_lost_only_when_a_running_uthread_is_preempted(tmp_path):
    """A 2LS that loses a uthread only when a vcore is preempted while running one (its recovery by another
    vcore goes through thread_paused): a preemption anywhere else is harmless, the default run passes, and
    bounded exhaustive search with k=1 finds the point, shrinks it to one injection, and the saved schedule
    replays to the same failure and trace."""
    (tmp_path / "lossy.py").write_text(LOSSY_2LS, encoding="utf-8")
    path = small(tmp_path, "ras_counter")
    path.write_text(path.read_text(encoding="utf-8").replace('name = "roundrobin"', 'name = "lossy.py:LossyRecovery"'),
                    encoding="utf-8")  # fmt: skip
    scenario = load_scenario(path)
    assert ex.run_choices(scenario, ()).failure is None  # no preemption, no loss
    in_vcore_context = {"preempt": {"vcore": None, "when": {"in": "vcore_context", "vcore": 0, "nth": 1}}}
    assert ex.run_choices(scenario, [in_vcore_context]).failure is None  # recovered by change_to_vcore: harmless

    result = ex.explore(scenario, "exhaustive", runs=60, max_preemptions=1)
    assert result.found is not None
    failure = result.shrunk.failure
    assert failure.startswith("2LS contract") and "lost uthread" in failure and "thread_paused" in failure
    (choice,) = result.shrunk.choices
    assert "uthread" in choice["preempt"]["when"]  # a point inside a uthread's run, not in vcore context

    out = tmp_path / "cx.json"
    ex.save(out, scenario, result.shrunk)
    again = ex.run_choices(scenario, ex.load(out))
    assert (again.failure, again.digest) == (failure, result.shrunk.digest)


# -- the shipped buggy 2LS (scenarios/lost_wakeup.toml) --------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "pct", "exhaustive"])
def test_each_strategy_finds_the_planted_lost_wake_up_within_the_default_budget(strategy, tmp_path, capsys,
                                                                                 monkeypatch):  # fmt: skip
    """lost_wakeup passes its own run; `explore` with seed 1 and the default budget finds the napper that
    nobody wakes, shrinks it to at most two preemptions (one as a vcore enters thread_blockon_sysc), and the
    saved schedule fails the same way twice, with the trace digest it was saved with."""
    monkeypatch.chdir(tmp_path)
    assert run_scenario(ROOT / "scenarios" / "lost_wakeup.toml").ok
    assert main(["explore", "lost_wakeup", "--strategy", strategy, "--seed", "1", "--out", "cx.json"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("FAILED after ")
    assert f"({strategy}): 2LS contract: 2LS 'trusting-blockon' lost uthread" in out[0]
    assert out[-1] == "saved cx.json; rerun: akaros-sim explore lost_wakeup --replay cx.json --trace t.jsonl"
    doc = json.loads(Path("cx.json").read_text(encoding="utf-8"))
    assert 1 <= len(doc["choices"]) <= 2
    assert any(c["preempt"]["when"].get("in_op") == "thread_blockon_sysc" for c in doc["choices"])
    replays = []
    for _ in range(2):
        assert main(shlex.split(out[-1].split("rerun: ")[1])[1:]) == 1
        replays.append(capsys.readouterr().out)
    assert replays[0] == replays[1]
    assert "lost uthread" in replays[0] and f"(trace {doc['trace_digest'][:16]})" in replays[0]
    assert Path("t.jsonl").is_file()


def test_without_out_the_report_prints_the_command_that_finds_it_again(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explore", "lost_wakeup", "--strategy", "pct", "--seed", "1", "--depth", "2"]) == 1
    first = capsys.readouterr().out.splitlines()
    assert first[-1] == "rerun: akaros-sim explore lost_wakeup --strategy pct --seed 1 --depth 2 --out cx.json"
    assert main(shlex.split(first[-1].split("rerun: ")[1])[1:]) == 1
    again = capsys.readouterr().out.splitlines()
    assert again[:-1] == first[:-1] and again[-1].startswith("saved cx.json; rerun:")


def test_the_planted_race_is_the_2ls_s_own_pthread_keeps_every_invariant(capsys):
    """Under pthread, which restarts a uthread whose syscall completed before register_evq, the same bounded
    exhaustive search finds nothing."""
    assert main(["explore", "lost_wakeup", "--sched", "pthread", "--strategy", "exhaustive", "--runs", "60"]) == 0
    assert capsys.readouterr().out.startswith("no failure in 61 run(s) over ")
