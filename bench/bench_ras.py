"""What an increment costs under a tick storm: a RAS counter, `lock xadd`, and a uthread Mutex, in one process.

    python bench/bench_ras.py [--increments N] [--threads U] [--repeat R]

Every variant runs on ONE vcore under the round-robin 2LS with U uthreads
sharing one 8-byte counter in guest memory, under the same tick storm
(`Simulation.tick_storm`: a tick every K instructions, K drawn from the seed
in [STORM_MIN, STORM_MAX]), and the round-robin 2LS switches uthreads on
every tick.  Each uthread makes N / U
increments; afterwards the counter must be exactly N (checked).

(a) RAS: guest uthreads increment with a plain `mov rax, [rsi]; add rax, 1;
    mov [rsi], rax` declared a restartable atomic sequence.  Includes the
    restarts (the re-executed instructions and the RAS handler consulted on
    every interrupted resume) and the loop's `dec; jnz`.
(b) lock xadd: the same guest loop with `mov eax, 1; lock xadd [rsi], rax`
    and no sequence declared (so no RAS handler is installed at all).
(c) Mutex: Python uthreads each loop `m.lock(); v = sim.mem.read_u64(c);
    compute(3 * insn_ns); sim.mem.write_u64(c, v + 1); m.unlock()`: a
    parlib.Mutex around the same read/add/write of the guest word, with the
    three instructions' virtual time spent inside the critical section (a
    preemption point, so a tick can land while the lock is held and the next
    uthread blocks on it: mutex_block, then a hand-off at unlock).  A main
    Python uthread creates the Mutex and the workers and joins them.  A storm
    counts guest instructions and a Python uthread runs none, so (c) also has
    the round-robin 2LS's own periodic tick (`tick_ns`) at the storm's mean
    interval in virtual time, (STORM_MIN + STORM_MAX) / 2 * insn_ns: it is
    interrupted about as often per virtual ns as (a) and (b).  With FIFO
    hand-off and no barging, once one uthread waits every unlock hands the
    lock over and every lock blocks (a convoy), which is what it measures.
(d) raw Unicorn: (a)'s loop alone, run by `emu_start` in slices of the
    storm's mean interval: the emulation floor, without any simulator.

Per variant, host time of Simulation.run() divided by N (whole-run cost per
increment: emulation, vcore context, the 2LS, tracing), and the run's
virtual time divided by N.  Figures are medians over R repetitions,
interleaved so machine noise hits all alike; each repetition runs in a new
interpreter (bench/_fresh.py), so none measures a process grown by the ones
before.  Last line: `ras ratio: X.XX`, host time per increment of (a) over
(b) (lower is better; 1.00 means the RAS costs nothing over an atomic
instruction at this interruption rate).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402
from unicorn.unicorn_py3.unicorn import uclib  # noqa: E402

from akaros_sim import parlib  # noqa: E402
from akaros_sim.asm import assemble  # noqa: E402
from akaros_sim.engine import Costs  # noqa: E402
from akaros_sim.simulation import RunEnd, Simulation  # noqa: E402
from schedops.roundrobin import RoundRobinSched  # noqa: E402
from _fresh import fresh, serve  # noqa: E402

STORM_MIN, STORM_MAX = 400, 900  # instructions between ticks
SEED = 1
BASE = 0x400000

RAS_LOOP = """
worker:                     # worker(n, &counter)
    mov rcx, rdi
again:
seq_start:
    mov rax, [rsi]
    add rax, 1
    mov [rsi], rax
seq_end:
    dec rcx
    jnz again
    ret
.ras seq_start, seq_end
.data
counter: .quad 0
"""

XADD_LOOP = """
worker:                     # worker(n, &counter)
    mov rcx, rdi
again:
    mov eax, 1
    lock xadd qword ptr [rsi], rax
    dec rcx
    jnz again
    ret
.data
counter: .quad 0
"""


def storm_sim(tick_ns: int = 0) -> Simulation:
    sim = Simulation(1, seed=SEED)
    sim.set_sched(RoundRobinSched(tick_ns=tick_ns))
    sim.tick_storm(0, 1 << 50, STORM_MIN, STORM_MAX)
    return sim


def finish(sim: Simulation, counter: int, n: int, t0: float) -> tuple[float, float, dict]:
    """Run, check the count, and return (host us per increment, virtual ns per increment, trace counts)."""
    result = sim.run()
    elapsed = time.perf_counter() - t0
    if result.end is not RunEnd.ALL_EXITED or sim.mem.read_u64(counter) != n:
        raise SystemExit(f"bench: run ended {result.end.name} with counter {sim.mem.read_u64(counter)}, expected {n}")
    return elapsed / n * 1e6, result.time_ns / n, result.counts


def guest_variant(source: str, n: int, threads: int) -> tuple[float, float, dict]:
    program = assemble(source, BASE, name="bench")
    t0 = time.perf_counter()
    sim = storm_sim()
    sim.load(program)
    for i in range(threads):
        sim.spawn_guest(f"w{i}", program.symbols["worker"], n // threads, program.symbols["counter"])
    return finish(sim, program.symbols["counter"], n, t0)


def mutex_variant(n: int, threads: int) -> tuple[float, float, dict]:
    data = assemble(".data\ncounter: .quad 0", BASE, name="bench")
    counter = data.symbols["counter"]

    def worker(m: parlib.Mutex, count: int) -> None:
        sim = parlib.current_sim()
        work_ns = 3 * sim.costs.insn_ns
        for _ in range(count):
            m.lock()
            value = sim.mem.read_u64(counter)
            parlib.compute(work_ns)
            sim.mem.write_u64(counter, value + 1)
            m.unlock()

    def main() -> None:
        m = parlib.Mutex("counter")
        workers = [parlib.uthread_create(worker, m, n // threads, name=f"w{i}") for i in range(threads)]
        for uth in workers:
            parlib.uthread_join(uth)

    t0 = time.perf_counter()
    sim = storm_sim(tick_ns=(STORM_MIN + STORM_MAX) // 2 * Costs().insn_ns)
    sim.load(data)
    sim.spawn_python("main", main)
    return finish(sim, counter, n, t0)


def raw_variant(n: int) -> float:
    """(d): host us per increment running the RAS loop's code on bare Unicorn, stopped every mean interval."""
    program = assemble(RAS_LOOP, BASE, name="raw")
    text, data = program.segments
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(text.addr, 0x1000, 5)
    uc.mem_map(data.addr, 0x1000, 3)
    uc.mem_write(text.addr, text.data)
    uc.reg_write(x86.UC_X86_REG_RDI, n)
    uc.reg_write(x86.UC_X86_REG_RSI, program.symbols["counter"])
    end = program.symbols["seq_end"] + 5  # the `ret`: stop before it
    slice_insns = (STORM_MIN + STORM_MAX) // 2
    rip = ctypes.c_uint64(program.symbols["worker"])
    uch = uc._uch
    t0 = time.perf_counter()
    while rip.value != end:
        uclib.uc_emu_start(uch, rip.value, end, 0, slice_insns)
        uclib.uc_reg_read(uch, x86.UC_X86_REG_RIP, ctypes.byref(rip))
    elapsed = time.perf_counter() - t0
    if int.from_bytes(uc.mem_read(program.symbols["counter"], 8), "little") != n:
        raise SystemExit("bench: raw loop miscounted")
    return elapsed / n * 1e6


def repetition(n: int, nm: int, u: int) -> dict[str, list]:
    """One repetition of every variant, interleaved so machine noise hits all alike (in a fresh process)."""
    guest_variant(RAS_LOOP, 400, u)  # warm: keystone, Unicorn translation, imports
    mutex_variant(40, u)
    return {
        "ras": guest_variant(RAS_LOOP, n, u),
        "xadd": guest_variant(XADD_LOOP, n, u),
        "mutex": mutex_variant(nm, u),
        "raw": (raw_variant(n),),
    }


def main() -> None:
    if serve({"repetition": repetition}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--increments", type=int, default=40_000, help="increments per guest run (N)")
    parser.add_argument("--mutex-increments", type=int, default=4_000, help="increments per Mutex run")
    parser.add_argument("--threads", type=int, default=4, help="uthreads sharing the counter (U)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; medians are printed")
    args = parser.parse_args()
    n, nm, u = args.increments - args.increments % args.threads, args.mutex_increments, args.threads
    nm -= nm % u

    reps = [fresh(__file__, "repetition", n=n, nm=nm, u=u) for _ in range(args.repeat)]
    samples: dict[str, list] = {key: [r[key] for r in reps] for key in ("ras", "xadd", "mutex", "raw")}
    med = statistics.median

    def host(key):
        return med(s[0] for s in samples[key])

    def virt(key):
        return med(s[1] for s in samples[key])

    ras_counts, mutex_counts = samples["ras"][0][2], samples["mutex"][0][2]
    print(f"storm: a tick every {STORM_MIN}..{STORM_MAX} instructions on 1 vcore, roundrobin, {u} uthreads, "
          f"seed {SEED}")  # fmt: skip
    print(f"(a) RAS load/add/store:   {host('ras'):7.3f} us/incr host  {virt('ras'):6.2f} ns/incr virtual  "
          f"({ras_counts.get('ras_restart', 0)} restarts, {ras_counts.get('rr_switch', 0)} switches, N={n})")
    print(f"(b) lock xadd:            {host('xadd'):7.3f} us/incr host  {virt('xadd'):6.2f} ns/incr virtual  (N={n})")
    print(f"(c) parlib.Mutex:         {host('mutex'):7.3f} us/incr host  {virt('mutex'):6.2f} ns/incr virtual  "
          f"({mutex_counts.get('mutex_block', 0)} blocks, {mutex_counts.get('mutex_handoff', 0)} hand-offs, N={nm})")
    print(f"(d) raw Unicorn RAS loop: {host('raw'):7.3f} us/incr host")
    print(f"RAS over raw Unicorn (host):        {host('ras') / host('raw'):8.2f}")
    print(f"Mutex over RAS (host):              {host('mutex') / host('ras'):8.2f}")
    print(f"Mutex over RAS (virtual):           {virt('mutex') / virt('ras'):8.2f}")
    print(f"ras ratio: {host('ras') / host('xadd'):.2f}")


if __name__ == "__main__":
    main()
