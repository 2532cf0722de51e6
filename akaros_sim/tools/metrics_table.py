"""The metrics of a run as a text table (`akaros-sim run --metrics`) and as JSON (`--json FILE`)."""

from __future__ import annotations

import json
import os

from akaros_sim.metrics import Distribution, Metrics


def _ns(v) -> str:
    return "-" if v is None else f"{v:,}"


def _dist(label: str, d: Distribution) -> str:
    if not d.n:
        return f"  {label:<11} n=0"
    fields = (("mean", round(d.mean)), ("p50", d.p50), ("p90", d.p90), ("p99", d.p99), ("max", d.max))
    return f"  {label:<11} n={d.n}  " + "  ".join(f"{k} {v:,}" for k, v in fields)


def format_metrics(m: Metrics) -> str:
    """A fixed-width table: one row per uthread, then the process's distributions, then one row per vcore."""
    out = ["metrics (ns of virtual time; each defined in docs/metrics.md):",
           f"  {'uthread':<14}{'created':>9}{'first run':>11}{'exit':>10}{'turnaround':>12}{'response':>10}"
           f"{'ready wait':>12}{'run':>10}{'switches':>10}{'migr':>6}{'faults':>8}{'sigs':>6}  blocked by cause"]  # fmt: skip
    for u in m.uthreads:
        blocked = ", ".join(f"{cause} {ns:,}" for cause, ns in u.blocked_ns.items()) or "-"
        out.append(f"  {u.name:<14}{u.created_ns:>9,}{_ns(u.first_run_ns):>11}{_ns(u.exit_ns):>10}"
                   f"{_ns(u.turnaround_ns):>12}{_ns(u.response_ns):>10}{u.ready_wait_ns:>12,}{u.run_ns:>10,}"
                   f"{u.switches:>10}{u.migrations:>6}{u.faults:>8}{u.signals:>6}  {blocked}")  # fmt: skip
    throughput = "-" if m.throughput is None else f"{m.throughput:,.1f} uthreads/s"
    fairness = "-" if m.fairness is None else f"{m.fairness:.3f}"
    out.append(f"process: {m.exited} of {len(m.uthreads)} uthreads exited, makespan {_ns(m.makespan_ns)} ns, "
               f"throughput {throughput}, fairness of run time (Jain) {fairness}")  # fmt: skip
    out += [_dist(label, d) for label, d in (("turnaround", m.turnaround), ("response", m.response),
                                             ("ready wait", m.ready_wait), ("run", m.run))]  # fmt: skip
    out.append(f"  {'vcore':<7}{'online':>12}{'uthread':>12}{'vcore ctx':>12}{'offline':>12}{'preempted':>12}")
    for v in m.vcores:
        out.append(f"  {v.vcore:<7}{v.online_ns:>12,}{v.uthread_ns:>12,}{v.vcore_context_ns:>12,}"
                   f"{v.offline_ns:>12,}{v.preempted_ns:>12,}")  # fmt: skip
    return "\n".join(out)


def metrics_json(m: Metrics, about: dict) -> str:
    """The metrics as one JSON document, led by what made them (`about`: scenario, seed, version...)."""
    return json.dumps({"about": about, "metrics": m.as_dict()}, indent=1, sort_keys=True) + "\n"


def write_json(m: Metrics, about: dict, path) -> None:
    """Write metrics_json to path atomically (a temporary file renamed over it)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(metrics_json(m, about))
    os.replace(tmp, path)
