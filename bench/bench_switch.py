"""Uthread switches, multi-vcore guest throughput and uthread memory through the whole runtime, against raw engines.

    python bench/bench_switch.py [--yields N] [--slices N] [--uthreads N] [--budget S] [--repeat R]

Times are CPU time of the measuring process (time.process_time_ns); virtual
time plays no part.  Every measurement runs in a new interpreter
(bench/_fresh.py), after a small warm-up run, so no figure measures a process
grown by the runs before it.  Each figure is printed as the min and the
median of R repetitions (interleaved, so machine noise hits all alike);
ratios are computed from medians.

(a) Yield round trip.  Two Python uthreads on one vcore under the pthread 2LS
    ping-pong with `parlib.uthread_sched_yield()`: A yields, B runs, B yields,
    A runs again.  That round trip (two yields, each through vcore context,
    the 2LS and the trace) is compared with the raw greenlet pair it models:
    greenlet A switches to B and B switches back (measured in the same
    process).  The same ping-pong runs again with the trace off,
    `Simulation(trace=False)`, which keeps no records and whose runtime skips
    building them; `trace on / trace off` is what the records cost.
(b) Guest throughput with what the runtime adds.  Four guest uthreads on two
    vcores under the round-robin 2LS (a tick every 100 us of virtual time
    moves the running uthread to the back of the queue) each run a loop with
    loads, stores, a call and a branch.  Two vcores share one Unicorn, so
    their guest slices interleave at `Costs.vcore_quantum_ns`, and ticks add
    vcore context, the 2LS and uthread context switches: Minsn/s through
    Simulation.run against raw Unicorn running the same bytes with
    `emu_start(pc, 0, count=slice_insns)` + reading rip, with both memory
    configurations, as bench_cpu.py does.  (One guest uthread on one vcore
    is bench_cpu.py's `Cpu.run` loop plus nothing worth a figure; that
    bench covers it.)
(c) Many uthreads.  A main Python uthread creates N Python uthreads, yields
    once (so each of them starts, yields and is suspended before main runs
    again), then joins them all; each adds one to its argument and exits.
    pthread 2LS, one vcore, run once with the trace on and once with it off.
    CPU time for the whole run, and RSS growth per uthread (from just before
    run()) at three points: all N created (none started yet: pthread's create
    does not yield); all N live, started and suspended in their yield (a
    suspended greenlet keeps its saved stack and frames: the live cost of a
    uthread); and all exited and joined (still referenced by main, their
    trace records kept; RSS keeps some of what the live point freed, so this
    is not what a joined uthread alone holds).  The trace-on lines say how
    many records each uthread has added so far.  Beside the live figure, N
    raw greenlets started and suspended in a fresh process: the floor under
    a live uthread (on CPython 3.11 each started greenlet gets its own
    data-stack chunk for its frames).  If R runs of each would take longer than
    --budget seconds, the largest N that fits (estimated from a pilot run) is
    used and a line says so.

Last line: `switch ratio: X.XX`, median ours per yield round trip (trace on)
over the median raw greenlet pair (lower is better).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenlet import GreenletExit, getcurrent, greenlet  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402

from akaros_sim import parlib  # noqa: E402
from akaros_sim.asm import assemble  # noqa: E402
from akaros_sim.engine import Costs  # noqa: E402
from akaros_sim.memory import PAGE_SIZE  # noqa: E402
from akaros_sim.simulation import RunEnd, Simulation  # noqa: E402
from schedops.pthread import PthreadSched  # noqa: E402
from schedops.roundrobin import RoundRobinSched  # noqa: E402
from _fresh import Figures, cpu_ns, fresh, median, serve  # noqa: E402

SLICE = Costs().slice_insns
QUANTUM_NS = Costs().vcore_quantum_ns
TP_VCORES, TP_UTHREADS, TP_TICK_NS = 2, 4, 100_000  # (b)
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


def _ping(turns: int) -> None:
    for _ in range(turns):
        parlib.uthread_sched_yield()


def ours_round_trip_us(turns: int, trace: bool = True) -> float:
    """CPU us per round trip (A yields, B runs, B yields, A runs) through the pthread 2LS."""
    sim = Simulation(vcores=1, trace=None if trace else False)
    sim.set_sched(PthreadSched())
    sim.spawn_python("ping", _ping, turns)
    sim.spawn_python("pong", _ping, turns)
    t0 = cpu_ns()
    result = sim.run()
    elapsed = cpu_ns() - t0
    if result.end is not RunEnd.ALL_EXITED:
        raise RuntimeError(f"ping-pong ended {result.end.name}, expected ALL_EXITED")
    if trace == (len(sim.trace) == 0):
        raise RuntimeError(f"ping-pong with trace={trace} kept {len(sim.trace)} records")
    return elapsed / turns / 1e3  # `turns` round trips: 2 * turns yields


def raw_pair_us(turns: int) -> float:
    """CPU us per raw greenlet round trip: A switches to B, B switches back to A."""

    def ping():
        for _ in range(turns):
            pong_gl.switch()

    def pong():
        while True:
            ping_gl.switch()

    ping_gl, pong_gl = greenlet(ping), greenlet(pong)
    t0 = cpu_ns()
    ping_gl.switch()
    elapsed = cpu_ns() - t0
    pong_gl.throw(GreenletExit)  # end it now rather than at garbage collection
    return elapsed / turns / 1e3


def ping_pong(yields: int, trace: bool) -> dict[str, float]:
    """(a) in a fresh process: ours with the trace on or off; with it on, the raw pair too."""
    ours_round_trip_us(50, trace)  # warm: imports, first-call paths
    out = {"ours": ours_round_trip_us(yields, trace)}
    if trace:
        out["raw_pair"] = raw_pair_us(yields * 20)
    return out


# -- (b) guest throughput, several uthreads on several vcores -----------------------------------


def ours_throughput(slices: int) -> dict[str, float]:
    """Guest instructions per CPU second through Simulation.run: 4 guest uthreads, 2 vcores, round-robin."""
    prog = assemble(LOOP, name="loop")
    sim = Simulation(vcores=TP_VCORES)
    sim.load(prog)
    sim.set_sched(RoundRobinSched(tick_ns=TP_TICK_NS))
    for i in range(TP_UTHREADS):
        sim.spawn_guest(f"loop{i}", prog.entry, 0, slices * SLICE // TP_UTHREADS // INSNS_PER_ITERATION)
    t0 = cpu_ns()
    result = sim.run()
    elapsed = cpu_ns() - t0
    busy = sum(1 for vc in result.vcores if vc.uthread_ns)
    if result.end is not RunEnd.ALL_EXITED or busy != TP_VCORES:
        raise RuntimeError(f"guest loops ended {result.end.name} with {busy} busy vcores, expected ALL_EXITED on "
                           f"{TP_VCORES}")  # fmt: skip
    return {"tp": result.insns / elapsed * 1e9, "switches": sum(vc.switches for vc in result.vcores)}


def raw_throughput(virtual_tlb: bool, slices: int) -> float:
    """The same loop on raw Unicorn in slices of slice_insns (bench_cpu.py's harness)."""
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


def throughput(slices: int) -> dict[str, float]:
    """(b) in a fresh process: raw (both TLB modes) and ours, interleaved."""
    ours_throughput(TP_UTHREADS)  # warm: the assembler, imports, first-call paths
    out = {"raw_default": raw_throughput(False, slices), "raw_virtual": raw_throughput(True, slices)}
    out |= ours_throughput(slices)
    return out


# -- (c) many uthreads ------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _add_one(i: int) -> int:
    parlib.uthread_sched_yield()  # suspended here until every sibling has started
    return i + 1


def many_uthreads(n: int, trace: bool) -> dict:
    """Create, start, run and join n Python uthreads from a main uthread; CPU time, RSS growth and records."""
    seen = {}

    def main():
        kids = [parlib.uthread_create(_add_one, i, name=f"w{i}") for i in range(n)]
        seen["created"] = (rss_bytes(), len(sim.trace))  # all n created, none started (create does not yield)
        parlib.uthread_sched_yield()  # FIFO: every kid starts and yields before main runs again
        seen["live"] = (rss_bytes(), len(sim.trace))  # all n started and suspended in their yield
        total = 0
        for kid in kids:
            total += parlib.uthread_join(kid)
        seen["joined"] = (rss_bytes(), len(sim.trace))  # all exited and joined, still referenced by kids
        return total

    gc.collect()
    sim = Simulation(vcores=1, trace=None if trace else False)
    sim.set_sched(PthreadSched())
    sim.spawn_python("main", main)
    rss0 = rss_bytes()
    t0 = cpu_ns()
    result = sim.run()
    elapsed = cpu_ns() - t0
    if result.end is not RunEnd.ALL_EXITED or sim.uthread("main").exit_value != n * (n + 1) // 2:
        raise RuntimeError(f"{n} uthreads: run ended {result.end.name} with {sim.uthread('main').exit_value!r}")
    out: dict = {"n": n, "seconds": elapsed / 1e9}
    for point, (rss, records) in seen.items():
        out[point] = {"rss": rss - rss0, "records": records}
    return out


def raw_live(n: int) -> dict:
    """(c) in a fresh process: RSS growth per raw greenlet started and suspended (what a live uthread builds on)."""

    def body(i: int) -> None:
        main.switch()  # suspended here, as a uthread in its yield

    main = getcurrent()
    gls = [greenlet(body) for _ in range(n)]
    rss0 = rss_bytes()
    for i, gl in enumerate(gls):
        gl.switch(i)
    grown = rss_bytes() - rss0
    for gl in gls:
        gl.throw(GreenletExit)
    return {"rss": grown}


def many_uthreads_warm(n: int, trace: bool) -> dict:
    """(c) in a fresh process, after a small warm-up run (imports, the first Cpu, first-call paths)."""
    many_uthreads(10, trace)
    return many_uthreads(n, trace)


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    if serve({"ping_pong": ping_pong, "throughput": throughput, "many_uthreads": many_uthreads_warm,
              "raw_live": raw_live}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yields", type=int, default=3000, help="round trips per ping-pong measurement")
    parser.add_argument("--slices", type=int, default=300, help=f"slices of {SLICE:,} instructions per measurement")
    parser.add_argument("--uthreads", type=int, default=100_000, help="uthreads to create, run and join in (c)")
    parser.add_argument("--budget", type=float, default=180.0, help="CPU seconds allowed for all runs of (c)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (at least 5); min and median are printed")
    args = parser.parse_args()
    repeat = args.repeat

    on, off, tp = [], [], []
    for _ in range(repeat):
        on.append(fresh(__file__, "ping_pong", yields=args.yields, trace=True))
        off.append(fresh(__file__, "ping_pong", yields=args.yields, trace=False))
        tp.append(fresh(__file__, "throughput", slices=args.slices))
    raw_pair, ours, ours_off = [r["raw_pair"] for r in on], [r["ours"] for r in on], [r["ours"] for r in off]
    raw_default, raw_virtual, sim_tp = ([r[k] / 1e6 for r in tp] for k in ("raw_default", "raw_virtual", "tp"))

    pilot_n = min(2_000, args.uthreads)
    pilot = fresh(__file__, "many_uthreads", n=pilot_n, trace=True)
    n = args.uthreads
    per = pilot["seconds"] / pilot_n * 2  # a run with the trace on and one with it off, each repetition
    if n * per * repeat > args.budget:
        n = max(pilot_n, int(args.budget / per / repeat) // 1000 * 1000)
    many: dict[bool, list[dict]] = {True: [], False: []}
    raw_live_kib = []
    for _ in range(repeat):
        for trace in (True, False):
            many[trace].append(fresh(__file__, "many_uthreads", n=n, trace=trace))
        raw_live_kib.append(fresh(__file__, "raw_live", n=n)["rss"] / n / 1024)

    table = Figures(repeat, width=62)
    table.header()
    table.row("(a) raw greenlet round trip (A->B->A)", raw_pair, "us")
    table.row("(a) pthread 2LS yield round trip (A->B->A), trace on", ours, "us")
    table.row("(a) pthread 2LS uthread_sched_yield, per yield, trace on", [x / 2 for x in ours], "us")
    table.row("(a) pthread 2LS yield round trip, Simulation(trace=False)", ours_off, "us")
    table.value("trace on / trace off (yield ping-pong)", median(ours) / median(ours_off))
    table.row(f"(b) raw emu_start count={SLICE}, default TLB", raw_default, "Minsn/s", fmt="10.1f")
    table.row(f"(b) raw emu_start count={SLICE}, virtual TLB+fill", raw_virtual, "Minsn/s", fmt="10.1f")
    table.row(
        f"(b) {TP_UTHREADS} guest uthreads on {TP_VCORES} vcores, roundrobin",
        sim_tp,
        "Minsn/s",
        fmt="10.1f",
        note=f"(tick {TP_TICK_NS:,} ns, {int(median(r['switches'] for r in tp))} switches, quantum {QUANTUM_NS:,} ns)",
    )
    table.value("(b) guest throughput ratio (runtime / best raw)", median(sim_tp) / max(median(raw_default),
                                                                                        median(raw_virtual)))  # fmt: skip
    if n < args.uthreads:
        print(
            f"(c) {repeat} runs of {args.uthreads:,} uthreads (trace on and off) would take "
            f"~{args.uthreads * per * repeat:.0f} s, over the {args.budget:.0f} s budget: measured {n:,} instead"
        )
    for trace, how in ((True, "trace on"), (False, "trace off")):
        runs = many[trace]
        table.row(
            f"(c) {n:,} uthreads created, started, joined, {how}",
            [m["seconds"] for m in runs],
            "s",
            note=f"({median(m['seconds'] for m in runs) / n * 1e6:.1f} us per uthread)",
        )
    for point, what in (("created", "RSS per uthread, all created"), ("live", "RSS per live uthread (all suspended)"),
                        ("joined", "RSS per uthread, all joined")):  # fmt: skip
        for trace, how in ((True, "trace on"), (False, "trace off")):
            runs = many[trace]
            records = runs[0][point]["records"] / n
            table.row(f"(c) {what}, {how}", [m[point]["rss"] / n / 1024 for m in runs], "KiB",
                      note=f"({records:.0f} records per uthread so far)" if trace else "")  # fmt: skip
        if point == "live":
            table.row("(c) RSS per raw greenlet, started and suspended", raw_live_kib, "KiB")
    print(f"switch ratio: {median(ours) / median(raw_pair):.2f}")


if __name__ == "__main__":
    main()
