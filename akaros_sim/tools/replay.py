"""Replaying and comparing traces.

A trace's header carries the scenario (its text and path) and the seed, so
the trace alone is enough to run the same experiment again.  `replay` does
that and compares the new trace with the recorded one, record by record;
`diff` compares any two traces.  Both report the first divergence with a few
records of context, then the counts of record kinds on each side.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs

from akaros_sim.trace import Trace, TraceRecord

CONTEXT = 3  # records shown before a divergence


class ReplayError(ValueError):
    """A trace that cannot be replayed (no scenario in its header, or the scenario is invalid)."""


@attrs.frozen
class Divergence:
    """Where two record sequences first differ (index into both; a side may have ended: None)."""

    index: int
    a: TraceRecord | None
    b: TraceRecord | None
    context: tuple[TraceRecord, ...]  # the records before it, common to both


@attrs.frozen
class Comparison:
    """The result of comparing trace A with trace B."""

    same: bool
    divergence: Divergence | None
    counts_a: dict
    counts_b: dict
    header_diff: tuple[tuple[str, object, object], ...] = ()  # (key, a, b) for differing header keys

    def report(self, name_a: str = "A", name_b: str = "B") -> str:
        """A human-readable account: the first divergence with context, then counts by kind."""
        lines = []
        for key, va, vb in self.header_diff:
            if key != "scenario_text":
                lines.append(f"header {key}: {name_a} {va!r}, {name_b} {vb!r}")
            else:
                lines.append(f"header {key}: the scenarios differ")
        if self.divergence is None:
            lines.append(f"records: identical ({sum(self.counts_a.values())} records)")
        else:
            d = self.divergence
            lines.append(f"first divergence at record {d.index}:")
            for rec in d.context:
                lines.append(f"    {rec.to_json()}")
            lines.append(f"  {name_a}: {d.a.to_json() if d.a else '<trace ended>'}")
            lines.append(f"  {name_b}: {d.b.to_json() if d.b else '<trace ended>'}")
        kinds = sorted(set(self.counts_a) | set(self.counts_b))
        changed = [k for k in kinds if self.counts_a.get(k, 0) != self.counts_b.get(k, 0)]
        lines.append(f"counts by kind ({len(changed)} differ):")
        width = max((len(k) for k in kinds), default=4)
        lines.append(f"  {'kind':<{width}} {name_a:>8} {name_b:>8}")
        for k in kinds:
            mark = "  *" if k in changed else ""
            lines.append(f"  {k:<{width}} {self.counts_a.get(k, 0):>8} {self.counts_b.get(k, 0):>8}{mark}")
        return "\n".join(lines)


def first_divergence(a: Sequence[TraceRecord], b: Sequence[TraceRecord]) -> Divergence | None:
    """The first index where a and b differ, or None if they are equal."""
    for i in range(max(len(a), len(b))):
        ra = a[i] if i < len(a) else None
        rb = b[i] if i < len(b) else None
        if ra != rb:
            return Divergence(i, ra, rb, tuple(a[max(0, i - CONTEXT) : i]))
    return None


def compare(a: Trace, b: Trace, header_keys: Sequence[str] = ("scenario", "seed", "vcores", "sched")) -> Comparison:
    """Compare two traces: their records (first divergence) and the given header keys."""
    div = first_divergence(a.records, b.records)
    hdiff = tuple(
        (k, a.header.get(k), b.header.get(k)) for k in (*header_keys, "scenario_text") if a.header.get(k) != b.header.get(k)
    )
    return Comparison(div is None, div, a.counts(), b.counts(), hdiff)


def _materialize(root: Path, name: str, files: dict) -> Path:
    """Lay a trace's scenario files out under root, as they were beside the scenario; the scenario's path."""
    depth = max((Path(rel).parts.count("..") for rel in files), default=0)
    base = root.joinpath(*(f"up{i}" for i in range(depth)))  # room for '../' references
    base.mkdir(parents=True, exist_ok=True)
    for rel, body in files.items():
        target = (base / rel).resolve()
        if root.resolve() not in target.parents:
            raise ReplayError(f"the trace's scenario file {rel!r} lies outside the scenario's tree")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = body["text"].encode("utf-8") if "text" in body else base64.b64decode(body["base64"])
        target.write_bytes(data)
    return base / Path(name).name


def replay(trace: Trace):
    """Run the trace's scenario again with its seed; returns (Comparison, the new ScenarioRun).

    Raises:
        ReplayError: the header lacks the scenario or seed, or the scenario no longer loads.
    """
    import attrs as _attrs

    from akaros_sim.tools.scenario import ScenarioError, load_scenario_text, run_scenario

    header = trace.header
    missing = [k for k in ("scenario_text", "seed") if k not in header]
    if missing:
        raise ReplayError(f"the trace header lacks {', '.join(missing)}: it was not written by `akaros-sim run`")
    with tempfile.TemporaryDirectory(prefix="akaros-sim-replay-") as tmp:
        if "scenario_files" in header or "scenario_path" not in header:
            where = _materialize(Path(tmp), header.get("scenario", "scenario.toml"), header.get("scenario_files", {}))
        else:  # a trace from before scenarios carried their files: they must still be where they were
            where = header["scenario_path"]
        try:
            overrides = [tuple(pair) for pair in header.get("overrides", ())]  # --sched / --set of the run
            scenario = load_scenario_text(header["scenario_text"], where, overrides)
        except ScenarioError as exc:
            raise ReplayError(f"the recorded scenario does not load any more: {exc}") from None
        scenario = _attrs.evolve(scenario, seed=header["seed"])
        run = run_scenario(scenario)
    return compare(trace, run.sim.trace), run
