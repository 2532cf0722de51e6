"""Scenarios: loading and validation, the shipped scenarios, determinism, the `run` verb."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from akaros_sim import __version__
from akaros_sim.tools.cli import main
from akaros_sim.tools.scenario import BUILTIN_SCHEDULERS, ScenarioError, build, load_scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))

# A minimal valid scenario the malformed ones are edited from.
TINY = '''
description = "one guest uthread returns 100"

[machine]
vcores = 1

[[programs]]
name = "main"
source = """
.text
worker:
    mov eax, 100
    mov rbx, 5
    ret
.data
counter: .quad 0
"""

[[threads]]
name = "w0"
program = "main"
entry = "worker"

[expect]
end = "all_exited"
retvals = { w0 = 100 }
'''


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped scenarios ------------------------------------------------------------------------


def test_there_are_shipped_scenarios():
    """scenarios/ ships (at least) the five stories the format was made for."""
    assert {p.stem for p in SHIPPED} >= {
        "blocking_syscalls", "populate_on_fault", "pthread_basics", "pthread_faults", "vcore_preemption",
    }  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_passes_and_is_deterministic(path, tmp_path):
    """A shipped scenario meets its expectations; two runs write byte-identical traces; another seed still passes."""
    scenario = load_scenario(path)
    first = run_scenario(scenario, trace_path=tmp_path / "1.jsonl")
    failed = [c for c in first.checks if not c.ok]
    assert failed == [] and first.checks, f"{path.name}: {failed}"
    second = run_scenario(path, trace_path=tmp_path / "2.jsonl")
    assert second.ok
    assert first.sim.trace.digest() == second.sim.trace.digest()
    assert (tmp_path / "1.jsonl").read_bytes() == (tmp_path / "2.jsonl").read_bytes()
    reseeded = run_scenario(attrs.evolve(scenario, seed=scenario.seed + 7))
    assert reseeded.ok, [c for c in reseeded.checks if not c.ok]
    assert reseeded.sim.trace.header["seed"] == scenario.seed + 7


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_tells_its_story(path):
    """Each shipped scenario opens with a comment, has a description, uses a built-in 2LS (or one shipped
    beside it) and checks several things."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# {path.stem}: ")
    scenario = load_scenario(path)
    beside = scenario.scheduler.split(":")[0]
    assert scenario.description
    assert scenario.scheduler in BUILTIN_SCHEDULERS or (beside.endswith(".py") and (path.parent / beside).is_file())
    assert scenario.expect.end is not None and len(scenario.expect.counts) >= 3


def test_a_wrong_expectation_fails_with_expected_and_got(tmp_path):
    """Changing one expected value makes exactly that check fail, with both values reported."""
    text = (ROOT / "scenarios" / "pthread_faults.toml").read_text(encoding="utf-8")
    bad = write(tmp_path, text.replace("retvals = { fpe = 100,", "retvals = { fpe = 99,"))
    run = run_scenario(bad)
    assert not run.ok
    assert [(c.name, c.expected, c.got) for c in run.checks if not c.ok] == [("retvals.fpe", 99, 100)]


def test_python_thread_files_are_imported_once(tmp_path):
    """Two loads of a scenario naming a Python file share the module (and so the function object)."""
    write(tmp_path, "def job(a, b):\n    return a + b[0]\n", "job.py")
    text = TINY + '\n[[threads]]\nname = "py"\npython = "job.py:job"\nargs = [1, [41]]\n'
    text = text.replace("retvals = { w0 = 100 }", "retvals = { w0 = 100, py = 42 }")
    path = write(tmp_path, text)
    one, two = load_scenario(path), load_scenario(path)
    assert one.threads[1].entry.func is two.threads[1].entry.func
    assert one.threads[1].entry.args == (1, (41,))  # arrays arrive as tuples
    assert run_scenario(one).ok and run_scenario(two).ok


def test_scheduler_by_module_reference_and_params(tmp_path):
    """`module:attr` names a 2LS; params go to its constructor, and one it rejects names scheduler.params."""
    text = TINY.replace('end = "all_exited"', 'end = "process_exited"\nexit_status = 0')  # thread0's exit ends it
    path = write(tmp_path, text + '\n[scheduler]\nname = "schedops.thread0:Thread0Sched"\n')
    run = run_scenario(path)
    assert run.ok and run.sim.trace.header["sched"] == "schedops.thread0:Thread0Sched"
    bad = write(tmp_path, TINY + '\n[scheduler]\nname = "pthread"\n[scheduler.params]\nquantum = 5\n', "p.toml")
    with pytest.raises(ScenarioError, match=r"^.*p\.toml: scheduler\.params: 'pthread' rejects them: .*quantum"):
        build(load_scenario(bad))


def test_a_scheduler_without_the_required_ops_is_a_scenario_error(tmp_path):
    """A `module:attr` that builds something without the required sched_ops is rejected before the run."""
    path = write(tmp_path, TINY + '\n[scheduler]\nname = "collections:OrderedDict"\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: scheduler\.name: 'collections:OrderedDict' is not a 2LS: "
                       r".*missing required op\(s\) sched_init"):
        run_scenario(path)


def test_docs_example_scenario_passes(tmp_path):
    """The complete example in docs/scenarios.md is a valid scenario whose expectations hold."""
    page = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", page, re.S).group(1)
    assert run_scenario(write(tmp_path, example)).ok


# -- malformed scenarios --------------------------------------------------------------------------

MALFORMED = [
    # (id, edit of TINY, key path, message fragment)
    ("unknown key", lambda t: 'colour = "red"\n' + t, "colour", "unknown key (allowed: description, machine,"),
    ("unknown nested key", lambda t: t + "\nretval = 3\n", "expect.retval", "unknown key (allowed: end, exit_status,"),
    ("wrong type", lambda t: t.replace("vcores = 1", 'vcores = "four"'), "machine.vcores",
     "expected an integer, got a string 'four'"),
    ("bool is not an int", lambda t: t.replace("vcores = 1", "vcores = 1\nseed = true"), "machine.seed",
     "expected an integer, got a boolean True"),
    ("unknown program", lambda t: t.replace('program = "main"', 'program = "mian"'), "threads[0].program",
     "unknown program 'mian' (programs: main)"),
    ("unknown symbol", lambda t: t.replace('entry = "worker"', 'entry = "wrker"'), "threads[0].entry",
     "unknown symbol 'wrker' in program 'main'"),
    ("unknown symbol in args", lambda t: t.replace('entry = "worker"', 'entry = "worker"\nargs = ["main:countr"]'),
     "threads[0].args[0]", "unknown symbol 'countr' in program 'main'"),
    ("unknown thread in registers", lambda t: t + '\n[[expect.registers]]\nthread = "w9"\nrbx = 5\n',
     "expect.registers[0].thread", "unknown thread 'w9' (threads: w0)"),
    ("bad prot", lambda t: t + '\n[[mappings]]\nname = "heap"\nstart = 0x10000000\nlength = 0x1000\nprot = "rwz"\n',
     "mappings[0].prot", "expected letters from 'rwx' (each at most once) or 'none', got 'rwz'"),
    ("missing description", lambda t: t.replace('description = "one guest uthread returns 100"', ""),
     "description", "missing (expected a string)"),
    ("bad python file", lambda t: t + '\n[[threads]]\nname = "py"\npython = "nosuch.py:job"\n',
     "threads[1].python", "no such Python file"),
    ("bad python module", lambda t: t + '\n[[threads]]\nname = "py"\npython = "akaros_sim.parlib:no_such"\n',
     "threads[1].python", "'akaros_sim.parlib' has no attribute 'no_such'"),
    ("bad scheduler name", lambda t: t + '\n[scheduler]\nname = "fifo"\n', "scheduler.name",
     "unknown 2LS 'fifo' (expected one of pthread, thread0,"),
    ("bad costs field", lambda t: t.replace("vcores = 1", "vcores = 1\n[machine.costs]\ninsn_cost = 2"),
     "machine.costs.insn_cost", "unknown key (allowed: insn_ns, sched_op_ns,"),
    ("bad end", lambda t: t.replace('end = "all_exited"', 'end = "finished"'), "expect.end",
     "expected one of all_exited, process_exited,"),
    ("preempt of a missing vcore", lambda t: t + "\n[[injections]]\nat_ns = 10\npreempt = 3\n",
     "injections[0].preempt", "expected a vcore id < 1 (machine.vcores), got 3"),
    ("matcher without a main detail", lambda t: t.replace("retvals =", 'counts = { "tick:3" = 1 }\nretvals ='),
     'expect.counts."tick:3"', "kind 'tick' has no main detail"),
    ("assembly error", lambda t: t.replace("mov rbx, 5", "mov rbx, 5, 6"), "programs[0].source", "main:"),
    ("invalid TOML", lambda t: t + "\n[[threads]\n", "", "invalid TOML"),
]


@pytest.mark.parametrize("edit,key,fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_scenario_is_a_one_line_error_naming_the_key(tmp_path, edit, key, fragment):
    """A malformed scenario raises ScenarioError: one line, `FILE: KEY: what was expected / got`."""
    path = write(tmp_path, edit(TINY))
    with pytest.raises(ScenarioError) as info:
        run_scenario(path)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{path}: {key}: " if key else f"{path}: "
    assert message.startswith(prefix), message
    assert fragment in message, message


def test_a_missing_file_is_a_scenario_error(tmp_path):
    """A scenario file that does not exist is a one-line ScenarioError naming it."""
    with pytest.raises(ScenarioError, match=r"nope\.toml: cannot read: No such file"):
        load_scenario(tmp_path / "nope.toml")


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_run_prints_pass_lines_and_exits_0(capsys, monkeypatch):
    """`akaros-sim run` on a shipped scenario prints PASS lines, the run summary and exits 0."""
    monkeypatch.chdir(ROOT)
    rc = main(["run", "scenarios/populate_on_fault.toml"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "scenario: scenarios/populate_on_fault.toml"
    assert "  PASS end: 'all_exited'" in lines
    assert "  PASS counts.fault: 10" in lines
    assert any(line.startswith("events: faults 10, syscalls 10, signals 0, context switches ") for line in lines)
    assert any(re.fullmatch(r"\s+0\s+[\d.]+%\s+[\d.]+%\s+\d+\s+0", line) for line in lines)
    assert lines[-1] == "result: PASS: 22 of 22 expectations hold"


def test_cli_run_with_a_failing_expectation_exits_1_and_writes_the_trace(tmp_path, capsys):
    """A wrong expectation prints FAIL with expected and got, exits 1, and --trace still writes the JSONL."""
    path = write(tmp_path, TINY.replace("retvals = { w0 = 100 }", "retvals = { w0 = 99 }"))
    trace = tmp_path / "t.jsonl"
    rc = main(["run", str(path), "--trace", str(trace)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "  FAIL retvals.w0: expected 99, got 100" in out
    assert out.splitlines()[-1] == "result: FAIL: 1 of 2 expectations hold"
    header = json.loads(trace.read_text(encoding="utf-8").splitlines()[0])
    # the scenario's name and text ride along (and any file it loads), so the trace replays on its own;
    # no path of this machine is in it
    assert header == {"format": "akaros-sim-trace/1", "version": __version__, "scenario": "s.toml",
                      "scenario_text": path.read_text(encoding="utf-8"),
                      "sched": "pthread", "seed": 0, "vcores": 1}  # fmt: skip


def test_cli_run_quiet_prints_only_failures_and_the_verdict(tmp_path, capsys):
    """--quiet prints the failed checks and the verdict line, nothing else."""
    path = write(tmp_path, TINY.replace("retvals = { w0 = 100 }", "retvals = { w0 = 99 }"))
    assert main(["run", "--quiet", str(path)]) == 1
    assert capsys.readouterr().out == (
        "  FAIL retvals.w0: expected 99, got 100\nresult: FAIL: 1 of 2 expectations hold\n"
    )


def test_cli_trace_of_a_fatal_fault_starts_with_the_header(tmp_path, capsys, monkeypatch):
    """--trace on a run that ends in an unhandled fault writes the header line, then records up to run_end."""
    monkeypatch.chdir(ROOT)
    trace = tmp_path / "faults.jsonl"
    assert main(["run", "scenarios/pthread_faults.toml", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "fault report:" in out
    assert "  | Pthread has unhandled fault: uthread 'ud' trap 6 (#UD) err 0x0 aux 0x0" in out
    lines = trace.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "akaros-sim-trace/1"
    assert json.loads(lines[-1])["kind"] == "run_end"


def test_cli_run_malformed_scenario_exits_2_without_traceback(tmp_path):
    """A malformed scenario: exit status 2 and one line on stderr naming file and key, no traceback."""
    path = write(tmp_path, TINY.replace('entry = "worker"', 'entry = "wrker"'))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "akaros_sim.tools.cli", "run", str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"akaros-sim: {path}: threads[0].entry: unknown symbol 'wrker' in program 'main'\n"
