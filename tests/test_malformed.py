"""Malformed scenarios: `akaros-sim run` on each prints one line naming the file and the key at fault, and exits 2.

Each case edits one thing of BASE, a small valid scenario (checked to pass
first), writes it to tmp_path and runs it through `cli.main(["run", path])`
in-process.  The whole standard error must be ``akaros-sim: FILE: KEY: MESSAGE``
on one line, with no traceback and nothing on standard output.  A message
written below ending in ``...`` is checked up to there (the rest is a list of
allowed names that grows with the code).  Three cases also run as a
subprocess, to show that no traceback escapes the real entry point.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from akaros_sim.asm import default_backend
from akaros_sim.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Valid: one guest uthread on two vcores, a data symbol, a RAS-shaped pair of labels and a heap mapping.
BASE = '''description = "one guest uthread returns 100"

[machine]
vcores = 2
seed = 1

[[programs]]
name = "main"
source = """
.text
worker:
    mov eax, 100
    ret
seq_start:
    mov rax, 1
seq_end:
    ret
.data
counter: .quad 0
"""

[[mappings]]
name = "heap"
start = 0x10000000
length = 0x2000
prot = "rw"

[[threads]]
name = "w0"
program = "main"
entry = "worker"
args = [1, "main:counter"]

[expect]
end = "all_exited"
retvals = { w0 = 100 }
'''

# A Python file beside every scenario: one function, one attribute that is not callable.
JOB_PY = "NOT_A_FUNCTION = 3\n\n\ndef job():\n    return 1\n"

# how each assembler backend words an unknown mnemonic (the rest of the message is ours)
_MNEMONIC_ERROR = {"keystone": "Invalid mnemonic (KS_ERR_ASM_MNEMONICFAIL)",
                   "clang": "clang: invalid instruction mnemonic 'mvo'"}


def sub(old: str, new: str):
    """An edit replacing the one occurrence of `old` in the scenario text by `new`."""

    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} is not unique in BASE"
        return text.replace(old, new)

    return edit


def add(extra: str):
    """An edit appending `extra` to the scenario text (after [expect], so bare keys land in it)."""
    return lambda text: text + extra


@attrs.frozen
class Case:
    """One malformed scenario: how BASE is edited, the key path the error must name, and the rest of the line."""

    id: str
    edit: object
    key: str | None  # None: an error about the whole file (no key)
    message: str


def _costs() -> str:
    from akaros_sim.engine import Costs

    return ", ".join(f.name for f in attrs.fields(Costs))


CASES = [
    # -- unknown keys, at every level --
    Case("unknown top-level key", sub("description", 'colour = "red"\ndescription'), "colour",
         "unknown key (allowed: description, machine, scheduler, programs, mappings, threads, injections, handlers, "
         "ras, run, expect)"),
    Case("unknown key in machine", sub("seed = 1", "seed = 1\ncores = 2"), "machine.cores",
         "unknown key (allowed: vcores, seed, costs)"),
    Case("unknown key in costs", sub("seed = 1", "seed = 1\ncosts = { insn_cost = 2 }"), "machine.costs.insn_cost",
         f"unknown key (allowed: {_costs()})"),
    Case("unknown key in scheduler", add('\n[scheduler]\nname = "pthread"\nquantum = 5\n'), "scheduler.quantum",
         "unknown key (allowed: name, params)"),
    Case("unknown key in programs", sub('name = "main"\n', 'name = "main"\norigin = 0x400000\n'),
         "programs[0].origin", "unknown key (allowed: name, base, source, file, elf, library, c, cflags)"),
    Case("unknown key in threads", sub('entry = "worker"', 'entry = "worker"\nstack = 4096'), "threads[0].stack",
         "unknown key (allowed: name, program, entry, python, args, detached)"),
    Case("unknown key in injections", add("\n[[injections]]\nat_ns = 10\npreempt = 1\nlater = 3\n"),
         "injections[0].later", "unknown key (allowed: at_ns, at_insns, thread, when, preempt, syscall_latency, "
         "tick_storm, unmap, protect, map, signal, warning_ns, duration_ns)"),
    Case("unknown key in expect", add("retval = 3\n"), "expect.retval", "unknown key (allowed: end, exit_status, "
         "console, console_contains, report_contains, retvals, counts, registers, memory, order, schedule, always, "
         "sometimes)"),
    Case("unknown key in expect.schedule", add("\n[expect.schedule]\nordr = []\n"), "expect.schedule.ordr",
         "unknown key (allowed: end, exit_status, console, console_contains, report_contains, retvals, counts, "
         "registers, memory, order)"),
    Case("unknown key in expect.memory", add('\n[[expect.memory]]\nsymbol = "main:counter"\nvalue = 0\nwidth = 4\n'),
         "expect.memory[0].width", "unknown key (allowed: symbol, addr, offset, size, value)"),
    Case("unknown key in expect.registers", add('\n[[expect.registers]]\nthead = "w0"\nrax = 100\n'),
         "expect.registers[0].thead", "unknown key (allowed: thread, rax, rbx, ..."),
    Case("unknown register in expect.registers", add('\n[[expect.registers]]\nthread = "w0"\nxmm0 = 1\n'),
         "expect.registers[0].xmm0", "unknown key (allowed: thread, rax, rbx, ..."),
    # -- wrong types and out-of-range values --
    Case("vcores as a string", sub("vcores = 2", 'vcores = "4"'), "machine.vcores",
         "expected an integer, got a string '4'"),
    Case("seed as a float", sub("seed = 1", "seed = 1.5"), "machine.seed", "expected an integer, got a float 1.5"),
    Case("args as a string", sub('args = [1, "main:counter"]', 'args = "x"'), "threads[0].args",
         "expected an array, got a string 'x'"),
    Case("no vcores", sub("vcores = 2", "vcores = 0"), "machine.vcores", "expected an integer >= 1, got 0"),
    Case("cost of the wrong type", sub("seed = 1", 'seed = 1\ncosts = { insn_ns = "fast" }'),
         "machine.costs.insn_ns", "expected an integer, got a string 'fast'"),
    Case("negative cost", sub("seed = 1", "seed = 1\ncosts = { insn_ns = -1 }"), "machine.costs.insn_ns",
         "expected an integer >= 0, got -1"),
    Case("missing description", sub('description = "one guest uthread returns 100"\n', ""), "description",
         "missing (expected a string)"),
    # -- mappings and programs --
    Case("bad prot", sub('prot = "rw"', 'prot = "rz"'), "mappings[0].prot",
         "expected letters from 'rwx' (each at most once) or 'none', got 'rz'"),
    Case("misaligned mapping start", sub("start = 0x10000000", "start = 0x10000800"), "mappings[0].start",
         "expected a multiple of the page size (0x1000), got 0x10000800"),
    Case("misaligned mapping length", sub("length = 0x2000", "length = 0x1800"), "mappings[0].length",
         "expected a multiple of the page size (0x1000), got 0x1800"),
    Case("overlapping mappings", add('\n[[mappings]]\nname = "heap2"\nstart = 0x10001000\nlength = 0x1000\n'),
         "mappings[1] ('heap2')", "[0x10001000, 0x10002000) overlaps mappings[0] ('heap') [0x10000000, 0x10002000); "
         "expected disjoint ranges"),
    Case("mapping over a program", add('\n[[mappings]]\nname = "low"\nstart = 0x400000\nlength = 0x2000\n'),
         "mappings[1] ('low')", "[0x400000, 0x402000) overlaps programs[0] ('main' .text) [0x400000, 0x401000); "
         "expected disjoint ranges"),
    Case("assembly error", sub("    mov eax, 100\n", "    mov eax, 100\n    mvo rbx, 5\n"), "programs[0].source",
         "main:4: bad instruction: 'mvo rbx, 5' (" + _MNEMONIC_ERROR[default_backend()] + ")"),
    # -- threads --
    Case("unknown program", sub('program = "main"', 'program = "mian"'), "threads[0].program",
         "unknown program 'mian' (programs: main)"),
    Case("unknown entry symbol", sub('entry = "worker"', 'entry = "wrker"'), "threads[0].entry",
         "unknown symbol 'wrker' in program 'main'"),
    Case("arg reference without a program", sub('"main:counter"', '"counter"'), "threads[0].args[1]",
         "expected 'program:symbol', got 'counter'"),
    Case("arg reference to an unknown symbol", sub('"main:counter"', '"main:countr"'), "threads[0].args[1]",
         "unknown symbol 'countr' in program 'main'"),
    Case("thread with program and python", add('\n[[threads]]\nname = "py"\nprogram = "main"\npython = "job.py:job"\n'),
         "threads[1].program", "not allowed with python (a thread is guest code or a Python function)"),
    Case("python file missing", add('\n[[threads]]\nname = "py"\npython = "nosuch.py:job"\n'), "threads[1].python",
         "no such Python file '{dir}/nosuch.py'"),
    Case("python function missing", add('\n[[threads]]\nname = "py"\npython = "job.py:nojob"\n'),
         "threads[1].python", "'job.py' has no attribute 'nojob'"),
    # -- scheduler --
    Case("unknown scheduler", add('\n[scheduler]\nname = "fifo"\n'), "scheduler.name",
         "unknown 2LS 'fifo' (expected one of pthread, thread0, roundrobin, worksteal, priority, stride, cfs, edf, lottery, 'module:attr' or 'file.py:attr')"),
    Case("scheduler params rejected", add('\n[scheduler]\nname = "pthread"\n[scheduler.params]\nquantum = 5\n'),
         "scheduler.params", "'pthread' rejects them: pthread 2LS: unknown parameter(s) quantum (it takes none)"),
    # -- injections --
    Case("injection of no kind", add("\n[[injections]]\nat_ns = 10\n"), "injections[0]",
         "expected exactly one of preempt, syscall_latency, tick_storm, unmap, protect, map, signal; got none"),
    Case("injection of two kinds",
         add("\n[[injections]]\nat_ns = 10\npreempt = 1\nunmap = { start = 0x10000000, length = 0x1000 }\n"),
         "injections[0]",
         "expected exactly one of preempt, syscall_latency, tick_storm, unmap, protect, map, signal; "
         "got preempt, unmap"),
    Case("preempt of a missing vcore", add("\n[[injections]]\nat_ns = 10\npreempt = 2\n"), "injections[0].preempt",
         "expected a vcore id < 2 (machine.vcores), got 2"),
    Case("at_insns without a thread", add("\n[[injections]]\nat_insns = 10\npreempt = 1\n"), "injections[0].thread",
         "missing (expected a string)"),
    Case("at_insns of an unknown thread", add('\n[[injections]]\nat_insns = 10\nthread = "w9"\npreempt = 1\n'),
         "injections[0].thread", "unknown thread 'w9' (threads: w0)"),
    Case("signal to an unknown thread", add('\n[[injections]]\nat_ns = 10\nsignal = { thread = "w9", signo = 10 }\n'),
         "injections[0].signal.thread", "unknown thread 'w9' (threads: w0)"),
    Case("tick storm with max < min",
         add("\n[[injections]]\nat_ns = 10\ntick_storm = { min_insns = 50, max_insns = 10 }\n"),
         "injections[0].tick_storm.max_insns", "expected >= min_insns (50), got 10"),
    Case("misaligned unmap", add("\n[[injections]]\nat_ns = 10\nunmap = { start = 0x10000010, length = 0x1000 }\n"),
         "injections[0].unmap.start", "expected a multiple of the page size (0x1000), got 0x10000010"),
    Case("latency of an unknown syscall",
         add('\n[[injections]]\nat_ns = 10\nsyscall_latency = { nr = "sleeep", ns = 5 }\n'),
         "injections[0].syscall_latency.nr", "unknown syscall 'sleeep' (known: null, block, ..."),
    Case("stall limit of 0", add("\n[run]\nstall_ns = 0\n"), "run.stall_ns", "expected an integer >= 1, got 0"),
    Case("huge stall limit", add("\n[run]\nstall_ns = 9223372036854775807\n"), "run.stall_ns",
         "expected an integer <= 4611686018427387904, got 9223372036854775807"),
    # -- expectations --
    Case("unknown end", sub('end = "all_exited"', 'end = "finished"'), "expect.end",
         "expected one of all_exited, process_exited, time_budget, insn_budget, idle, got 'finished'"),
    Case("memory by symbol and addr",
         add('\n[[expect.memory]]\nsymbol = "main:counter"\naddr = 0x10000000\nvalue = 0\n'),
         "expect.memory[0]", "expected exactly one of symbol, addr"),
    Case("order of one matcher", add('\n[[expect.order]]\nkinds = ["fault"]\n'), "expect.order[0].kinds",
         "expected at least two matchers, got 1"),
    Case("negative count", sub("retvals =", "counts = { fault = -1 }\nretvals ="), "expect.counts.fault",
         "expected an integer >= 0 or a table with min and/or max, got an integer -1"),
    # -- RAS and handlers --
    Case("ras ending before it starts", add('\n[[ras]]\nstart = "main:seq_end"\nend = "main:seq_start"\n'),
         "ras[0].end",
         "expected an address after start (0x40000d), got 0x400006"),
    Case("handler that is not callable", add('\n[[handlers]]\npython = "job.py:NOT_A_FUNCTION"\n'),
         "handlers[0].python", "expected a callable handler(uth, ctx) -> FaultStatus, got an integer 3"),
    # -- the file itself --
    Case("invalid TOML", add("\n[[threads]\n"), None,
         "invalid TOML: Expected ']]' at the end of an array declaration (at line 38, column 10)"),
    # -- limits checked at load time --
    Case("vcores beyond the maximum", sub("vcores = 2", "vcores = 9223372036854775807"), "machine.vcores",
         "expected at most 1024 vcores, got 9223372036854775807"),
    Case("instruction that costs no time", sub("seed = 1", "seed = 1\ncosts = { insn_ns = 0 }"), "machine.costs",
         "Costs.insn_ns: expected an int >= 1 (an instruction must take time), got 0"),
    Case("negative integer entry", sub('entry = "worker"', "entry = -5"), "threads[0].entry",
         "expected an address in [0, 2**64), got -5"),
    Case("argument wider than a register", sub('args = [1, "main:counter"]', "args = [18446744073709551616]"),
         "threads[0].args[0]", "expected a 64-bit value (-2**63 .. 2**64 - 1), got 18446744073709551616"),
    Case("unmap outside user space", add("\n[[injections]]\nat_ns = 10\nunmap = { start = 0x7ffffffff0000000, "
                                         "length = 0x1000 }\n"),
         "injections[0].unmap.start", "expected a range inside user space [0x1000, 0x7fffffff0000), "
         "got [0x7ffffffff0000000, 0x7ffffffff0001000)"),
]  # fmt: skip

BY_ID = {case.id: case for case in CASES}


def write_case(tmp_path: Path, case: Case) -> Path:
    """The case's scenario file (job.py beside it)."""
    (tmp_path / "job.py").write_text(JOB_PY, encoding="utf-8")
    path = tmp_path / "s.toml"
    path.write_text(case.edit(BASE), encoding="utf-8")
    return path


def check_line(err: str, path: Path, case: Case) -> None:
    """stderr is exactly one line: `akaros-sim: FILE: KEY: MESSAGE` (MESSAGE up to a trailing `...`)."""
    message = case.message.replace("{dir}", str(path.parent.resolve()))
    where = f"{path}: {case.key}: " if case.key is not None else f"{path}: "
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    line = err[:-1]
    if message.endswith("..."):
        assert line.startswith(f"akaros-sim: {where}{message[:-3]}"), line
    else:
        assert line == f"akaros-sim: {where}{message}"


def test_there_are_thirty_cases_with_distinct_ids():
    """The table holds at least 30 malformed scenarios, each id once."""
    assert len(CASES) >= 30 and len(BY_ID) == len(CASES)


def test_the_base_scenario_is_valid(tmp_path, capsys):
    """Unedited, BASE loads, runs and meets its expectations (so each case fails for its one edit)."""
    path = write_case(tmp_path, Case("valid", lambda text: text, None, ""))
    assert main(["run", "--quiet", str(path)]) == 0
    assert capsys.readouterr() == ("result: PASS: 2 of 2 expectations hold\n", "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_scenario_is_one_line_naming_the_key_and_exit_2(tmp_path, capsys, case):
    """`run` of the malformed scenario exits 2 with one stderr line `akaros-sim: FILE: KEY: MESSAGE`, stdout empty."""
    path = write_case(tmp_path, case)
    rc = main(["run", str(path)])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    check_line(err, path, case)


def test_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    """`run` of a path that does not exist exits 2 with one line naming it and the reason."""
    path = tmp_path / "nope.toml"
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr() == ("", f"akaros-sim: {path}: cannot read: No such file or directory\n")


SUBPROCESS = ("unknown entry symbol", "python file missing", "scheduler params rejected")


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_no_traceback_escapes_the_real_entry_point(tmp_path, case_id):
    """As a subprocess (`python -m akaros_sim.tools.cli run`), the same single line, exit 2, nothing on stdout."""
    case = BY_ID[case_id]
    path = write_case(tmp_path, case)
    proc = subprocess.run(
        [sys.executable, "-m", "akaros_sim.tools.cli", "run", str(path)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (2, "")
    check_line(proc.stderr, path, case)


def test_library_program_with_a_misaligned_base(tmp_path, capsys):
    """A `library` program whose base is not page-aligned is a one-line error naming programs[1].base, exit 2."""
    case = Case("library base", add('\n[[programs]]\nname = "ua"\nlibrary = "uaccess"\nbase = 0x600010\n'),
                "programs[1].base", "assemble: expected a page-aligned base...")  # fmt: skip
    path = write_case(tmp_path, case)
    rc = main(["run", str(path)])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    check_line(err, path, case)
