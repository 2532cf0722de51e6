"""A/B runs (`akaros-sim ab`, akaros_sim.tools.ab): two 2LSes under one plan, seed by seed.

The scenario is ras_percpu (three vcores, a tick storm and eight preemptions),
where pthread and roundrobin schedule differently and the seed changes the
storm's ticks, so the deltas and their spread are not zero.  Expected values
are computed here from separate runs (their metrics and their trace records),
not read off the code under test.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import attrs
import pytest

from akaros_sim.tools.ab import AB_METRICS, mean_ci, run_ab, t95
from akaros_sim.tools.cli import main
from akaros_sim.tools.scenario import build, load_scenario, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/ras_percpu.toml"
SEEDS = (3, 4, 5)  # ras_percpu's seed is 3; --seeds 3 runs 3, 4, 5


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def run_under(sched: str, seed: int, path: str = SCENARIO):
    """An independent run of the scenario under sched with seed: (trace, metrics)."""
    scenario = attrs.evolve(load_scenario(ROOT / path, parse_overrides([], sched)), seed=seed)
    sim = build(scenario)
    result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    return sim.trace, result.metrics


def metric_values(m) -> dict:
    return {"makespan_ns": m.makespan_ns, "turnaround_mean_ns": m.turnaround.mean, "response_mean_ns": m.response.mean,
            "fairness": m.fairness, "ready_wait_total_ns": sum(u.ready_wait_ns for u in m.uthreads),
            "exited": m.exited}  # fmt: skip


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def ab_output():
    """`ab ras_percpu --sched pthread --sched roundrobin --seeds 3`, run twice (stdout of each)."""
    outs = []
    for _ in range(2):
        rc, out, err = cli("ab", ROOT / SCENARIO, "--sched", "pthread", "--sched", "roundrobin", "--seeds", "3")
        assert (rc, err) == (0, "")
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def runs():
    """Independent runs: {(sched, seed): (trace, metrics)}."""
    return {(s, seed): run_under(s, seed) for s in ("pthread", "roundrobin") for seed in SEEDS}


def seed_tables(out: str) -> dict[int, dict[str, list[str]]]:
    """Per seed, the metric table's rows: metric -> [A, B, B - A] as printed."""
    tables: dict[int, dict[str, list[str]]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"seed (\d+): ", line)
        if m:
            current = tables.setdefault(int(m[1]), {})
        elif current is not None and line.startswith("  ") and line.split()[0] in dict((n, 0) for n, *_ in AB_METRICS):
            name, *cells = line.split()
            current[name] = cells
        elif not line.strip():
            current = None
    return tables


def test_each_metric_of_each_seed_is_printed_with_its_delta(ab_output, runs):
    """Every metric of every seed: A's and B's values as the runs give them, and B - A."""
    tables = seed_tables(ab_output[0])
    assert sorted(tables) == list(SEEDS)
    for seed in SEEDS:
        a, b = metric_values(runs["pthread", seed][1]), metric_values(runs["roundrobin", seed][1])
        assert list(tables[seed]) == [n for n, *_ in AB_METRICS]
        for name, (va, vb, delta) in tables[seed].items():
            tol = 5e-5 if name == "fairness" else 0.051  # printed to 4 decimals / 0.1 ns
            assert abs(number(va) - a[name]) <= tol and abs(number(vb) - b[name]) <= tol, (seed, name)
            assert abs(number(delta) - (b[name] - a[name])) <= 2 * tol, (seed, name)
    assert "makespan_ns" in ab_output[0] and "seed(s) 3, 4, 5" in ab_output[0].splitlines()[0]


def test_first_divergence_of_the_schedules_is_shown(ab_output, runs):
    """Per seed: the first uthread_state record that differs, with its index in each trace, as computed here."""
    lines = ab_output[0].splitlines()
    for seed in SEEDS:
        states = {}
        for sched in ("pthread", "roundrobin"):
            trace = runs[sched, seed][0]
            states[sched] = [(i, r) for i, r in enumerate(trace.records) if r.kind == "uthread_state"]
        k = next(k for k, (x, y) in enumerate(zip(states["pthread"], states["roundrobin"], strict=False)) if x[1] != y[1])
        (ia, ra), (ib, rb) = states["pthread"][k], states["roundrobin"][k]
        header = next(i for i, line in enumerate(lines) if line.startswith(f"seed {seed}: "))
        at = lines.index(f"  schedules diverge at state change {k} (trace record #{ia} of A, #{ib} of B):", header)
        assert lines[at + 1 : at + 3] == [f"    A: {ra.to_json()}", f"    B: {rb.to_json()}"]


def test_same_2ls_twice_is_identical():
    """A 2LS against itself: zero deltas and identical schedules (the runs are deterministic)."""
    rc, out, err = cli("ab", "vcore_preemption", "--sched", "pthread", "--sched", "pthread")
    assert (rc, err) == (0, "")
    assert re.search(r"^  schedules: identical \(\d+ state changes\)$", out, flags=re.M)
    assert all(cells[2] in ("+0", "+0.0", "+0.0000") for cells in seed_tables(out)[0].values())
    assert "paired differences" not in out  # one seed: no interval


@pytest.mark.parametrize("path", [SCENARIO, "scenarios/vcore_preemption.toml", "scenarios/signal_delivery.toml"])
def test_time_triggered_injections_are_identical_in_both_runs(path):
    """The plan is the scenario's: time-triggered inject records, tick storm starts and the preemptions they
    make happen at the same times on the same targets under pthread and roundrobin."""

    def plan(trace):
        return [(r.kind, r.t, r.vc, r.get("what"), r.get("until"), r.get("min_insns"), r.get("max_insns"))
                for r in trace.records
                if (r.kind == "inject" and r.get("at_insns") is None) or r.kind == "tick_storm"]  # fmt: skip

    def preempts(trace):
        return [(r.t, r.vc) for r in trace.records if r.kind in ("preempt_warn", "preempt")]

    seed = load_scenario(ROOT / path).seed
    a, b = run_under("pthread", seed, path)[0], run_under("roundrobin", seed, path)[0]
    assert plan(a) == plan(b) and plan(a)
    if path.endswith("vcore_preemption.toml"):  # there each preemption finds its vcore online in both runs
        assert preempts(a) == preempts(b) == [(5000, 1), (25000, 0), (27000, 0)]
    rc, out, _ = cli("ab", ROOT / path, "--sched", "pthread", "--sched", "roundrobin")
    assert rc == 0
    assert f"  {len(plan(a))} time-triggered (inject at a time, tick storm starts): identical in A and B" in out


def test_paired_ci_across_seeds(ab_output, runs):
    """The last table: per metric, the mean of the seeds' B - A and mean ± t(0.975, 2) * s / sqrt(3)."""
    lines = ab_output[0].splitlines()
    start = lines.index("paired differences over 3 seeds (mean, 95% CI with Student's t, 2 df):")
    rows = {line.split()[0]: line for line in lines[start + 2 :]}
    assert list(rows) == [n for n, *_ in AB_METRICS]
    for name, line in rows.items():
        deltas = [metric_values(runs["roundrobin", s][1])[name] - metric_values(runs["pthread", s][1])[name] for s in SEEDS]
        mean = sum(deltas) / 3
        half = 4.303 * math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2 / 3)
        m = re.fullmatch(r"\s+(\S+)\s+3\s+(\S+)\s+\[(\S+), (\S+)\]", line)
        assert m, line
        tol = 5e-5 if name == "fairness" else 0.051
        assert abs(number(m[2]) - mean) <= tol
        assert abs(number(m[3]) - (mean - half)) <= tol and abs(number(m[4]) - (mean + half)) <= tol
    assert rows["makespan_ns"].split()[2] != "+0.0"  # the schedules differ, and so does the seed's storm


def test_output_is_deterministic(ab_output):
    """The same command twice prints the same text."""
    assert ab_output[0] == ab_output[1]


def test_python_api_takes_a_2ls_class():
    """run_ab accepts a class as well as a name; the report names it by its class name."""
    from schedops.roundrobin import RoundRobinSched

    result = run_ab(ROOT / "scenarios" / "pthread_basics.toml", "pthread", RoundRobinSched, label="pthread_basics")
    assert result.names == ("pthread", "RoundRobinSched")
    assert result.report().startswith("ab: pthread_basics, 4 vcore(s), A = pthread, B = RoundRobinSched, seed(s) 0\n")


def test_t_quantiles_and_mean_ci():
    """t95 from the table for df 1..30, 1.96 beyond; mean_ci's half-width is t * s / sqrt(n)."""
    assert (t95(1), t95(2), t95(10), t95(30), t95(31), t95(1000)) == (12.706, 4.303, 2.228, 2.042, 1.96, 1.96)
    assert mean_ci([5]) == (5.0, None)
    mean, half = mean_ci([1, 2, 3, 4])
    assert mean == 2.5 and half == pytest.approx(3.182 * math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4))
    with pytest.raises(ValueError):
        t95(0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("ab", "pthread_basics", "--sched", "pthread"), "ab: expected --sched exactly twice (A, then B), got it 1 time(s)"),
        (("ab", "pthread_basics", "--sched", "a", "--sched", "b", "--sched", "c"), "ab: expected --sched exactly twice"),
        (("ab", "no_such_scenario", "--sched", "pthread", "--sched", "roundrobin"), "no_such_scenario: cannot read: "),
        (("ab", "pthread_basics", "--sched", "pthread", "--sched", "nope"), "scheduler.name: unknown 2LS 'nope'"),
        (("ab", "pthread_basics", "--sched", "pthread", "--sched", "roundrobin", "--set", "vcores"), "--set 'vcores': "),
        (("ab", "pthread_basics", "--sched", "pthread", "--sched", "roundrobin", "--seeds", "0"), "ab: --seeds: "),
    ],
    ids=["one-sched", "three-scheds", "no-scenario", "unknown-2ls", "bad-set", "no-seeds"],
)
def test_bad_input_is_one_line_exit_2(argv, message):
    """Bad input: exit 2, nothing on stdout, one line on stderr saying what is wrong."""
    rc, out, err = cli(*argv)
    assert (rc, out) == (2, "")
    assert err.startswith("akaros-sim: ") and message in err and err.count("\n") == 1, err
