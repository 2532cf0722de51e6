"""Schedule exploration: search injection placements for one that breaks a scenario, shrink it, replay it.

The artefact is a schedule file (docs/explore.md)::

    {"format": "akaros-sim-schedule/1", "scenario": "x.toml", "sched": "roundrobin",
     "choices": [{"preempt": {"vcore": null, "when": {"code": "seq_start", "uthread": "w0", "nth": 2,
                                                       "offset": 1}}}],
     "failure": "memory[0].main:counter: expected 12, got 3"}

Each choice names its point by meaning (akaros_sim/points.py), so the file
survives edits that shift times and step indices.  A first, unperturbed run
records the points the scenario passes; strategies choose among those
(explore_search.py), each candidate run is one explore_run.run_task, and a
failure is shrunk and explained by explore_shrink.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import sys
from pathlib import Path

import attrs

from akaros_sim.disasm import disassemble
from akaros_sim.points import PointError
from akaros_sim.tools import explore_run as run
from akaros_sim.tools.explore_run import FORMAT, FORMAT2, KINDS, ExploreError, Outcome, judge, run_choices
from akaros_sim.tools.explore_search import INTERESTING_OPS, STRATEGIES, Progress, candidates, choices_at, search
from akaros_sim.tools.explore_search import plans as explore_plans
from akaros_sim.tools.explore_shrink import decisive, shrink, windows
from akaros_sim.tools.scenario import Scenario, ScenarioError, load_scenario, parse_overrides
from akaros_sim.tools.shipped import find_scenario
from akaros_sim.tools.sweep import SweepError

__all__ = ["FORMAT", "FORMAT2", "INTERESTING_OPS", "KINDS", "STRATEGIES", "Exploration", "ExploreError", "Outcome",
           "candidates", "explore", "judge", "load", "run_choices", "save", "shrink"]  # fmt: skip


@attrs.frozen
class Exploration:
    """An exploration's result: runs judged (the first run included), the first failure in plan order and
    its shrunk form, the candidate count, the strategy that found it, the `sometimes` assertions that never
    held (coverage gaps), the shrunk schedule's windows and deciding events, whether the time budget ended
    it, and whether the failing run replayed to the same trace."""

    runs: int
    found: Outcome | None
    shrunk: Outcome | None = None
    points: int = 0
    strategy: str | None = None
    gaps: tuple[str, ...] = ()
    windows: tuple = ()
    decisive: dict | None = None
    timed_out: bool = False
    replayed: bool = True


def explore(scenario: Scenario, strategy: str = "random", seed: int = 0, runs: int = 100, depth: int = 3,
            max_preemptions: int = 2, oracle=None, watch=(), shrink_it: bool = True, progress=None, *,
            kinds=("preempt",), workers: int = 1, dask: str | None = None, time_s: float | None = None,
            liveness_ns: int | None = None, explain: bool = True, mutexes=()) -> Exploration:  # fmt: skip
    """Record the points a first run passes, then try schedules until one fails; shrink and explain it.

    kinds: what may be injected (KINDS); workers/dask: the sweep's executor; time_s: a host-time budget
    checked between batches; liveness_ns: the liveness mode (a uthread runnable longer than this, or never
    finishing, fails) instead of the safety oracles; mutexes: names of Mutexes whose acquisitions are points
    too (a uthread preempted holding one).
    """
    if strategy not in STRATEGIES:
        raise ExploreError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ExploreError(f"--kinds: unknown kind(s) {', '.join(bad) or '(none)'} (known: {', '.join(KINDS)})")
    ranges = dict((w.partition("..")[0], w.partition("..")[2]) for w in watch)  # start -> end symbol or ""
    first = run_choices(scenario, (), oracle, tuple(ranges), record=True, liveness_ns=liveness_ns, mutexes=mutexes)
    names = [a.name for a in scenario.expect.sometimes]
    if first.failure is not None:
        return Exploration(1, first, first, gaps=_gaps(names, first.sometimes))
    sim = first.sim
    lengths = _sequence_lengths(sim, ranges)
    points = candidates(sim.proc.points.log, scenario.vcores, lengths)
    cands = choices_at(points, kinds, _blocking_syscalls(sim), [m.start for m in scenario.mappings])
    planned = explore_plans(strategy, len(cands), seed, runs, depth, max_preemptions)
    found = search(scenario, cands, planned, oracle, liveness_ns, workers, dask, time_s, first.sometimes, progress)
    gaps = _gaps(names, found.sometimes)
    if found.choices is None:
        return Exploration(1 + found.runs, None, None, len(cands), gaps=gaps, timed_out=found.timed_out)
    again = run_choices(scenario, found.choices, oracle, liveness_ns=liveness_ns)  # the determinism self-check
    replayed = (again.failure, again.digest) == (found.failure, found.digest)
    shrunk = wins = why = None
    if shrink_it:
        shrunk = shrink(scenario, again, oracle, liveness_ns)
        twice = run_choices(scenario, shrunk.choices, oracle, liveness_ns=liveness_ns)  # the one saved, too
        replayed = replayed and (twice.failure, twice.digest) == (shrunk.failure, shrunk.digest)
        if explain:
            wins = windows(scenario, shrunk, _limits(sim, lengths), oracle, liveness_ns)
            why = decisive(scenario, shrunk, wins, oracle, liveness_ns, _insn_text(sim))
    return Exploration(1 + found.runs, again, shrunk, len(cands), found.strategy, gaps, tuple(wins or ()), why,
                       replayed=replayed)  # fmt: skip


def _gaps(names: list, held: tuple) -> tuple[str, ...]:
    return tuple(name for name, ok in zip(names, held, strict=True) if not ok)


def _blocking_syscalls(sim) -> list[str]:
    """The syscalls the first run waited for (those with a later completion), in first-seen order."""
    return list(dict.fromkeys(r.get("name") for r in sim.trace.records if r.kind == "syscall_done"))


def _limits(sim, lengths: dict):
    """limit(when, key): the latest value a point can take that the first run reached."""
    log = sim.proc.points.log or []

    def limit(when: dict, key: str) -> int | None:
        if key == "nth":
            same = {k: v for k, v in when.items() if k not in ("nth", "offset")}
            return sum(1 for p in log if {k: p.get(k) for k in same} == same)
        if key == "offset":
            return lengths.get(when.get("ras", when.get("code")), 1) - 1
        if key == "insns":
            uth = sim.proc.names.get(when["uthread"])
            return uth.insns if uth is not None else None
        return sim.proc.engine.time()

    return limit


def _insn_text(sim):
    """insn_text(when, offset): the instruction `offset` into the sequence a code point names, in words."""

    def text(when: dict, offset: int) -> str:
        key = "ras" if "ras" in when else "code"
        start = sim.proc.points.resolve(when[key], key)
        insn = disassemble(sim.mem, start, offset + 1)[-1]
        return f"{when['uthread']} runs {when[key]}+{offset} ({insn.mnemonic} {insn.op_str}) first"

    return text


def _sequence_lengths(sim, ranges: dict) -> dict:
    """Instructions in each declared RAS (by start symbol) and each watched `start..end` range."""
    out = {}
    pts = sim.proc.points
    ras = sim.proc.ras
    for entry in ras.table.entries if ras is not None else ():
        out[pts.symbol_at(entry.start) or hex(entry.start)] = _count_insns(sim, entry.start, entry.end)
    for name, end in ranges.items():
        out[name] = _count_insns(sim, pts.resolve(name, "code"), pts.resolve(end, "code")) if end else 1
    return out


def _count_insns(sim, start: int, end: int) -> int:
    insns = disassemble(sim.mem, start, 64)
    return max(1, sum(1 for i in insns if i.addr < end))


# -- the schedule file ----------------------------------------------------------------------------------


def save(path, scenario: Scenario, outcome: Outcome, result: Exploration | None = None) -> None:
    """Write a schedule file: /1 for preemptions only, /2 once another kind is in it."""
    doc = {"format": run.format_of(outcome.choices), "scenario": scenario.path.name, "sched": scenario.scheduler,
           "seed": scenario.seed, "choices": list(outcome.choices), "failure": outcome.failure,
           "trace_digest": outcome.digest}  # fmt: skip
    if result is not None and result.windows:
        doc["windows"] = list(result.windows)
    if result is not None and result.decisive is not None:
        doc["decisive"] = _saved(result.decisive)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _saved(decisive: dict) -> dict:
    return {k: v for k, v in decisive.items() if k != "passing_choices"}


def mark_decisive(trace, decisive: dict | None) -> None:
    """Put the deciding events in the header of the failing run's trace, for explain, report and export.
    Only as it is written: the digests explore prints and saves are of the run, which this does not change."""
    if decisive is not None and isinstance(decisive.get("records"), list):
        trace.header["decisive"] = _saved(decisive)


def saved_decisive(path, digest: str) -> dict | None:
    """A schedule file's deciding events, if a replay gave the trace they were saved with (its record
    numbers point into that trace only)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return doc.get("decisive") if doc.get("trace_digest") == digest else None


def load(path) -> list[dict]:
    """The choices of a schedule file (format /1 or /2), validated."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExploreError(f"{path}: cannot read a schedule: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") not in run.FORMATS:
        raise ExploreError(f"{path}: expected \"format\": \"{FORMAT}\" or \"{FORMAT2}\"")
    choices = doc.get("choices", [])
    if not isinstance(choices, list):
        raise ExploreError(f"{path}: choices: expected a list")
    out = [run.validate_choice(choice, f"{path}: choices[{i}]") for i, choice in enumerate(choices)]
    if doc["format"] == FORMAT and run.format_of(out) != FORMAT:
        raise ExploreError(f"{path}: a {FORMAT} file holds preemptions only; other kinds need {FORMAT2}")
    return out


# -- the verb ------------------------------------------------------------------------------------------


def _positive(option: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ExploreError(f"{option}: expected an integer >= 1, got {text!r}")
    return value


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "explore", parents=[common], help="search injection placements for a failing schedule, shrink and save it",
        description=(
            "Search preemption placements in SCENARIO for a schedule that breaks an oracle (its [expect] invariants "
            "and always-assertions, the 2LS contract, --oracle; or, with --liveness, a uthread left runnable too "
            "long), other injections too (--kinds), shrink it to a minimal one, name the two events whose order "
            "decides it, save it (--out) and replay it (--replay); report sometimes-assertions that never held. "
            "Exit status: 0 nothing failed, 1 a failing schedule, 2 bad input (docs/explore.md)."
        ),
    )
    p.add_argument("scenario")
    p.add_argument("--sched", help="run under this 2LS instead of the scenario's")
    p.add_argument("--strategy", choices=STRATEGIES, default="random")
    p.add_argument("--seed", type=int, default=0, help="the explorer's RNG seed (not the scenario's)")
    p.add_argument("--runs", type=int, default=200, help="budget of runs (default 200)")
    p.add_argument("--time", type=float, metavar="SECONDS", help="also stop after this much host time (between batches)")
    p.add_argument("--depth", type=int, default=3, help="PCT's largest depth d")
    p.add_argument("--max-preemptions", type=int, default=2, help="k: injections per schedule at most")
    p.add_argument("--kinds", default="preempt", metavar="K1,K2",
                   help=f"what to inject: {', '.join(KINDS)} (default preempt)")  # fmt: skip
    p.add_argument("--watch", action="append", default=[],
                   help="also preempt inside code at SYMBOL or SYMBOL..END (no RAS needed); repeatable")
    p.add_argument("--mutex", action="append", default=[], metavar="NAME",
                   help="also preempt a uthread right after it acquires the Mutex NAME (its name in the trace); "
                        "repeatable")  # fmt: skip
    p.add_argument("--oracle", help="module:function(sim, result) -> bool or a message")
    p.add_argument("--liveness", metavar="BOUND_NS",
                   help="liveness mode: fail when a uthread stays runnable longer than BOUND_NS or never finishes")
    p.add_argument("--jobs", default="1", metavar="N", help="worker processes (default 1: this process)")
    p.add_argument("--dask", metavar="ADDRESS|local",
                   help="run on a Dask scheduler at ADDRESS, or on a local cluster of --jobs processes")
    p.add_argument("--out", help="save the shrunk failing schedule here (JSON)")
    p.add_argument("--replay", help="run this schedule file once instead of exploring")
    p.add_argument("--trace", help="write the trace of the failing (or replayed) run here (for explain)")
    p.set_defaults(func=main)


def _argv(args) -> list[str]:
    """The explore command line that reproduces this search (its options that are not the defaults)."""
    out = ["explore", args.scenario]
    for option, value, default in (("--sched", args.sched, None), ("--strategy", args.strategy, "random"),
                                   ("--seed", args.seed, 0), ("--runs", args.runs, 200), ("--depth", args.depth, 3),
                                   ("--max-preemptions", args.max_preemptions, 2), ("--kinds", args.kinds, "preempt"),
                                   ("--oracle", args.oracle, None), ("--liveness", args.liveness, None)):  # fmt: skip
        if value != default:
            out += [option, str(value)]
    for watch in args.watch:
        out += ["--watch", watch]
    for name in args.mutex:
        out += ["--mutex", name]
    return out




def main(args) -> int:
    progress = None
    try:
        scenario = load_scenario(find_scenario(args.scenario), parse_overrides([], args.sched))
        oracle = args.oracle
        run.resolve_oracle(oracle)  # a bad reference fails here, not in a worker
        liveness_ns = _positive("--liveness", args.liveness) if args.liveness is not None else None
        if args.replay:
            out = run_choices(scenario, load(args.replay), oracle, liveness_ns=liveness_ns)
            if args.trace:
                mark_decisive(out.sim.trace, saved_decisive(args.replay, out.digest))
                out.sim.trace.write(args.trace)
            print(f"replayed {len(out.choices)} choice(s): {out.failure or 'no failure'} (trace {out.digest[:16]})")
            return 1 if out.failure else 0
        jobs = _positive("--jobs", args.jobs)
        for option, value in (("--runs", args.runs), ("--depth", args.depth), ("--max-preemptions", args.max_preemptions)):
            _positive(option, str(value))
        if args.time is not None and args.time <= 0:
            raise ExploreError(f"--time: expected seconds > 0, got {args.time}")
        progress = Progress(args.runs)
        result = explore(scenario, args.strategy, args.seed, args.runs, args.depth, args.max_preemptions, oracle,
                         args.watch, progress=progress, kinds=tuple(k for k in args.kinds.split(",") if k),
                         workers=jobs, dask=args.dask, time_s=args.time, liveness_ns=liveness_ns,
                         mutexes=tuple(args.mutex))  # fmt: skip
    except (ExploreError, ScenarioError, PointError, SweepError) as exc:
        print(f"akaros-sim explore: {exc}", file=sys.stderr)
        return 2
    except concurrent.futures.BrokenExecutor as exc:
        print(f"akaros-sim explore: a worker process died ({type(exc).__name__}); try --jobs 1", file=sys.stderr)
        return 2
    finally:
        if progress is not None:
            progress.close()
    for gap in result.gaps:
        print(f"coverage gap: sometimes {gap!r} never held in {result.runs} run(s)")
    if result.found is None:
        budget = "time budget spent" if result.timed_out else args.strategy
        print(f"no failure in {result.runs} run(s) over {result.points} point(s) ({budget}, seed {args.seed})")
        return 0
    final = result.shrunk or result.found
    by = f" ({result.strategy})" if result.strategy else ""
    print(f"FAILED after {result.runs} run(s){by}: {result.found.failure}")
    if not result.replayed:
        print("WARNING: the failing schedule replayed to a different trace (the run is not deterministic)")
    print(f"shrunk to {len(final.choices)} choice(s): {final.failure}")
    for choice in final.choices:
        print(f"  {run.describe(choice)}")
    for w in result.windows:
        if w["latest"] != w["earliest"]:
            print(f"  choice {w['choice']} fails for {w['key']} in {w['earliest']}..{w['latest']}")
    if result.decisive is not None:
        d = result.decisive
        print(f"decided by the order of ({d['key']} {d['failing']} fails: the first comes first; "
              f"{d['key']} {d['passing']} passes: the second does):")
        print(f"  {d['first']}")
        print(f"  {d['then']}")
    if args.out:
        save(args.out, scenario, final, result)
        print(f"saved {args.out}; rerun: akaros-sim explore {args.scenario} --replay {args.out} --trace t.jsonl")
    else:  # the same search finds the same schedule: the command again, saving it
        print(f"rerun: akaros-sim {' '.join(shlex.quote(a) for a in _argv(args))} --out cx.json")
    if args.trace:
        mark_decisive(final.sim.trace, result.decisive if final is result.shrunk else None)
        final.sim.trace.write(args.trace)
    return 1
