"""The RAS atomicity oracle: perturb every instruction of every restartable sequence, check all-or-nothing.

A restartable sequence [start, end) is atomic if a uthread stopped anywhere in
it either finishes it as if alone or redoes it from its restart address.  For
each sequence a scenario declares (and each `--range START..END`, checked as
if it were one), `check` runs the scenario once per instruction of the
sequence and once at the instruction at `end` (where a sequence whose commit
was left out has not committed yet), each time with one perturbation there,
at the middle entry into the sequence of each of the first few uthreads that
enter it (by then the others are running too):

* preempt: the vcore is preempted (a peer may recover the uthread);
* migrate (more than one vcore): the vcore is away ten times as long, so a
  peer recovers the uthread and it goes on on another vcore;
* fault: the instruction's code page is evicted, so fetching it faults to the
  2LS, which blocks the uthread on populate_va; the page is back for the
  others as soon as the fault reaches the 2LS (as when a peer's fault filled
  it), so they run meanwhile.

A first run finds the entries (a CPU watch on each sequence's start records
the uthread's instruction count there); each perturbed run then stops that
uthread at its instruction count (the `insns` point of akaros_sim/points.py),
which costs nothing until it fires, where a watch costs a call per entry.

A run is judged by the effects the scenario expects: the 2LS contract, then
its `end`, `exit_status`, `retvals`, `registers`, `memory` and `always`
assertions ([expect], not [expect.schedule]; counts, order and console
describe a schedule, which a perturbation changes on purpose), then an
optional user oracle.  Every failure is run twice more with its trace, and
must give the same failure and trace digest both times, before it is
reported with the command that reruns it.
"""

from __future__ import annotations

import re
import sys

import attrs

from akaros_sim.context import TrapNr
from akaros_sim.disasm import disassemble
from akaros_sim.interpose import FaultStatus
from akaros_sim.memory import PAGE_SIZE
from akaros_sim.points import PointError, points_of
from akaros_sim.tools.explore_run import ExploreError, judge, resolve_oracle
from akaros_sim.tools.scenario import Scenario, ScenarioError, build, load_scenario, parse_overrides
from akaros_sim.tools.shipped import find_scenario

PERTURBATIONS = ("preempt", "migrate", "fault")
MIGRATE_AWAY = 10  # a migration's preemption lasts this many times a preemption's: a peer takes the uthread
MAX_INSNS = 64  # instructions listed per sequence
EFFECTS = re.compile(r"end$|exit_status$|retvals\.|registers\[|memory\[|always\[")  # checks of effects


class RasCheckError(ValueError):
    """Bad input: no sequence to check, an unknown name, a failing unperturbed run (the message says)."""


@attrs.frozen
class Spot:
    """One instruction of a sequence: its index (the last one: the first after it), address, name and text."""

    index: int
    addr: int
    where: str
    text: str
    after: bool = False  # the instruction at `end`

    def __str__(self) -> str:
        return f"{self.addr:#x} {self.where}  {self.text}"


@attrs.frozen
class Finding:
    """A perturbation at one instruction that broke an oracle, the same twice."""

    seq: str
    spot: Spot
    perturbation: str
    uthread: str
    nth: int  # the uthread's nth entry into the sequence
    insns: int  # where it stopped: its retired instruction count
    failure: str
    digest: str

    @property
    def lost(self) -> str:
        """The lost update in words, when the failure is a memory word that came out short."""
        m = re.fullmatch(r"memory\[\d+\]\.(\S+): expected (-?\d+), got (-?\d+)", self.failure)
        if m is None or int(m[2]) <= int(m[3]):
            return self.failure
        n = int(m[2]) - int(m[3])
        return f"{m[1]} is {m[3]}, expected {m[2]}: {n} update{'s' if n > 1 else ''} lost"


@attrs.frozen
class SeqResult:
    name: str
    start: int
    end: int
    restart: int
    spots: tuple[Spot, ...]
    targets: tuple[tuple[str, int], ...]  # (uthread, nth entry) perturbed at each spot
    runs: int
    findings: tuple[Finding, ...]
    declared: bool = True  # False: a --range, checked as if it were a sequence


@attrs.frozen
class RasReport:
    scenario: str
    perturbations: tuple[str, ...]
    sequences: tuple[SeqResult, ...]

    @property
    def ok(self) -> bool:
        return not any(s.findings for s in self.sequences)

    @property
    def unchecked(self) -> tuple[str, ...]:
        """Sequences no uthread entered in the unperturbed run: nothing could be perturbed there."""
        return tuple(s.name for s in self.sequences if not s.targets)


# -- one perturbed run ------------------------------------------------------------------------------------


def _reads_trace(scenario: Scenario, oracle) -> bool:
    """Whether judging a run reads its trace: an oracle may, and an `always` check that counts records does."""
    return oracle is not None or any(a.matcher is not None for a in scenario.expect.always)


def run_one(scenario: Scenario, perturbation: str, uthread: str, insns: int, oracle=None, trace: bool = True):
    """Run the scenario with `perturbation` when `uthread` has retired `insns` instructions.

    Returns (failure or None, the Simulation, its trace digest ("" untraced), the rip where it landed)."""
    sim = build(scenario, trace=trace or _reads_trace(scenario, oracle))
    proc = sim.proc
    if sim.trace.enabled:  # (an empty Trace is falsy: it has no records yet)
        sim.trace.header["ras_check"] = {"perturbation": perturbation, "uthread": uthread, "insns": insns}
    landed: dict = {}
    evicted: list = []

    def fire():
        uth = proc.names[uthread]
        landed["rip"] = uth.ctx.rip
        if perturbation == "fault":
            page = uth.ctx.rip & ~(PAGE_SIZE - 1)
            vmr = proc.mem.lookup(page)
            data = proc.mem.read(page, PAGE_SIZE)
            proc.mem.unmap(page, PAGE_SIZE)  # evicted: the next fetch there faults to the 2LS
            proc.mem.map(page, PAGE_SIZE, vmr.prot, vmr.name, backed=False, backing=data)
            evicted.append(page)
        elif uth.vcore is not None:
            away = proc.costs.preempt_duration_ns * (MIGRATE_AWAY if perturbation == "migrate" else 1)
            proc.kernel.preempt(uth.vcore.id, 0, away)

    def refill(uth, ctx):
        """The evicted page is back for everyone once the uthread's fault reaches the 2LS: only it waits."""
        if evicted and uth.name == uthread and ctx.trap_nr == TrapNr.PF and ctx.aux & ~(PAGE_SIZE - 1) == evicted[0]:
            proc.mem.populate(evicted.pop(), 1)
        return FaultStatus.CONTINUE_NEXT_HANDLER

    refill.name = "ras-check-refill"
    if perturbation == "fault":
        sim.register_fault_handler(refill)
    sim.at_insns(uthread, max(insns, 1), f"ras-check {perturbation}", fire)
    result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    digest = sim.trace.digest() if sim.trace.enabled else ""
    return judge(scenario, sim, result, oracle, EFFECTS.match), sim, digest, landed.get("rip")


# -- the sequences ------------------------------------------------------------------------------------------


def name_at(sim, addr: int) -> str:
    """The label defined last at addr (the one nearest the code), else the nearest symbol before it plus the
    distance, as a disassembler prints it (a C RAS's local label has no symbol)."""
    exact, before = [], []
    for prog in sim.proc.programs.values():
        for name, value in prog.symbols.items():
            if value == addr:
                exact.append(name)
            elif value < addr:
                before.append((value, name))
    if exact:
        return exact[-1]
    if not before:
        return hex(addr)
    value, name = max(before)
    return f"{name}+{addr - value:#x}"


def _sequences(sim, ranges) -> list[tuple[str, int, int, int, bool]]:
    """(name, start, end, restart, declared) of each declared sequence, then of each START..END range."""
    out = []
    ras = sim.proc.ras
    for entry in ras.table.entries if ras is not None else ():
        out.append((name_at(sim, entry.start), entry.start, entry.end, entry.restart, True))
    pts = points_of(sim.proc)
    for text in ranges:
        start, sep, end = text.partition("..")
        if not sep or not start or not end:
            raise RasCheckError(f"--range {text!r}: expected START..END (two code symbols)")
        try:
            a, b = pts.resolve(start, "code"), pts.resolve(end, "code")
        except PointError as exc:
            raise RasCheckError(f"--range {text!r}: {exc}") from None
        if b <= a:
            raise RasCheckError(f"--range {text!r}: END must come after START")
        out.append((start.rpartition(":")[2], a, b, a, False))
    return out


def _spots(sim, name: str, start: int, end: int) -> tuple[Spot, ...]:
    sym, _, first = name.partition("+")
    base = start - (int(first, 0) if first else 0)
    out = []
    for insn in disassemble(sim.mem, start, MAX_INSNS):
        where = f"{sym}+{insn.addr - base:#x}" if insn.addr != base else sym
        out.append(Spot(len(out), insn.addr, where, f"{insn.mnemonic} {insn.op_str}".strip(), insn.addr >= end))
        if insn.addr >= end:
            break
    return tuple(out)


def _record_entries(sim, starts) -> dict:
    """Watch each start: {start: {uthread: [its instruction count at each entry]}}, uthreads in entry order."""
    entries: dict = {start: {} for start in starts}
    proc = sim.proc

    def seen(start, ran):
        vc = proc.engine.current
        uth = vc.current_uthread if vc is not None else None
        if uth is not None:
            counts = entries[start].setdefault(uth.name, [])
            if not counts or counts[-1] != uth.insns + ran:  # not the same entry seen again after a stop
                counts.append(uth.insns + ran)
        return False

    for start in starts:
        proc.cpu.watch(start, lambda ran, start=start: seen(start, ran))
    return entries


def check(scenario: Scenario, perturbations=PERTURBATIONS, targets: int = 2, ranges=(), oracle=None) -> RasReport:
    """Perturb every instruction of every sequence (see the module's docstring); a RasReport."""
    bad = [p for p in perturbations if p not in PERTURBATIONS]
    if bad:
        raise RasCheckError(f"unknown perturbation {bad[0]!r} (known: {', '.join(PERTURBATIONS)})")
    if scenario.vcores < 2:
        perturbations = tuple(p for p in perturbations if p != "migrate")  # no other vcore to go to
        if not perturbations:
            raise RasCheckError(f"{scenario.path.name}: --perturb migrate needs more than one vcore "
                                f"(the scenario has {scenario.vcores})")  # fmt: skip
    sim = build(scenario, trace=_reads_trace(scenario, oracle))
    seqs = _sequences(sim, ranges)
    if not seqs:
        raise RasCheckError(f"{scenario.path.name}: no restartable sequence to check (declare one, or name "
                            "code with --range START..END)")  # fmt: skip
    entries = _record_entries(sim, sorted({s[1] for s in seqs}))
    first = judge(scenario, sim, sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns), oracle,
                  EFFECTS.match)
    if first is not None:
        raise RasCheckError(f"{scenario.path.name}: the unperturbed run fails already: {first}")
    results = []
    for name, start, end, restart, declared in seqs:
        spots = _spots(sim, name, start, end)
        # the middle entry of each of the first `targets` uthreads: by then the others run too
        who = [(u, (len(c) + 1) // 2, c[(len(c) - 1) // 2]) for u, c in list(entries[start].items())[:targets]]
        runs, findings = 0, []
        for spot in spots:
            found = None
            for perturbation in perturbations:
                for uthread, nth, at in who:
                    failure = run_one(scenario, perturbation, uthread, at + spot.index, oracle, trace=False)[0]
                    runs += 1
                    if failure is not None:
                        found = _confirmed(scenario, name, spot, perturbation, uthread, nth, at + spot.index, oracle)
                        break
                if found is not None:
                    break
            if found is not None:
                findings.append(found)
        results.append(SeqResult(name, start, end, restart, spots, tuple((u, n) for u, n, _ in who), runs,
                                 tuple(findings), declared))  # fmt: skip
    return RasReport(scenario.path.name, tuple(perturbations), tuple(results))


def _confirmed(scenario, name, spot, perturbation, uthread, nth, insns, oracle) -> Finding:
    """The determinism self-check: the failing run twice more, traced, gives the same failure and trace."""
    one, sim, digest1, rip = run_one(scenario, perturbation, uthread, insns, oracle)
    two, _s, digest2, _r = run_one(scenario, perturbation, uthread, insns, oracle)
    if one is None or (one, digest1) != (two, digest2):
        raise RasCheckError(f"{scenario.path.name}: {perturbation} at {uthread}:{insns} is not deterministic: "
                            f"{one!r} (trace {digest1[:16]}), then {two!r} (trace {digest2[:16]})")
    if rip is not None and rip != spot.addr:  # a branch inside the sequence: name where it really stopped
        (insn,) = disassemble(sim.mem, rip, 1)
        spot = attrs.evolve(spot, addr=rip, where=name_at(sim, rip), text=f"{insn.mnemonic} {insn.op_str}".strip())
    return Finding(name, spot, perturbation, uthread, nth, insns, one, digest1)


# -- the report -------------------------------------------------------------------------------------------------


def hint(seq: SeqResult, finding: Finding) -> str:
    """Why an instruction loses an update, from where it sits in the sequence."""
    if not seq.declared:
        return "nothing restarts a uthread stopped here: the range is not a declared sequence"
    if finding.spot.after:
        return "the sequence ends before this instruction: its commit is outside it (end one instruction later?)"
    first = seq.findings[0]
    if finding is not first and first.spot.index == 0:
        return "as at the start: a restart goes back there, after the work done before the sequence"
    if finding.spot.index == 0:
        return "a restart lands here, after work done before the sequence (a load, a store): start it earlier?"
    return "a restart from here does not undo what the sequence did before it (a store before its commit?)"


def rerun_command(scenario_arg: str, finding: Finding) -> str:
    return (f"akaros-sim ras-check {scenario_arg} --perturb {finding.perturbation} "
            f"--at {finding.uthread}:{finding.insns} --trace t.jsonl")


def format_report(report: RasReport, scenario_arg: str) -> list[str]:
    lines = []
    for seq in report.sequences:
        who = ", ".join(f"{u} #{k}" for u, k in seq.targets)
        kind = "sequence" if seq.declared else "range"
        head = f"{kind} {seq.name} [{seq.start:#x}, {seq.end:#x}), restart {seq.restart:#x}: "
        if not seq.targets:
            lines.append(head + "no uthread entered it, nothing to perturb")
            continue
        lines.append(head + f"{seq.runs} runs, each perturbing one entry ({who})")
        bad = {f.spot.index: f for f in seq.findings}
        for spot in seq.spots:
            finding = bad.get(spot.index)
            shown = finding.spot if finding is not None else spot  # where the uthread really stopped
            lines.append(f"  {'LOST' if finding else 'ok  '}  {shown}{'   (the first after it)' if spot.after else ''}")
            if finding is not None:
                lines.append(f"        {finding.perturbation} at {finding.uthread}'s entry #{finding.nth} "
                             f"+{finding.spot.index}: {finding.lost}")  # fmt: skip
                lines.append(f"        {hint(seq, finding)}")
                lines.append(f"        twice the same (trace {finding.digest[:12]}): "
                             f"{rerun_command(scenario_arg, finding)}")  # fmt: skip
    broken = [s for s in report.sequences if s.findings]
    if broken:
        count = sum(len(s.findings) for s in broken)
        lines.append(f"FAILED: {count} instruction(s) in {len(broken)} of {len(report.sequences)} sequence(s) "
                     "lose an update")  # fmt: skip
    else:
        checked = len(report.sequences) - len(report.unchecked)
        lines.append(f"atomic: {checked} sequence(s) under {', '.join(report.perturbations)}")
    if report.unchecked:
        lines.append(f"not checked (no uthread entered them): {', '.join(report.unchecked)}")
    return lines


# -- the verb ------------------------------------------------------------------------------------------------


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "ras-check", parents=[common], help="check that every restartable sequence is atomic, instruction by instruction",
        description=(
            "For every restartable sequence SCENARIO declares (and each --range), run it once per instruction of "
            "the sequence and the one after it, with a preemption, a migration or a fault there, and check with "
            "the scenario's expected effects (memory words, return values) that the sequence's effect is "
            "all-or-nothing. A failure names the instruction and the lost update, is run twice more to check "
            "it is deterministic, and comes with the command that reruns it. Exit status: 0 atomic, 1 an update "
            "lost, 2 bad input (docs/explore.md)."
        ),
    )  # fmt: skip
    p.add_argument("scenario")
    p.add_argument("--sched", help="run under this 2LS instead of the scenario's")
    p.add_argument("--perturb", action="append", choices=PERTURBATIONS,
                   help="only these perturbations (repeatable; default all three)")
    p.add_argument("--targets", type=int, default=2, help="uthreads perturbed at each instruction (default 2)")
    p.add_argument("--range", action="append", default=[], metavar="START..END",
                   help="also check this code range as if it were a sequence (repeatable)")
    p.add_argument("--oracle", help="module:function(sim, result) -> bool or a message")
    p.add_argument("--at", metavar="UTHREAD:INSNS",
                   help="run once, with the one --perturb when UTHREAD has retired INSNS instructions (a rerun)")
    p.add_argument("--trace", help="with --at: write the run's trace here (for explain)")
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        scenario = load_scenario(find_scenario(args.scenario), parse_overrides([], args.sched))
        oracle = resolve_oracle(args.oracle)
        if args.targets < 1:
            raise RasCheckError(f"--targets: expected at least 1, got {args.targets}")
        if args.at is not None:
            return _rerun(args, scenario, oracle)
        if args.trace:
            raise RasCheckError("--trace goes with --at (the run to write)")
        report = check(scenario, tuple(args.perturb or PERTURBATIONS), args.targets, args.range, oracle)
    except (RasCheckError, ExploreError, ScenarioError) as exc:
        print(f"akaros-sim ras-check: {exc}", file=sys.stderr)
        return 2
    for line in format_report(report, args.scenario):
        print(line)
    return 0 if report.ok else 1


def _rerun(args, scenario: Scenario, oracle) -> int:
    uthread, _, insns = args.at.rpartition(":")
    if not uthread or not insns.isdigit() or int(insns) < 1 or len(args.perturb or ()) != 1:
        raise RasCheckError(f"--at {args.at!r}: expected UTHREAD:INSNS (INSNS >= 1), with exactly one --perturb")
    failure, sim, digest, rip = run_one(scenario, args.perturb[0], uthread, int(insns), oracle)
    if args.trace:
        sim.trace.write(args.trace)
    if rip is None:
        raise RasCheckError(f"--at {args.at!r}: no uthread {uthread!r} retired {insns} instructions in this run")
    print(f"{args.perturb[0]} at {args.at}, {rip:#x}: {failure or 'no failure'} (trace {digest[:12]})")
    return 1 if failure else 0
