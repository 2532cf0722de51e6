"""The RAS atomicity oracle (`akaros-sim ras-check`): every shipped correct sequence passes; a sequence that
starts past its first store and one that ends one instruction early are reported at their exact instruction,
with the update they lose, the same twice, with a command that reruns the failure."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from akaros_sim.tools import ras_oracle as ro
from akaros_sim.tools.cli import main
from akaros_sim.tools.scenario import load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


def counter(tmp_path: Path, name: str, edit=lambda text: text) -> Path:
    """scenarios/<name>.toml (a shared counter) shrunk to 4 x 3 increments on 2 vcores with no tick storm:
    only a perturbation can split a load from its store."""
    text = (SCENARIOS / f"{name}.toml").read_text(encoding="utf-8")
    text = text.replace("args = [2000]", "args = [3]").replace("vcores = 1", "vcores = 2")
    text = re.sub(r"\[\[injections\]\].*?\n\n", "", text, flags=re.S)
    text = re.sub(r"\[expect\].*", '[expect]\nend = "all_exited"\n\n[[expect.memory]]\nsymbol = "main:counter"\n'
                  "value = 12\n", text, flags=re.S)  # fmt: skip
    path = tmp_path / f"{name}.toml"
    path.write_text(edit(text), encoding="utf-8")
    return path


def findings(report) -> list[tuple]:
    return [(hex(f.spot.addr), f.spot.where, f.spot.text, f.spot.after, f.perturbation, f.lost)
            for seq in report.sequences for f in seq.findings]  # fmt: skip


@pytest.mark.parametrize("name", ["ras_counter", "ras_percpu", "c_ras_counter"])
def test_every_shipped_correct_sequence_is_atomic(name):
    """Each instruction of the shipped sequences (assembly on one vcore, per-vcore on three, C on one) and the
    one after survives every perturbation the machine allows."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml")
    report = ro.check(scenario)
    assert report.ok, findings(report)
    assert report.perturbations == (("preempt", "migrate", "fault") if scenario.vcores > 1 else ("preempt", "fault"))
    (seq,) = report.sequences
    assert seq.spots[-1].after and not any(s.after for s in seq.spots[:-1])
    assert seq.runs == len(seq.spots) * len(report.perturbations) * len(seq.targets) and len(seq.targets) == 2


def test_a_sequence_that_ends_one_instruction_early_loses_its_store():
    """scenarios/ras_misbounded.toml passes its own run; ras-check names the store left outside the sequence
    and the updates a fault there loses (the uthread waits for its code page while the others add)."""
    path = SCENARIOS / "ras_misbounded.toml"
    assert run_scenario(path).ok
    report = ro.check(load_scenario(path))
    assert findings(report) == [
        ("0x40001b", "seq_start+0x11", "mov qword ptr [rdx], rax", True, "fault",
         "main:total is 672, expected 800: 128 updates lost"),
    ]  # fmt: skip
    (f,) = report.sequences[0].findings
    assert (f.uthread, f.nth, f.insns) == ("w0", 100, 1003)
    assert "its commit is outside it" in ro.hint(report.sequences[0], f)


def test_the_same_mistake_in_a_shared_counter_is_found_by_a_preemption(tmp_path):
    path = counter(tmp_path, "ras_counter", lambda t: t.replace(
        "    mov [rsi], rax          # store", "early:\n    mov [rsi], rax          # store").replace(
        ".ras seq_start, seq_end", ".ras seq_start, early"))  # fmt: skip
    report = ro.check(load_scenario(path))
    assert findings(report) == [
        ("0x400011", "seq_start+0x7", "mov qword ptr [rsi], rax", True, "preempt",
         "main:counter is 3, expected 12: 9 updates lost"),
    ]  # fmt: skip


def test_a_sequence_registered_past_its_first_store_is_reported_at_its_start():
    """tests/ras_wrong_start.toml: the load and the first store come before the registered start, so a stop at
    the add (the start: nothing to restart) or at the commit (a restart to the add) uses a stale count."""
    path = ROOT / "tests" / "ras_wrong_start.toml"
    assert run_scenario(path).ok
    report = ro.check(load_scenario(path))
    assert findings(report) == [
        ("0x400018", "seq_start", "add rax, 1", False, "preempt", "main:count is 3, expected 12: 9 updates lost"),
        ("0x40001c", "seq_start+0x4", "mov qword ptr [rsi], rax", False, "preempt",
         "main:count is 4, expected 12: 8 updates lost"),
    ]  # fmt: skip
    seq = report.sequences[0]
    assert [ro.hint(seq, f).split(":")[0] for f in seq.findings] == [
        "a restart lands here, after work done before the sequence (a load, a store)", "as at the start"]


def test_an_undeclared_range_is_checked_as_if_it_were_a_sequence(tmp_path):
    """ras_counter_unprotected declares no sequence: --range names its load/add/store, and a stop after the
    load loses updates that nothing restarts."""
    scenario = load_scenario(counter(tmp_path, "ras_counter_unprotected"))
    with pytest.raises(ro.RasCheckError, match="no restartable sequence to check"):
        ro.check(scenario)
    report = ro.check(scenario, ranges=["seq_start..seq_end"])
    assert [(f[1], f[4]) for f in findings(report)] == [("seq_start+0x3", "preempt"), ("seq_start+0x7", "preempt")]
    assert not report.sequences[0].declared


def test_an_always_check_over_trace_records_is_judged_on_a_traced_run(tmp_path):
    """Perturbed runs skip the trace unless something reads it: an always-count of records does."""
    always = '\n[[expect.always]]\nname = "the run ends"\ntrace = "run_end"\ncount = 1\n'
    scenario = load_scenario(counter(tmp_path, "ras_counter", lambda text: text + always))
    report = ro.check(scenario, perturbations=("preempt",))
    assert report.ok, findings(report)


def test_the_report_is_the_same_twice():
    scenario = load_scenario(ROOT / "tests" / "ras_wrong_start.toml")
    assert ro.format_report(ro.check(scenario), "x") == ro.format_report(ro.check(scenario), "x")


def test_a_failure_that_does_not_repeat_is_not_reported(tmp_path):
    """The determinism self-check: a failure is run twice more and must repeat with the same trace."""
    calls = []

    def flaky(sim, result):
        calls.append(1)
        return "flaky" if len(calls) == 2 else True  # fails once, in the first perturbed run only

    with pytest.raises(ro.RasCheckError, match="is not deterministic"):
        ro.check(load_scenario(ROOT / "tests" / "ras_wrong_start.toml"), oracle=flaky)


def test_an_unperturbed_run_that_fails_is_bad_input(tmp_path):
    path = counter(tmp_path, "ras_counter", lambda t: t.replace("value = 12", "value = 13"))
    with pytest.raises(ro.RasCheckError, match="the unperturbed run fails already: memory"):
        ro.check(load_scenario(path))


def test_the_verb_prints_the_finding_and_a_command_that_reruns_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ras-check", "ras_misbounded"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "FAILED: 1 instruction(s) in 1 of 1 sequence(s) lose an update"
    assert "  LOST  0x40001b seq_start+0x11  mov qword ptr [rdx], rax   (the first after it)" in out
    rerun = next(line for line in out if "akaros-sim ras-check" in line)
    digest = re.search(r"trace ([0-9a-f]{12})", rerun)[1]
    command = shlex.split(rerun.split(": ", 1)[1])
    assert command == ["akaros-sim", "ras-check", "ras_misbounded", "--perturb", "fault", "--at", "w0:1003",
                       "--trace", "t.jsonl"]  # fmt: skip
    for _ in range(2):
        assert main(command[1:]) == 1
        assert capsys.readouterr().out == (f"fault at w0:1003, 0x40001b: memory[0].main:total: expected 800, "
                                           f"got 672 (trace {digest})\n")  # fmt: skip
    header = json.loads(Path("t.jsonl").read_text().splitlines()[0])
    assert header["ras_check"] == {"perturbation": "fault", "uthread": "w0", "insns": 1003}
    assert main(["explain", "t.jsonl"]) == 0
    story = capsys.readouterr().out
    assert "injection: ras-check fault" in story and "w0 faults: #PF" in story


@pytest.mark.parametrize("argv, message", [
    (["lost_wakeup"], "lost_wakeup.toml: no restartable sequence to check"),
    (["ras_misbounded", "--range", "seq_start"], "--range 'seq_start': expected START..END"),
    (["ras_misbounded", "--range", "seq_start..nowhere"], "point code='nowhere': no such symbol"),
    (["ras_misbounded", "--at", "w0:5"], "with exactly one --perturb"),
    (["ras_misbounded", "--at", "w9:5", "--perturb", "fault"], "no uthread 'w9' retired 5 instructions"),
    (["ras_misbounded", "--trace", "t.jsonl"], "--trace goes with --at"),
    (["ras_misbounded", "--oracle", "nomodule"], "--oracle: expected module:function"),
    (["ras_counter", "--perturb", "migrate"], "--perturb migrate needs more than one vcore (the scenario has 1)"),
])  # fmt: skip
def test_bad_input_is_one_line_naming_it(argv, message, capsys):
    assert main(["ras-check", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("akaros-sim ras-check: ") and message in err and err.count("\n") == 1


def test_a_sequence_no_uthread_enters_is_said_to_be_unchecked(tmp_path):
    path = counter(tmp_path, "ras_counter", lambda t: t.replace(
        "worker:                     # rdi", "unused:\n    nop\nunused_end:\n    ret\n.ras unused, unused_end\n"
        "worker:  # rdi"))  # fmt: skip
    report = ro.check(load_scenario(path))
    assert report.ok and report.unchecked == ("unused",)
    lines = ro.format_report(report, "x")
    assert lines[0] == "sequence unused [0x400000, 0x400001), restart 0x400000: no uthread entered it, nothing to perturb"
    assert lines[-2:] == ["atomic: 1 sequence(s) under preempt, migrate, fault",
                          "not checked (no uthread entered them): unused"]  # fmt: skip


def test_a_finding_names_the_instruction_where_the_uthread_stopped(tmp_path):
    """A jump inside the sequence: the 4th instruction run is the store, not the 4th listed; the finding says so."""
    path = counter(tmp_path, "ras_counter", lambda t: t.replace(
        "    add rax, 1              # add\n", "    jmp over\n    nop\nover:\n    add rax, 1\nearly:\n").replace(
        ".ras seq_start, seq_end", ".ras seq_start, early"))  # fmt: skip
    report = ro.check(load_scenario(path), perturbations=("preempt",))
    (f,) = report.sequences[0].findings
    assert (f.spot.index, f.spot.where, f.spot.text) == (3, "early", "mov qword ptr [rsi], rax")
