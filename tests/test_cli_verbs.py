"""The trace verbs of the command line (run --trace, replay, diff, export, explain, list, --help), as a user runs them.

Every command here runs `python -m akaros_sim.tools.cli` as a subprocess from the
repository root, so what is tested is the installed entry point's behaviour:
its exit status, its standard output and that nothing leaks to stderr.  Each
subprocess costs an interpreter start and the Unicorn/keystone imports (about
0.3 s) on top of its run; the whole file takes about 30 s, most of it the
replay of every shipped scenario (13 x (run + replay)).

Expected values are derived independently of the code under test where they
depend on the simulation (records read back from the JSONL file, scenario
descriptions read with tomllib), and spelled out where they are the story
(the handler chain's walk).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
SHIPPED = sorted(SCENARIOS.glob("*.toml"))
VERBS = ("machine", "run", "replay", "diff", "export", "explain", "report", "plot", "ab", "sweep", "cc", "explore", "ras-check", "list")


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run `akaros-sim ARGS...` as a subprocess in the repository root; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "akaros_sim.tools.cli", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def record_lines(trace: Path) -> list[str]:
    """The record lines of a JSONL trace (the header line dropped), as written."""
    return trace.read_text(encoding="utf-8").splitlines()[1:]


def kinds(lines: list[str]) -> Counter:
    """Record counts by kind, read straight from JSONL lines."""
    return Counter(json.loads(line)["kind"] for line in lines)


def counts_table(out: list[str]) -> list[list[str]]:
    """The rows after `counts by kind (...)` of a replay/diff report, split into words (header row first)."""
    start = next(i for i, line in enumerate(out) if line.startswith("counts by kind ("))
    return [line.split() for line in out[start + 1 :]]


def record_trace(scenario: str, trace: Path, *extra: str) -> None:
    """`run --quiet --trace` a scenario; the scenario must load (exit 0 or 1, nothing on stderr)."""
    proc = cli("run", "--quiet", "--trace", trace, *extra, scenario)
    assert (proc.returncode, proc.stderr) in ((0, ""), (1, "")), proc.stderr
    assert trace.is_file()


# -- run --trace + replay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_replay_of_every_shipped_scenario_is_identical(path, tmp_path):
    """`run --trace` then `replay` of a shipped scenario exits 0 and reports an identical trace, its size and seed."""
    trace = tmp_path / f"{path.stem}.jsonl"
    # Whether the scenario's own expectations hold is test_scenario's business; replay must reproduce either way.
    record_trace(f"scenarios/{path.name}", trace)
    seed = tomllib.loads(path.read_text(encoding="utf-8")).get("machine", {}).get("seed", 0)
    proc = cli("replay", trace)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"replay of {trace}: identical ({len(record_lines(trace))} records, seed {seed})\n", "",
    )  # fmt: skip


@pytest.fixture(scope="module")
def unmap_trace(tmp_path_factory) -> Path:
    """A trace of unmap_under_a_uthread.toml (two #PFs at fixed instruction counts), recorded once."""
    trace = tmp_path_factory.mktemp("unmap") / "unmap.jsonl"
    record_trace("scenarios/unmap_under_a_uthread.toml", trace)
    return trace


@pytest.mark.parametrize(
    "field,value",
    [("t", 3006), ("rip", 0x400024)],  # the fault's virtual time, the faulting rip (really 3005, 0x400021)
    ids=["time", "register"],
)
def test_replay_of_a_hand_edited_trace_reports_the_edited_record(unmap_trace, tmp_path, field, value):
    """Edit one field of the first fault record: replay exits 1 at its index, with 3 context records and both sides."""
    header, *records = unmap_trace.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(records) if json.loads(line)["kind"] == "fault")
    original = records[index]
    edited = json.loads(original)
    assert edited[field] != value
    edited[field] = value
    records[index] = json.dumps(edited, separators=(",", ":"))
    trace = tmp_path / "edited.jsonl"
    trace.write_text("\n".join([header, *records]) + "\n", encoding="utf-8")

    proc = cli("replay", trace)
    out = proc.stdout.splitlines()
    assert (proc.returncode, proc.stderr) == (1, "")
    assert out[:7] == [
        f"replay of {trace}: DIVERGED",
        f"first divergence at record {index}:",
        *(f"    {line}" for line in records[index - 3 : index]),
        f"  recorded: {records[index]}",
        f"  replayed: {original}",
    ]
    assert out[7] == "counts by kind (0 differ):"
    assert counts_table(out) == [["kind", "recorded", "replayed"]] + [
        [kind, str(n), str(n)] for kind, n in sorted(kinds(records).items())
    ]


# -- diff -------------------------------------------------------------------------------------------------


def test_diff_of_two_seeds_finds_the_first_divergence_and_counts_by_kind(tmp_path):
    """ras_counter_unprotected under seeds 1 and 2: diff shows the first differing record and a starred counts table."""
    a, b = tmp_path / "seed1.jsonl", tmp_path / "seed2.jsonl"
    record_trace("scenarios/ras_counter_unprotected.toml", a, "--seed", "1")
    record_trace("scenarios/ras_counter_unprotected.toml", b, "--seed", "2")
    lines_a, lines_b = record_lines(a), record_lines(b)
    index = next(i for i, (x, y) in enumerate(zip(lines_a, lines_b, strict=False)) if x != y)
    assert index > 0

    proc = cli("diff", a, b)
    out = proc.stdout.splitlines()
    assert (proc.returncode, proc.stderr) == (1, "")
    assert out[:7] == [
        f"header seed: {a} 1, {b} 2",
        f"first divergence at record {index}:",
        *(f"    {line}" for line in lines_a[index - 3 : index]),
        f"  {a}: {lines_a[index]}",
        f"  {b}: {lines_b[index]}",
    ]
    count_a, count_b = kinds(lines_a), kinds(lines_b)
    differ = sorted(k for k in count_a | count_b if count_a[k] != count_b[k])
    assert differ != []
    assert out[7] == f"counts by kind ({len(differ)} differ):"
    assert counts_table(out) == [["kind", str(a), str(b)]] + [
        [k, str(count_a[k]), str(count_b[k]), *(["*"] if k in differ else [])] for k in sorted(count_a | count_b)
    ]


def test_diff_of_a_trace_with_itself_exits_0(unmap_trace):
    """diff A A: no header keys differ, the records are identical, no kind is starred; exit 0."""
    proc = cli("diff", unmap_trace, unmap_trace)
    out = proc.stdout.splitlines()
    records = record_lines(unmap_trace)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert out[:2] == [f"records: identical ({len(records)} records)", "counts by kind (0 differ):"]
    assert counts_table(out) == [["kind", str(unmap_trace), str(unmap_trace)]] + [
        [kind, str(n), str(n)] for kind, n in sorted(kinds(records).items())
    ]


# -- export --perfetto ------------------------------------------------------------------------------------


def export(scenario: str, tmp_path: Path) -> tuple[list[dict], dict]:
    """Record a scenario, export it with `export --perfetto`; returns (the trace's records, the JSON document)."""
    trace, out = tmp_path / "t.jsonl", tmp_path / "t.json"
    record_trace(scenario, trace)
    proc = cli("export", trace, "--perfetto", out)
    records = [json.loads(line) for line in record_lines(trace)]
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"wrote {out}: {len(records)} records; open it at https://ui.perfetto.dev\n", "",
    )  # fmt: skip
    with out.open(encoding="utf-8") as f:
        doc = json.load(f)
    return records, doc


def test_export_draws_one_track_per_vcore_with_uthread_slices_and_preemptions(tmp_path):
    """vcore_preemption: a track per vcore (and the kernel's), an X slice per uthread run, instants for preemptions."""
    records, doc = export("scenarios/vcore_preemption.toml", tmp_path)
    events = doc["traceEvents"]
    tracks = [(e["pid"], e["tid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert tracks == [(1, 0, "vcore 0"), (1, 1, "vcore 1"), (1, 10_000, "kernel"), (2, 1, "a"), (2, 2, "b"),
                      (2, 3, "c")]  # fmt: skip
    assert sorted({r["vc"] for r in records if r["vc"] >= 0}) == [0, 1]

    # A uthread slice starts at each `run` record, on that record's vcore, and is named after the uthread.
    slices = sorted((e["ts"], e["tid"], e["name"]) for e in events if e["ph"] == "X" and e["cat"] == "uthread")
    assert slices == [(r["t"] / 1000, r["vc"], r["uth"]) for r in records if r["kind"] == "run"]
    assert {name for _, _, name in slices} == {"a", "b", "c"}
    for vc in (0, 1):  # slices on one track never overlap
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                       if e["ph"] == "X" and e["pid"] == 1 and e["tid"] == vc)  # fmt: skip
        assert all(end <= nxt + 1e-9 for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False)), spans

    preemption = ("preempt", "preempt_warn", "preempt_recover")
    instants = [(e["cat"], e["tid"], e["ts"]) for e in events if e["ph"] == "i" and e["cat"] in preemption]
    assert instants == [(r["kind"], r["vc"], r["t"] / 1000) for r in records if r["kind"] in preemption]
    assert [cat for cat, _, _ in instants] == ["preempt", "preempt_recover", "preempt_warn", "preempt", "preempt_recover"]


def test_export_marks_each_fault_with_an_instant_event(tmp_path):
    """unmap_under_a_uthread: each #PF is an instant "fault" on its vcore's track, with trap, err and address."""
    records, doc = export("scenarios/unmap_under_a_uthread.toml", tmp_path)
    faults = [(e["tid"], e["ts"], e["args"]) for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "fault"]
    want = [r for r in records if r["kind"] == "fault"]
    assert [(tid, ts, args["trap"], args["err"], args["aux"], args["uthread"]) for tid, ts, args in faults] == [
        (0, r["t"] / 1000, 14, r["err"], r["aux"], "summer") for r in want
    ]
    assert [(args["err"], args["aux"]) for _, _, args in faults] == [(4, 0x10001000), (7, 0x10000000)]


# -- explain ----------------------------------------------------------------------------------------------

_HANDLER_LINE = re.compile(r"\[(\w+)\]\s+handler '(\w+)' on thread_refl_fault [^(]*\((\w+)\)")


def test_explain_narrates_the_handler_chain_in_the_order_it_ran(tmp_path):
    """explain handler_chain.toml: a line per handler call (uthread, handler, status), in the order of the trace."""
    path = SCENARIOS / "handler_chain.toml"
    proc = cli("explain", "scenarios/handler_chain.toml")
    out = proc.stdout.splitlines()
    assert (proc.returncode, proc.stderr) == (0, "")
    description = tomllib.loads(path.read_text(encoding="utf-8"))["description"]
    assert out[0] == f"scenarios/handler_chain.toml: {description}"
    narrated = [m.groups() for line in out if (m := _HANDLER_LINE.search(line))]

    trace = tmp_path / "chain.jsonl"
    record_trace("scenarios/handler_chain.toml", trace)
    handlers = [json.loads(line) for line in record_lines(trace)]
    recorded = [(r["uth"], r["handler"], r["status"]) for r in handlers if r["kind"] == "handler"]

    fixed = [("magic", "declines_all", "CONTINUE_NEXT_HANDLER"), ("magic", "skip_magic", "FAULT_FIXED")]
    declined = [(h, "CONTINUE_NEXT_HANDLER") for h in ("declines_all", "skip_magic", "declines_tail")]
    assert narrated == recorded == 3 * fixed + [(uth, *d) for uth in ("fpe", "lazy", "stray") for d in declined]


def test_explain_of_the_trace_tells_the_same_story_as_the_scenario(tmp_path):
    """explain TRACE.jsonl narrates the recorded run line for line as explain SCENARIO does (only the title differs)."""
    trace = tmp_path / "chain.jsonl"
    record_trace("scenarios/handler_chain.toml", trace)
    from_scenario, from_trace = cli("explain", "scenarios/handler_chain.toml"), cli("explain", trace)
    assert (from_trace.returncode, from_trace.stderr) == (0, "")
    assert from_trace.stdout.splitlines()[0] == str(trace)
    assert from_trace.stdout.splitlines()[1:] == from_scenario.stdout.splitlines()[1:]


# -- list and --help --------------------------------------------------------------------------------------


def test_list_prints_every_shipped_scenario_with_its_description():
    """list: one line per scenario file (name, then its description), then how many and how to run one."""
    proc = cli("list")
    out = proc.stdout.splitlines()
    assert (proc.returncode, proc.stderr) == (0, "")
    described = [(p.stem, tomllib.loads(p.read_text(encoding="utf-8"))["description"]) for p in SHIPPED]
    assert [tuple(line.split(None, 1)) for line in out[: len(SHIPPED)]] == described
    assert out[len(SHIPPED) :] == [
        "", f"{len(SHIPPED)} scenarios in {SCENARIOS}; run one with: akaros-sim run NAME",
    ]  # fmt: skip


HELP = {
    "machine": "run it from its entry point with a 64 KiB stack",
    "run": "Load SCENARIO (TOML; format in docs/scenarios.md), run it and check its expectations.",
    "replay": "the trace alone is enough to run the experiment again.",
    "diff": "Compare traces A and B record by record;",
    "export": "Convert a JSONL trace to Chrome trace-event JSON:",
    "explain": "Run SCENARIO (or read a .jsonl trace) and narrate every step:",
    "report": "Read a JSONL trace (or run a scenario .toml) and write one HTML file that needs no network:",
    "plot": "draw its uthreads over virtual time: one row per uthread in creation order",
    "ab": "Run SCENARIO under 2LS A and under 2LS B (the same injections: they are the scenario's)",
    "sweep": "Run every combination of SCENARIOs, 2LSes (--sched, repeatable), the values of each --set",
    "cc": "Compile and link FILEs (.c, .s, .S; the .h files beside them are their headers) into one static",
    "explore": "Search preemption placements in SCENARIO for a schedule that breaks an oracle",
    "ras-check": "For every restartable sequence SCENARIO declares (and each --range), run it once per instruction",
    "list": "List the scenarios in scenarios/ with their one-line descriptions.",
}


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_each_verb_says_what_it_does(verb):
    """`VERB --help` exits 0 and prints the verb's usage and its description."""
    proc = cli(verb, "--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"usage: akaros-sim {verb} ")
    assert HELP[verb] in " ".join(proc.stdout.split())  # argparse re-wraps the description


def test_top_level_help_lists_every_verb():
    """`--help` exits 0 and lists the verbs, in order, each with its one-line summary."""
    proc = cli("--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    listed = re.findall(r"^    ([\w-]+)\s", proc.stdout, flags=re.M)
    assert listed == list(VERBS)


def test_output_piped_into_a_reader_that_leaves_ends_quietly():
    """`akaros-sim explain BIG | head -1`: the verb stops when the reader closes the pipe, exit 0, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "akaros_sim.tools.cli", "explain", "scenarios/mmap_stress.toml"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert first.startswith(b"scenarios/mmap_stress.toml: ")
    assert err == b""


def test_version_prints_the_package_version():
    """`akaros-sim --version` prints the installed version and exits 0."""
    import akaros_sim

    proc = cli("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"akaros-sim {akaros_sim.__version__}")


def test_ctrl_c_stops_a_run_in_one_line_and_keeps_the_trace(tmp_path):
    """SIGINT during a long run: exit 130, one line on stderr (no traceback), the trace so far written."""
    import signal
    import time

    scenario = tmp_path / "long.toml"
    scenario.write_text(
        "description = \"spins for a long time\"\n"
        "[[programs]]\nname = \"p\"\nsource = \"\"\"\nspin:\n mov rcx, rdi\nl:\n dec rcx\n jnz l\n ret\n\"\"\"\n"
        "[[threads]]\nname = \"s\"\nprogram = \"p\"\nentry = \"spin\"\nargs = [10000000000]\n",
        encoding="utf-8",
    )
    trace = tmp_path / "t.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "akaros_sim.tools.cli", "run", str(scenario), "--trace", str(trace)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"akaros-sim: interrupted; the trace so far is in {trace}"]
    assert trace.read_text(encoding="utf-8").count("\\n") >= 2


def test_a_trace_replays_after_it_is_copied_elsewhere(tmp_path):
    """The header carries the scenario and the files it loads: a trace copied away from the checkout replays."""
    made, moved = tmp_path / "made.jsonl", tmp_path / "elsewhere" / "moved.jsonl"
    assert cli("run", "scenarios/pthread_basics.toml", "--quiet", "--trace", made).returncode == 0
    moved.parent.mkdir()
    shutil.copy(made, moved)
    proc = subprocess.run(
        [sys.executable, "-m", "akaros_sim.tools.cli", "replay", str(moved)],
        cwd=moved.parent, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"replay of {moved}: identical")


def test_the_same_scenario_from_two_directories_gives_the_same_bytes(tmp_path):
    """No path of the machine reaches a trace: the scenario copied to two places records identical files."""
    traces = []
    for where in ("one", "two/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        for name in ("pthread_basics.toml", "pthread_basics.py"):
            shutil.copy(SCENARIOS / name, folder / name)
        trace = folder / "t.jsonl"
        assert cli("run", folder / "pthread_basics.toml", "--quiet", "--trace", trace).returncode == 0
        traces.append(trace.read_bytes())
    assert traces[0] == traces[1]
