"""Schedule exploration: search preemption placements for one that breaks a scenario, shrink it, replay it.

The artefact is a schedule file (docs/explore.md)::

    {"format": "akaros-sim-schedule/1", "scenario": "x.toml", "sched": "roundrobin",
     "choices": [{"preempt": {"vcore": null, "when": {"code": "seq_start", "uthread": "w0", "nth": 2,
                                                       "offset": 1}}}],
     "failure": "memory[0].main:counter: expected 12, got 3"}

Each choice names its point by meaning (akaros_sim/points.py), so the file
survives edits that shift times and step indices.  A first, unperturbed run
records the points the scenario passes; strategies choose among those.
"""

from __future__ import annotations

import importlib
import itertools
import json
import random
import sys
from pathlib import Path

import attrs

from akaros_sim.disasm import disassemble
from akaros_sim.points import PointError, normalize, points_of
from akaros_sim.tools.expect import check_expectations
from akaros_sim.tools.scenario import Scenario, ScenarioError, build, load_scenario, parse_overrides
from akaros_sim.tools.shipped import find_scenario

FORMAT = "akaros-sim-schedule/1"
STRATEGIES = ("random", "pct", "exhaustive")
# ops worth preempting at: where a 2LS hands a uthread over or changes its mind
INTERESTING_OPS = frozenset({"sched_entry", "thread_runnable", "thread_paused", "thread_blockon_sysc",
                             "thread_has_blocked", "thread_yield", "thread_refl_fault"})  # fmt: skip


class ExploreError(ValueError):
    """A bad schedule file or option (the message names it)."""


@attrs.frozen
class Outcome:
    """One run under a choice list: the failure (None: every oracle held), the simulation, its trace digest."""

    choices: tuple
    failure: str | None
    sim: object = attrs.field(repr=False)
    digest: str = ""


@attrs.frozen
class Exploration:
    runs: int
    found: Outcome | None
    shrunk: Outcome | None = None
    points: int = 0


# -- running one schedule -------------------------------------------------------------------------


def run_choices(scenario: Scenario, choices, oracle=None, watch=(), record: bool = False) -> Outcome:
    """Build the scenario, apply the choices, run it, and ask the oracles."""
    sim = build(scenario)
    sim.trace.header["schedule"] = {"format": FORMAT, "choices": [dict(c) for c in choices]}
    if record:
        points_of(sim.proc).record(watch)
    for choice in choices:
        spec = choice["preempt"]
        sim.preempt_at(dict(spec["when"]), spec.get("vcore"), spec.get("warning_ns", 0), spec.get("duration_ns"))
    result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    return Outcome(tuple(choices), judge(scenario, sim, result, oracle), sim, sim.trace.digest())


def judge(scenario: Scenario, sim, result, oracle=None) -> str | None:
    """The first failing oracle, in words: the 2LS contract, the invariants ([expect], not [expect.schedule]),
    then the user's oracle(sim, result) -> bool or a message."""
    report = result.report or ""
    if "2LS contract" in report:
        return report.splitlines()[0]
    for check in check_expectations(scenario.expect, sim, result, schedule=False):
        if not check.ok:
            return f"{check.name}: expected {check.expected!r}, got {check.got!r}"
    if oracle is not None:
        verdict = oracle(sim, result)
        if verdict is False or isinstance(verdict, str):
            return f"oracle: {verdict if isinstance(verdict, str) else 'returned False'}"
    return None


def _kind(failure: str) -> str:
    """What a shrink must keep failing on: the check's name, not its numbers."""
    return failure.split(":", 1)[0]


# -- choosing points --------------------------------------------------------------------------------


def candidates(log, vcores: int, ras_lengths: dict) -> list[dict]:
    """The points worth a preemption, in the order the first run passed them."""
    out = []
    for point in log:
        if "in_op" in point and (point["in_op"] not in INTERESTING_OPS or point["vcore"] < 0):
            continue
        if "ras" in point or "code" in point:
            name = point.get("ras", point.get("code"))
            for offset in range(ras_lengths.get(name, 1)):  # inside the sequence, before each instruction
                out.append({**point, "offset": offset})
        else:
            out.append(point)
    return out


def _choice(when: dict) -> dict:
    vcore = when["vcore"] if "vcore" in when and when["vcore"] >= 0 else None
    return {"preempt": {"vcore": vcore, "when": when}}


def _plans(strategy: str, points: list, rng: random.Random, runs: int, depth: int, k: int):
    """Choice lists to try, in order (at most `runs`)."""
    n = len(points)
    if not n:
        return
    if strategy == "exhaustive":
        for size in range(1, k + 1):
            for combo in itertools.combinations(range(n), size):
                yield [points[i] for i in combo]
        return
    for i in range(runs):
        if strategy == "pct" and i < runs // 2:
            # PCT (Burckhardt et al. 2010): d-1 change points uniform over the run's points,
            # depths 2..depth+1 in turn; the second half of the budget falls back to random
            d = 2 + i % depth
            picks = sorted(rng.sample(range(n), min(n, d - 1)))
        else:
            picks = sorted(rng.sample(range(n), rng.randint(1, min(n, k))))
        yield [points[j] for j in picks]


def explore(scenario: Scenario, strategy: str = "random", seed: int = 0, runs: int = 100, depth: int = 3,
            max_preemptions: int = 2, oracle=None, watch=(), shrink_it: bool = True, progress=None) -> Exploration:
    """Record the points a first run passes, then try schedules until one fails; shrink it."""
    if strategy not in STRATEGIES:
        raise ExploreError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    ranges = dict((w.partition("..")[0], w.partition("..")[2]) for w in watch)  # start -> end symbol or ""
    first = run_choices(scenario, (), oracle, tuple(ranges), record=True)
    if first.failure is not None:
        return Exploration(1, first, first)
    proc = first.sim.proc
    lengths = _sequence_lengths(first.sim, ranges)
    points = candidates(proc.points.log, scenario.vcores, lengths)
    rng = random.Random(seed)
    tried = 1
    for plan in itertools.islice(_plans(strategy, points, rng, runs, depth, max_preemptions), runs):
        tried += 1
        out = run_choices(scenario, [_choice(p) for p in plan], oracle)
        if progress is not None:
            progress(tried, out)
        if out.failure is not None:
            return Exploration(tried, out, shrink(scenario, out, oracle) if shrink_it else None, len(points))
    return Exploration(tried, None, None, len(points))


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


# -- shrinking --------------------------------------------------------------------------------------


def shrink(scenario: Scenario, failing: Outcome, oracle=None) -> Outcome:
    """Delta-debug the choices (drop), then move each earlier (lower nth, offset, insns, time) while the
    same check still fails."""
    kind = _kind(failing.failure)
    best = failing

    def still(choices):
        nonlocal best
        out = run_choices(scenario, choices, oracle)
        if out.failure is not None and _kind(out.failure) == kind:
            best = out
            return True
        return False

    choices = list(failing.choices)
    chunk = max(1, len(choices) // 2)
    while len(choices) > 1 and chunk >= 1:  # ddmin's complement step, enough for short lists
        for i in range(0, len(choices), chunk):
            trial = choices[:i] + choices[i + chunk:]
            if trial and still(trial):
                choices = trial
                break
        else:
            if chunk == 1:
                break
            chunk //= 2
    for i in range(len(choices)):
        when = choices[i]["preempt"]["when"]
        for key in ("nth", "offset", "insns", "at_ns"):
            if key not in when:
                continue
            low = 1 if key in ("nth", "insns") else 0
            lo, hi = low, when[key]  # binary search for the earliest value that still fails
            while lo < hi:
                mid = (lo + hi) // 2
                trial = _with(choices, i, key, mid)
                if still(trial):
                    choices, hi = trial, mid
                else:
                    lo = mid + 1
            when = choices[i]["preempt"]["when"]
    return best if best.choices == tuple(choices) else run_choices(scenario, choices, oracle)


def _with(choices, i: int, key: str, value: int) -> list:
    spec = choices[i]["preempt"]
    new = {"preempt": {**spec, "when": {**spec["when"], key: value}}}
    return choices[:i] + [new] + choices[i + 1:]


# -- the schedule file ----------------------------------------------------------------------------------


def save(path, scenario: Scenario, outcome: Outcome) -> None:
    doc = {"format": FORMAT, "scenario": scenario.path.name, "sched": scenario.scheduler, "seed": scenario.seed,
           "choices": list(outcome.choices), "failure": outcome.failure, "trace_digest": outcome.digest}  # fmt: skip
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load(path) -> list[dict]:
    """The choices of a schedule file, validated."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExploreError(f"{path}: cannot read a schedule: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExploreError(f"{path}: expected \"format\": \"{FORMAT}\"")
    out = []
    for i, choice in enumerate(doc.get("choices", [])):
        spec = choice.get("preempt") if isinstance(choice, dict) else None
        if not isinstance(spec, dict):
            raise ExploreError(f"{path}: choices[{i}]: expected {{\"preempt\": {{...}}}}")
        try:
            when = normalize(spec.get("when"))
        except PointError as exc:
            raise ExploreError(f"{path}: choices[{i}]: {exc}") from None
        out.append({"preempt": {**spec, "when": when}})
    return out


# -- the verb ------------------------------------------------------------------------------------------


def _oracle(ref: str | None):
    if not ref:
        return None
    module, _, attr = ref.partition(":")
    if not attr:
        raise ExploreError(f"--oracle: expected module:function, got {ref!r}")
    return getattr(importlib.import_module(module), attr)


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "explore", parents=[common], help="search preemption placements for a failing schedule, shrink and save it",
        description=(
            "Search preemption placements in SCENARIO for a schedule that breaks an oracle (its [expect] invariants, "
            "the 2LS contract, --oracle), shrink it to a minimal one, save it (--out) and replay it (--replay). "
            "Exit status: 0 nothing failed, 1 a failing schedule, 2 bad input (docs/explore.md)."
        ),
    )
    p.add_argument("scenario")
    p.add_argument("--sched", help="run under this 2LS instead of the scenario's")
    p.add_argument("--strategy", choices=STRATEGIES, default="random")
    p.add_argument("--seed", type=int, default=0, help="the explorer's RNG seed (not the scenario's)")
    p.add_argument("--runs", type=int, default=200, help="budget of runs (default 200)")
    p.add_argument("--depth", type=int, default=3, help="PCT's largest depth d")
    p.add_argument("--max-preemptions", type=int, default=2, help="k: injections per schedule at most")
    p.add_argument("--watch", action="append", default=[],
                   help="also preempt inside code at SYMBOL or SYMBOL..END (no RAS needed); repeatable")
    p.add_argument("--oracle", help="module:function(sim, result) -> bool or a message")
    p.add_argument("--out", help="save the shrunk failing schedule here (JSON)")
    p.add_argument("--replay", help="run this schedule file once instead of exploring")
    p.add_argument("--trace", help="write the trace of the failing (or replayed) run here (for explain)")
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        scenario = load_scenario(find_scenario(args.scenario), parse_overrides([], args.sched))
        oracle = _oracle(args.oracle)
        if args.replay:
            out = run_choices(scenario, load(args.replay), oracle)
            if args.trace:
                out.sim.trace.write(args.trace)
            print(f"replayed {len(out.choices)} choice(s): {out.failure or 'no failure'} (trace {out.digest[:16]})")
            return 1 if out.failure else 0
        result = explore(scenario, args.strategy, args.seed, args.runs, args.depth, args.max_preemptions, oracle,
                         args.watch)
    except (ExploreError, ScenarioError, PointError) as exc:
        print(f"akaros-sim explore: {exc}", file=sys.stderr)
        return 2
    if result.found is None:
        print(f"no failure in {result.runs} run(s) over {result.points} point(s) ({args.strategy}, seed {args.seed})")
        return 0
    final = result.shrunk or result.found
    print(f"FAILED after {result.runs} run(s): {result.found.failure}")
    print(f"shrunk to {len(final.choices)} choice(s): {final.failure}")
    for choice in final.choices:
        print("  " + json.dumps(choice))
    if args.out:
        save(args.out, scenario, final)
        print(f"saved {args.out}; rerun: akaros-sim explore {args.scenario} --replay {args.out} --trace t.jsonl")
    if args.trace:
        final.sim.trace.write(args.trace)
    return 1

