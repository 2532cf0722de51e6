"""The akaros-sim command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import akaros_sim
from akaros_sim.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_machine_tour_prints_every_stop(capsys):
    """`machine --skip-faults` on the trap tour narrates each stop, in order, and exits 0."""
    rc = main(["machine", "--skip-faults", str(ROOT / "examples" / "trap_tour.s")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out == [
        "trap_tour.s: entry 0x400000, budget 10000 instructions per slice",
        "[       5 insns] syscall write(1, 0x401000, 21): b'hello from the guest\\n'",
        "[       6 insns] #PF (trap 14) err=0x80000006 [W|U|VMR_BACKED] addr=0x10000008 at rip=0x40001f: "
        "0x40001f: 48 c7 43 08 2a 00 00 00  mov qword ptr [rbx + 8], 0x2a",
        "[       6 insns]   populated the page at 0x10000000; retrying",
        "[       9 insns] #BP (trap 3) err=0x0 at rip=0x40002c: 0x40002b: cc  int3",
        "[   50013 insns] ... 5 full slice(s) of 10000 instructions",
        "[   50013 insns] #DE (trap 0) err=0x0 at rip=0x40003e: 0x40003e: f7 f1  div ecx",
        "[   50013 insns]   skipping the 2-byte faulting instruction (--skip-faults)",
        "[   50013 insns] #GP (trap 13) err=0x0 at rip=0x400040: 0x400040: f4  hlt",
        "[   50013 insns]   skipping the 1-byte faulting instruction (--skip-faults)",
        "[   50016 insns] syscall exit(0)",
    ]


def test_machine_stops_on_unhandled_fault_with_registers(capsys):
    """Without --skip-faults the first unhandled trap ends the run with a register dump and status 1."""
    rc = main(["machine", str(ROOT / "examples" / "trap_tour.s")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "unhandled fault; registers:" in out
    assert "  rip     0x000000000040003e" in out
    assert "  trap    0x00000000 DE" in out


def test_machine_runs_an_elf(capsys):
    """A static ELF runs from its entry point; its write reaches the console."""
    rc = main(["machine", str(ROOT / "tests" / "elf" / "hello.elf")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "b'hello from C\\n'" in out


def test_machine_reports_a_missing_program(capsys):
    """A missing file is a one-line error naming it, status 2, no traceback."""
    rc = main(["machine", "no/such/file.s"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("akaros-sim: ") and "no/such/file.s" in err and "Traceback" not in err


def test_machine_reports_an_assembly_error(tmp_path, capsys):
    """An assembly error names the file, the line and its text."""
    src = tmp_path / "bad.s"
    src.write_text("nop\nmovq rax,, 1\n")
    rc = main(["machine", str(src)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.s:2" in err and "movq rax,, 1" in err


def test_cli_runs_as_a_module():
    """`python -m akaros_sim.tools.cli --help` works as a separate process."""
    proc = subprocess.run([sys.executable, "-m", "akaros_sim.tools.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "machine" in proc.stdout


def test_run_reports_extable_sites_and_their_hits(capsys):
    """`run` lists every extable site that fired with its count; they add up to the fixups in the trace."""
    from akaros_sim.tools.scenario import run_scenario

    run = run_scenario(ROOT / "scenarios" / "extable_copy_user.toml")
    sites = run.result.extable_sites
    assert sites and sum(hits for _, hits in sites) == run.result.counts["extable_fixup"]
    assert [addr for addr, _ in sites] == sorted(addr for addr, _ in sites)
    rc = main(["run", str(ROOT / "scenarios" / "extable_copy_user.toml")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "extable sites fired:" in out
    for addr, hits in sites:
        assert f"  {addr:#x} " in out and f"{hits} time(s)" in out


def test_machine_stops_an_endless_loop_at_its_instruction_budget(tmp_path, capsys):
    """A guest that never stops is stopped by --max-insns, with a line saying so (exit 3)."""
    loop = tmp_path / "loop.s"
    loop.write_text("l:\n jmp l\n", encoding="utf-8")
    assert main(["machine", "--max-insns", "50000", str(loop)]) == 3
    assert capsys.readouterr().out.splitlines()[-1] == (
        "[   50000 insns] stopped: the instruction budget of 50000 is spent (--max-insns)"
    )


def test_machine_write_from_a_null_buffer_is_efault_not_a_traceback(tmp_path, capsys):
    """write(1, NULL, 5) under `machine` returns -EFAULT to the guest, which then exits 0."""
    prog = tmp_path / "null.s"
    prog.write_text(" mov eax, 101\n mov edi, 1\n xor esi, esi\n mov edx, 5\n syscall\n"
                    " mov eax, 12\n xor edi, edi\n syscall\n", encoding="utf-8")  # fmt: skip
    assert main(["machine", str(prog)]) == 0
    out = capsys.readouterr().out
    assert "syscall write(1, 0x0, 5): -EFAULT (read: address 0x0 is not mapped)" in out


_LOSES_YIELDERS = '''
from schedops.pthread import PthreadSched


class Loses(PthreadSched):
    """Forgets a uthread that yields: its thread_runnable after a yield is dropped."""

    name = "loses"

    def thread_runnable(self, uth):
        if getattr(uth, "ran", False):
            return
        uth.ran = True
        super().thread_runnable(uth)
'''

_LOSES_SCENARIO = '''
description = "a 2LS that loses a yielder"
[scheduler]
name = "loses.py:Loses"
[[threads]]
name = "yielder"
python = "yielder.py:main"
'''


def test_explain_around_shows_the_records_a_contract_report_points_at(tmp_path, capsys):
    """run names the trace record of a 2LS contract violation; explain --around it shows that record, numbered."""
    (tmp_path / "loses.py").write_text(_LOSES_YIELDERS)
    (tmp_path / "yielder.py").write_text("from akaros_sim import parlib\n\ndef main():\n    parlib.uthread_sched_yield()\n")
    (tmp_path / "s.toml").write_text(_LOSES_SCENARIO)
    trace = str(tmp_path / "t.jsonl")
    assert main(["run", str(tmp_path / "s.toml"), "--trace", trace]) == 0  # no expectations: none fails
    out = capsys.readouterr().out
    index = int(out.split("(at trace record #")[1].split(")")[0])
    assert "lost uthread 'yielder'" in out
    assert main(["explain", trace, "--around", str(index), "--context", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == trace
    shown = [int(line.split()[0][1:]) for line in lines[1:]]  # the 3 told records before it (uthread_state aside)
    assert len(shown) == 4 and shown[-1] == index and shown == sorted(set(shown))
    assert "the process exits with status -1 (2LS contract)" in lines[-1] or "2LS contract" in lines[-1]
    assert main(["explain", trace, "--around", str(index + 1000)]) == 2
    assert capsys.readouterr().err == f"akaros-sim: {trace}: --around {index + 1000}: the trace has records #0 to #{index + 1}\n"


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    """A bug inside a verb: one line naming the verb and exit status 1; with --debug, the exception itself."""
    import akaros_sim.tools.cli as cli

    def broken(args):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(cli, "cmd_list", broken)
    assert main(["list"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "akaros-sim: internal error in `list`: ZeroDivisionError: a bug of ours "
        "(run again with --debug for the Python traceback, and please report it)\n"
    )
    assert "Traceback" not in captured.out + captured.err
    for argv in (["--debug", "list"], ["list", "--debug"]):
        try:
            main(argv)
        except ZeroDivisionError as exc:
            assert str(exc) == "a bug of ours"
        else:
            raise AssertionError(f"{argv}: --debug did not let the exception through")


class _Terminal:
    """A stream that says it is a terminal and keeps what is written (thread-safe enough for str +=)."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_shows_the_run_on_a_terminal_and_leaves_the_trace_alone():
    """While a run goes, the progress line shows its virtual time, records and live uthreads, then is
    cleared; the trace is byte-identical to a run without it."""
    import time

    from akaros_sim.tools.cli import Progress
    from akaros_sim.tools.scenario import build, load_scenario

    scenario = load_scenario(ROOT / "scenarios" / "handler_chain.toml")
    plain = build(scenario)
    plain.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    sim = build(scenario)
    term = _Terminal()
    progress = Progress(term, interval=0.001)
    with progress.watching(sim):
        deadline = time.monotonic() + 30
        while "records" not in term.text and time.monotonic() < deadline:
            time.sleep(0.001)  # the line appears before the run starts: t=0, 0 records
        sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    assert term.text.startswith("\rakaros-sim: t=0 ns virtual, 0 records, 0 uthread(s) alive")
    assert term.text.endswith("\r\x1b[K")
    assert sim.trace.to_jsonl() == plain.trace.to_jsonl()


def _explained(capsys, *argv) -> list[str]:
    assert main(["explain", "scenarios/mmap_stress.toml", *argv]) == 0
    return capsys.readouterr().out.splitlines()[1:]  # without the title


def _numbered(lines: list[str]) -> list[tuple[int, int, str]]:
    """(index, time, the rest) of each narrated line that leads with its record index."""
    out = []
    for line in lines:
        index, t, _ns, rest = line.split(maxsplit=3)
        out.append((int(index[1:]), int(t.replace(",", "")), rest))
    return out


def test_explain_filters_narrow_the_story_to_a_thread_kinds_a_window_and_a_limit(capsys, monkeypatch):
    """--thread, --kind, --vcore, --from/--to and --limit keep only matching records, each numbered by its index."""
    monkeypatch.chdir(ROOT)
    faults = _numbered(_explained(capsys, "--thread", "r2", "--kind", "fault"))
    assert faults and all(rest.startswith("vcore ") and "[r2]         r2 faults: #PF" in rest for _, _, rest in faults)
    assert [i for i, _, _ in faults] == sorted(i for i, _, _ in faults)
    window = _numbered(_explained(capsys, "--vcore", "1", "--from", "50000", "--to", "60000"))
    assert window and all(50_000 <= t <= 60_000 and rest.startswith("vcore 1 ") for _, t, rest in window)
    assert len(_explained(capsys, "--thread", "r2", "--thread", "r3", "--limit", "7")) == 7
    two = _numbered(_explained(capsys, "--thread", "r2", "--thread", "r3", "--kind", "run"))
    assert {rest.split()[2] for _, _, rest in two} == {"[r2]", "[r3]"}
    assert main(["explain", "scenarios/mmap_stress.toml", "--thread", "nobody"]) == 2
    assert capsys.readouterr().err == (
        "akaros-sim: scenarios/mmap_stress.toml: --thread 'nobody': no record names that uthread\n"
    )


def test_explain_by_time_merges_the_vcores_in_time_order(capsys, monkeypatch):
    """--by-time says which order it shows; its times never go back, and it holds every record exactly once."""
    monkeypatch.chdir(ROOT)
    assert main(["explain", "scenarios/mmap_stress.toml", "--by-time"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "(records in virtual-time order, vcores merged; #N is the emission order)"
    lines = _numbered(out[2:])
    times = [t for _, t, _ in lines]
    assert times == sorted(times)
    assert main(["explain", "scenarios/mmap_stress.toml", "--limit", str(10**9)]) == 0  # emission order, numbered
    assert sorted(i for i, _, _ in lines) == [i for i, _, _ in _numbered(capsys.readouterr().out.splitlines()[1:])]


def test_explain_faults_tells_each_kind_of_fault_story_once_and_counts_the_rest(capsys, monkeypatch):
    """--faults on mmap_stress: r2's hundreds of faults fit in a few stories (fault, refl_fault, chain, fixup,
    resume), each followed by how many more were told the same way; every fault is accounted for."""
    monkeypatch.chdir(ROOT)
    lines = _explained(capsys, "--thread", "r2", "--faults")
    assert len(lines) < 200
    stories = [line for line in lines if " r2 faults: #PF" in line]
    repeats = [int(line.split("same way ")[1].split(" more")[0].replace(",", "")) for line in lines
               if "told the same way" in line]  # fmt: skip
    assert main(["explain", "scenarios/mmap_stress.toml", "--thread", "r2", "--kind", "fault"]) == 0
    all_faults = len(capsys.readouterr().out.splitlines()) - 1
    assert len(stories) + sum(repeats) == all_faults > 100
    first = [line.split(maxsplit=6)[6] for line in lines[:6]]
    assert first[0].startswith("r2 faults: #PF (trap 14) err=0x4")
    assert first[1:] == [
        "sched_ops.thread_refl_fault(r2, UserContext) is called",
        "the exception table has the faulting instruction 0x70000008: uaccess fixup, continue at 0x7000003c",
        "handler 'extable' on thread_refl_fault fixed it (FAULT_FIXED): the uthread resumes at once and the 2LS "
        "never sees the fault; it changed rax 0x1 -> 0xfffffffffffffff2; rip 0x70000008 -> 0x7000003c",
        "the fault is fixed; r2 will resume at 0x7000003c",
        "r2 resumes at once after its fault was fixed",
    ]


def test_explain_names_syscall_arguments_as_their_prototypes_do(capsys, monkeypatch):
    """Syscall arguments are named, decimal where Akaros's prototype has a count or status, hex for addresses,
    with PROT_ and MAP_ bits spelled out; an unknown syscall keeps all six words in hex."""
    from akaros_sim.tools.explain import _syscall_args

    monkeypatch.chdir(ROOT)
    assert main(["explain", "scenarios/blocking_syscalls.toml", "--thread", "slow", "--kind", "syscall"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split(maxsplit=6)[6] for line in lines[:2]] == [
        "syscall #1 write(fd=1, buf=0x401000, len=18)", "syscall #2 block(usec=30)",
    ]
    assert _syscall_args("exit", (2**64 - 1,)) == "status=-1"
    assert _syscall_args("mmap", (0x30007000, 4096, 3, 0x8010, 0, 0)) == (
        "addr=0x30007000, len=4096, prot=PROT_READ|PROT_WRITE, flags=MAP_FIXED|MAP_POPULATE, fd=0, offset=0"
    )
    assert _syscall_args("mprotect", (0x1000, 8192, 0)) == "addr=0x1000, len=8192, prot=PROT_NONE"
    assert _syscall_args("mmap", (0, 1, 8, 0x40, 0, 0)).split(", ")[2:4] == ["prot=0x8", "flags=0x40"]
    assert _syscall_args("0xbeef", (1, 2)) == "0x1, 0x2"


def test_explain_faults_keeps_kernel_side_records_in_their_uthreads_story(capsys, monkeypatch):
    """A signal_prep (no uthread of its own) joins the story of the uthread it names; the process exit
    ends the story going on."""
    monkeypatch.chdir(ROOT)
    assert main(["explain", "scenarios/pthread_faults.toml", "--faults"]) == 0
    told = [line.split(maxsplit=5)[5] for line in capsys.readouterr().out.splitlines()[1:]]
    firsts = [i for i, text in enumerate(told) if " faults: #" in text]
    assert len(firsts) == 3
    fpe, segv, ud = (told[a:b] for a, b in zip(firsts, [*firsts[1:], len(told)], strict=True))
    assert fpe[2].startswith("the 2LS turns the fault into signal 8 (code 1, addr 0x0) for fpe")
    assert segv[2].startswith("the 2LS turns the fault into signal 11 (code 2, addr 0x0) for segv")
    assert ud[-1] == "the process exits with status -1 (exit)"


def test_run_metrics_prints_one_row_per_uthread_and_json_holds_the_same(tmp_path, capsys, monkeypatch):
    """--metrics adds the table (a row per uthread, a row per vcore); --json writes the figures with what made them."""
    monkeypatch.chdir(ROOT)
    out_json = tmp_path / "m.json"
    assert main(["run", "scenarios/pthread_basics.toml", "--quiet", "--metrics", "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("metrics (ns of virtual time; each defined in docs/metrics.md):")
    rows = [line.split()[0] for line in lines[start + 2 : start + 11]]
    assert rows == ["main", "g1", "g2", "w0", "w1", "w2", "w3", "producer", "consumer"]
    doc = json.loads(out_json.read_text())
    assert doc["about"] == {"scenario": "scenarios/pthread_basics.toml", "seed": 0, "vcores": 4, "sched": "pthread",
                            "version": akaros_sim.__version__}  # fmt: skip
    main_row = doc["metrics"]["uthreads"][0]
    assert (main_row["name"], main_row["turnaround_ns"]) == ("main", main_row["exit_ns"] - main_row["created_ns"])
    assert [v["vcore"] for v in doc["metrics"]["vcores"]] == [0, 1, 2, 3]


def test_run_json_to_an_unwritable_path_fails_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = str(tmp_path / "missing" / "m.json")
    assert main(["run", "scenarios/pthread_basics.toml", "--json", bad]) == 2
    assert capsys.readouterr().err.startswith(f"akaros-sim: cannot write {bad}: ")


def test_run_by_name_under_another_2ls_and_machine_and_replay_runs_the_same(tmp_path, capsys, monkeypatch):
    """`run NAME --sched --set`: a shipped scenario by name, another 2LS and vcore count; the trace replays."""
    monkeypatch.chdir(tmp_path)  # no scenarios/ here: the name is found among the shipped ones
    trace = str(tmp_path / "t.jsonl")
    status = main(["run", "pthread_basics", "--sched", "roundrobin", "--set", "vcores=2", "--set", "costs.insn_ns=2",
                   "--trace", trace])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1  # pthread's own schedule counts do not hold under roundrobin on 2 vcores ...
    failed = [line.split()[1] for line in out.splitlines() if line.startswith("  FAIL ")]
    assert failed and all(name.startswith("schedule.") for name in failed)  # ... but every invariant does
    assert "  vcore    busy  uthread  switches  preemptions" in out and "\n      1 " in out and "\n      2 " not in out
    header = json.loads(Path(trace).read_text().splitlines()[0])
    assert header["overrides"] == [["scheduler.name", "roundrobin"], ["machine.vcores", 2], ["machine.costs.insn_ns", 2]]
    assert main(["replay", trace]) == 0


def test_run_rejects_a_bad_override_naming_it(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["run", "scenarios/pthread_basics.toml", "--set", "machine.vcores=0"]) == 2
    assert "machine.vcores" in capsys.readouterr().err
    assert main(["run", "scenarios/pthread_basics.toml", "--set", "vcores"]) == 2
    assert "--set 'vcores': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["run", "no_such_scenario"]) == 2
    assert "no_such_scenario" in capsys.readouterr().err


def test_explain_report_and_plot_take_a_shipped_scenario_by_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "pthread_faults", "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("pthread_faults.toml: pthread reflects #DE and #GP to "
                                                              "guest signal handlers that fix the context; an "
                                                              "unhandled #UD kills the process")  # fmt: skip
    assert main(["report", "pthread_faults", "--html", "r.html"]) == 0
    assert (tmp_path / "r.html").read_text().count('class="gantt-row"') == 3
