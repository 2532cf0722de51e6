"""Host cost of Python uthreads computing on one vcore and on four, each repetition in a fresh process.

    python bench/bench_compute.py [--quick] [--uthreads U] [--calls C] [--ns NS] [--repeat R] [--budget S]

U Python uthreads (default 8) under the pthread 2LS each call
`parlib.compute(NS)` C times (default 20 x 100,000 ns: 2 ms of virtual time
each), so every run does the same total work, U * C * NS ns of uthread time
(checked against the run's per-vcore statistics):

(a) on a Simulation with 1 vcore, and
(b) on a Simulation with 4 vcores (the same work, spread over four clocks);
(c) the raw floor: U plain greenlets each making C round trips to a hub
    greenlet (one switch pair per compute call), what the schedule costs with
    no simulator at all.

Figures are CPU time of Simulation.run() (time.process_time_ns), printed as
the min and the median of R repetitions.  Every repetition of every figure
runs in a new interpreter (bench/_fresh.py), so no run measures a process
grown by earlier ones; (a), (b) and (c) are interleaved so machine noise hits
all alike.  If the first repetition shows that R of them would take longer
than --budget seconds, fewer are run and a line says so.  --quick is a small
workload (C = 20 calls of 1,000 ns) for a runtime on which (b) is very slow.

Also: 4 uthreads each computing 1 ms in one call, on 1 vcore and on 4 (the
workload of the runtime-core issue that asked for this bench).

Last line: `compute ratio: X`, median host time of that 1 ms workload on 4
vcores over 1 (lower is better; about 1 when four vcores cost no more host
time than one for the same work).  The line above it gives the same ratio
for the many-short-calls workload (a)/(b), where each call on several vcores
is one switch between them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenlet import getcurrent, greenlet  # noqa: E402

from akaros_sim import parlib  # noqa: E402
from akaros_sim.simulation import RunEnd, Simulation  # noqa: E402
from schedops.pthread import PthreadSched  # noqa: E402
from _fresh import Figures, cpu_ns, fresh, median, serve  # noqa: E402

RUNS_PER_REPETITION = 10  # simulations timed per repetition (their mean is the repetition's figure)
FULL = {"calls": 20, "ns": 100_000}
QUICK = {"calls": 20, "ns": 1_000}


def _worker(calls: int, ns: int) -> None:
    for _ in range(calls):
        parlib.compute(ns)


def _simulate(vcores: int, uthreads: int, calls: int, ns: int):
    sim = Simulation(vcores=vcores, seed=1)
    sim.set_sched(PthreadSched())
    for i in range(uthreads):
        sim.spawn_python(f"w{i}", _worker, calls, ns)
    t0 = cpu_ns()
    result = sim.run()
    return (cpu_ns() - t0) / 1e9, result, sim


def sim_run(vcores: int, uthreads: int, calls: int, ns: int) -> dict:
    """(a) or (b), in a fresh process: host seconds of run(), virtual time, records, peak RSS."""
    _simulate(vcores, 2, 2, 10)  # warm: imports, the first Cpu, first-call paths
    # One run() is about a millisecond: time several and take their mean, so one repetition's
    # figure is not one scheduler tick's worth of noise.
    total = 0.0
    for _ in range(RUNS_PER_REPETITION):
        elapsed, result, sim = _simulate(vcores, uthreads, calls, ns)
        total += elapsed
    elapsed = total / RUNS_PER_REPETITION
    work = sum(vc.uthread_ns for vc in result.vcores)
    expected = uthreads * (calls * ns + sim.costs.python_step_ns)  # uthread time: the work, and each exit's step
    if result.end is not RunEnd.ALL_EXITED or work != expected:
        raise SystemExit(f"{vcores} vcores: run ended {result.end.name} after {work} ns of uthread time, "
                         f"expected ALL_EXITED after {expected}")  # fmt: skip
    return {
        "seconds": elapsed,
        "time_ns": result.time_ns,
        "records": len(sim.trace),
        "busy_vcores": sum(1 for vc in result.vcores if vc.uthread_ns),
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def raw_run(uthreads: int, calls: int) -> dict:
    """(c), in a fresh process: U greenlets, each switching to a round-robin hub C times."""

    def schedule(n: int) -> float:
        hub = getcurrent()

        def body() -> None:
            for _ in range(calls):
                hub.switch()

        ready = deque(greenlet(body) for _ in range(n))
        t0 = cpu_ns()
        while ready:
            gl = ready.popleft()
            gl.switch()
            if not gl.dead:
                ready.append(gl)
        return (cpu_ns() - t0) / 1e9

    schedule(2)  # warm
    return {"seconds": schedule(uthreads)}


def main() -> None:
    if serve({"sim": sim_run, "raw": raw_run}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small workload: {QUICK['calls']} x {QUICK['ns']:,} ns")
    parser.add_argument("--uthreads", type=int, default=8, help="Python uthreads (U)")
    parser.add_argument("--calls", type=int, help=f"compute calls per uthread (C, default {FULL['calls']})")
    parser.add_argument("--ns", type=int, help=f"ns per compute call (default {FULL['ns']:,})")
    parser.add_argument("--vcores", type=int, default=4, help="vcores of (b)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (at least 5); min and median are printed")
    parser.add_argument("--budget", type=float, default=60.0, help="host seconds allowed for all repetitions")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    u, calls, ns = args.uthreads, args.calls or base["calls"], args.ns or base["ns"]
    repeat = args.repeat
    timeout = max(60.0, 5 * args.budget)  # a child that never ends fails the bench instead of hanging it

    samples: dict[str, list[dict]] = {"raw": [], "one": [], "many": [], "one1": [], "many1": []}
    t_start = time.perf_counter()
    done = 0
    while done < repeat:
        samples["raw"].append(fresh(__file__, "raw", timeout, uthreads=u, calls=calls))
        samples["one"].append(fresh(__file__, "sim", timeout, vcores=1, uthreads=u, calls=calls, ns=ns))
        samples["many"].append(fresh(__file__, "sim", timeout, vcores=args.vcores, uthreads=u, calls=calls, ns=ns))
        # the runtime-core issue's own workload: 4 uthreads each computing 1 ms in one call
        samples["one1"].append(fresh(__file__, "sim", timeout, vcores=1, uthreads=4, calls=1, ns=1_000_000))
        samples["many1"].append(fresh(__file__, "sim", timeout, vcores=args.vcores, uthreads=4, calls=1,
                                      ns=1_000_000))  # fmt: skip
        done += 1
        if done == 1:
            per = time.perf_counter() - t_start
            fits = max(1, int(args.budget // per))
            if fits < repeat:
                print(f"{repeat} repetitions would take ~{repeat * per:.0f} s, over the {args.budget:.0f} s budget: "
                      f"ran {fits}")  # fmt: skip
                repeat = fits

    def fig(key: str, field: str) -> list[float]:
        return [s[field] for s in samples[key]]

    one, many, raw = (median(fig(key, "seconds")) for key in ("one", "many", "raw"))
    n_calls = u * calls

    print(f"workload: {u} Python uthreads x {calls} compute({ns:,} ns) = {calls * ns / 1e6:g} ms virtual each, "
          f"pthread 2LS, {done} fresh-process repetitions")  # fmt: skip
    table = Figures(done, width=44, fmt="9.3f")
    table.header()
    table.row(f"raw greenlets, {u} x {calls} hub round trips", [x * 1e3 for x in fig("raw", "seconds")], "ms host")
    for key, vcores in (("one", 1), ("many", args.vcores)):
        host = median(fig(key, "seconds"))
        table.row(
            f"{vcores} vcore{'s' if vcores > 1 else ''}, Simulation.run",
            [x * 1e3 for x in fig(key, "seconds")],
            "ms host",
            note=f"({host / n_calls * 1e6:.1f} us per compute call, {median(fig(key, 'time_ns')) / 1e6:g} ms virtual, "
            f"{int(median(fig(key, 'records'))):,} trace records, {int(median(fig(key, 'busy_vcores')))} busy, "
            f"peak RSS {median(fig(key, 'max_rss_kib')) / 1024:.0f} MiB)",
        )
    table.value("1 vcore over raw greenlets (host, medians)", one / raw, fmt="9.1f")
    table.value(f"{args.vcores} vcores over 1, {calls} calls each (host, medians)", many / one, fmt="9.2f")
    for key, vcores in (("one1", 1), ("many1", args.vcores)):
        table.row(f"4 uthreads x compute(1 ms), {vcores} vcore{'s' if vcores > 1 else ''}",
                  [x * 1e3 for x in fig(key, "seconds")], "ms host")  # fmt: skip
    one1, many1 = median(fig("one1", "seconds")), median(fig("many1", "seconds"))
    # The ratio of the workload: what four vcores add over one for the same work.  Many
    # short calls (above) add one switch between vcores per call, about 2 us each here.
    print(f"compute ratio: {many1 / one1:.2f}")

if __name__ == "__main__":
    main()
