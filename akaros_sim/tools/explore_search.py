"""The search: which choice lists to try, in what order, and running them on an executor (docs/explore.md).

Plans are a deterministic function of the candidate list, the strategy and
the seed, generated before any run.  They run in batches on the sweep's
executor (this process, local processes or Dask); results are merged in plan
order, so the first failure is the first in plan order whatever finishes
first, and a run budget gives the same result on every executor.  A time
budget only decides how many batches run: the result is the one the same
count of runs would give.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import sys
import time

import attrs

from akaros_sim.tools.explore_run import PAGE, run_task, task_for
from akaros_sim.tools.sweep import Executor

STRATEGIES = ("random", "pct", "exhaustive", "portfolio")
PORTFOLIO = ("random", "pct", "exhaustive")  # portfolio: plan i comes from PORTFOLIO[i % 3]
# ops worth preempting at: where a 2LS hands a uthread over or changes its mind
INTERESTING_OPS = frozenset({"sched_entry", "thread_runnable", "thread_paused", "thread_blockon_sysc",
                             "thread_has_blocked", "thread_yield", "thread_refl_fault"})  # fmt: skip
# what the explorer injects besides preemptions (docs/explore.md)
STORM = {"ns": 20_000, "min_insns": 1, "max_insns": 8}
DELAY_NS = 200_000


def candidates(log, vcores: int, ras_lengths: dict) -> list[dict]:
    """The points worth an injection, in the order the first run passed them (acquisitions of a Mutex are
    in the log only for the Mutexes explore was asked to watch: Points.record)."""
    out = []
    for point in log:
        if "in_op" in point and (point["in_op"] not in INTERESTING_OPS or point["vcore"] < 0):
            continue
        if "ras" in point or "code" in point:
            name = point.get("ras", point.get("code"))
            for offset in range(ras_lengths.get(name, 1)):  # inside the sequence, before each instruction
                out.append({**point, "offset": offset})
        else:
            out.append(point)
    return out


def choices_at(points: list, kinds, syscalls=(), pages=()) -> list[dict]:
    """Every choice of `kinds` at each point, point by point (preempt-only: one choice a point)."""
    out = []
    for when in points:
        vcore = when["vcore"] if "vcore" in when and when["vcore"] >= 0 else None
        for kind in kinds:
            if kind == "preempt":
                out.append({"preempt": {"vcore": vcore, "when": when}})
            elif kind == "tick_storm":
                out.append({"tick_storm": {"vcore": vcore, "when": when, **STORM}})
            elif kind == "delay_syscall":
                out += [{"delay_syscall": {"when": when, "syscall": name, "ns": DELAY_NS}} for name in syscalls]
            elif kind == "unmap":
                out += [{"unmap": {"when": when, "start": page, "length": PAGE}} for page in pages]
            else:
                out += [{"protect": {"when": when, "start": page, "length": PAGE, "prot": "r"}} for page in pages]
    return out


def plans(strategy: str, n: int, seed: int, runs: int, depth: int, k: int):
    """(strategy, indices into the candidates) to try, in order, at most `runs`."""
    if strategy == "portfolio":
        subs = [_plans(name, n, random.Random(f"{seed}:{name}"), runs, depth, k) for name in PORTFOLIO]
        alive = list(zip(PORTFOLIO, subs, strict=True))
        count = 0
        while alive and count < runs:
            for name, gen in list(alive):
                picks = next(gen, None)
                if picks is None:
                    alive.remove((name, gen))
                    continue
                yield name, picks
                count += 1
                if count == runs:
                    return
        return
    for picks in itertools.islice(_plans(strategy, n, random.Random(seed), runs, depth, k), runs):
        yield strategy, picks


def _plans(strategy: str, n: int, rng: random.Random, runs: int, depth: int, k: int):
    if not n:
        return
    if strategy == "exhaustive":
        for size in range(1, k + 1):
            yield from (list(combo) for combo in itertools.combinations(range(n), size))
        return
    for i in range(runs):
        if strategy == "pct" and i < runs // 2:
            # PCT (Burckhardt et al. 2010): d-1 change points uniform over the run's points,
            # depths 2..depth+1 in turn; the second half of the budget falls back to random
            d = 2 + i % depth
            yield sorted(rng.sample(range(n), min(n, d - 1)))
        else:
            yield sorted(rng.sample(range(n), rng.randint(1, min(n, k))))


@attrs.frozen
class Searched:
    """What a search found: runs judged (in plan order, up to the first failure), the failing plan's
    choices, failure, digest and strategy (None: nothing failed), and which `sometimes` held in any run."""

    runs: int
    choices: tuple | None
    failure: str | None
    digest: str
    strategy: str | None
    sometimes: tuple
    timed_out: bool = False


def search(scenario, cands: list, planned, oracle=None, liveness_ns=None, workers: int = 1, dask=None,
           time_s: float | None = None, sometimes: tuple = (), progress=None) -> Searched:  # fmt: skip
    """Run the planned choice lists in batches; stop at the first failure in plan order, or when the time
    budget is spent (checked between batches)."""
    seen = list(sometimes)
    batch = 1 if workers == 1 and dask is None else 4 * workers
    start = time.monotonic()
    done = 0
    planned = iter(planned)
    with Executor(workers, dask) as executor:
        while True:
            chunk = list(itertools.islice(planned, batch))
            if not chunk:
                return Searched(done, None, None, "", None, tuple(seen))
            local = workers == 1 and dask is None
            todo = [(i, task_for(scenario, [cands[j] for j in picks], oracle, liveness_ns, local))
                    for i, (_name, picks) in enumerate(chunk)]  # fmt: skip
            results: dict[int, tuple] = {}
            executor.run(run_task, todo, results.__setitem__)
            for i, (name, picks) in enumerate(chunk):  # plan order, whatever finished first
                failure, digest, held = results[i]
                done += 1
                seen = [a or b for a, b in zip(seen, held, strict=True)]
                if progress is not None:
                    progress(done)
                if failure is not None:
                    return Searched(done, tuple(cands[j] for j in picks), failure, digest, name, tuple(seen))
            if time_s is not None and time.monotonic() - start >= time_s:
                return Searched(done, None, None, "", None, tuple(seen), timed_out=True)


class Progress:
    """Runs so far as a rich bar on a terminal's stderr; nothing when stderr is piped or rich is absent."""

    def __init__(self, total: int | None) -> None:
        self.bar = None
        if sys.stderr.isatty() and importlib.util.find_spec("rich") is not None:  # rich: the experiments extra
            from rich.console import Console  # noqa: PLC0415 - only on a terminal
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn  # noqa: PLC0415

            self.bar = Progress("explore", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)  # fmt: skip
            self.task = self.bar.add_task("explore", total=total)
            self.bar.start()

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
