"""The cost of a guest fault fixed by the exception table, against raw Unicorn, and of a table lookup.

    python bench/bench_fault.py [--faults N] [--repeat R] [--profile]

(a) A guest uthread under the pthread 2LS loops calling the uaccess library's
    get_user on an unmapped address: every call faults, the fault is reflected
    into vcore context, the extable handler on the thread_refl_fault chain sets
    rip to the fixup and rax to -EFAULT, and the uthread resumes.  The same
    loop on a good address (no faults) is the call without its fault: the
    loop's and get_user's instructions run as guest slices, nothing else.
    Each is the slope between two runs of different lengths (N and N/10
    iterations; the fault-free loop runs 100 N calls so it is long enough to
    time): CPU time of Simulation.run() over the extra iterations, so the
    run's set-up and tear-down (grants, the first slices, the end of the run)
    cancel and each figure is per iteration only.  Their difference is what
    the fault adds to a call.
(b) A raw Unicorn fault round trip, as in bench/bench_cpu.py: emu_start ->
    unmapped read -> UcError -> read rip.
(c) ExceptionTable.lookup at 1,000 and 1,000,000 entries (entries 16 bytes
    apart), hit and miss, in absolute ns per call (the bench's `for` loop
    included, about 15 ns here): 100,000 shuffled queries, so the
    1,000,000-entry table is read from all over memory, as cold as it gets.

Times are CPU time of the measuring process (time.process_time_ns).  Each
repetition of (a) and (b) runs in a new interpreter (bench/_fresh.py), so
none measures a process grown by the ones before; (c), which runs no
simulation, makes its R repetitions in one new interpreter of its own
(building the 1,000,000-entry table takes seconds).  Every figure is printed
as the min and the median of R repetitions.  Last line: `fault ratio: X.XX`,
the median of (a) per fault over the median of (b) (lower is better).
--profile prints cProfile's top functions for one run of (a).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from akaros_sim.asm import assemble  # noqa: E402
from akaros_sim.extable import ExceptionTable  # noqa: E402
from akaros_sim.memory import PAGE_SIZE, Prot  # noqa: E402
from akaros_sim.program import ExtableEntry, ExtableType  # noqa: E402
from akaros_sim.simulation import RunEnd, Simulation  # noqa: E402
from akaros_sim.uaccess import uaccess_program  # noqa: E402
from schedops.pthread import PthreadSched  # noqa: E402
from _fresh import Figures, cpu_ns, fresh, median, serve  # noqa: E402

UNMAPPED = 0x5000_0000
GOOD = 0x1000_0000
EFAULT_U64 = 2**64 - 14
SIZES = (1_000, 1_000_000)  # extable sizes for (c)
BOUNDS_NS = {1_000: 100, 1_000_000: 1_000}  # issue 10's bounds per lookup
CLEAN_FACTOR = 100  # the fault-free loop runs this many times more calls than the faulting one
LOOKUPS = tuple((size, hit) for size in SIZES for hit in (True, False))

# rdi = iterations, rsi = the user pointer; returns the number of -EFAULTs seen.
LOOP = """
_start:
    mov r12, rdi
    mov r14, rsi
    xor r15, r15
    lea r13, [rip + slot]
again:
    mov rdi, r13
    mov rsi, r14
    movabs rax, {get_user}
    call rax                     # get_user(&slot, user): faults when user is bad
    shr rax, 63                  # 1 for -EFAULT
    add r15, rax
    dec r12
    jnz again
    mov rax, r15
    ret
.data
slot: .quad 0
"""


def runtime_fault_loop(n: int, user: int, profile: cProfile.Profile | None = None) -> tuple[int, int]:
    """CPU ns of Simulation.run() for n get_user calls on `user`, and the guest instructions it retired."""
    lib = uaccess_program()
    prog = assemble(LOOP.format(get_user=lib.symbol("get_user")), 0x40_0000, name="loop")
    sim = Simulation(vcores=1, seed=1)
    sim.load(lib)
    sim.load(prog)
    sim.set_sched(PthreadSched())
    sim.mem.map(GOOD, PAGE_SIZE, Prot.READ | Prot.WRITE, "good", backing=b"\x2a" * 8)
    sim.spawn_guest("loop", prog.entry, n, user)
    if profile is not None:
        profile.enable()
    t0 = cpu_ns()
    res = sim.run()
    elapsed = cpu_ns() - t0
    if profile is not None:
        profile.disable()
    if res.end is not RunEnd.ALL_EXITED:
        raise SystemExit(f"bench loop ended with {res.end.name}: {res.report}")
    efaults = sim.uthread("loop").exit_value
    fixed = sum(count for _, count in sim.extable.sites())
    if efaults != (n if user == UNMAPPED else 0) or fixed != efaults:
        raise SystemExit(f"bench loop: expected {n} fixed faults on {user:#x}, got {efaults} -EFAULTs, {fixed} fixups")
    return elapsed, res.insns


def per_iteration(n: int, user: int) -> tuple[float, float]:
    """(CPU us, guest instructions) per get_user call: the slope between runs of n // 10 and n calls."""
    short, long = n // 10, n
    t_short, i_short = runtime_fault_loop(short, user)
    t_long, i_long = runtime_fault_loop(long, user)
    return (t_long - t_short) / (long - short) / 1e3, (i_long - i_short) / (long - short)


def raw_fault_us(n: int) -> float:
    """bench_cpu.py's raw fault round trip: emu_start -> unmapped read -> UcError -> read rip."""
    from bench_cpu import raw_fault_us as raw

    return raw(n)


def lookup_tables(sizes: tuple[int, ...]) -> dict[int, tuple[ExceptionTable, list[int], list[int]]]:
    """Per size: a table of entries 16 bytes apart, and shuffled hit and miss rips."""
    rng = random.Random(1)
    base, stride, queries = 0x40_0000, 16, 100_000
    out = {}
    for size in sizes:
        entries = [ExtableEntry(base + stride * i, base + stride * i + 8, ExtableType.UACCESS) for i in range(size)]
        table = ExceptionTable(entries)
        hits = [base + stride * rng.randrange(size) for _ in range(queries)]
        misses = [h + 1 + rng.randrange(stride - 1) for h in hits]  # between entries, never on one
        out[size] = (table, hits, misses)
    return out


def lookup_ns(table: ExceptionTable, rips: list[int], expect_hit: bool) -> float:
    """CPU ns per table.lookup(rip) over rips, the loop included."""
    lookup = table.lookup
    t0 = cpu_ns()
    for rip in rips:
        lookup(rip)
    elapsed = cpu_ns() - t0
    if any((lookup(rip) is not None) != expect_hit for rip in rips[:100]):
        raise SystemExit("lookup bench: a query did not hit or miss as built")
    return elapsed / len(rips)


def repetition(n: int) -> dict[str, float]:
    """One repetition of (a) and (b), interleaved so machine noise hits all alike (in a fresh process)."""
    runtime_fault_loop(50, UNMAPPED)  # warm: calibration, the assembler, capstone caches
    out: dict[str, float] = {}
    out["ours"], _ = per_iteration(n, UNMAPPED)
    out["clean"], out["clean_insns"] = per_iteration(n * CLEAN_FACTOR, GOOD)
    out["raw"] = raw_fault_us(n)
    return out


def lookups(repeat: int) -> dict[str, list[float]]:
    """(c): `repeat` interleaved repetitions over tables built once (in a fresh process of its own)."""
    tables = lookup_tables(SIZES)
    out: dict[str, list[float]] = {f"{size}:{hit}": [] for size, hit in LOOKUPS}
    for _ in range(repeat):
        for size, hit in LOOKUPS:
            table, hits, misses = tables[size]
            out[f"{size}:{hit}"].append(lookup_ns(table, hits if hit else misses, hit))
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for bench_cpu
    if serve({"repetition": repetition, "lookups": lookups}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=2000, help="faults per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (at least 5); min and median are printed")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for (a)")
    args = parser.parse_args()

    n = args.faults
    reps = [fresh(__file__, "repetition", n=n) for _ in range(args.repeat)]
    ours, clean, clean_insns, raw = ([r[k] for r in reps] for k in ("ours", "clean", "clean_insns", "raw"))
    looked = fresh(__file__, "lookups", repeat=args.repeat)
    look = {(size, hit): looked[f"{size}:{hit}"] for size, hit in LOOKUPS}

    table = Figures(args.repeat, width=64, fmt="9.2f")
    table.header()
    table.row("(a) runtime fault round trip (get_user, extable fixup, resume)", ours, "us/fault")
    table.row("(a) the same get_user call on a good pointer (no fault)", clean, "us/call",
              note=f"({median(clean_insns):.0f} guest instructions per call)")  # fmt: skip
    table.value("(a) what the fault adds to a call (medians)", median(ours) - median(clean), note="us")
    table.row("(b) raw Unicorn fault round trip", raw, "us/fault")
    for size in SIZES:
        for hit in (True, False):
            table.row(f"(c) extable lookup, {size:>9,} entries, {'hit' if hit else 'miss'}", look[(size, hit)], "ns",
                      fmt="9.0f", note=f"(bound {BOUNDS_NS[size]:,} ns)")  # fmt: skip
    big, small = max(SIZES), min(SIZES)
    table.value(f"(c) lookup cost {big:,} / {small:,} entries (hit, medians)",
                median(look[(big, True)]) / median(look[(small, True)]))  # fmt: skip
    if args.profile:
        runtime_fault_loop(50, UNMAPPED)  # warm, as each repetition does
        profile = cProfile.Profile()
        runtime_fault_loop(n, UNMAPPED, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    print(f"fault ratio: {median(ours) / median(raw):.2f}")

if __name__ == "__main__":
    main()
