"""A test kit for your own 2LS: the shipped scenarios' invariants and the 2LS contract, as one call.

    from akaros_sim.testing import check_2ls
    check_2ls(MySched)              # raises AssertionError listing every failure

Every shipped scenario written for a general-purpose 2LS (its `[scheduler]`
is pthread, the default) is run under your 2LS with the contract checker on,
twice: its invariant expectations (`[expect]`, not `[expect.schedule]`) must
hold, the run must not end on a 2LS contract violation, and the two traces
must be identical.  With pytest, the `akaros_sim_2ls` fixture (this module
is a pytest plugin) gives the same check: `def test_mine(akaros_sim_2ls):
akaros_sim_2ls(MySched)`.
"""

from __future__ import annotations

import importlib

import attrs

from akaros_sim.tools.expect import check_expectations
from akaros_sim.tools.scenario import BUILTIN_SCHEDULERS, Scenario, build, load_scenario
from akaros_sim.tools.shipped import shipped_scenarios

__all__ = ["Failure", "check_2ls", "general_scenarios", "run_under"]


@attrs.frozen
class Failure:
    """One way a 2LS failed a scenario."""

    scenario: str
    what: str

    def __str__(self) -> str:
        return f"{self.scenario}: {self.what}"


def general_scenarios() -> list[Scenario]:
    """The shipped scenarios written for a general-purpose 2LS (pthread's), loaded."""
    out = []
    for path in shipped_scenarios():
        scenario = load_scenario(path)
        if scenario.scheduler == "pthread":
            out.append(scenario)
    return out


def run_under(scenario: Scenario, sched, params: dict | None = None):
    """Run `scenario` with another 2LS (a class or factory, or a built-in name); returns (Simulation, RunResult)."""
    name, factory = _factory(sched)
    swapped = attrs.evolve(scenario, scheduler=name, sched_factory=factory,
                           sched_params=tuple(sorted((params or {}).items())))  # fmt: skip
    sim = build(swapped)
    return sim, sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)


def check_2ls(sched, params: dict | None = None, scenarios=None) -> None:
    """Assert that `sched` keeps every invariant of `scenarios` (default: general_scenarios()) and the 2LS
    contract, deterministically; the AssertionError lists each failure by scenario."""
    failures = []
    for scenario in general_scenarios() if scenarios is None else scenarios:
        failures += _check_one(scenario, sched, params)
    if failures:
        raise AssertionError(f"2LS {_factory(sched)[0]!r} fails {len(failures)} check(s):\n"
                             + "\n".join(f"  {f}" for f in failures))  # fmt: skip


def _check_one(scenario: Scenario, sched, params) -> list[Failure]:
    where = scenario.path.name
    sim, result = run_under(scenario, sched, params)
    out = []
    report = result.report or ""
    if "2LS contract" in report:
        out.append(Failure(where, report.splitlines()[0]))
    for check in check_expectations(scenario.expect, sim, result, schedule=False):
        if not check.ok:
            out.append(Failure(where, f"{check.name}: expected {check.expected!r}, got {check.got!r}"))
    again, _ = run_under(scenario, sched, params)
    if again.trace.digest() != sim.trace.digest():
        out.append(Failure(where, "two runs gave different traces (the 2LS is not deterministic)"))
    return out


def _factory(sched) -> tuple[str, object]:
    if isinstance(sched, str):
        module, _, attr = BUILTIN_SCHEDULERS.get(sched, sched).partition(":")
        return sched, getattr(importlib.import_module(module), attr)
    return getattr(sched, "name", None) or getattr(sched, "__name__", type(sched).__name__), sched


try:  # the pytest plugin (registered in pyproject.toml): only when pytest is there
    import pytest

    @pytest.fixture
    def akaros_sim_2ls():
        """check_2ls, as a fixture: `akaros_sim_2ls(MySched)` in a test."""
        return check_2ls
except ImportError:  # pragma: no cover - pytest is the test extra's
    pass
