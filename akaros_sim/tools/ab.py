"""A/B runs: one scenario under two 2LSes with the same plan, seed by seed (`akaros-sim ab`).

For each seed the scenario runs under A and under B.  The plan (preemptions,
tick storms, unmaps, signals, syscall latencies) is the scenario's
[[injections]], so both runs get the same one: the simulator has no injection
of its own, hence no nondeterministic plan event to carry from A's run to
B's.  What can differ is only what follows from the schedule: an injection at
a uthread's instruction count fires when that uthread gets there, a
preemption catches whichever uthread is running.  The report checks that the
time-triggered injections (`inject` records without `at_insns`, `tick_storm`
starts) of both traces agree.

Per seed it prints the metrics of A and B and their difference (B - A), and
the first record where the two traces diverge (replay's comparison); across
seeds, each metric's mean paired difference with a 95% confidence interval
(Student's t; no scipy).  Same input, same text.
"""

from __future__ import annotations

import math
import sys

import attrs

from akaros_sim.tools.replay import Divergence, first_divergence

__all__ = ["AB_METRICS", "AbResult", "SeedPair", "add_parser", "diverge", "mean_ci", "plan_of", "run_ab", "schedule_of",
           "t95"]

# Student's t, 0.975 quantile, for 1..30 degrees of freedom; beyond, the normal's 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with df degrees of freedom (1.96 past 30)."""
    if df < 1:
        raise ValueError(f"t95: expected df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values) -> tuple[float, float | None]:
    """The mean of values and the half-width of its 95% confidence interval (None for fewer than two)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci: no values")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t95(n - 1) * math.sqrt(var / n)


def _ready_total(m):
    return sum(u.ready_wait_ns for u in m.uthreads)


# (name, how to read it off a Metrics, whether it is a ratio rather than nanoseconds or a count)
AB_METRICS = (
    ("makespan_ns", lambda m: m.makespan_ns, False),
    ("turnaround_mean_ns", lambda m: m.turnaround.mean, False),
    ("response_mean_ns", lambda m: m.response.mean, False),
    ("fairness", lambda m: m.fairness, True),
    ("ready_wait_total_ns", _ready_total, False),
    ("exited", lambda m: m.exited, False),
)


@attrs.frozen
class Side:
    """One run of the pair."""

    sched: str
    end: str  # why the run ended (RunEnd name, lower case)
    time_ns: int
    values: dict  # AB_METRICS name -> value (None when undefined, e.g. no exits)
    trace: object = attrs.field(repr=False)


@attrs.frozen
class SeedPair:
    """A and B under one seed, and how their traces compare."""

    seed: int
    a: Side
    b: Side
    divergence: Divergence | None  # over the schedules (schedule_of); index: the state change's
    at: tuple[int | None, int | None] = (None, None)  # the diverging records' indices in A's and B's traces

    def delta(self, metric: str):
        va, vb = self.a.values[metric], self.b.values[metric]
        return None if va is None or vb is None else vb - va


def schedule_of(trace) -> tuple[list, list[int]]:
    """A trace's schedule: its `uthread_state` records (who ran where, waited, blocked on what, when), and
    their indices in the trace.  Records that only name the 2LS (sched_init, its ops) are no part of it."""
    picked = [(i, rec) for i, rec in enumerate(trace.records) if rec.kind == "uthread_state"]
    return [rec for _, rec in picked], [i for i, _ in picked]


def diverge(trace_a, trace_b) -> tuple[Divergence | None, tuple[int | None, int | None]]:
    """Where two traces' schedules first differ (replay's first_divergence over schedule_of), and the
    diverging records' indices in each trace (None past a trace's end)."""
    recs_a, at_a = schedule_of(trace_a)
    recs_b, at_b = schedule_of(trace_b)
    d = first_divergence(recs_a, recs_b)
    if d is None:
        return None, (None, None)
    return d, (at_a[d.index] if d.index < len(at_a) else None, at_b[d.index] if d.index < len(at_b) else None)


def plan_of(trace) -> tuple[list[tuple], list[tuple]]:
    """A trace's injections: (time-triggered, instruction-triggered) as comparable tuples, in record order.

    Time-triggered: `inject` records without `at_insns` (t, what) and `tick_storm`
    starts (t, vcore, until, min, max).  Instruction-triggered: (thread,
    at_insns, what): they fire when their uthread gets there, so their times
    follow the schedule.
    """
    timed, counted = [], []
    for rec in trace.records:
        if rec.kind == "inject":
            if rec.get("at_insns") is None:
                timed.append(("inject", rec.t, rec.get("what")))
            else:
                counted.append((rec.get("thread"), rec.get("at_insns"), rec.get("what")))
        elif rec.kind == "tick_storm":
            timed.append(("tick_storm", rec.t, rec.vc, rec.get("until"), rec.get("min_insns"), rec.get("max_insns")))
    return timed, counted


@attrs.frozen
class AbResult:
    """The pairs of an A/B run, one per seed.  `report()` is what `akaros-sim ab` prints."""

    scenario: str
    vcores: int
    overrides: tuple
    pairs: tuple[SeedPair, ...]

    @property
    def names(self) -> tuple[str, str]:
        return self.pairs[0].a.sched, self.pairs[0].b.sched

    def report(self) -> str:
        name_a, name_b = self.names
        seeds = ", ".join(str(p.seed) for p in self.pairs)
        sets = "".join(f" --set {k}={v}" for k, v in self.overrides)
        lines = [f"ab: {self.scenario}{sets}, {self.vcores} vcore(s), A = {name_a}, B = {name_b}, "
                 f"seed(s) {seeds}"]  # fmt: skip
        lines += self._plan_lines()
        for pair in self.pairs:
            lines.append("")
            lines += _pair_lines(pair)
        if len(self.pairs) > 1:
            lines.append("")
            lines += self._ci_lines()
        return "\n".join(lines)

    def _plan_lines(self) -> list[str]:
        timed_a, counted_a = plan_of(self.pairs[0].a.trace)
        same = all(plan_of(p.a.trace)[0] == plan_of(p.b.trace)[0] for p in self.pairs)
        verdict = "identical in A and B" if same else "NOT identical in A and B (a bug: please report it)"
        return [
            "plan: the scenario's injections, the same for A and B (the simulator adds none, so no "
            "nondeterministic plan event is carried over)",
            f"  {len(timed_a)} time-triggered (inject at a time, tick storm starts): {verdict}",
            f"  {len(counted_a)} at a uthread's instruction count: they fire when it gets there, as scheduled",
        ]

    def _ci_lines(self) -> list[str]:
        n = len(self.pairs)
        rows = [("metric", "n", "mean B - A", "95% CI")]
        for name, _get, ratio in AB_METRICS:
            deltas = [d for d in (p.delta(name) for p in self.pairs) if d is not None]
            if not deltas:
                rows.append((name, "0", "-", "-"))
                continue
            mean, half = mean_ci(deltas)
            ci = "-" if half is None else f"[{_num(mean - half, ratio, True)}, {_num(mean + half, ratio, True)}]"
            rows.append((name, str(len(deltas)), _num(mean, ratio, True), ci))
        head = f"paired differences over {n} seeds (mean, 95% CI with Student's t, {n - 1} df):"
        return [head, *_table(rows)]


def _num(v, ratio: bool = False, signed: bool = False) -> str:
    if v is None:
        return "-"
    sign = "+" if signed else ""
    if ratio:
        return f"{v:{sign}.4f}"
    if isinstance(v, int):
        return f"{v:{sign},}"
    return f"{v:{sign},.1f}"


def _table(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]  # fmt: skip


def _pair_lines(pair: SeedPair) -> list[str]:
    a, b = pair.a, pair.b
    lines = [f"seed {pair.seed}: A ended {a.end} at {a.time_ns:,} ns, B ended {b.end} at {b.time_ns:,} ns"]
    rows = [("metric", f"A {a.sched}", f"B {b.sched}", "B - A")]
    for name, _get, ratio in AB_METRICS:
        rows.append((name, _num(a.values[name], ratio), _num(b.values[name], ratio), _num(pair.delta(name), ratio, True)))
    lines += _table(rows)
    d = pair.divergence
    if d is None:
        lines.append(f"  schedules: identical ({len(schedule_of(a.trace)[0])} state changes)")
    else:
        at_a, at_b = ("end" if i is None else f"#{i}" for i in pair.at)
        lines.append(f"  schedules diverge at state change {d.index} (trace record {at_a} of A, {at_b} of B):")
        lines.append(f"    A: {d.a.to_json() if d.a else '<no more state changes>'}")
        lines.append(f"    B: {d.b.to_json() if d.b else '<no more state changes>'}")
    return lines


def _side(scenario, label: str) -> Side:
    from akaros_sim.tools.scenario import build

    sim = build(scenario)
    result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    m = result.metrics
    values = {name: get(m) for name, get, _ratio in AB_METRICS}
    return Side(label, result.end.name.lower(), result.time_ns, values, sim.trace)


def _under(base, sched):
    """The scenario under sched: a name goes through the loader (validated, recorded in the header as an
    override); a class or factory is put in place as akaros_sim.testing.run_under does."""
    from akaros_sim.tools.scenario import load_scenario_text

    if isinstance(sched, str):
        # the 2LS first, so a --set scheduler.params.X applies to the new 2LS (as parse_overrides orders them)
        return load_scenario_text(base.text, base.path, (("scheduler.name", sched), *base.overrides)), sched
    if not callable(sched):
        raise TypeError(f"run_ab: expected a 2LS name, class or factory, got {sched!r}")
    label = getattr(sched, "__name__", type(sched).__name__)
    return attrs.evolve(base, scheduler=label, sched_factory=sched, sched_params=()), label


def run_ab(scenario, sched_a, sched_b, seeds: int = 1, overrides=(), label: str | None = None) -> AbResult:
    """Run `scenario` (a path or a Scenario) under sched_a and sched_b for `seeds` seeds from its own seed.

    A 2LS is a built-in name, 'module:attr' / 'file.py:attr', or a class or factory.
    `overrides` are (dotted key, value) pairs, as parse_overrides makes; `label` names the scenario
    in the report (default: its path).

    Raises:
        ScenarioError: the scenario, an override or a 2LS name is invalid.
    """
    from akaros_sim.tools.scenario import Scenario, load_scenario, load_scenario_text

    if seeds < 1:
        raise ValueError(f"run_ab: expected seeds >= 1, got {seeds}")
    if isinstance(scenario, Scenario):
        base = load_scenario_text(scenario.text, scenario.path, (*scenario.overrides, *overrides)) if overrides else scenario
    else:
        base = load_scenario(scenario, overrides)
    a, name_a = _under(base, sched_a)
    b, name_b = _under(base, sched_b)
    pairs = []
    for seed in range(base.seed, base.seed + seeds):
        side_a = _side(attrs.evolve(a, seed=seed), name_a)
        side_b = _side(attrs.evolve(b, seed=seed), name_b)
        pairs.append(SeedPair(seed, side_a, side_b, *diverge(side_a.trace, side_b.trace)))
    return AbResult(label or str(base.path), base.vcores, tuple(overrides), tuple(pairs))


# -- the verb ------------------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"akaros-sim: {message}", file=sys.stderr)
    return 2


def cmd_ab(args) -> int:
    """Run a scenario under two 2LSes per seed and print the metric deltas, the first divergence and paired CIs."""
    from akaros_sim.tools.scenario import ScenarioError, parse_overrides
    from akaros_sim.tools.shipped import find_scenario

    if len(args.sched) != 2:
        return _fail(f"ab: expected --sched exactly twice (A, then B), got it {len(args.sched)} time(s)")
    if args.seeds < 1:
        return _fail(f"ab: --seeds: expected an integer >= 1, got {args.seeds}")
    try:
        sets = parse_overrides(args.set)
        result = run_ab(find_scenario(args.scenario), *args.sched, seeds=args.seeds, overrides=sets,
                        label=args.scenario)
    except ScenarioError as exc:
        return _fail(str(exc))
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # a bug in a 2LS, handler or Python uthread: one clear line, as `run` says it
        print(f"akaros-sim: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(result.report())
    return 0


def _int(text: str) -> int:
    import argparse

    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_parser(sub, common) -> None:
    """The `ab` verb on the CLI's subparsers."""
    ab = sub.add_parser(
        "ab",
        parents=[common],
        help="run a scenario under two 2LSes with the same plan: metric deltas, first divergence, paired CIs",
        description=(
            "Run SCENARIO under 2LS A and under 2LS B (the same injections: they are the scenario's) for each of "
            "--seeds seeds, starting at the scenario's seed. Per seed: makespan, mean turnaround, mean response, "
            "fairness, total ready wait and exits of A and B with B - A, and the first trace record where the "
            "two schedules diverge; over several seeds, each metric's mean paired difference with a 95% "
            "confidence interval (Student's t). Deterministic. Exit status: 0 once printed, 1 if a run fails, "
            "2 for bad input."
        ),
    )
    ab.add_argument("scenario", help="the scenario file (.toml), or the name of a shipped one (akaros-sim list)")
    ab.add_argument("--sched", metavar="NAME", action="append", default=[],
                    help="a 2LS (built-in name, module:attr or file.py:attr); give it twice: A, then B")  # fmt: skip
    ab.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                    help="override a scenario key for both runs, as `run --set` (repeatable)")  # fmt: skip
    ab.add_argument("--seeds", type=_int, default=1, metavar="N",
                    help="run seeds S, S+1, ..., S+N-1 (S: the scenario's seed; default 1 seed)")  # fmt: skip
    ab.set_defaults(func=cmd_ab)
