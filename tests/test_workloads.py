"""Workload generators: each kind shows its defining property, arrivals follow the plan, all is seeded."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from akaros_sim import Simulation, workloads
from akaros_sim.tools.scenario import ScenarioError, load_scenario, run_scenario
from schedops.pthread import PthreadSched

ROOT = Path(__file__).resolve().parents[1]


def run(kind: str, vcores: int = 2, seed: int = 1, trace: bool = True, **params):
    sim = Simulation(vcores=vcores, seed=seed, trace=None if trace else False)
    sim.set_sched(PthreadSched())
    wl = workloads.spawn(sim, kind, **params)
    result = sim.run()
    assert result.end.name == "ALL_EXITED", result.report
    return sim, result, wl


def workers(result, wl):
    return [u for u in result.metrics.uthreads if u.name != wl.name]


def test_cpu_workers_compute_their_sizes():
    """cpu: each worker runs exactly its drawn size (plus a fixed exit cost); nothing blocks but the driver."""
    sim, result, wl = run("cpu", n=6, size="uniform", size_ns=10_000)
    runs = [u.run_ns for u in workers(result, wl)]
    assert len(set(wl.sizes)) > 1 and all(lo <= s <= hi for s in wl.sizes for lo, hi in [(5_000, 15_000)])
    overhead = {r - s for r, s in zip(runs, wl.sizes, strict=True)}
    assert len(overhead) == 1 and 0 < overhead.pop() < 200
    assert all("syscall" not in u.blocked_ns for u in workers(result, wl))
    assert sim.uthread("cpu").exit_value == 6


def test_cpu_guest_mode_runs_guest_loops():
    """cpu with mode = "guest": the workers are guest uthreads retiring about size_ns instructions each."""
    sim, result, wl = run("cpu", n=3, size_ns=4_000, mode="guest")
    assert result.insns >= 3 * 4_000
    assert [sim.uthread(f"cpu.{i}").exit_value for i in range(3)] == [2_000] * 3


def test_io_workers_are_mostly_blocked_on_syscalls():
    """io: time blocked on SYS_block dwarfs time running, and each worker sleeps once per burst."""
    sim, result, wl = run("io", vcores=1, n=5, bursts=3, size_ns=500, latency_ns=10_000)
    for u in workers(result, wl):
        assert u.blocked_ns["syscall"] > 5 * u.run_ns
    sleeps = [r for r in sim.trace if r.kind == "syscall" and r.get("name") == "block" and r.uth.startswith("io.")]
    assert len(sleeps) == 5 * 3
    # SYS_block takes microseconds (sys_block): each drawn ns latency, rounded up
    assert [r.get("args")[0] for r in sleeps if r.uth == "io.0"] == [-(-ns // 1000) for ns in wl.latencies[0]]


def test_mutex_workers_block_on_the_mutex_and_count_exactly():
    """mutex: on four vcores the lock is contended (mutex_block, hand-offs), and no increment is lost."""
    sim, result, wl = run("mutex", vcores=4, n=6, iters=5, size_ns=2_000, think_ns=100)
    counts = result.counts
    assert counts.get("mutex_block", 0) >= 5 and counts.get("mutex_handoff", 0) >= 5
    assert sum(u.blocked_ns.get("mutex", 0) for u in workers(result, wl)) > 0
    assert sim.uthread("mutex").exit_value == 30


def test_faults_touch_fresh_pages_through_populate_va():
    """faults: every page a worker touches is a #PF the 2LS answers with populate_va, then re-executes."""
    sim, result, wl = run("faults", n=4, pages=3, size="uniform")
    pages = sum(wl.sizes)
    assert result.counts["fault"] == pages
    populates = [r for r in sim.trace if r.kind == "syscall" and r.get("name") == "populate_va"]
    assert len(populates) == pages
    assert sim.uthread("faults").exit_value == pages
    assert all(u.faults == s for u, s in zip(workers(result, wl), wl.sizes, strict=True))


def test_forkjoin_forks_and_joins_round_by_round():
    """forkjoin: the driver forks n tasks a round and joins them before the next round."""
    sim, result, wl = run("forkjoin", n=3, rounds=2, size_ns=3_000)
    assert sim.uthread("forkjoin").exit_value == 6
    assert result.metrics.uthread("forkjoin").blocked_ns["join"] > 0
    names = [r.get("target") for r in sim.trace if r.kind == "uthread_exit"]
    assert names.index("forkjoin.0.2") < names.index("forkjoin.1.0")  # round 1 starts after round 0 is joined
    starts = {u.name: u.created_ns for u in result.metrics.uthreads}
    assert starts["forkjoin.1.0"] > max(u.exit_ns for u in result.metrics.uthreads if u.name.startswith("forkjoin.0."))


def test_prodcons_consumes_every_item():
    """prodcons: every produced item is consumed; the bounded queue makes producers wait on not_full."""
    sim, result, wl = run("prodcons", n=10, capacity=2, consumers=1, size_ns=3_000, produce_ns=100)
    assert sim.uthread("prodcons").exit_value == 10
    assert sim.uthread("prodcons.c0").exit_value == 10
    assert any(r.kind == "cv_wait" and r.get("cv") == "prodcons.not_full" for r in sim.trace)


@pytest.mark.parametrize("dist", ["fixed", "uniform", "exponential"])
def test_arrivals_are_spaced_as_planned(dist):
    """The driver creates each worker once its planned arrival time has come: never early, and late only by
    the wake-up path (its sleep's completion event, a vcore grant) when the 2LS runs it at once."""
    sim, result, wl = run("cpu", vcores=4, n=8, arrival=dist, arrival_ns=3_000, size_ns=1_000)
    created = [u.created_ns for u in workers(result, wl)]
    t0 = created[0]
    late = [c - t0 - at for c, at in zip(created, wl.arrivals, strict=True)]
    assert all(0 <= x <= 5_000 for x in late), late
    gaps = [b - a for a, b in zip(wl.arrivals, wl.arrivals[1:], strict=False)]
    if dist == "fixed":
        assert gaps == [3_000] * 7
    elif dist == "uniform":
        assert all(1_500 <= g <= 4_500 for g in gaps) and len(set(gaps)) > 1
    else:
        rng = random.Random(f"{wl.seed}/cpu/arrivals")
        assert gaps == [round(rng.expovariate(1 / 3_000)) for _ in range(7)]


def test_same_seed_same_trace_other_seed_other_arrivals():
    """The same seed gives the same trace, byte for byte; another seed other arrivals and sizes."""
    params = dict(n=6, arrival="exponential", arrival_ns=2_000, size="exponential", size_ns=5_000)
    a, _, wa = run("io", seed=3, **params)
    b, _, wb = run("io", seed=3, **params)
    c, _, wc = run("io", seed=4, **params)
    assert a.trace.digest() == b.trace.digest() and wa == wb
    assert wc.arrivals != wa.arrivals and wc.sizes != wa.sizes and a.trace.digest() != c.trace.digest()
    # another size distribution leaves the arrivals alone (each quantity has its own stream)
    assert workloads.plan("io", seed=3, **{**params, "size": "uniform"}).arrivals == wa.arrivals


@pytest.mark.parametrize("bad, fragment", [
    (dict(kind="disk"), "kind: unknown workload kind 'disk'"),
    (dict(kind="cpu", n=0), "n: expected an integer >= 1, got 0"),
    (dict(kind="cpu", arrival="poisson"), "arrival: expected one of fixed, uniform, exponential, got 'poisson'"),
    (dict(kind="cpu", bursts=2), "bursts: unknown parameter for kind 'cpu'"),
    (dict(kind="mutex", locks=0), "locks: expected an integer >= 1, got 0"),
])  # fmt: skip
def test_bad_workloads_are_errors_naming_the_key(bad, fragment):
    with pytest.raises(workloads.WorkloadError, match=fragment):
        workloads.plan(**bad)


def test_a_scenario_can_be_a_machine_and_workloads(tmp_path):
    """[[workloads]] in a scenario: drivers, the guest program and the mappings come from them; errors name
    workloads[i].KEY; machine.seed reseeds the workloads."""
    text = """
description = "two workloads"
[machine]
vcores = 2
seed = 5
[[workloads]]
kind = "faults"
n = 2
[[workloads]]
kind = "cpu"
name = "spin"
n = 3
mode = "guest"
size_ns = 1000
[expect]
end = "all_exited"
retvals = { faults = 8, spin = 3 }
"""
    path = tmp_path / "w.toml"
    path.write_text(text)
    run_ = run_scenario(path)
    assert run_.ok, [c for c in run_.checks if not c.ok]
    assert [t.name for t in run_.scenario.threads] == ["faults", "spin"]
    assert run_.result.counts["fault"] == 8
    (tmp_path / "bad.toml").write_text(text.replace('name = "spin"', 'name = "spin"\nlatency = "fixed"'))
    with pytest.raises(ScenarioError, match=r"bad\.toml: workloads\[1\]\.latency: unknown parameter"):
        load_scenario(tmp_path / "bad.toml")
    other = run_scenario(load_scenario(path, (("machine.seed", 6),)))
    created = lambda r: [u.created_ns for u in r.result.metrics.uthreads]  # noqa: E731
    assert other.ok and created(other) == created(run_)  # fixed arrivals: the seed changes nothing here


def test_shipped_workload_scenarios_pass():
    for kind in ("cpu", "io", "mutex"):
        scenario = load_scenario(ROOT / "scenarios" / f"workload_{kind}.toml")
        assert scenario.scheduler == "pthread"
        assert run_scenario(scenario).ok
