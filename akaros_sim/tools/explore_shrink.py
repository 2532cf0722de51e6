"""Shrinking a failing schedule, and naming the two events whose order decides it (docs/explore.md).

1. Delta debugging drops choices while the same check (its name) fails.
2. Each choice's point moves as early as it still fails (binary search on
   nth, offset, insns, at_ns); the shrunk schedule keeps the earliest.
3. Then as late as it still fails, up to what the first run passed: the
   window [earliest, latest] over which the failure holds.
4. The nearest passing schedule is the same one with a point moved just
   outside its window.  The failing and the passing runs agree up to the
   moment one of them injects; the first events each run shows from there
   (bookkeeping records skipped) are the two whose order decides the failure.
"""

from __future__ import annotations

from akaros_sim.tools.explore_run import Outcome, kind_of, run_choices

MOVABLE = ("nth", "offset", "insns", "at_ns")
# records that say how, not what: skipped when naming the deciding events
_BOOKKEEPING = frozenset({"uthread_state", "run", "uthread_stop", "vcore_entry", "tick", "notify", "rr_switch",
                          "handler", "inject"})  # fmt: skip


def _kind(failure: str) -> str:
    """What a shrink must keep failing on: the check's name, not its numbers."""
    return failure.split(":", 1)[0]


class _Trial:
    """Runs a schedule and says whether it fails the same way; remembers the last such run."""

    def __init__(self, scenario, failing: Outcome, oracle, liveness_ns) -> None:
        self.scenario, self.oracle, self.liveness_ns = scenario, oracle, liveness_ns
        self.kind = _kind(failing.failure)
        self.best = failing
        self.runs = 0

    def run(self, choices) -> Outcome:
        self.runs += 1
        return run_choices(self.scenario, choices, self.oracle, liveness_ns=self.liveness_ns)

    def fails(self, choices) -> bool:
        out = self.run(choices)
        if out.failure is not None and _kind(out.failure) == self.kind:
            self.best = out
            return True
        return False


def shrink(scenario, failing: Outcome, oracle=None, liveness_ns=None) -> Outcome:
    """Drop choices (delta debugging), then move each point as early as it still fails."""
    trial = _Trial(scenario, failing, oracle, liveness_ns)
    choices = list(failing.choices)
    chunk = max(1, len(choices) // 2)
    while len(choices) > 1 and chunk >= 1:  # ddmin's complement step, enough for short lists
        for i in range(0, len(choices), chunk):
            cut = choices[:i] + choices[i + chunk:]
            if cut and trial.fails(cut):
                choices = cut
                break
        else:
            if chunk == 1:
                break
            chunk //= 2
    for i in range(len(choices)):
        for key in MOVABLE:
            value = _when(choices[i]).get(key)
            if value is None:
                continue
            lo, hi = (1 if key in ("nth", "insns") else 0), value  # the earliest value that still fails
            while lo < hi:
                mid = (lo + hi) // 2
                moved = with_value(choices, i, key, mid)
                if trial.fails(moved):
                    choices, hi = moved, mid
                else:
                    lo = mid + 1
    best = trial.best
    return best if best.choices == tuple(choices) else trial.run(choices)


def windows(scenario, shrunk: Outcome, limit, oracle=None, liveness_ns=None) -> list[dict]:
    """For each choice and movable key, the latest value (up to limit(when, key)) that still fails:
    [{"choice": i, "key": k, "earliest": a, "latest": b}], in choice order."""
    trial = _Trial(scenario, shrunk, oracle, liveness_ns)
    out = []
    choices = list(shrunk.choices)
    for i in range(len(choices)):
        when = _when(choices[i])
        for key in MOVABLE:
            if key not in when:
                continue
            lo, hi = when[key], limit(when, key)
            if hi is None or hi < lo:
                hi = lo
            while lo < hi:  # the latest value that still fails
                mid = (lo + hi + 1) // 2
                if trial.fails(with_value(choices, i, key, mid)):
                    lo = mid
                else:
                    hi = mid - 1
            out.append({"choice": i, "key": key, "earliest": when[key], "latest": lo})
    return out


def decisive(scenario, shrunk: Outcome, spans: list[dict], oracle=None, liveness_ns=None,
             insn_text=None) -> dict | None:  # fmt: skip
    """Bisect against the nearest passing schedule: move a point just past its window (else just before
    it), and name the first event each run shows where they part.  When the point moves by an instruction
    inside a sequence, the event that decides is that instruction: insn_text(when, offset) names it."""
    trial = _Trial(scenario, shrunk, oracle, liveness_ns)
    choices = list(shrunk.choices)
    for span in reversed(spans):  # the last choice's finest key first: the nearest neighbour
        i, key = span["choice"], span["key"]
        low = 1 if key in ("nth", "insns") else 0
        at = _when(choices[i])[key]
        for value in (span["latest"] + 1, span["earliest"] - 1):
            if value < low:
                continue
            moved = with_value(choices, i, key, value)
            passing = trial.run(moved)
            if passing.failure is not None:
                continue
            first, then, records = _parting(shrunk.sim.trace.records, passing.sim.trace.records, choices[i])
            if key == "offset" and insn_text is not None:  # the same slice: an instruction decides, no record
                edge = span["latest"] if value > at else span["earliest"] - 1
                then = insn_text(_when(choices[i]), edge)
                records = [records[0], None]
            if first is None or then is None:
                continue
            return {"choice": i, "key": key, "failing": at, "passing": value, "first": first, "then": then,
                    "records": records, "passing_choices": moved}  # fmt: skip
    return None


def _parting(fail: list, ok: list, choice: dict) -> tuple[str | None, str | None, list]:
    """Where the runs part: the failing run's injection, and the event the passing run shows before its
    own injection (or its end) that the failing run's injection came before: the first that concerns the
    choice (the delayed syscall's submission; else a syscall's completion), else the first that is not
    bookkeeping.  Also both events' record numbers in the failing run (None: the second never happens
    there), which is what a trace's header carries for explain, report and export to point at."""
    k = next((j for j, (a, b) in enumerate(zip(fail, ok, strict=False)) if a != b), min(len(fail), len(ok)))
    at = next((j for j in range(k, len(fail)) if fail[j].kind == "inject"), None)
    inject = fail[at] if at is not None else None
    stop = next((j for j in range(k, len(ok)) if ok[j].kind == "inject"), len(ok))
    between = [r for r in ok[k:stop] if r.kind not in _BOOKKEEPING and r.get("op") != "sched_entry"]
    kind, spec = kind_of(choice)
    if kind == "delay_syscall":
        between = [r for r in between if r.kind == "syscall" and r.get("name") == spec["syscall"]] or between
    else:  # which completion comes first decides many races (a wake-up lost while a vcore was away)
        between = [r for r in between if r.kind == "syscall_done"] or between
    first = f"t={inject.t} {inject.get('what')}" if inject is not None else None
    if not between:
        return first, None, [at, None]
    return first, record_text(between[0]), [at, _same_event(fail, at, between[0])]


def _same_event(records: list, after: int | None, rec) -> int | None:
    """The record number of `rec`'s event in another run, after record #after: the same kind, uthread and
    details, at whatever time (the order changed, so the time may have)."""
    if after is None:
        return None
    return next((j for j in range(after + 1, len(records)) if records[j].kind == rec.kind
                 and records[j].uth == rec.uth and records[j].details == rec.details), None)  # fmt: skip


def record_text(rec) -> str:
    who = f" {rec.uth}" if rec.uth else ""
    vc = f" vcore {rec.vc}" if rec.vc >= 0 else ""
    details = " ".join(f"{k}={v}" for k, v in rec.details[:3])
    return f"t={rec.t}{vc}{who} {rec.kind} {details}".rstrip()


def _when(choice: dict) -> dict:
    return kind_of(choice)[1]["when"]


def with_value(choices, i: int, key: str, value: int) -> list:
    kind, spec = kind_of(choices[i])
    new = {kind: {**spec, "when": {**spec["when"], key: value}}}
    return list(choices[:i]) + [new] + list(choices[i + 1:])
