"""Parlib calls for guest code: uthreads, mutexes and condition variables reached through `syscall`.

The C guest runtime (akaros_sim/runtime: pthread.h) has no parlib of its own:
it makes these pseudo-syscalls (numbers 0x1010 and up, beside parlib's
0x1000-0x1005 in kernel.py), and they run the simulator's parlib on the
calling uthread, so a guest thread is a uthread the 2LS schedules like any
other and a guest mutex blocks as a parlib Mutex does.

    SYS_uthread_create(entry, arg)   -> a handle (the uthread's id) | -EAGAIN
    SYS_uthread_join(handle, out)    -> 0 (the target's exit value stored at out, if not 0) | -ESRCH | -EINVAL
    SYS_uthread_detach(handle)       -> 0 | -ESRCH | -EINVAL
    SYS_uthread_self()               -> the caller's handle
    SYS_mutex_lock(addr)             -> 0
    SYS_mutex_trylock(addr)          -> 0 | -EBUSY
    SYS_mutex_unlock(addr)           -> 0 | -EPERM (not the owner)
    SYS_cond_wait(cv_addr, mu_addr)  -> 0 | -EPERM (the caller does not hold mu)
    SYS_cond_signal(cv_addr)         -> 0
    SYS_cond_broadcast(cv_addr)      -> 0

A mutex or condition variable is keyed by the guest object's address: the
first call on an address makes the parlib object (named `mutex@0x...`), so a
zero-filled pthread_mutex_t needs no init call.  A new uthread is named after
the creator (`main.1`, `main.2`, ...; the ids are the handles).
"""

from __future__ import annotations

import errno
import weakref

from akaros_sim import join as _join
from akaros_sim.context import neg_errno
from akaros_sim.guestmem import write_for_guest
from akaros_sim.sync import CondVar, Mutex
from akaros_sim.uthread import UthreadEntry, UthreadRunError

SYS_uthread_create = 0x1010
SYS_uthread_join = 0x1011
SYS_uthread_detach = 0x1012
SYS_uthread_self = 0x1013
SYS_mutex_lock = 0x1014
SYS_mutex_trylock = 0x1015
SYS_mutex_unlock = 0x1016
SYS_cond_wait = 0x1017
SYS_cond_signal = 0x1018
SYS_cond_broadcast = 0x1019

GUEST_CALL_NAMES = {
    SYS_uthread_create: "uthread_create", SYS_uthread_join: "uthread_join", SYS_uthread_detach: "uthread_detach",
    SYS_uthread_self: "uthread_self", SYS_mutex_lock: "mutex_lock", SYS_mutex_trylock: "mutex_trylock",
    SYS_mutex_unlock: "mutex_unlock", SYS_cond_wait: "cond_wait", SYS_cond_signal: "cond_signal",
    SYS_cond_broadcast: "cond_broadcast",
}  # fmt: skip


class _State:
    """One process's guest objects: parlib Mutexes and CondVars by guest address, children per creator."""

    def __init__(self) -> None:
        self.mutexes: dict[int, Mutex] = {}
        self.cvs: dict[int, CondVar] = {}
        self.children: dict[str, int] = {}


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(proc) -> _State:
    state = _STATES.get(proc)
    if state is None:
        state = _STATES[proc] = _State()
    return state


def _mutex(state: _State, addr: int) -> Mutex:
    mutex = state.mutexes.get(addr)
    if mutex is None:
        mutex = state.mutexes[addr] = Mutex(f"mutex@{addr:#x}")
    return mutex


def _cv(state: _State, addr: int) -> CondVar:
    cv = state.cvs.get(addr)
    if cv is None:
        cv = state.cvs[addr] = CondVar(f"cv@{addr:#x}")
    return cv


def _target(proc, handle: int):
    return proc.uthreads[handle] if 0 <= handle < len(proc.uthreads) else None


def _exit_value(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def guest_call(proc, uth, nr: int, a) -> int:  # noqa: C901 - one branch per call, as a syscall table
    """Serve guest pseudo-syscall nr for uth (uthread context); its return value for rax."""
    state = _state(proc)
    if nr == SYS_uthread_create:
        n = state.children[uth.name] = state.children.get(uth.name, 0) + 1
        child = proc.create_uthread(UthreadEntry.guest(f"{uth.name}.{n}", a[0], a[1]))
        return neg_errno(errno.EAGAIN) if child is None else child.id
    if nr in (SYS_uthread_join, SYS_uthread_detach):
        target = _target(proc, a[0])
        if target is None:
            return neg_errno(errno.ESRCH)
        try:
            if nr == SYS_uthread_detach:
                _join.uthread_detach(proc, target)
                return 0
            value = _exit_value(_join.uthread_join(proc, uth, target))
        except UthreadRunError:
            return neg_errno(errno.EINVAL)
        if a[1] and not write_for_guest(proc, a[1], value, "the join result", efault=True):
            return neg_errno(errno.EFAULT)
        return 0
    if nr == SYS_uthread_self:
        return uth.id
    if nr == SYS_mutex_lock:
        _mutex(state, a[0]).lock()
        return 0
    if nr == SYS_mutex_trylock:
        return 0 if _mutex(state, a[0]).trylock() else neg_errno(errno.EBUSY)
    if nr == SYS_mutex_unlock:
        mutex = _mutex(state, a[0])
        if mutex.owner is not uth:
            return neg_errno(errno.EPERM)
        mutex.unlock()
        return 0
    if nr == SYS_cond_wait:
        mutex = _mutex(state, a[1])
        if mutex.owner is not uth:
            return neg_errno(errno.EPERM)
        _cv(state, a[0]).wait(mutex)
        return 0
    if nr == SYS_cond_signal:
        _cv(state, a[0]).signal()
        return 0
    if nr == SYS_cond_broadcast:
        _cv(state, a[0]).broadcast()
        return 0
    return neg_errno(errno.ENOSYS)
