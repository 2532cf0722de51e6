"""One explored run: apply a choice list to a scenario, run it, and judge it (docs/explore.md).

A choice is one injection at a point named by meaning (akaros_sim/points.py):

    {"preempt":       {"vcore": null, "when": {...}, "warning_ns": 0, "duration_ns": 100000}}
    {"tick_storm":    {"vcore": null, "when": {...}, "ns": 20000, "min_insns": 1, "max_insns": 8}}
    {"delay_syscall": {"when": {...}, "syscall": "block", "ns": 100000}}
    {"unmap":         {"when": {...}, "start": 268435456, "length": 4096}}
    {"protect":       {"when": {...}, "start": 268435456, "length": 4096, "prot": "r"}}

`vcore` null means the vcore running at the point.  A schedule of preemptions
only is format akaros-sim-schedule/1 (what older readers know); one with any
other kind is /2.  `run_task` is what a worker process runs: it takes and
returns plain data, so that local processes and Dask run it alike.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import attrs

from akaros_sim.kernel import SYSCALL_NAMES
from akaros_sim.memory import MemError, Prot
from akaros_sim.points import PointError, at_point, label, normalize, points_of
from akaros_sim.timeline import RUNNABLE, spans
from akaros_sim.tools.expect import check_expectations, sometimes_held
from akaros_sim.tools.scenario import Scenario, build, load_scenario
from akaros_sim.tools.tomlcheck import one_line

FORMAT = "akaros-sim-schedule/1"
FORMAT2 = "akaros-sim-schedule/2"
FORMATS = (FORMAT, FORMAT2)
KINDS = ("preempt", "tick_storm", "delay_syscall", "unmap", "protect")
PAGE = 4096
# each kind's keys besides `when`: name -> (required, type); types checked on load
_KEYS = {
    "preempt": {"vcore": (False, (int, type(None))), "warning_ns": (False, int), "duration_ns": (False, int)},
    "tick_storm": {"vcore": (False, (int, type(None))), "ns": (True, int), "min_insns": (True, int),
                   "max_insns": (True, int)},
    "delay_syscall": {"syscall": (True, str), "ns": (True, int)},
    "unmap": {"start": (True, int), "length": (True, int)},
    "protect": {"start": (True, int), "length": (True, int), "prot": (True, str)},
}  # fmt: skip
_SYSCALL_NRS = {name: nr for nr, name in SYSCALL_NAMES.items()}
_PROT_LETTERS = {"r": Prot.READ, "w": Prot.WRITE, "x": Prot.EXEC}


class ExploreError(ValueError):
    """A bad schedule file or option (the message names it)."""


@attrs.frozen
class Outcome:
    """One run under a choice list: the failure (None: every oracle held), the simulation, its trace digest,
    and which of the scenario's `sometimes` assertions held."""

    choices: tuple
    failure: str | None
    sim: object = attrs.field(repr=False)
    digest: str = ""
    sometimes: tuple = ()


# -- choices --------------------------------------------------------------------------------------------


def kind_of(choice: dict) -> tuple[str, dict]:
    (kind,) = choice  # validated: one key
    return kind, choice[kind]


def format_of(choices) -> str:
    return FORMAT if all("preempt" in c for c in choices) else FORMAT2


def validate_choice(choice, where: str) -> dict:
    """A checked copy of one choice, its point normalized; ExploreError names `where` and the key."""
    if not isinstance(choice, dict) or len(choice) != 1 or next(iter(choice)) not in KINDS:
        raise ExploreError(f"{where}: expected {{KIND: {{...}}}} with KIND one of {', '.join(KINDS)}")
    kind, spec = kind_of(choice)
    if not isinstance(spec, dict):
        raise ExploreError(f"{where}.{kind}: expected a table, got {spec!r}")
    keys = _KEYS[kind]
    extra = sorted(set(spec) - set(keys) - {"when"})
    if extra:
        raise ExploreError(f"{where}.{kind}: unknown key(s) {', '.join(extra)} (allowed: when, {', '.join(keys)})")
    for key, (required, types) in keys.items():
        if key not in spec:
            if required:
                raise ExploreError(f"{where}.{kind}: missing {key}")
            continue
        value = spec[key]
        if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise ExploreError(f"{where}.{kind}.{key}: expected {'a name' if types is str else 'an int >= 0'}, "
                               f"got {value!r}")  # fmt: skip
    if kind == "tick_storm" and not 1 <= spec["min_insns"] <= spec["max_insns"]:
        raise ExploreError(f"{where}.{kind}: expected 1 <= min_insns <= max_insns, got {spec['min_insns']} and "
                           f"{spec['max_insns']}")  # fmt: skip
    if kind == "delay_syscall" and spec["syscall"] not in _SYSCALL_NRS:
        raise ExploreError(f"{where}.{kind}.syscall: unknown syscall {spec['syscall']!r}")
    if kind == "protect" and _prot(spec["prot"]) is None:
        raise ExploreError(f"{where}.{kind}.prot: expected letters from 'rwx' or 'none', got {spec['prot']!r}")
    try:
        when = normalize(spec.get("when"))
    except PointError as exc:
        raise ExploreError(f"{where}: {exc}") from None
    return {kind: {**spec, "when": when}}


def _prot(text: str) -> Prot | None:
    if text in ("none", ""):
        return Prot.NONE
    prot = Prot.NONE
    for ch in text:
        bit = _PROT_LETTERS.get(ch)
        if bit is None or prot & bit:
            return None
        prot |= bit
    return prot


def describe(choice: dict) -> str:
    """A choice in words: what, and where by meaning."""
    kind, spec = kind_of(choice)
    return f"{_what(kind, spec)} at {label(spec['when'])}"


def _what(kind: str, spec: dict) -> str:
    if kind == "preempt":
        return f"preempt vcore {'here' if spec.get('vcore') is None else spec['vcore']}"
    if kind == "tick_storm":
        return f"tick storm for {spec['ns']} ns"
    if kind == "delay_syscall":
        return f"delay the next {spec['syscall']} completion by {spec['ns']} ns"
    return f"{kind} [{spec['start']:#x}, +{spec['length']:#x})"


def apply_choice(sim, choice: dict) -> None:
    """Queue one choice's injection on a built simulation."""
    kind, spec = kind_of(choice)
    when = dict(spec["when"])
    if kind == "preempt":
        sim.preempt_at(when, spec.get("vcore"), spec.get("warning_ns", 0), spec.get("duration_ns"))
        return
    proc = sim.proc

    def fire(here):
        if kind == "tick_storm":
            now, vcore = proc.engine.time(), spec.get("vcore", None)
            target = vcore if vcore is not None else here
            sim.tick_storm(now, now + spec["ns"], spec["min_insns"], spec["max_insns"],
                           None if target is None else [target])  # fmt: skip
        elif kind == "delay_syscall":
            proc.kernel.completion_delay[_SYSCALL_NRS[spec["syscall"]]] = spec["ns"]
        else:
            try:
                if kind == "unmap":
                    sim.mem.unmap(spec["start"], spec["length"])
                else:
                    sim.mem.protect(spec["start"], spec["length"], _prot(spec["prot"]))
            except MemError as exc:
                proc.trace_event(None, "inject_failed", why=one_line(exc))

    at_point(sim, when, _what(kind, spec), fire, ExploreError, kind)


# -- one run --------------------------------------------------------------------------------------------


def run_choices(scenario: Scenario, choices, oracle=None, watch=(), record: bool = False,
                liveness_ns: int | None = None, mutexes=()) -> Outcome:  # fmt: skip
    """Build the scenario, apply the choices, run it, and ask the oracles (liveness_ns: the liveness mode;
    with record, the points passed are logged: entries into `watch` symbols and acquisitions of `mutexes` too)."""
    choices = tuple(choices)
    sim = build(scenario)
    sim.trace.header["schedule"] = {"format": format_of(choices), "choices": [dict(c) for c in choices]}
    if record:
        points_of(sim.proc).record(watch, mutexes)
    for choice in choices:
        apply_choice(sim, choice)
    result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    if liveness_ns is not None:
        failure = liveness(sim, liveness_ns)
    else:
        failure = judge(scenario, sim, result, resolve_oracle(oracle))
    return Outcome(choices, failure, sim, sim.trace.digest(), sometimes_held(scenario.expect, sim))


def judge(scenario: Scenario, sim, result, oracle=None, counts=None) -> str | None:
    """The first failing oracle, in words: the 2LS contract, the invariants ([expect] and its `always`
    assertions, not [expect.schedule]; only those whose name `counts(name)` accepts, when given), then
    the user's oracle(sim, result) -> bool or a message."""
    report = result.report or ""
    if "2LS contract" in report:
        return report.splitlines()[0]
    for check in check_expectations(scenario.expect, sim, result, schedule=False):
        if not check.ok and (counts is None or counts(check.name)):
            return f"{check.name}: expected {check.expected!r}, got {check.got!r}"
    if oracle is not None:
        verdict = oracle(sim, result)
        if verdict is False or isinstance(verdict, str):
            return f"oracle: {verdict if isinstance(verdict, str) else 'returned False'}"
    return None


def liveness(sim, bound_ns: int) -> str | None:
    """The first liveness failure in virtual time: a uthread runnable for longer than bound_ns without
    running (its ready-wait span on the timeline), or a uthread that never finished."""
    uths, _, end = spans(sim.trace)
    worst = []
    for order, (name, states) in enumerate(uths.items()):
        for start, stop, state, _cause, _vc in states:
            if state == RUNNABLE and stop - start > bound_ns:
                worst.append((start + bound_ns, order, f"liveness: {name} runnable for {stop - start} ns without "
                                                       f"running (t={start}..{stop}; bound {bound_ns} ns)"))  # fmt: skip
                break
    for order, u in enumerate(sim.proc.timeline.uthreads.values()):
        if u.exited is None:
            why = f"{u.state}" + (f" ({u.cause})" if u.cause else "")
            worst.append((end, order, f"liveness: {u.name} never finished (at the end, t={end}: {why})"))
    return min(worst)[2] if worst else None


def resolve_oracle(ref):
    """None, a callable, or "module:function" -> the callable."""
    if ref is None or callable(ref):
        return ref
    module, _, attr = str(ref).partition(":")
    if not attr:
        raise ExploreError(f"--oracle: expected module:function, got {ref!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ExploreError(f"--oracle {ref}: {one_line(exc)}") from None


# -- in a worker ----------------------------------------------------------------------------------------


@attrs.frozen
class RunTask:
    """One run as plain data: the scenario file and its overrides, the choices (JSON), the oracle (None,
    "module:function" or an importable function), the liveness bound (None: the safety mode)."""

    path: str
    overrides: tuple
    choices: str
    oracle: object = None
    liveness_ns: int | None = None
    scenario: object = attrs.field(default=None, eq=False, repr=False)  # this process's copy, if any


_SCENARIOS: dict[tuple, Scenario] = {}  # one loaded copy per worker process


def task_for(scenario: Scenario, choices, oracle=None, liveness_ns=None, local: bool = False) -> RunTask:
    return RunTask(str(scenario.path), scenario.overrides, json.dumps(list(choices)), oracle, liveness_ns,
                   scenario if local else None)  # fmt: skip


def run_task(task: RunTask) -> tuple[str | None, str, tuple]:
    """(failure, trace digest, sometimes) of one run; loads the scenario once per process."""
    scenario = task.scenario
    if scenario is None:
        data = Path(task.path).read_bytes()
        key = (task.path, repr(task.overrides), hashlib.sha256(data).hexdigest())
        scenario = _SCENARIOS.get(key)
        if scenario is None:
            scenario = _SCENARIOS[key] = load_scenario(task.path, task.overrides)
    out = run_choices(scenario, json.loads(task.choices), task.oracle, liveness_ns=task.liveness_ns)
    return out.failure, out.digest, out.sometimes
