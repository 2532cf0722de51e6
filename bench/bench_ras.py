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

Per variant, CPU time of Simulation.run() (time.process_time_ns; building
the simulation is not timed) divided by N (whole-run cost per increment:
emulation, vcore context, the 2LS, tracing), and the run's virtual time and
guest instructions divided by N (deterministic: the same every repetition).
Each repetition runs every variant, interleaved so machine noise hits all
alike, in a new interpreter (bench/_fresh.py), so none measures a process
grown by the ones before; host figures are printed as the min and the median
of R repetitions.  Last line: `ras ratio: X.XX`, median host time per
increment of (a) over that of (b).

What the ras ratio can show: how much more host time the simulator spends
per increment when the increment is a RAS than when it is `lock xadd`, at
this interruption rate, on one vcore.  That is the RAS handler consulted on
every interrupted resume, the restarts' re-executed instructions, and the
RAS loop's one extra instruction per increment (5 against 4; the storm
counts instructions, so that also means proportionally more ticks and
switches).  1.00 would mean the RAS machinery costs the simulator nothing
over an atomic instruction.

What it cannot show:
- Which is faster on a real machine.  Unicorn emulates `lock xadd` at about
  the price of a plain add (no bus lock, no cache-line transfer), and
  virtual time charges every instruction `insn_ns` alike, so the real price
  of an atomic (tens of cycles uncontended, far more contended) is in
  neither the host nor the virtual figure.
- Anything about several vcores.  A RAS is atomic only against interruption
  on its own vcore (a uniprocessor technique); the comparison is valid on
  one vcore, where both counters end exact.  On two, the RAS counter would
  lose updates and `lock xadd`'s would not.
- Another interruption rate: with rarer ticks the ratio tends to the
  instruction-count ratio (5/4) plus little; with denser ticks the
  restarts and the handler weigh more.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
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
from _fresh import Figures, cpu_ns, fresh, median, serve  # noqa: E402

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


def finish(sim: Simulation, counter: int, n: int) -> tuple[float, float, float, dict]:
    """Run, check the count; (host us, virtual ns, guest instructions) per increment, and the trace counts."""
    t0 = cpu_ns()
    result = sim.run()
    elapsed = cpu_ns() - t0
    if result.end is not RunEnd.ALL_EXITED or sim.mem.read_u64(counter) != n:
        raise SystemExit(f"bench: run ended {result.end.name} with counter {sim.mem.read_u64(counter)}, expected {n}")
    return elapsed / n / 1e3, result.time_ns / n, result.insns / n, result.counts


def guest_variant(source: str, n: int, threads: int) -> tuple[float, float, float, dict]:
    program = assemble(source, BASE, name="bench")
    sim = storm_sim()
    sim.load(program)
    for i in range(threads):
        sim.spawn_guest(f"w{i}", program.symbols["worker"], n // threads, program.symbols["counter"])
    return finish(sim, program.symbols["counter"], n)


def mutex_variant(n: int, threads: int) -> tuple[float, float, float, dict]:
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

    sim = storm_sim(tick_ns=(STORM_MIN + STORM_MAX) // 2 * Costs().insn_ns)
    sim.load(data)
    sim.spawn_python("main", main)
    return finish(sim, counter, n)


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
    t0 = cpu_ns()
    while rip.value != end:
        uclib.uc_emu_start(uch, rip.value, end, 0, slice_insns)
        uclib.uc_reg_read(uch, x86.UC_X86_REG_RIP, ctypes.byref(rip))
    elapsed = cpu_ns() - t0
    if int.from_bytes(uc.mem_read(program.symbols["counter"], 8), "little") != n:
        raise SystemExit("bench: raw loop miscounted")
    return elapsed / n / 1e3


def repetition(n: int, nm: int, u: int) -> dict[str, list]:
    """One repetition of every variant, interleaved so machine noise hits all alike (in a fresh process)."""
    guest_variant(RAS_LOOP, 400, u)  # warm: the assembler, Unicorn translation, imports
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
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (at least 5); min and median are printed")
    args = parser.parse_args()
    n, nm, u = args.increments - args.increments % args.threads, args.mutex_increments, args.threads
    nm -= nm % u

    reps = [fresh(__file__, "repetition", n=n, nm=nm, u=u) for _ in range(args.repeat)]
    samples: dict[str, list] = {key: [r[key] for r in reps] for key in ("ras", "xadd", "mutex", "raw")}

    def host(key: str) -> list[float]:
        return [s[0] for s in samples[key]]

    def fixed(key: str) -> tuple[float, float, dict]:
        """(virtual ns, guest instructions) per increment and the trace counts: the same every repetition."""
        _, virtual, insns, counts = samples[key][0]
        return virtual, insns, counts

    def med(key: str) -> float:
        return median(host(key))

    (ras_v, ras_i, ras_c), (xadd_v, xadd_i, xadd_c), (mutex_v, _, mutex_c) = map(fixed, ("ras", "xadd", "mutex"))
    print(f"storm: a tick every {STORM_MIN}..{STORM_MAX} instructions on 1 vcore, roundrobin, {u} uthreads, "
          f"seed {SEED}")  # fmt: skip
    table = Figures(args.repeat, width=36, fmt="8.3f")
    table.header()
    table.row("(a) RAS load/add/store, host", host("ras"), "us/incr",
              note=f"({ras_v:.2f} ns/incr virtual, {ras_i:.2f} insns/incr, {ras_c.get('ras_restart', 0)} restarts, "
                   f"{ras_c.get('rr_switch', 0)} switches, N={n})")  # fmt: skip
    table.row("(b) lock xadd, host", host("xadd"), "us/incr",
              note=f"({xadd_v:.2f} ns/incr virtual, {xadd_i:.2f} insns/incr, {xadd_c.get('rr_switch', 0)} switches, "
                   f"N={n})")  # fmt: skip
    table.row("(c) parlib.Mutex, host", host("mutex"), "us/incr",
              note=f"({mutex_v:.2f} ns/incr virtual, {mutex_c.get('mutex_block', 0)} blocks, "
                   f"{mutex_c.get('mutex_handoff', 0)} hand-offs, N={nm})")  # fmt: skip
    table.row("(d) raw Unicorn RAS loop, host", host("raw"), "us/incr")
    table.value("RAS over raw Unicorn (host)", med("ras") / med("raw"), fmt="8.2f")
    table.value("Mutex over RAS (host)", med("mutex") / med("ras"), fmt="8.2f")
    table.value("Mutex over RAS (virtual)", mutex_v / ras_v, fmt="8.2f")
    print("the ras ratio shows: the simulator's host cost of a RAS increment over a lock xadd one, at this tick rate")
    print("  on 1 vcore: the RAS handler on each interrupted resume, restarts, one more insn (and tick) per increment")
    print("it cannot show: which is faster on real hardware (emulated lock xadd costs what an add costs, and virtual")
    print("  time prices every insn alike), anything on several vcores (a RAS is atomic only on its own), other rates")
    print(f"ras ratio: {med('ras') / med('xadd'):.2f}")

if __name__ == "__main__":
    main()
