"""Scheduling metrics of a run, computed from its timeline (timeline.py) at the run's end time.

Every figure has an event-level definition (docs/metrics.md); they are the
same whether the run kept its trace or not, and whether they come from the
live run or from its trace file (`Timeline.from_trace`).  Times are virtual
nanoseconds; a uthread that never ran or never exited has None where the
missing event would be needed.
"""

from __future__ import annotations

import attrs

from akaros_sim.timeline import BLOCKED, RUNNABLE, RUNNING, Timeline

PERCENTILES = (50, 90, 99)


@attrs.frozen
class Distribution:
    """Summary of a set of durations: count, mean, nearest-rank percentiles, max, and a log2 histogram."""

    n: int
    mean: float | None
    p50: int | None
    p90: int | None
    p99: int | None
    max: int | None
    hist: tuple[tuple[int, int, int], ...]  # (low, high, count): values in [low, high), empty buckets left out

    @classmethod
    def of(cls, values) -> Distribution:
        values = sorted(values)
        n = len(values)
        if not n:
            return cls(0, None, None, None, None, None, ())
        pct = [values[max(1, -(-p * n // 100)) - 1] for p in PERCENTILES]  # nearest rank: ceil(p/100 * n)
        buckets: dict[int, int] = {}
        for v in values:
            k = v.bit_length()  # 0 -> [0, 1), k -> [2^(k-1), 2^k)
            buckets[k] = buckets.get(k, 0) + 1
        hist = tuple((0 if k == 0 else 1 << (k - 1), 1 << k, c) for k, c in sorted(buckets.items()))
        return cls(n, sum(values) / n, *pct, values[-1], hist)


@attrs.frozen
class UthreadMetrics:
    name: str
    created_ns: int
    first_run_ns: int | None
    exit_ns: int | None
    turnaround_ns: int | None  # exit - created
    response_ns: int | None  # first run - created (Batsim's "waiting time")
    ready_wait_ns: int  # time runnable: the 2LS's to run and not running
    run_ns: int  # time running (its context on a vcore)
    blocked_ns: dict[str, int]  # time blocked, by cause (timeline.CAUSES)
    slowdown: float | None  # turnaround / run time
    switches: int  # times it started running
    migrations: int  # times it started running on another vcore than the last
    faults: int
    signals: int
    state: str  # at the end of the run


@attrs.frozen
class VcoreMetrics:
    vcore: int
    online_ns: int
    uthread_ns: int  # of online time, running uthreads (their running spans on this vcore)
    vcore_context_ns: int  # of online time, the rest: vcore context, the 2LS, idling before a yield
    offline_ns: int
    preempted_ns: int


@attrs.frozen
class Metrics:
    end_ns: int
    uthreads: tuple[UthreadMetrics, ...]  # in creation order
    vcores: tuple[VcoreMetrics, ...]
    exited: int
    makespan_ns: int | None  # last exit - first creation
    throughput: float | None  # exited uthreads per virtual second of makespan
    fairness: float | None  # Jain's index over run time: (sum x)^2 / (n sum x^2), 1 = all equal
    turnaround: Distribution
    response: Distribution
    ready_wait: Distribution
    run: Distribution

    def uthread(self, name: str) -> UthreadMetrics:
        for u in self.uthreads:
            if u.name == name:
                return u
        raise KeyError(f"no uthread named {name!r} in these metrics")

    def as_dict(self) -> dict:
        """Plain values (for JSON)."""
        return attrs.asdict(self)


def _uthread(u, end: int) -> UthreadMetrics:
    open_ns = end - u.since
    run_ns = u.run_ns + (open_ns if u.state is RUNNING else 0)
    ready = u.ready_ns + (open_ns if u.state is RUNNABLE else 0)
    blocked = dict(u.blocked_ns)
    if u.state is BLOCKED:
        blocked[u.cause] = blocked.get(u.cause, 0) + open_ns
    turnaround = u.exited - u.created if u.exited is not None else None
    return UthreadMetrics(
        u.name, u.created, u.first_run, u.exited, turnaround,
        u.first_run - u.created if u.first_run is not None else None, ready, run_ns,
        {c: ns for c, ns in sorted(blocked.items()) if ns}, turnaround / run_ns if turnaround and run_ns else None,
        u.runs, u.migrations, u.faults, u.signals, u.state,
    )  # fmt: skip


def _jain(xs: list[int]) -> float | None:
    squares = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * squares) if squares else None


def compute_metrics(timeline: Timeline, end_ns: int) -> Metrics:
    """The metrics of a run that ended at end_ns."""
    uths = tuple(_uthread(u, end_ns) for u in timeline.uthreads.values())
    vcore_run = dict(timeline.vcore_run)
    for u in timeline.uthreads.values():
        if u.state is RUNNING:
            vcore_run[u.vcore] = vcore_run.get(u.vcore, 0) + end_ns - u.since
    vcores = []
    for vcid, v in sorted(timeline.vcores.items()):
        ns = dict(v.ns)
        ns[v.state] += end_ns - v.since
        run = vcore_run.get(vcid, 0)
        vcores.append(VcoreMetrics(vcid, ns["online"], run, ns["online"] - run, ns["offline"], ns["preempted"]))
    done = [u for u in uths if u.exit_ns is not None]
    makespan = max(u.exit_ns for u in done) - min(u.created_ns for u in uths) if done else None
    return Metrics(
        end_ns, uths, tuple(vcores), len(done), makespan,
        len(done) * 1e9 / makespan if makespan else None, _jain([u.run_ns for u in uths]) if uths else None,
        Distribution.of(u.turnaround_ns for u in done),
        Distribution.of(u.response_ns for u in uths if u.response_ns is not None),
        Distribution.of(u.ready_wait_ns for u in uths), Distribution.of(u.run_ns for u in uths),
    )  # fmt: skip


def from_trace(trace) -> Metrics:
    """The metrics of a recorded run (its run_end record gives the end time)."""
    ends = trace.of_kind("run_end")
    end = ends[-1].t if ends else max((r.t for r in trace.records), default=0)
    return compute_metrics(Timeline.from_trace(trace), end)
