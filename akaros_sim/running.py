"""Which process, vcore and uthread the caller runs on: how parlib finds its simulation.

Every parlib function finds its process through the running greenlet, so code
reads like C calling parlib.  Calling one outside a simulation, or from the
wrong context, is a ParlibError naming the function.
"""

from __future__ import annotations

from greenlet import GreenletExit, getcurrent


class ParlibError(RuntimeError):
    """A parlib function called from the wrong context, or with a bad argument."""


def current_proc(fn: str):
    """The process running the caller; unwinds a greenlet whose run is over."""
    cur = getcurrent()
    try:
        proc = cur.proc
    except AttributeError:
        raise ParlibError(f"{fn}: not called from inside a running Simulation") from None
    if proc.finished:
        raise GreenletExit()  # the run is over and this greenlet is being unwound: do nothing more
    uth = cur.uth
    if uth is not None and uth.done:
        raise GreenletExit()  # an exited uthread being unwound (its finally blocks must not act)
    return proc


def vcore_ctx(fn: str):
    """(process, vcore) for a function that must be called from vcore context."""
    proc = getattr(getcurrent(), "proc", None)
    if proc is None or proc.finished:
        proc = current_proc(fn)  # the slow path names what is wrong
    vc = proc.engine.current
    if vc is None or not vc.in_vcore_ctx:
        raise ParlibError(f"{fn}: must be called from vcore context")
    return proc, vc


def uthread_ctx(fn: str):
    """(process, vcore, uthread) for a function that must be called from a running uthread."""
    cur = getcurrent()
    proc = getattr(cur, "proc", None)
    uth = cur.uth if proc is not None else None
    if proc is None or proc.finished or (uth is not None and uth.done):
        proc = current_proc(fn)  # the slow path names what is wrong
    vc = proc.engine.current
    if uth is None or vc is None or vc.in_vcore_ctx or vc.current_uthread is not uth:
        raise ParlibError(f"{fn}: must be called from a running uthread")
    return proc, vc, uth
