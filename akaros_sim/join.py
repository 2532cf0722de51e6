"""Exit, join and detach: parlib's join_ctl, the end of a uthread's life.

A uthread's exit runs its callback in vcore context (the greenlet is gone by
then); a joiner waits for two things, its own block and the target's exit
(parlib's kicker count), and whichever comes second makes it runnable.
"""

from __future__ import annotations

from akaros_sim.engine import Entry
from akaros_sim.timeline import EXITED
from akaros_sim.uthread import (
    UTH_EXT_BLK_MISC,
    JoinState,
    Uthread,
    UthreadRunError,
    UthState,
    uthread_yield,
    waits,
    yield_action,
)


def uthread_exit(proc, uth: Uthread, retval) -> None:
    """Uthread context: end uth with retval (never returns): its greenlet unwinds and ends,
    and the exit callback runs in vcore context."""
    proc.engine.advance(proc.costs.python_step_ns)
    action = yield_action(uth, False, lambda uth, retval: _exit_cb(proc, uth, retval), retval)
    proc.engine.exit_uthread(proc.engine.current, Entry.YIELD, action)


def _exit_cb(proc, uth: Uthread, retval) -> None:
    # Every read and write of the join state here happens before the first op
    # call (the first point where time passes), so it is atomic, like parlib's CAS.
    uth.exit_value = retval
    uth.set_state(UthState.EXITED)
    uth.waits_for = None
    proc.live -= 1
    if proc.live == 0:
        proc.engine.stop_soon = True  # the loop checks whether the run is over
    proc.trace_event(None, "uthread_exit", target=uth.name, join=uth.join_state.name, retval=_plain(retval))
    proc.set_uth_state(uth, EXITED)
    if uth.join_state is JoinState.DETACHED:
        reap(proc, uth)
    elif uth.join_state is JoinState.HAS_JOINER:
        # uth_post_and_kick_joiner, then thread_exited (parlib's __uth_2ls_thread_exit_cb order)
        joiner = uth.joiner
        joiner.join_result = retval
        _join_kick(proc, joiner)
        reap(proc, uth)
    # JOINABLE: it waits, EXITED, for a join or a detach to reap it


def reap(proc, uth: Uthread) -> None:
    """The join or detach consumed an exited uthread: REAPED, then the 2LS's thread_exited."""
    uth.set_state(UthState.REAPED)
    proc.call_op("thread_exited", uth)


def _join_kick(proc, joiner: Uthread) -> None:
    """One of the two things a joiner waits for is done (its own block, the target's exit)."""
    joiner.join_kref -= 1
    if joiner.join_kref == 0:
        proc.call_op("thread_runnable", joiner)


def uthread_join(proc, uth: Uthread, target: Uthread):
    """Uthread context: wait for target to exit and reap it; returns its value (None if it was detached)."""
    if target is uth:
        raise UthreadRunError(f"uthread_join: {uth.name!r} cannot join itself")
    proc.engine.advance(proc.costs.python_step_ns)
    if target.state is UthState.REAPED:
        raise UthreadRunError(f"uthread_join({target.name!r}): it has been reaped already (joined or detached)")
    if target.join_state is not JoinState.JOINABLE:
        raise UthreadRunError(f"uthread_join({target.name!r}) from {uth.name!r}: target is {target.join_state.name}")
    uth.join_kref = 2  # the target's exit and this uthread's block: runnable after both
    if target.state is UthState.EXITED:
        # join_one on an exited target: take its value and reap it now; the joiner still
        # yields (through the ready queue), as parlib's uthread_join_arr always does
        uth.join_result = target.exit_value
        reap(proc, target)
        _join_kick(proc, uth)
    else:
        target.set_join_state(JoinState.HAS_JOINER)
        target.joiner = uth

    def join_cb(uth, _target):
        if uth.join_kref > 1:
            waits(proc, uth, f"uthread {target.name!r} to exit", "join")
        proc.call_op("thread_has_blocked", uth, UTH_EXT_BLK_MISC)
        _join_kick(proc, uth)

    uthread_yield(proc, proc.engine.current, uth, True, join_cb, target)
    result, uth.join_result = uth.join_result, None
    return result


def uthread_detach(proc, target: Uthread) -> None:
    """Detach target: it is reaped when it exits (now, if it already has)."""
    if target.state is UthState.REAPED:
        raise UthreadRunError(f"uthread_detach({target.name!r}): it has been reaped already (joined or detached)")
    if target.join_state is not JoinState.JOINABLE:
        raise UthreadRunError(f"uthread_detach({target.name!r}): target is {target.join_state.name}")
    if target.state is UthState.EXITED:
        reap(proc, target)
        return
    target.set_join_state(JoinState.DETACHED)


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, str)) else type(value).__name__
