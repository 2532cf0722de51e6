"""Uthread synchronization (parlib's mutex.c): spin-PDR locks, uth_sync_t, Mutex, CondVar.

As in Akaros, a blocking primitive holds its spinlock from the moment it
decides to block until the yield callback, in vcore context, has enqueued the
waiter: an unlock on another vcore in between spins until then, so no wakeup
is lost.  Spinning costs virtual time (`Costs.spin_ns` a look) and suspends
like any other spending, so the holder, which is behind, gets to run.

Waiters are kept by the 2LS's sync ops (FIFO by default): a Mutex hands the
lock straight to the head waiter (no barging); a CondVar has Mesa semantics
and enqueues the waiter before releasing the mutex.

Timed waits (`Mutex.timed_lock`, `CondVar.timed_wait`: uth_mutex_timed_lock,
uth_cond_var_timed_wait) set a parlib alarm (akaros_sim.alarm) whose handler,
mutex.c's timeout_handler, takes the waiter off the sync's queue under the
primitive's spinlock (`sync_get_uth`) and makes it runnable only if it was
still there: whichever of the wake-up and the timeout takes it off first
wins, and the other finds it gone, so it is made runnable exactly once.
"""

from __future__ import annotations

from akaros_sim.alarm import set_alarm, unset_alarm
from akaros_sim.running import ParlibError, current_proc, uthread_ctx
from akaros_sim.uthread import UTH_EXT_BLK_MUTEX, UthFlag, Uthread, uthread_yield, waits

_DONT_MIGRATE = int(UthFlag.DONT_MIGRATE)


class SpinPdrLock:
    """A spinlock usable from uthread and vcore context (Akaros's spin_pdr_lock).

    The holder is a vcore: taken in uthread context just before a yield, it is
    released in that vcore's vcore context.  A spinner waits in virtual time
    until the holder's vcore has run past it, or, if the holder's vcore is
    away (preempted), until the next kernel event.
    """

    __slots__ = ("name", "holder", "uth")

    def __init__(self, name: str) -> None:
        self.name = name
        self.holder = None  # the Vcore holding it
        self.uth = None  # the uthread holding it in uthread context (pinned to its vcore meanwhile)

    def lock(self, proc) -> None:
        engine = proc.engine
        while self.holder is not None:
            vc = engine.current
            holder = self.holder
            if vc is None:
                raise ParlibError(f"spinlock {self.name!r}: kernel context cannot wait for vcore {holder.id}")
            if holder is vc:
                raise ParlibError(f"spinlock {self.name!r}: vcore {vc.id} already holds it (a deadlock)")
            if holder.online:
                target = holder.clock
            else:
                target = engine.next_event_time()
                if target is None:
                    raise ParlibError(
                        f"spinlock {self.name!r}: held by vcore {holder.id}, which is {holder.state.value} "
                        "and nothing will bring it back (a deadlock)"
                    )
            engine.advance(max(proc.costs.spin_ns, target - vc.clock + 1))
        vc = self.holder = engine.current
        if vc is not None and not vc.in_vcore_ctx and vc.current_uthread is not None:
            # uth_disable_notifs: a holder in uthread context must not migrate, so
            # a preemption leaves it on its vcore, which the kernel brings back
            uth = self.uth = vc.current_uthread
            uth.notif_disabled_depth += 1
            uth.flags |= _DONT_MIGRATE

    def unlock(self) -> None:
        uth = self.uth
        self.holder = self.uth = None
        if uth is not None and uth.notif_disabled_depth > 0:  # (a yield to vcore context has reset it)
            uth.notif_disabled_depth -= 1
            if uth.notif_disabled_depth == 0:
                uth.flags &= ~_DONT_MIGRATE


class UthSync:
    """uth_sync_t: a queue of blocked uthreads whose storage the 2LS's sync ops manage."""

    __slots__ = ("queue", "_of", "__dict__")

    def __init__(self, of=None) -> None:
        self.queue = None
        self._of = of
        current_proc("UthSync").call_op("sync_init", self)

    @property
    def of(self):
        """The Mutex or CondVar whose waiters this holds (None for a scratch one): how a 2LS's sync ops
        learn what a waiter waits on, e.g. a mutex's `owner` for priority inheritance."""
        return self._of


class _Timeout:
    """mutex.c's timeout_blob with its alarm (set_timeout_blob, set_timeout_alarm, timeout_handler).

    Made while holding `lock`, before the waiter yields; `finish()` after it runs again:
    unset_alarm, then whether it got what it waited for (not timed out)."""

    __slots__ = ("proc", "uth", "sync", "lock", "what", "on_removed", "timed_out", "waiter")

    def __init__(self, proc, uth, sync, lock, ns: int, what: str, on_removed=None) -> None:
        self.proc, self.uth, self.sync, self.lock, self.what = proc, uth, sync, lock, what
        self.on_removed = on_removed
        self.timed_out = False
        self.waiter = set_alarm(proc, proc.engine.time() + max(ns, 0), self._handler)

    def _handler(self, _waiter) -> None:
        proc = self.proc
        self.lock.lock(proc)
        if proc.call_op("sync_get_uth", self.sync, self.uth):  # __uth_sync_get_uth: still waiting?
            self.timed_out = True
            if self.on_removed is not None:
                self.on_removed(self.uth)
        self.lock.unlock()
        if self.timed_out:
            proc.trace_event(None, "timeout", uth=self.uth, on=self.what)
            proc.call_op("thread_runnable", self.uth)

    def finish(self) -> bool:
        unset_alarm(self.proc, self.waiter)
        return not self.timed_out


class Mutex:
    """A uthread mutex (a semaphore of one): FIFO hand-off to the head waiter, no barging."""

    def __init__(self, name: str = "mutex") -> None:
        self.name = name
        self.count = 1
        self.sync = UthSync(self)
        self.owner: Uthread | None = None
        self._lock = SpinPdrLock(name)

    def _take(self, proc, uth: Uthread) -> bool:
        """Take the spinlock, and the mutex if it is free (then the spinlock is released); False: the
        caller holds the spinlock and waits."""
        self._lock.lock(proc)
        if self.count > 0:
            self.count -= 1
            self.owner = uth
            self._lock.unlock()
            if proc.points is not None:  # an injection point "holding this mutex" (points.py)
                proc.points.on_mutex(self.name, uth)
            return True
        return False

    def lock(self) -> None:
        proc, _, uth = uthread_ctx("Mutex.lock")
        proc.engine.advance(proc.costs.python_step_ns)
        if self._take(proc, uth):
            return
        vc = proc.engine.current
        proc.trace_event(vc, "mutex_block", uth=uth, mutex=self.name)
        uthread_yield(proc, vc, uth, True, self._block_cb)  # unlock hands the mutex over: owner is set
        if proc.points is not None:  # handed over, it holds the mutex as it runs again
            proc.points.on_mutex(self.name, uth)

    def timed_lock(self, ns: int) -> bool:
        """uth_mutex_timed_lock (uth_semaphore_timed_down) with a timeout ns from now: True if it got
        the mutex, False if the alarm went off first (user/parlib/mutex.c)."""
        proc, _, uth = uthread_ctx("Mutex.timed_lock")
        proc.engine.advance(proc.costs.python_step_ns)
        if self._take(proc, uth):
            return True
        timeout = _Timeout(proc, uth, self.sync, self._lock, ns, f"mutex {self.name!r}")
        vc = proc.engine.current
        proc.trace_event(vc, "mutex_block", uth=uth, mutex=self.name, timeout_ns=ns)
        uthread_yield(proc, vc, uth, True, self._block_cb)
        got = timeout.finish()
        if got and proc.points is not None:
            proc.points.on_mutex(self.name, uth)
        return got

    def _block_cb(self, uth: Uthread, _arg) -> None:
        proc = current_proc("Mutex")
        waits(proc, uth, f"mutex {self.name!r}", "mutex")
        proc.call_op("thread_has_blocked", uth, UTH_EXT_BLK_MUTEX)
        proc.call_op("sync_enqueue", uth, self.sync)
        self._lock.unlock()

    def trylock(self) -> bool:
        proc, _, uth = uthread_ctx("Mutex.trylock")
        got = self._take(proc, uth)
        if not got:
            self._lock.unlock()
        return got

    def unlock(self) -> None:
        proc = current_proc("Mutex.unlock")
        self._lock.lock(proc)
        waiter = proc.call_op("sync_get_next", self.sync)
        self.owner = waiter
        if waiter is None:
            self.count += 1
        self._lock.unlock()
        if waiter is not None:
            proc.trace_event(None, "mutex_handoff", mutex=self.name, to=waiter.name)
            proc.call_op("thread_runnable", waiter)

    def __enter__(self) -> Mutex:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


class CondVar:
    """A condition variable (Mesa semantics); the waiter is enqueued before the mutex is released."""

    def __init__(self, name: str = "cv") -> None:
        self.name = name
        self.sync = UthSync(self)
        self._waiters: list[Uthread] = []  # who waits here, for the 2LS contract (the 2LS keeps the queue)
        self._lock = SpinPdrLock(name)

    def wait(self, mutex: Mutex) -> None:
        self._wait(mutex, None, "CondVar.wait")

    def timed_wait(self, mutex: Mutex, ns: int) -> bool:
        """uth_cond_var_timed_wait with a timeout ns from now: True if signalled, False if it timed
        out; either way it holds the mutex again on return (user/parlib/mutex.c)."""
        return self._wait(mutex, ns, "CondVar.timed_wait")

    def _wait(self, mutex: Mutex, ns: int | None, what: str) -> bool:
        proc, _, uth = uthread_ctx(what)
        proc.engine.advance(proc.costs.python_step_ns)
        self._lock.lock(proc)
        timeout = None
        if ns is not None:
            timeout = _Timeout(proc, uth, self.sync, self._lock, ns, f"condition variable {self.name!r}",
                               self._forget)  # fmt: skip

        def cb(uth, _arg):
            waits(proc, uth, f"condition variable {self.name!r}", "cv")
            self._waiters.append(uth)
            proc.call_op("thread_has_blocked", uth, UTH_EXT_BLK_MUTEX)
            proc.call_op("sync_enqueue", uth, self.sync)
            self._lock.unlock()
            mutex.unlock()

        vc = proc.engine.current
        if ns is None:
            proc.trace_event(vc, "cv_wait", uth=uth, cv=self.name)
        else:
            proc.trace_event(vc, "cv_wait", uth=uth, cv=self.name, timeout_ns=ns)
        uthread_yield(proc, vc, uth, True, cb)
        got = timeout.finish() if timeout is not None else True
        mutex.lock()
        return got

    def _forget(self, uth: Uthread) -> None:
        if uth in self._waiters:
            self._waiters.remove(uth)

    def signal(self) -> None:
        proc = current_proc("CondVar.signal")
        self._lock.lock(proc)
        waiter = proc.call_op("sync_get_next", self.sync)
        self._lock.unlock()
        if waiter is not None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            proc.call_op("thread_runnable", waiter)

    def broadcast(self) -> None:
        proc = current_proc("CondVar.broadcast")
        self._lock.lock(proc)
        if proc.call_op("sync_is_empty", self.sync):  # __uth_cond_var_wake_all (mutex.c): nobody to wake
            self._lock.unlock()
            return
        local = UthSync()
        proc.call_op("sync_swap", local, self.sync)
        self._lock.unlock()
        woken, self._waiters = self._waiters, []
        for uth in woken:  # the 2LS takes them all in bulk, from storage only it reads
            waits(proc, uth, None)
        if proc.ops.thread_bulk_runnable is not None:
            proc.call_op("thread_bulk_runnable", local)
            return
        while (waiter := proc.call_op("sync_get_next", local)) is not None:
            proc.call_op("thread_runnable", waiter)
