"""The test kit for a user's 2LS (akaros_sim.testing): every shipped general-purpose 2LS passes it, and it
catches a 2LS that loses wake-ups and one that is not deterministic."""

from __future__ import annotations

import pytest

from akaros_sim.testing import check_2ls, general_scenarios
from akaros_sim.tools.scenario import BUILTIN_SCHEDULERS
from schedops.roundrobin import RoundRobinSched

# thread0 runs a single-threaded process by design (Akaros's thread0 2LS): it refuses a second thread.
GENERAL = sorted(set(BUILTIN_SCHEDULERS) - {"thread0"})


@pytest.mark.parametrize("name", GENERAL)
def test_every_shipped_general_purpose_2ls_passes_the_kit(name):
    check_2ls(name)


def test_the_kit_runs_the_general_scenarios_and_only_their_invariants():
    names = [s.path.name for s in general_scenarios()]
    assert "pthread_basics.toml" in names and "stall_watchdog.toml" not in names  # that one ships its own 2LS
    basics = next(s for s in general_scenarios() if s.path.name == "pthread_basics.toml")
    assert basics.expect.schedule is not None and basics.expect.schedule.counts  # pthread's own counts stay out


class _DropsEveryThirdWakeup(RoundRobinSched):
    """Loses a wake-up now and then: the uthread is never run again."""

    name = "drops-every-third"

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.calls = 0

    def thread_runnable(self, uth) -> None:
        self.calls += 1
        if self.calls % 3:
            super().thread_runnable(uth)


def test_the_kit_catches_a_2ls_that_loses_wake_ups():
    with pytest.raises(AssertionError) as caught:
        check_2ls(_DropsEveryThirdWakeup)
    text = str(caught.value)
    assert text.startswith("2LS 'drops-every-third' fails ")
    assert "pthread_basics.toml: 2LS contract: 2LS 'drops-every-third' lost uthread" in text
    assert "pthread_basics.toml: end: expected 'all_exited', got 'process_exited'" in text


class _RemembersAcrossRuns(RoundRobinSched):
    """Picks from the back of its queue on every other process it schedules: a second run differs."""

    name = "remembers"
    runs = 0  # class state: survives from one Simulation to the next

    def sched_init(self) -> None:
        type(self).runs += 1
        super().sched_init()

    def thread_runnable(self, uth) -> None:
        super().thread_runnable(uth)
        if type(self).runs % 2 and len(self.queue) > 1:
            self.queue.rotate(1)


def test_the_kit_catches_a_2ls_whose_second_run_differs():
    with pytest.raises(AssertionError, match="two runs gave different traces"):
        check_2ls(_RemembersAcrossRuns)


def test_the_pytest_fixture_is_the_kit(akaros_sim_2ls):
    akaros_sim_2ls("roundrobin")
    with pytest.raises(AssertionError):
        akaros_sim_2ls(_DropsEveryThirdWakeup)
