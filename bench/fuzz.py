"""Generated guest programs, run in worker processes: no Python exception escapes run(), nothing hangs.

    python bench/fuzz.py [--programs N] [--seed S] [--workers W] [--limit SECONDS]
    python bench/fuzz.py --seed S --show

Program i (i = 0 .. N-1, default N = 10,000) is built from its own seed,
S + i (default S = 0), with `random.Random(seed)`, as
tests/test_hostile_guests.py builds its examples:

* 8 to 64 random bytes of code, most often after a `mov eax, NR; syscall`
  stub whose NR is one of Akaros's or parlib's syscall numbers, sometimes a
  random 32-bit one;
* 1 to 3 vcores, the pthread or the roundrobin 2LS (vcore ticks every 0, 500,
  3,000 or 20,000 ns);
* 1 to 3 guest uthreads at the code, each with up to 6 register arguments
  (rdi, rsi, rdx, rcx, r8, r9): random 64-bit values, or values that reach
  interesting paths (0, -1, the top bit, 0xDEAD in the top 16 bits,
  addresses of the code, a stack, TLS and the vdso).

Each runs with `sim.run(until_ns=2_000_000, max_insns=200_000)` and is
classified by the worker that ran it: the RunEnd's name; "crash" if building
or running the simulation raised (the exception's type, message and
innermost frame are kept); "hang" if it took more than --limit seconds of
wall-clock time (default 10: a SIGALRM in the worker raises out of the run).
A program stuck where a signal cannot reach it (native code) or a worker that
dies is caught by the parent: no result within 2 * limit + 10 s counts as a
hang of the program it waited for, the pool is replaced and the run goes on
from the next program, so a hang never hangs the bench.

Prints a progress line to stderr every 1,000 programs, then the outcome
counts by RunEnd name (with the PROCESS_EXITED reports counted by their
headline, the text before the first ':'), then the seeds of the first 20
deaths whose report is a Python exception the runtime caught (`MemError in
sched_ops.sched_entry of 2LS 'pthread'`: not a crash, but a guest that
reached a Python error path, which the shipped 2LSes never raise on their
own), then those of the first 20 crashes and hangs with what happened, and
last the line `fuzz: N programs, C crashes, H hangs`.  Exit status 1 if C or
H > 0.
A seed reproduces on its own: `python bench/fuzz.py --seed SEED --show` runs
that one program in this process and prints its end, exit status and report
(or lets its exception's traceback through).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from akaros_sim import Program, Prot, Segment, Simulation  # noqa: E402
from akaros_sim.process import STACK_AREA, TLS_AREA, VDSO  # noqa: E402
from schedops.pthread import PthreadSched  # noqa: E402
from schedops.roundrobin import RoundRobinSched  # noqa: E402

CODE = 0x40_0000
# Akaros's and parlib's syscall numbers, and some that mean nothing (as tests/test_hostile_guests.py)
SYSCALLS = (1, 2, 8, 12, 13, 18, 19, 20, 32, 36, 101, 0x200, 0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0xBEEF)
U64 = (1 << 64) - 1
INTERESTING = (0, 1, 4096, U64, 1 << 63, 0xDEAD << 48, (0xDEAD << 48) | CODE, CODE, CODE + 0x800,
               STACK_AREA - 8, TLS_AREA, VDSO)  # fmt: skip
UNTIL_NS, MAX_INSNS = 2_000_000, 200_000
PROGRESS_EVERY = 1000
SHOWN = 20  # crashes and hangs listed, each


class _Hang(BaseException):
    """Raised by SIGALRM in a worker: a BaseException, so no `except Exception` in the simulator takes it."""


def _on_alarm(_signo, _frame) -> None:
    raise _Hang()


def build(seed: int) -> Simulation:
    """Program `seed`: its code, vcores, 2LS and uthreads, all drawn from random.Random(seed)."""
    rng = random.Random(seed)
    roll = rng.random()
    nr = None if roll < 0.2 else rng.choice(SYSCALLS) if roll < 0.85 else rng.getrandbits(32)
    stub = b"" if nr is None else b"\xb8" + nr.to_bytes(4, "little") + b"\x0f\x05"
    code = stub + rng.randbytes(rng.randint(8, 64))
    sim = Simulation(vcores=rng.randint(1, 3), seed=seed)
    sim.load(Program("fuzz", (Segment(CODE, code, Prot.READ | Prot.EXEC, "text", 0x1000),), entry=CODE))
    sim.set_sched(PthreadSched() if rng.random() < 0.5 else RoundRobinSched(tick_ns=rng.choice((0, 500, 3_000, 20_000))))
    for i in range(rng.randint(1, 3)):
        args = [
            rng.getrandbits(64) if rng.random() < 0.6 else rng.choice(INTERESTING) for _ in range(rng.randint(0, 6))
        ]
        sim.spawn_guest(f"g{i}", CODE, *args)
    return sim


def one(seed: int, limit: float) -> tuple:
    """(seed, outcome, detail, seconds): outcome is a RunEnd name, "crash" or "hang"."""
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        result = build(seed).run(until_ns=UNTIL_NS, max_insns=MAX_INSNS)
        outcome, detail = result.end.name, (result.report or "").split(":", 1)[0][:60]
    except _Hang:
        outcome, detail = "hang", f"still running after {limit:g} s"
    except BaseException as exc:  # every way out of run() but a return is a finding
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = str(exc).splitlines()[0][:160] if str(exc) else ""
        outcome = "crash"
        detail = f"{type(exc).__name__}: {message} (at {Path(where.filename).name}:{where.lineno} in {where.name})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    if outcome != "hang" and seconds >= limit:  # an alarm the simulator swallowed
        outcome, detail = "hang", f"took {seconds:.1f} s"
    return seed, outcome, detail, seconds


def _is_exception(headline: str) -> bool:
    """A report that is the runtime's account of a Python exception (process.py's crash)."""
    first = headline.split(" ", 1)[0]
    return first.endswith(("Error", "Exception")) or " in sched_ops." in headline or " in kernel event" in headline


def _init_worker() -> None:
    signal.signal(signal.SIGALRM, _on_alarm)


def _one_star(job: tuple) -> tuple:
    return one(*job)


def results(first: int, count: int, workers: int, limit: float):
    """Yield one() for seeds first .. first+count-1, in order, from a pool watched for stuck workers."""
    if workers == 0:
        _init_worker()
        for seed in range(first, first + count):
            yield one(seed, limit)
        return
    watchdog = 2 * limit + 10
    seed, end = first, first + count
    while seed < end:
        stuck = False
        with mp.Pool(workers, initializer=_init_worker, maxtasksperchild=500) as pool:  # left: terminated
            it = pool.imap(_one_star, ((s, limit) for s in range(seed, end)))
            try:
                while seed < end:
                    yield it.next(timeout=watchdog)
                    seed += 1
            except mp.TimeoutError:
                stuck = True
        if stuck:  # a new pool takes the rest
            yield (
                seed,
                "hang",
                f"no result within {watchdog:g} s (out of SIGALRM's reach, or its worker died)",
                watchdog,
            )
            seed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=10_000, help="how many programs (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the first program; program i has seed+i")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (0: run in this process)")
    parser.add_argument("--limit", type=float, default=10.0, help="wall-clock seconds a program may take")
    parser.add_argument("--show", action="store_true", help="run program --seed alone here and print its report")
    args = parser.parse_args()
    if args.show:
        result = build(args.seed).run(until_ns=UNTIL_NS, max_insns=MAX_INSNS)
        print(f"seed {args.seed}: {result.end.name}, exit status {result.exit_status}\n{result.report or ''}")
        return 0
    outcomes, headlines = Counter(), Counter()
    caught, crashes, hangs = [], [], []
    slowest = (0.0, None)
    start = time.perf_counter()
    for done, (seed, outcome, detail, seconds) in enumerate(results(args.seed, args.programs, args.workers,
                                                                    args.limit), 1):  # fmt: skip
        outcomes[outcome] += 1
        if outcome == "PROCESS_EXITED":
            headlines[detail] += 1
            if _is_exception(detail):
                caught.append((seed, detail))
        elif outcome in ("crash", "hang"):
            (crashes if outcome == "crash" else hangs).append((seed, detail))
        slowest = max(slowest, (seconds, seed))
        if done % PROGRESS_EVERY == 0:
            print(f"fuzz: {done}/{args.programs} programs, {len(crashes)} crashes, {len(hangs)} hangs, "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    print(f"{args.programs} programs (seeds {args.seed}..{args.seed + args.programs - 1}) in "
          f"{time.perf_counter() - start:.0f} s; slowest: seed {slowest[1]}, {slowest[0]:.2f} s")  # fmt: skip
    print("outcomes:")
    for outcome, n in sorted(outcomes.items()):
        print(f"  {outcome:<16} {n:>6}")
    if headlines:
        print("PROCESS_EXITED reports, by headline:")
        for headline, n in headlines.most_common():
            print(f"  {n:>6}  {headline or '(no report)'}")
    for label, found in (("deaths by a caught Python exception", caught), ("crashes", crashes), ("hangs", hangs)):
        if found:
            print(f"{label} ({min(len(found), SHOWN)} of {len(found)} shown; rerun one with --seed SEED --show):")
            for seed, detail in found[:SHOWN]:
                print(f"  seed {seed}: {detail}")
    print(f"fuzz: {args.programs} programs, {len(crashes)} crashes, {len(hangs)} hangs")
    return 1 if crashes or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
