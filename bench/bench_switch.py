"""Uthread switches, guest throughput and uthread memory through the whole runtime, against raw engines.

    python bench/bench_switch.py [--yields N] [--slices N] [--uthreads N] [--repeat R]

All figures are host time (time.perf_counter) or host memory; virtual time
plays no part.  Each repetition of (a) and (b), and each run of (c), is made
in a new interpreter (bench/_fresh.py), with its raw counterpart in the same
process, so no figure measures a process grown by the runs before it.

(a) Yield round trip.  Two Python uthreads on one vcore under the pthread 2LS
    ping-pong with `parlib.uthread_sched_yield()`: A yields, B runs, B yields,
    A runs again.  That round trip (two yields, each through vcore context,
    the 2LS and the trace) is compared with the raw greenlet pair it models:
    greenlet A switches to B and B switches back.  Also shown: the same
    ping-pong with the trace discarded (a Trace whose emit does nothing), to
    show what the records cost.
(b) Guest throughput.  One guest uthread on one vcore runs a loop with loads,
    stores, a call and a branch, in the default slices (`Costs.slice_insns`),
    through Simulation.run (engine, preempt points, Cpu.run); against raw
    Unicorn running the same bytes with `emu_start(pc, 0, count=slice)` +
    reading rip, with both memory configurations (default TLB; UC_TLB_VIRTUAL
    with a minimal fill hook, which is what cpu.py uses), as bench_cpu.py does.
(c) Many uthreads.  A main Python uthread creates N Python uthreads (each adds
    one to its argument and exits), then joins them all, under the pthread 2LS
    on one vcore.  Host time for the whole run, and RSS growth: measured from
    inside main after the last join (every uthread created, run and joined),
    and after run() returns.  If N would take longer than --budget seconds,
    the largest N that fits (estimated from a pilot run) is used and a line
    says so.

(a) and (b) are medians over R repetitions, interleaved; (c) is one run.
Last line: `switch ratio: X.XX`, ours per yield round trip over the raw
greenlet pair (lower is better).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenlet import GreenletExit, greenlet  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402

from akaros_sim import parlib  # noqa: E402
from akaros_sim.asm import assemble  # noqa: E402
from akaros_sim.engine import Costs  # noqa: E402
from akaros_sim.memory import PAGE_SIZE  # noqa: E402
from akaros_sim.simulation import RunEnd, Simulation  # noqa: E402
from akaros_sim.trace import Trace  # noqa: E402
from schedops.pthread import PthreadSched  # noqa: E402
from _fresh import fresh, serve  # noqa: E402

SLICE = Costs().slice_insns
# The loop of bench_cpu.py, as a guest uthread: rsi = iterations, then return.
LOOP = """
_start:
    lea rdi, [rip + buf]
    mov rcx, rsi
top:
    mov rax, [rdi]
    add rax, rcx
    mov [rdi + 8], rax
    imul rax, rax, 7
    mov [rdi + 16], rax
    call f
    push rax
    pop rbx
    dec rcx
    jnz top
    ret
f:
    mov rdx, [rdi + 16]
    add rdx, 1
    mov [rdi + 24], rdx
    ret
.data
buf: .zero 64
"""
INSNS_PER_ITERATION = 14  # 10 in the loop body, 4 in f
RAW_STACK_TOP = 0x7FF0_0000_0000
RAW_STACK_SIZE = 0x10000


# -- (a) yield round trip ------------------------------------------------------------------


class NullTrace(Trace):
    """A trace that keeps nothing: what the ping-pong costs without its records."""

    def add(self, t, vc, uth, kind, details):
        return None


def _ping(turns: int) -> None:
    for _ in range(turns):
        parlib.uthread_sched_yield()


def ours_round_trip_us(turns: int, keep_trace: bool = True) -> float:
    """Host µs per round trip (A yields, B runs, B yields, A runs) through the pthread 2LS."""
    sim = Simulation(vcores=1, trace=None if keep_trace else NullTrace())
    sim.set_sched(PthreadSched())
    sim.spawn_python("ping", _ping, turns)
    sim.spawn_python("pong", _ping, turns)
    t0 = time.perf_counter()
    result = sim.run()
    elapsed = time.perf_counter() - t0
    if result.end is not RunEnd.ALL_EXITED:
        raise RuntimeError(f"ping-pong ended {result.end.name}, expected ALL_EXITED")
    return elapsed / turns * 1e6  # `turns` round trips: 2 * turns yields


def raw_pair_us(turns: int) -> float:
    """Host µs per raw greenlet round trip: A switches to B, B switches back to A."""

    def ping():
        for _ in range(turns):
            pong_gl.switch()

    def pong():
        while True:
            ping_gl.switch()

    ping_gl, pong_gl = greenlet(ping), greenlet(pong)
    t0 = time.perf_counter()
    ping_gl.switch()
    elapsed = time.perf_counter() - t0
    pong_gl.throw(GreenletExit)  # end it now rather than at garbage collection
    return elapsed / turns * 1e6


# -- (b) guest throughput ------------------------------------------------------------------------


def ours_throughput(slices: int) -> float:
    """Guest instructions per host second through Simulation.run (1 vcore, 1 guest uthread)."""
    prog = assemble(LOOP, name="loop")
    sim = Simulation(vcores=1)
    sim.load(prog)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("loop", prog.entry, 0, slices * SLICE // INSNS_PER_ITERATION)
    t0 = time.perf_counter()
    result = sim.run()
    elapsed = time.perf_counter() - t0
    if result.end is not RunEnd.ALL_EXITED:
        raise RuntimeError(f"guest loop ended {result.end.name}, expected ALL_EXITED")
    return result.insns / elapsed


def raw_throughput(virtual_tlb: bool, slices: int) -> float:
    """The same loop on raw Unicorn with the same slicing (bench_cpu.py's harness)."""
    from bench_cpu import raw_slices_per_second, raw_uc

    prog = assemble(LOOP, name="loop")
    spans = [
        (seg.addr, seg.addr + -(-seg.memsz // PAGE_SIZE) * PAGE_SIZE, int(seg.prot)) for seg in prog.segments
    ] + [(RAW_STACK_TOP - RAW_STACK_SIZE, RAW_STACK_TOP, 3)]
    uc = raw_uc(spans, virtual_tlb)
    for seg in prog.segments:
        uc.mem_write(seg.addr, seg.data)
    uc.reg_write(x86.UC_X86_REG_RSP, RAW_STACK_TOP - 8)
    uc.reg_write(x86.UC_X86_REG_RSI, 1 << 62)  # never ends within the measurement
    return raw_slices_per_second(uc, prog.entry, slices, SLICE)


# -- (c) many uthreads ------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _add_one(i: int) -> int:
    return i + 1


def many_uthreads(n: int) -> dict:
    """Create, run and join n Python uthreads from a main uthread; host time and RSS."""
    seen = {}

    def main():
        kids = [parlib.uthread_create(_add_one, i, name=f"w{i}") for i in range(n)]
        total = 0
        for kid in kids:
            total += parlib.uthread_join(kid)
        seen["rss_joined"] = rss_bytes()
        return total

    gc.collect()
    sim = Simulation(vcores=1)
    sim.set_sched(PthreadSched())
    sim.spawn_python("main", main)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    result = sim.run()
    elapsed = time.perf_counter() - t0
    rss_after = rss_bytes()
    if result.end is not RunEnd.ALL_EXITED or sim.uthread("main").exit_value != n * (n + 1) // 2:
        raise RuntimeError(f"{n} uthreads: run ended {result.end.name} with {sim.uthread('main').exit_value!r}")
    return {
        "n": n,
        "seconds": elapsed,
        "rss_joined": seen["rss_joined"] - rss0,
        "rss_after": rss_after - rss0,
        "records": len(sim.trace),
    }


# -- main ------------------------------------------------------------------------------------------


def repetition(yields: int, slices: int) -> dict[str, float]:
    """One repetition of (a) and (b), interleaved so machine noise hits all alike (in a fresh process)."""
    return {
        "raw_pair": raw_pair_us(yields * 20),
        "ours": ours_round_trip_us(yields),
        "ours_untraced": ours_round_trip_us(yields, keep_trace=False),
        "raw_default": raw_throughput(False, slices),
        "raw_virtual": raw_throughput(True, slices),
        "sim_tp": ours_throughput(slices),
    }


def many_uthreads_warm(n: int) -> dict:
    """(c) in a fresh process, after a small warm-up run (imports, the first Cpu, first-call paths)."""
    many_uthreads(10)
    return many_uthreads(n)


def main() -> None:
    if serve({"repetition": repetition, "many_uthreads": many_uthreads_warm}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yields", type=int, default=3000, help="round trips per ping-pong measurement")
    parser.add_argument("--slices", type=int, default=300, help=f"slices of {SLICE:,} instructions per measurement")
    parser.add_argument("--uthreads", type=int, default=100_000, help="uthreads to create, run and join")
    parser.add_argument("--budget", type=float, default=180.0, help="host seconds allowed for (c)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions for (a) and (b); medians are printed")
    args = parser.parse_args()
    med = statistics.median

    reps = [fresh(__file__, "repetition", yields=args.yields, slices=args.slices) for _ in range(args.repeat)]
    raw_pair, ours, ours_untraced = ([r[k] for r in reps] for k in ("raw_pair", "ours", "ours_untraced"))
    raw_default, raw_virtual, sim_tp = ([r[k] for r in reps] for k in ("raw_default", "raw_virtual", "sim_tp"))

    pilot_n = min(2_000, args.uthreads)
    pilot = fresh(__file__, "many_uthreads", n=pilot_n)
    n = args.uthreads
    per = pilot["seconds"] / pilot_n
    if n * per > args.budget:
        n = max(pilot_n, int(args.budget / per) // 1000 * 1000)
    many = fresh(__file__, "many_uthreads", n=n)

    ratio = med(ours) / med(raw_pair)
    raw_best = max(med(raw_default), med(raw_virtual))

    def line(label: str, value: str) -> None:
        print(f"{label + ':':<52} {value}")

    line("raw greenlet round trip (A->B->A)", f"{med(raw_pair):9.2f} us")
    line("pthread 2LS uthread_sched_yield, per yield", f"{med(ours) / 2:9.2f} us")
    line("pthread 2LS yield round trip (A->B->A)", f"{med(ours):9.2f} us")
    line("pthread 2LS yield round trip, trace discarded", f"{med(ours_untraced):9.2f} us")
    line(f"raw emu_start count={SLICE}, default TLB", f"{med(raw_default) / 1e6:9.1f} Minsn/s")
    line(f"raw emu_start count={SLICE}, virtual TLB+fill", f"{med(raw_virtual) / 1e6:9.1f} Minsn/s")
    line("Simulation.run, 1 vcore, 1 guest uthread", f"{med(sim_tp) / 1e6:9.1f} Minsn/s")
    line("guest throughput ratio (runtime / best raw)", f"{med(sim_tp) / raw_best:9.2f}")
    if n < args.uthreads:
        print(
            f"{args.uthreads:,} uthreads would take ~{args.uthreads * per:.0f} s, over the {args.budget:.0f} s "
            f"budget: measured {n:,} instead"
        )
    k = many["n"]
    line(
        f"{k:,} uthreads created, run and joined",
        f"{many['seconds']:9.2f} s ({many['seconds'] / k * 1e6:.1f} us per uthread, "
        f"{many['records']:,} trace records)",
    )
    line(
        f"RSS growth, all {k:,} joined, run not over",
        f"{many['rss_joined'] / 2**20:9.1f} MiB ({many['rss_joined'] / k / 1024:.2f} KiB per uthread)",
    )
    line(
        "RSS growth after run() returned",
        f"{many['rss_after'] / 2**20:9.1f} MiB ({many['rss_after'] / k / 1024:.2f} KiB per uthread)",
    )
    print(f"switch ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
