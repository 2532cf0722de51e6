"""Python uthreads of scenarios/preempt_warning.toml: a worker that registers an EV_PREEMPT_PENDING handler
halfway through, and a plain worker.  Nothing is kept between runs (the handler list is the process's)."""

from __future__ import annotations

from akaros_sim.kernel import EV_PREEMPT_PENDING
from akaros_sim.parlib import compute, register_ev_handler


def on_warning(msg, ev_type) -> None:
    """Nothing to do: being called at all is the point (it runs in vcore context, where
    vcore_entry's __check_preempt_pending then hands the uthread back and yields)."""


def listener() -> None:
    compute(20_000)  # the first warning finds no handler registered
    register_ev_handler(EV_PREEMPT_PENDING, on_warning)
    compute(40_000)


def worker() -> None:
    compute(100_000)
