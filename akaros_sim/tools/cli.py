"""The `akaros-sim` command line.

Verbs:

* ``machine PROGRAM``: run one program on the bare machine (no 2LS) and print every stop;
* ``run SCENARIO.toml``: run a scenario, check its expectations and print a summary.

Exit status: 0 on success (every expectation holds), 1 when something failed
(an expectation, an unhandled trap), 2 for bad input (a program or scenario
that cannot be loaded: one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import traceback
from pathlib import Path

from akaros_sim import __version__
from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn, insn_length
from akaros_sim.kernel import SYS_exit as SYS_EXIT
from akaros_sim.kernel import SYS_write as SYS_WRITE
from akaros_sim.memory import PAGE_SIZE, AddressSpace, MemError, Prot
from akaros_sim.tools import cc as cc_verb
from akaros_sim.tools import explore as explore_verb
from akaros_sim.tools import ras_oracle as ras_check_verb
from akaros_sim.tools import sweep as sweep_verb
from akaros_sim.tools.metrics_table import format_metrics, write_json
from akaros_sim.tools.shipped import find_scenario, shipped_scenarios

# Where `machine` puts the stack and the lazily backed heap.
STACK_TOP = 0x7FF0_0000_0000
STACK_SIZE = 64 * 1024
HEAP = 0x1000_0000
HEAP_SIZE = 1 << 20
ENOSYS, EFAULT = 38, 14


def load_program(path: Path):
    """A Program from an assembly file (.s/.S/.asm) or a static ELF."""
    data = path.read_bytes()
    if data[:4] == b"\x7fELF":
        from akaros_sim.elf import load_elf

        return load_elf(path)
    from akaros_sim.asm import assemble

    return assemble(data.decode(), name=path.name)


def cmd_machine(args: argparse.Namespace) -> int:
    """Run a program on a bare machine with a minimal kernel, printing every stop."""
    path = Path(args.program)
    try:
        program = load_program(path)
    except (OSError, ValueError) as exc:
        print(f"akaros-sim: {exc}", file=sys.stderr)
        return 2
    mem = AddressSpace()
    cpu = Cpu(mem)
    mem.load(program)
    # a guard page below the stack stays unmapped
    mem.map(STACK_TOP - STACK_SIZE, STACK_SIZE, Prot.READ | Prot.WRITE, "stack")
    mem.map(HEAP, HEAP_SIZE, Prot.READ | Prot.WRITE, "heap", backed=False)
    ctx = UserContext(rip=program.entry, rsp=STACK_TOP - 8)
    print(f"{program.name}: entry {program.entry:#x}, budget {args.budget} instructions per slice")
    try:
        return _machine_loop(args, mem, cpu, ctx)
    finally:
        cpu.release()


def _machine_loop(args: argparse.Namespace, mem: AddressSpace, cpu: Cpu, ctx: UserContext) -> int:
    slices = 0
    while True:
        if cpu.instructions() >= args.max_insns:
            print(f"[{cpu.instructions():>8} insns] stopped: the instruction budget of {args.max_insns} is spent "
                  "(--max-insns)")  # fmt: skip
            return 3
        stop = cpu.run(ctx, min(args.budget, args.max_insns - cpu.instructions()))
        if isinstance(stop, BudgetSpent):
            slices += 1
            continue
        where = f"[{cpu.instructions():>8} insns]"
        if slices:
            print(f"{where} ... {slices} full slice(s) of {args.budget} instructions")
            slices = 0
        if isinstance(stop, SyscallStop):
            if stop.nr == SYS_EXIT:
                print(f"{where} syscall exit({stop.args[0]})")
                return stop.args[0] & 0xFF
            if stop.nr == SYS_WRITE:
                try:
                    text = mem.read(stop.args[1], min(stop.args[2], 1 << 20))
                except MemError as exc:  # a bad buffer is the guest's error: -EFAULT, as a kernel returns
                    print(f"{where} syscall write({stop.args[0]}, {stop.args[1]:#x}, {stop.args[2]}): -EFAULT ({exc})")
                    ctx.rax = -EFAULT & ((1 << 64) - 1)
                    continue
                print(f"{where} syscall write({stop.args[0]}, {stop.args[1]:#x}, {stop.args[2]}): {text!r}")
                ctx.rax = len(text)
            else:
                print(f"{where} syscall {stop.nr}: -ENOSYS")
                ctx.rax = -ENOSYS & ((1 << 64) - 1)
            continue
        assert isinstance(stop, TrapStop)
        insn = describe_insn(mem, ctx.rip if stop.trap_nr not in (TrapNr.BP, TrapNr.DB) else ctx.rip - 1)
        print(f"{where} {stop.describe()} at rip={ctx.rip:#x}: {insn}")
        if stop.trap_nr == TrapNr.PF and stop.err & PfErr.VMR_BACKED:
            mem.populate(stop.aux)
            print(f"{where}   populated the page at {stop.aux & ~(PAGE_SIZE - 1):#x}; retrying")
            ctx.clear_trap()
            continue
        if stop.trap_nr in (TrapNr.BP, TrapNr.DB):
            ctx.clear_trap()
            continue
        if args.skip_faults:
            try:
                length = insn_length(mem, ctx.rip)
            except (ValueError, MemError) as exc:
                print(f"{where}   cannot skip it: {exc}; registers:")
                print(ctx)
                return 1
            print(f"{where}   skipping the {length}-byte faulting instruction (--skip-faults)")
            ctx.rip += length
            ctx.clear_trap()
            continue
        print("unhandled fault; registers:")
        print(ctx)
        return 1


def cmd_run(args: argparse.Namespace) -> int:
    """Run a scenario, print the summary, return 0 if every expectation holds, 1 if not, 2 if it is invalid."""
    import attrs

    from akaros_sim.tools.scenario import ScenarioError, load_scenario, parse_overrides, run_scenario

    try:
        scenario = load_scenario(find_scenario(args.scenario), parse_overrides(args.set, args.sched))
        if args.seed is not None:
            scenario = attrs.evolve(scenario, seed=args.seed)
        for path in (args.trace, args.json):
            if path is not None:
                open(path, "w").close()  # a path we cannot write fails now, not after the run
        watch = Progress(sys.stderr).watching if sys.stderr.isatty() else None
        run = run_scenario(scenario, trace_path=args.trace, watch=watch)
    except ScenarioError as exc:
        print(f"akaros-sim: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # a bug in a 2LS, handler or Python uthread: one clear line, the trace already written
        notes = "; ".join(getattr(exc, "__notes__", ()))
        where = f" ({notes})" if notes else ""
        kept = f"; the trace so far is in {args.trace}" if args.trace else ""
        if args.debug:
            traceback.print_exception(exc)
        print(f"akaros-sim: the run failed: {type(exc).__name__}: {exc}{where}{kept}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None or exc.filename not in (args.trace, args.json):
            raise
        print(f"akaros-sim: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(format_summary(run, quiet=args.quiet))
    metrics = run.result.metrics
    if args.metrics:
        print(format_metrics(metrics))
    if args.json is not None:
        about = {"scenario": str(scenario.path), "seed": scenario.seed, "vcores": scenario.vcores,
                 "sched": scenario.scheduler, "version": __version__}  # fmt: skip
        write_json(metrics, about, args.json)
    return 0 if run.ok else 1


class Progress:
    """One self-overwriting stderr line for a long run: virtual time, trace records, uthreads alive.

    A host thread reads the simulation's counters every `interval` seconds while
    the run goes on; it writes nothing the run sees, so traces stay identical.
    """

    def __init__(self, stream, interval: float = 0.5) -> None:
        self.stream = stream
        self.interval = interval
        self.shown = False

    def line(self, sim) -> str:
        return (f"akaros-sim: t={sim.engine.now:,} ns virtual, {len(sim.trace):,} records, "
                f"{sim.proc.live} uthread(s) alive")  # fmt: skip

    @contextlib.contextmanager
    def watching(self, sim):
        done = threading.Event()

        def show() -> None:
            while not done.wait(self.interval):
                self.stream.write("\r" + self.line(sim) + "\033[K")
                self.stream.flush()
                self.shown = True

        painter = threading.Thread(target=show, name="akaros-sim progress", daemon=True)
        painter.start()
        try:
            yield
        finally:
            done.set()
            painter.join()
            if self.shown:  # leave the terminal as it was: the summary follows on stdout
                self.stream.write("\r\033[K")
                self.stream.flush()


def format_summary(run, quiet: bool = False) -> str:
    """The text `akaros-sim run` prints for a ScenarioRun (only failures and the verdict if quiet)."""
    checks, result = run.checks, run.result
    failed = [c for c in checks if not c.ok]
    verdict = (
        f"result: {'PASS' if not failed else 'FAIL'}: {len(checks) - len(failed)} of {len(checks)} expectations hold"
    )
    if quiet:
        return "\n".join([*(_check_line(c) for c in failed), verdict])
    out = [f"scenario: {run.scenario.path}", f"  {run.scenario.description}", "expectations:"]
    out += [_check_line(c) for c in checks] or ["  (none)"]
    status = "none" if result.exit_status is None else result.exit_status
    out.append(f"run: ended {result.end.name.lower()} ({result.end.value}), exit status {status}")
    if result.end.name == "TIME_BUDGET" and "until_ns" not in run.scenario.text:
        out.append("  (the default budget of 1 s of virtual time; raise it with [run] until_ns)")
    out.append(f"  virtual time {result.time_ns:,} ns, {result.insns:,} instructions")
    out += ["vcores:", "  vcore    busy  uthread  switches  preemptions"]
    for vc in result.vcores:
        busy, uth = (_percent(ns, result.time_ns) for ns in (vc.busy_ns, vc.uthread_ns))
        out.append(f"  {vc.vcore:>5} {busy:>7} {uth:>8} {vc.switches:>9} {vc.preemptions:>12}")
    counts = result.counts
    kinds = (("faults", "fault"), ("syscalls", "syscall"), ("signals", "signal"), ("context switches", "run"),
             ("preemptions", "preempt"))  # fmt: skip
    out.append("events: " + ", ".join(f"{label} {counts.get(kind, 0)}" for label, kind in kinds))
    if result.extable_sites:
        out.append("extable sites fired:")
        symbols = _symbol_names(run.sim)
        for insn, hits in result.extable_sites:
            out.append(f"  {insn:#x} {symbols.get(insn, ''):<28} {hits} time(s)")
    if result.ras_restarts:
        out.append("RAS restarts: " + ", ".join(f"{start:#x} x{n}" for start, n in result.ras_restarts))
    console = "".join(run.sim.kernel.console)
    out.append("console:" if console else "console: (empty)")
    out += [f"  | {line}" for line in console.splitlines()]
    if result.report:
        out.append("fault report:")
        out += [f"  | {line}" for line in result.report.splitlines()]
    out.append(verdict)
    return "\n".join(out)


def _symbol_names(sim) -> dict[int, str]:
    """address -> "program:symbol" for every loaded program (the first name at an address)."""
    names: dict[int, str] = {}
    for prog in sim.programs.values():
        for sym, addr in sorted(prog.symbols.items()):
            names.setdefault(addr, f"{prog.name}:{sym}")
    return names


def _check_line(check) -> str:
    """`PASS name: value` or `FAIL name: expected X, got Y`."""
    if check.ok:
        if check.got != check.expected and isinstance(check.expected, str) and isinstance(check.got, int):
            return f"  PASS {check.name}: {_show(check.got)} (expected {check.expected})"  # a range
        return f"  PASS {check.name}: {_show(check.expected)}"
    return f"  FAIL {check.name}: expected {_show(check.expected)}, got {_show(check.got)}"


def _show(value, limit: int = 100) -> str:
    """A value on one line: strings quoted with escapes, big integers also in hex."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, int):
        return f"{value} ({value:#x})" if abs(value) >= 0x10000 else str(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _read_trace(path: str):
    from akaros_sim.trace import Trace

    try:
        return Trace.read(path)
    except OSError as exc:
        raise SystemExit(_fail(f"cannot read {path}: {exc.strerror or exc}")) from None
    except (ValueError, KeyError) as exc:
        raise SystemExit(_fail(f"{path}: not an akaros-sim trace ({exc})")) from None


def _fail(message: str) -> int:
    print(f"akaros-sim: {message}", file=sys.stderr)
    return 2


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-run a trace's scenario and seed; 0 if the new trace is identical, 1 at the first difference."""
    from akaros_sim.tools.replay import ReplayError, replay

    trace = _read_trace(args.trace)
    try:
        comparison, _run = replay(trace)
    except ReplayError as exc:
        return _fail(f"{args.trace}: {exc}")
    if comparison.same:
        print(f"replay of {args.trace}: identical ({len(trace.records)} records, seed {trace.header.get('seed')})")
        return 0
    print(f"replay of {args.trace}: DIVERGED")
    print(comparison.report("recorded", "replayed"))
    return 1


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two traces: first divergence with context, then counts by kind; 0 if identical."""
    from akaros_sim.tools.replay import compare

    a, b = _read_trace(args.a), _read_trace(args.b)
    comparison = compare(a, b)
    print(comparison.report(args.a, args.b))
    return 0 if comparison.same and not comparison.header_diff else 1


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trace as Chrome trace-event JSON for ui.perfetto.dev."""
    from akaros_sim.tools.perfetto import export

    trace = _read_trace(args.trace)
    try:
        export(trace, args.perfetto)
    except OSError as exc:
        return _fail(f"cannot write {args.perfetto}: {exc.strerror or exc}")
    print(f"wrote {args.perfetto}: {len(trace.records)} records; open it at https://ui.perfetto.dev")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Run a scenario (or read a trace) and narrate it, one sentence per record."""
    from akaros_sim.tools.explain import Selection, deciding, narrate
    from akaros_sim.tools.scenario import ScenarioError, run_scenario

    if args.source.endswith(".jsonl"):
        trace = _read_trace(args.source)
        title = args.source
    else:
        try:
            run = run_scenario(args.source)
        except ScenarioError as exc:
            return _fail(str(exc))
        trace = run.sim.trace
        title = f"{args.source}: {run.scenario.description}"
    select = Selection(threads=tuple(args.thread or ()), vcore=args.vcore, t_from=args.t_from, t_to=args.t_to,
                       kinds=tuple(args.kind or ()), around=args.around, context=args.context, limit=args.limit,
                       by_time=args.by_time, faults=args.faults)  # fmt: skip
    unknown = sorted(set(select.threads) - {rec.uth for rec in trace.records})
    if unknown:
        return _fail(f"{args.source}: --thread {unknown[0]!r}: no record names that uthread")
    try:
        lines = narrate(trace, brief=args.brief, select=select)
    except ValueError as exc:
        return _fail(f"{args.source}: {exc}")
    print(title)
    if select.by_time:
        print("(records in virtual-time order, vcores merged; #N is the emission order)")
    for line in lines:
        print(line)
    for line in deciding(trace):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML page about a run: summary, metrics, Gantt chart, fault stories."""
    from akaros_sim.tools.report import STORIES_SHOWN, ReportError, trace_of, write_report

    try:
        trace = trace_of(args.source)
    except ReportError as exc:
        return _fail(str(exc))
    try:
        chart = write_report(trace, args.html)
    except OSError as exc:
        return _fail(f"cannot write {args.html}: {exc.strerror or exc}")
    told = min(len(chart.faults), STORIES_SHOWN)
    print(f"wrote {args.html}: {len(chart.spans)} uthread(s), {len(chart.faults)} fault(s), {told} told in full; "
          "open it in a web browser")  # fmt: skip
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List the shipped scenarios with their one-line descriptions."""
    import tomllib

    paths = shipped_scenarios()
    if not paths:
        return _fail("no shipped scenarios found (the package akaros_sim.scenarios is missing: reinstall akaros-sim)")
    width = max(len(p.stem) for p in paths)
    for path in paths:
        try:
            desc = tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
        except (OSError, tomllib.TOMLDecodeError):
            desc = "(unreadable)"
        print(f"{path.stem:<{width}}  {desc}")
    print(f"\n{len(paths)} scenarios in {paths[0].parent}; run one with: akaros-sim run NAME")
    return 0


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


_positive, _natural = _at_least(1), _at_least(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akaros-sim",
        description="A deterministic simulator of Akaros-style user-level scheduling.",
        epilog=(
            "Start with `akaros-sim list`, then `akaros-sim run scenarios/NAME.toml --trace run.jsonl`; "
            "`akaros-sim explain scenarios/NAME.toml` narrates a run, `replay`/`diff` check and compare "
            "traces, `export --perfetto` draws them. `akaros-sim VERB --help` explains each verb."
        ),
    )
    parser.add_argument("--version", action="version", version=f"akaros-sim {__version__}")
    debug_help = "on an internal error, show the Python traceback (without it: one line, exit status 1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # the flag is accepted after the verb too; SUPPRESS keeps a flag given before the verb
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    machine = sub.add_parser(
        "machine",
        parents=[common],
        help="run one program on the bare machine (no 2LS) and print every stop",
        description=(
            "Load PROGRAM (x86-64 assembly or a static ELF), run it from its entry point with a "
            f"64 KiB stack and a lazily backed 1 MiB heap at {HEAP:#x}, and print every way it "
            "stops: syscalls (write, 101, and exit, 12: the runtime's Akaros numbers, are served), page faults on the heap (populated and "
            "retried), breakpoints (continued) and any other trap (reported with registers; the run ends, "
            "or with --skip-faults the instruction is skipped). Exit status: 0 after exit(0), 1 on an "
            "unhandled trap, 2 if PROGRAM cannot be loaded."
        ),
    )
    machine.add_argument("program", help="assembly source (.s) or static x86-64 ELF")
    machine.add_argument(
        "--skip-faults", action="store_true", help="report an unhandled trap, skip the instruction and go on"
    )
    machine.add_argument("--budget", type=_positive, default=10_000, help="instructions per slice (default 10000)")
    machine.add_argument("--max-insns", type=_positive, default=1_000_000_000,
                         help="stop after this many instructions in all (default 1000000000)")  # fmt: skip
    machine.set_defaults(func=cmd_machine)
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a scenario, check its expectations and print a summary",
        description=(
            "Load SCENARIO (TOML; format in docs/scenarios.md), run it and check its expectations. "
            "Prints each expectation as PASS or FAIL with what was expected and got, why the run ended, "
            "its virtual time and instructions, per-vcore utilisation, counts of faults, syscalls, signals "
            "and context switches, the console output and the fault report if any. Exit status: 0 if every "
            "expectation holds, 1 if one fails, 2 if the scenario is invalid (one line on stderr)."
        ),
    )
    run.add_argument("scenario", help="the scenario file (.toml), or the name of a shipped one (akaros-sim list)")
    run.add_argument("--sched", metavar="NAME", help="run under this 2LS instead of the scenario's (a built-in "
                     "name, or module:attr / file.py:attr); its [scheduler] params are dropped")  # fmt: skip
    run.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                     help="override a scenario key, e.g. machine.vcores=4, costs.insn_ns=2, scheduler.params.tick_ns=5000 "
                          "(repeatable; docs/scenarios.md, Overrides)")  # fmt: skip
    run.add_argument("--trace", metavar="FILE", help="write the JSONL trace to FILE (whatever the outcome)")
    run.add_argument("--quiet", action="store_true", help="print only failed expectations and the verdict")
    run.add_argument("--seed", type=int, help="run with this seed instead of the scenario's")
    run.add_argument("--metrics", action="store_true",
                     help="also print per-uthread, process and per-vcore metrics (docs/metrics.md)")  # fmt: skip
    run.add_argument("--json", metavar="FILE", help="write the metrics to FILE as JSON, led by what made them")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="re-run the scenario recorded in a trace and check the new trace is identical",
        description=(
            "A trace written by `akaros-sim run --trace` carries its scenario (text and path) and seed in its "
            "header, so the trace alone is enough to run the experiment again. replay does that and compares "
            "record by record. Exit status: 0 if identical, 1 at the first difference (printed with the records "
            "before it and the counts of each kind on both sides), 2 if the trace cannot be replayed."
        ),
    )
    replay.add_argument("trace", help="a JSONL trace from `akaros-sim run --trace`")
    replay.set_defaults(func=cmd_replay)

    diff = sub.add_parser(
        "diff",
        parents=[common],
        help="compare two traces: the first divergence, then counts by kind",
        description=(
            "Compare traces A and B record by record; print the header keys that differ (scenario, seed, ...), "
            "the first differing record of each with the records before it, then a table of record counts by "
            "kind with the differing kinds starred. Exit status: 0 if identical, 1 otherwise."
        ),
    )
    diff.add_argument("a", help="the first trace (JSONL)")
    diff.add_argument("b", help="the second trace (JSONL)")
    diff.set_defaults(func=cmd_diff)

    export = sub.add_parser(
        "export",
        parents=[common],
        help="write a trace as Chrome trace-event JSON for ui.perfetto.dev",
        description=(
            "Convert a JSONL trace to Chrome trace-event JSON: one track per vcore showing which uthread ran "
            "when (and vcore context between), with instant events for faults, extable fixups, handler "
            "decisions, RAS restarts, syscalls, signals, preemptions and ticks. Open the file at "
            "https://ui.perfetto.dev or chrome://tracing. Times are virtual."
        ),
    )
    export.add_argument("trace", help="a JSONL trace")
    export.add_argument("--perfetto", metavar="OUT.json", required=True, help="where to write the JSON")
    export.set_defaults(func=cmd_export)

    explain = sub.add_parser(
        "explain",
        parents=[common],
        help="tell the story of a run in plain sentences (for teaching)",
        description=(
            "Run SCENARIO (or read a .jsonl trace) and narrate every step: each sched_ops call, each vcore "
            "entry and why, each handler in a fault chain with its decision and the registers it changed, the "
            "faulting instruction disassembled, syscalls, signals, preemptions and RAS restarts."
        ),
    )
    explain.add_argument("source", help="a scenario (.toml) or a trace (.jsonl)")
    explain.add_argument("--brief", action="store_true", help="leave out the sched_ops call records")
    explain.add_argument("--around", type=_natural, metavar="INDEX",
                         help="only record #INDEX and the records before it (a report's 'trace record #INDEX')")
    explain.add_argument("--context", type=_natural, default=20, metavar="N",
                         help="with --around, how many records before INDEX (default 20)")  # fmt: skip
    explain.add_argument("--thread", action="append", metavar="NAME",
                         help="only records about this uthread (repeatable)")  # fmt: skip
    explain.add_argument("--vcore", type=_natural, metavar="N", help="only records on vcore N")
    explain.add_argument("--from", dest="t_from", type=_natural, metavar="T", help="only records at T ns or later")
    explain.add_argument("--to", dest="t_to", type=_natural, metavar="T", help="only records at T ns or earlier")
    explain.add_argument("--kind", action="append", metavar="KIND",
                         help="only records of this kind (repeatable: fault, handler, op, run, syscall, ...)")  # fmt: skip
    explain.add_argument("--limit", type=_positive, metavar="N", help="print at most N records")
    explain.add_argument("--faults", action="store_true",
                         help="only each fault's story: the instruction, each handler's decision and register "
                              "changes, the fixup or signal, the resume")  # fmt: skip
    explain.add_argument("--by-time", action="store_true",
                         help="merge the vcores' records in virtual-time order (default: the order they were made)")  # fmt: skip
    explain.set_defaults(func=cmd_explain)

    report = sub.add_parser(
        "report",
        parents=[common],
        help="write one self-contained HTML page about a run (summary, metrics, Gantt chart, fault stories)",
        description=(
            "Read a JSONL trace (or run a scenario .toml) and write one HTML file that needs no network: the run's "
            "summary and metrics (docs/metrics.md), a Gantt chart of uthread time (one row per uthread, spans "
            "coloured by state and by the vcore they ran on, marks for faults, extable fixups and RAS restarts), "
            "and each fault's story (the instruction, the handlers' decisions, the registers they changed, the "
            "fixup or signal, the resume); a click on a fault mark opens its story. Same trace, same bytes. "
            "Exit status: 0 once written, 2 for bad input or an unwritable OUT.html."
        ),
    )
    report.add_argument("source", metavar="TRACE", help="a trace (.jsonl) from `akaros-sim run --trace`, or a scenario (.toml)")
    report.add_argument("--html", metavar="OUT.html", required=True, help="where to write the page")
    report.set_defaults(func=cmd_report)

    __import__("akaros_sim.tools.plots", fromlist=["add_parser"]).add_parser(sub, common)  # plot
    __import__("akaros_sim.tools.ab", fromlist=["add_parser"]).add_parser(sub, common)  # ab
    sweep_verb.add_parser(sub, common)
    cc_verb.add_parser(sub, common)
    explore_verb.add_parser(sub, common)
    ras_check_verb.add_parser(sub, common)
    lister = sub.add_parser("list", parents=[common], help="list the shipped scenarios with their descriptions",
                            description="List the scenarios in scenarios/ with their one-line descriptions.")
    lister.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if isinstance(getattr(args, "source", None), str):  # explain, report, plot: a shipped scenario by name too
        args.source = str(find_scenario(args.source))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        trace = getattr(args, "trace", None)
        kept = f"; the trace so far is in {trace}" if trace else ""
        print(f"akaros-sim: interrupted{kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, as Unix tools do.  Point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug of ours: one line and how to see more, never a bare traceback
        if args.debug:
            raise
        print(f"akaros-sim: internal error in `{args.verb}`: {type(exc).__name__}: {exc} "
              "(run again with --debug for the Python traceback, and please report it)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
