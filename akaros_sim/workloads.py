"""Workload generators: many uthreads of one kind, with seeded arrival times and sizes.

    from akaros_sim import workloads
    wl = workloads.spawn(sim, "io", n=16, arrival="exponential", arrival_ns=5_000)

Kinds (docs/experiments.md has every parameter):

* ``cpu``: each worker computes `size_ns` (`parlib.compute`, or a guest loop with
  ``mode = "guest"``);
* ``io``: `bursts` times, compute `size_ns` then block in SYS_block (`uthread_sleep`)
  for a latency drawn from `latency` / `latency_ns` (rounded up to whole us: SYS_block sleeps microseconds);
* ``mutex``: `iters` times, hold one of `locks` Mutexes for `size_ns`, then think `think_ns`;
* ``prodcons``: `producers` put `n` items (arriving per the arrival process) into a
  bounded queue, `consumers` take them and compute each item's `size_ns`;
* ``forkjoin``: `rounds` rounds, each a serial part then `n` tasks of `size_ns` forked and joined;
* ``faults``: each worker touches `pages` fresh pages of an unbacked mapping (every
  first touch is a #PF the 2LS turns into populate_va), from guest code.

A workload is one **driver** uthread, named after the workload, plus its
workers, named ``NAME.0``, ``NAME.1``... (``NAME.R.I`` for fork-join tasks,
``NAME.pI`` / ``NAME.cI`` for producers and consumers).  For cpu, io, mutex and
faults the driver sleeps until each arrival time and creates that worker
(as a program's main thread calls pthread_create: the kernel makes no
uthreads), so an arrival is late only if the 2LS runs the driver late (or by
the rounding of its sleep up to whole microseconds, SYS_block's unit); then
it joins every worker and returns a count (its exit value, for `retvals`).
Producers and the fork-join driver sleep between their arrivals the same way.

Everything random is drawn before the run from `random.Random` streams keyed by
the seed (arrivals, sizes and latencies each their own stream, so changing a
size distribution leaves the arrivals alone); the same seed gives the same
plan, and the same trace.  Distributions, by mean M: ``fixed`` (M),
``uniform`` (an integer in [M - M//2, M + M//2]) and ``exponential``.
Arrival i is at the sum of the first i gaps (the first at 0).

In a scenario file, ``[[workloads]]`` tables (`kind`, `n`, `seed`, `name` and
the kind's parameters) become ordinary ``[[threads]]`` (the drivers), plus the
guest program and the mappings they need (`expand_workloads`).
"""

from __future__ import annotations

import random
import types
from collections import deque

import attrs

from akaros_sim.asm import assemble
from akaros_sim.memory import PAGE_SIZE, Prot
from akaros_sim.parlib import (
    CondVar,
    Mutex,
    call_guest,
    compute,
    current_sim,
    uthread_create,
    uthread_join,
    uthread_sleep,
)
from akaros_sim.uthread import UthreadEntry

__all__ = ["DISTRIBUTIONS", "KINDS", "Workload", "WorkloadError", "drive", "expand_workloads", "plan", "spawn"]

DISTRIBUTIONS = ("fixed", "uniform", "exponential")
_COMMON = {"arrival": "fixed", "arrival_ns": 0, "size": "fixed"}
# Each kind's parameters and defaults; the size distribution draws the first one listed.
_PARAMS = types.MappingProxyType({
    "cpu": {"size_ns": 20_000, "mode": "compute"},
    "io": {"size_ns": 2_000, "bursts": 4, "latency": "exponential", "latency_ns": 20_000},
    "mutex": {"size_ns": 1_000, "iters": 10, "think_ns": 500, "locks": 1},
    "prodcons": {"size_ns": 5_000, "producers": 1, "consumers": 2, "capacity": 4, "produce_ns": 500},
    "forkjoin": {"size_ns": 10_000, "rounds": 3, "serial_ns": 1_000},
    "faults": {"pages": 4, "size_ns": 0},
})  # fmt: skip
KINDS = tuple(_PARAMS)
_CHOICES = {"arrival": DISTRIBUTIONS, "size": DISTRIBUTIONS, "latency": DISTRIBUTIONS, "mode": ("compute", "guest")}
_AT_LEAST_ONE = ("bursts", "iters", "locks", "producers", "consumers", "capacity", "rounds", "pages")
_ARRIVING = ("cpu", "io", "mutex", "faults")  # workers created by kernel events at their arrival times

PROGRAM = "workloads"  # the guest program cpu (mode "guest") and faults workers run
REGION = 0x6000_0000_0000  # faults workloads' unbacked mappings: REGION + k * REGION_STRIDE
REGION_STRIDE = 1 << 32
_SOURCE = """
.text
wl_spin:                        # wl_spin(n): n turns of a two-instruction loop (n >= 1); returns n
    mov rax, rdi
    mov rcx, rdi
.Lspin:
    dec rcx
    jnz .Lspin
    ret
wl_touch:                       # wl_touch(base, pages): store into each page (a first touch faults), read back
    mov r8, rdi
    mov r9, rsi
    xor eax, eax
.Ltouch:
    mov qword ptr [r8], 1
    add rax, [r8]
    add r8, 0x1000
    dec r9
    jnz .Ltouch
    ret
"""


class WorkloadError(ValueError):
    """A bad workload description; `key` names the parameter at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.detail = message


@attrs.frozen
class Workload:
    """A workload's plan, fixed before the run: who arrives when, with how much work."""

    kind: str
    name: str  # the driver's; workers are NAME.0, NAME.1, ...
    n: int
    seed: str  # the key of the random streams
    params: tuple[tuple[str, object], ...]  # every parameter, defaults filled in, sorted
    arrivals: tuple[int, ...]  # ns after the driver starts: workers, items (prodcons) or rounds (forkjoin)
    sizes: tuple[int, ...]  # per worker, item or task (forkjoin: round by round): ns, or pages for faults
    latencies: tuple[tuple[int, ...], ...] = ()  # io: per worker, each burst's sleep ns (SYS_block: up to us)
    region: int | None = None  # faults: where its unbacked mapping starts

    def param(self, key: str):
        return dict(self.params)[key]

    @property
    def pages(self) -> int:
        """Pages of the faults workload's mapping (0 for the other kinds)."""
        return sum(self.sizes) if self.kind == "faults" else 0


def _draw(rng: random.Random, dist: str, mean: int) -> int:
    if dist == "fixed" or mean == 0:
        return mean
    if dist == "uniform":
        return rng.randint(mean - mean // 2, mean + mean // 2)
    return round(rng.expovariate(1 / mean))


def plan(kind: str, n: int = 8, seed=0, name: str | None = None, region: int | None = None, **params) -> Workload:
    """The plan of a workload (no simulation needed); WorkloadError on a bad kind or parameter."""
    if kind not in _PARAMS:
        raise WorkloadError("kind", f"unknown workload kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise WorkloadError("n", f"expected an integer >= 1, got {n!r}")
    if name is not None and not isinstance(name, str):
        raise WorkloadError("name", f"expected a string, got {name!r}")
    allowed = {**_COMMON, **_PARAMS[kind]}
    for key, value in params.items():
        if key not in allowed:
            raise WorkloadError(key, f"unknown parameter for kind {kind!r} (allowed: {', '.join(sorted(allowed))})")
        if key in _CHOICES:
            if value not in _CHOICES[key]:
                raise WorkloadError(key, f"expected one of {', '.join(_CHOICES[key])}, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < (key in _AT_LEAST_ONE):
            raise WorkloadError(key, f"expected an integer >= {int(key in _AT_LEAST_ONE)}, got {value!r}")
    p = {**allowed, **params}
    key = str(seed)

    def stream(what: str) -> random.Random:
        return random.Random(f"{key}/{kind}/{what}")

    count = p["rounds"] if kind == "forkjoin" else n
    gaps, at = stream("arrivals"), 0
    arrivals = []
    for _ in range(count):
        arrivals.append(at)
        at += _draw(gaps, p["arrival"], p["arrival_ns"])
    size_key = next(iter(_PARAMS[kind]))
    sizing = stream("sizes")
    total = n * p["rounds"] if kind == "forkjoin" else n
    sizes = [_draw(sizing, p["size"], p[size_key]) for _ in range(total)]
    if kind == "faults" or (kind == "cpu" and p["mode"] == "guest"):
        sizes = [max(1, s) for s in sizes]  # a page at least; a guest loop of 0 turns would run 2**64
    latencies = ()
    if kind == "io":
        lat = stream("latencies")
        latencies = tuple(tuple(_draw(lat, p["latency"], p["latency_ns"]) for _ in range(p["bursts"]))
                          for _ in range(n))  # fmt: skip
    if kind == "faults" and region is None:
        region = REGION
    return Workload(kind, name or kind, n, key, tuple(sorted(p.items())), tuple(arrivals), tuple(sizes),
                    latencies, region if kind == "faults" else None)  # fmt: skip


def _program():
    return assemble(_SOURCE, name=PROGRAM)


def spawn(sim, kind: str, n: int = 8, seed=None, name: str | None = None, **params) -> Workload:
    """Add a workload to a Simulation that has not run yet: its driver uthread, and the guest
    program and unbacked mapping it needs.  `seed` defaults to the simulation's.  Returns the plan."""
    region = None
    if kind == "faults":
        k = 0
        while sim.mem.lookup(REGION + k * REGION_STRIDE) is not None:
            k += 1  # each faults workload gets its own fresh pages
        region = REGION + k * REGION_STRIDE
    wl = plan(kind, n, sim.seed if seed is None else seed, name, region, **params)
    if _needs_program(wl) and PROGRAM not in sim.programs:
        sim.load(_program())
    if wl.kind == "faults":
        sim.mem.map(wl.region, wl.pages * PAGE_SIZE, Prot.READ | Prot.WRITE, wl.name, backed=False)
    sim.spawn_python(wl.name, drive, wl)
    return wl


def _needs_program(wl: Workload) -> bool:
    return wl.kind == "faults" or (wl.kind == "cpu" and wl.param("mode") == "guest")


# -- in the run ------------------------------------------------------------------------------------------


def drive(spec) -> int:
    """The driver uthread: `spec` is a Workload, or a mapping of plan()'s arguments (a scenario's)."""
    wl = spec if isinstance(spec, Workload) else plan(**{k: _plain(v) for k, v in spec.items()})
    if wl.kind == "prodcons":
        return _prodcons(wl)
    if wl.kind == "forkjoin":
        return _forkjoin(wl)
    sim = current_sim()
    t0 = sim.now()
    made: list = []
    shared = _shared(wl)
    for i, at in enumerate(wl.arrivals):
        # the driver makes each worker when it arrives, as a program does (pthread_create): the kernel
        # makes no uthreads, and a 2LS that runs the driver late delays the arrivals, as it would
        _sleep_until(t0 + at)
        made.append(uthread_create(_entry(wl, i, shared, sim)))
    results = [uthread_join(u) for u in made]
    total = len(results) if wl.kind == "cpu" else sum(results)  # cpu: workers; io: bursts; mutex: increments; faults: pages
    if wl.kind == "mutex" and total != shared[1][0]:
        raise AssertionError(f"{wl.name}: workers counted {total} increments, the counter holds {shared[1][0]}")
    return total


def _plain(value):
    if isinstance(value, types.MappingProxyType):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _shared(wl: Workload):
    if wl.kind != "mutex":
        return None
    return [Mutex(f"{wl.name}.{k}") for k in range(wl.param("locks"))], [0]


def _entry(wl: Workload, i: int, shared, sim) -> UthreadEntry:
    name, size = f"{wl.name}.{i}", wl.sizes[i]
    if wl.kind == "cpu":
        if wl.param("mode") == "guest":
            return UthreadEntry.guest(name, sim.programs[PROGRAM].symbol("wl_spin"), max(1, size // 2))
        return UthreadEntry.python(name, _cpu, size)
    if wl.kind == "io":
        return UthreadEntry.python(name, _io, size, wl.latencies[i])
    if wl.kind == "mutex":
        locks, counter = shared
        return UthreadEntry.python(name, _mutex, locks[i % len(locks)], counter, size, wl.param("iters"),
                                   wl.param("think_ns"))  # fmt: skip
    base = wl.region + sum(wl.sizes[:i]) * PAGE_SIZE
    return UthreadEntry.python(name, _faults, sim.programs[PROGRAM].symbol("wl_touch"), base, size, wl.param("size_ns"))


def _cpu(ns: int) -> int:
    compute(ns)
    return 1  # one task done (fork-join sums them)


def _io(ns: int, latencies: tuple[int, ...]) -> int:
    for latency in latencies:
        compute(ns)
        uthread_sleep(latency)
    return len(latencies)


def _mutex(lock: Mutex, counter: list, hold_ns: int, iters: int, think_ns: int) -> int:
    for _ in range(iters):
        with lock:
            compute(hold_ns)
            counter[0] += 1
        compute(think_ns)
    return iters


def _faults(touch: int, base: int, pages: int, ns: int) -> int:
    got = call_guest(touch, base, pages)
    if got != pages:
        raise AssertionError(f"wl_touch read back {got} over {pages} pages")
    compute(ns)
    return pages


def _sleep_until(t: int) -> None:
    left = t - current_sim().now()
    if left > 0:
        uthread_sleep(left)


def _prodcons(wl: Workload) -> int:
    t0 = current_sim().now()
    lock, not_empty, not_full = Mutex(f"{wl.name}.queue"), CondVar(f"{wl.name}.not_empty"), CondVar(f"{wl.name}.not_full")
    queue: deque = deque()
    shared = (lock, not_empty, not_full, queue)
    nprod = wl.param("producers")
    items = [[(t0 + wl.arrivals[i], wl.sizes[i]) for i in range(p, wl.n, nprod)] for p in range(nprod)]
    prods = [uthread_create(_producer, shared, items[p], wl.param("capacity"), wl.param("produce_ns"),
                            name=f"{wl.name}.p{p}") for p in range(nprod)]  # fmt: skip
    cons = [uthread_create(_consumer, shared, name=f"{wl.name}.c{c}") for c in range(wl.param("consumers"))]
    produced = sum(uthread_join(u) for u in prods)
    with lock:
        queue.extend([None] * len(cons))  # one end mark per consumer, past the capacity: nobody waits on it
        not_empty.broadcast()
    consumed = sum(uthread_join(u) for u in cons)
    if produced != consumed:
        raise AssertionError(f"{wl.name}: produced {produced} items, consumed {consumed}")
    return consumed


def _producer(shared, items, capacity: int, produce_ns: int) -> int:
    lock, not_empty, not_full, queue = shared
    for at, size in items:
        _sleep_until(at)
        compute(produce_ns)
        with lock:
            while len(queue) >= capacity:
                not_full.wait(lock)
            queue.append(size)
            not_empty.signal()
    return len(items)


def _consumer(shared) -> int:
    lock, not_empty, not_full, queue = shared
    done = 0
    while True:
        with lock:
            while not queue:
                not_empty.wait(lock)
            size = queue.popleft()
            not_full.signal()
        if size is None:
            return done
        compute(size)
        done += 1


def _forkjoin(wl: Workload) -> int:
    t0 = current_sim().now()
    joined = 0
    for r, at in enumerate(wl.arrivals):
        _sleep_until(t0 + at)
        compute(wl.param("serial_ns"))
        sizes = wl.sizes[r * wl.n : (r + 1) * wl.n]
        tasks = [uthread_create(_cpu, size, name=f"{wl.name}.{r}.{i}") for i, size in enumerate(sizes)]
        joined += sum(uthread_join(t) for t in tasks)
    return joined


# -- in a scenario file -----------------------------------------------------------------------------------


def expand_workloads(data: dict) -> None:
    """Replace a parsed scenario's ``[[workloads]]`` tables by what they stand for: a ``[[threads]]`` table
    per driver, the guest program if one needs it, an unbacked ``[[mappings]]`` table per faults workload.

    Each workload's random streams are keyed by ``machine.seed`` and its own `seed` (default: its index), so
    another machine seed gives other arrivals and sizes.  Raises WorkloadError naming ``workloads[i].KEY``.
    """
    tables = data.pop("workloads", None)
    if tables is None:
        return
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise WorkloadError("workloads", "expected an array of tables ([[workloads]])")
    machine = data.get("machine")
    machine_seed = machine.get("seed", 0) if isinstance(machine, dict) else 0
    threads, program, regions = [], False, 0
    for i, table in enumerate(tables):
        args = dict(table)
        wseed = args.pop("seed", i)
        if not isinstance(wseed, int) or isinstance(wseed, bool):
            raise WorkloadError(f"workloads[{i}].seed", f"expected an integer, got {wseed!r}")
        if "kind" not in args:
            raise WorkloadError(f"workloads[{i}].kind", f"missing (one of {', '.join(KINDS)})")
        region = REGION + regions * REGION_STRIDE
        args.update(seed=f"{machine_seed}.{wseed}", region=region)
        try:
            wl = plan(**args)
        except WorkloadError as exc:
            raise WorkloadError(f"workloads[{i}].{exc.key}", exc.detail) from None
        except TypeError as exc:  # a parameter given twice or of no kind at all
            raise WorkloadError(f"workloads[{i}]", str(exc)) from None
        threads.append({"name": wl.name, "python": "akaros_sim.workloads:drive", "args": [args]})
        program = program or _needs_program(wl)
        if wl.kind == "faults":
            regions += 1
            _append(data, "mappings", [{"name": wl.name, "start": region, "length": wl.pages * PAGE_SIZE,
                                        "backed": False}])
    _append(data, "threads", threads)
    if program:
        _append(data, "programs", [{"name": PROGRAM, "source": _SOURCE}])


def _append(data: dict, key: str, tables: list) -> None:
    have = data.setdefault(key, [])
    if not isinstance(have, list):
        raise WorkloadError(key, f"expected an array of tables ([[{key}]]) beside [[workloads]]")
    have.extend(tables)
