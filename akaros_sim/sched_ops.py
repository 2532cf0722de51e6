"""SchedOps: the 2LS's table of hooks, as Akaros's `struct schedule_ops`.

The ops are plain attributes, so a program can read one, keep it and replace
it, exactly as C code does with `sched_ops->thread_refl_fault`.  Required ops
must be present before a simulation starts (`validate` names every missing
one); optional ops get documented defaults from `default_ops()`.

The sync ops implement parlib's `uth_sync_t`: by default a FIFO deque per sync
object (Akaros's TAILQ through `uth->sync_next`).
"""

from __future__ import annotations

from collections import deque

REQUIRED_OPS = (
    "sched_init",
    "sched_entry",
    "thread_runnable",
    "thread_paused",
    "thread_blockon_sysc",
    "thread_has_blocked",
    "thread_refl_fault",
    "thread_exited",
    "thread_create",
    "got_posix_signal",
)
OPTIONAL_OPS = (
    "sync_init",
    "sync_destroy",
    "sync_enqueue",
    "sync_get_next",
    "sync_get_uth",
    "sync_swap",
    "sync_is_empty",
    "preempt_pending",
    "thread_bulk_runnable",
)
ALL_OPS = REQUIRED_OPS + OPTIONAL_OPS


class SchedOpsError(ValueError):
    """A malformed op table: the message names the ops at fault."""


# -- defaults for the optional ops (parlib's behaviour when a 2LS leaves them NULL) --


def _sync_init(sync) -> None:
    sync.queue = deque()


def _sync_destroy(sync) -> None:
    if sync.queue:
        raise SchedOpsError(f"sync_destroy: {len(sync.queue)} uthread(s) still wait on it")


def _sync_enqueue(uth, sync) -> None:
    sync.queue.append(uth)


def _sync_get_next(sync):
    return sync.queue.popleft() if sync.queue else None


def _sync_get_uth(sync, uth) -> bool:
    try:
        sync.queue.remove(uth)
    except ValueError:
        return False
    return True


def _sync_swap(a, b) -> None:
    a.queue, b.queue = b.queue, a.queue


def _sync_is_empty(sync) -> bool:
    return not sync.queue


def _preempt_pending() -> None:
    """Default: nothing to do before the current uthread is handed back."""


class SchedOps:
    """A 2LS's op table.  Every op is a plain attribute; absent required ops are None."""

    __slots__ = ALL_OPS + ("name", "__weakref__")

    def __init__(self, name: str = "2ls", **ops) -> None:
        unknown = sorted(set(ops) - set(ALL_OPS))
        if unknown:
            raise SchedOpsError(f"{name}: unknown sched_ops {', '.join(unknown)} (known: {', '.join(ALL_OPS)})")
        self.name = name
        for op in REQUIRED_OPS:
            setattr(self, op, ops.get(op))
        defaults = default_ops()
        for op in OPTIONAL_OPS:
            setattr(self, op, ops.get(op) or defaults[op])

    @classmethod
    def from_object(cls, obj, name: str | None = None) -> SchedOps:
        """A table filled from the methods of `obj` named like ops (a 2LS class instance)."""
        ops = {op: getattr(obj, op) for op in ALL_OPS if callable(getattr(obj, op, None))}
        return cls(name or getattr(obj, "name", None) or type(obj).__name__, **ops)

    def missing(self) -> list[str]:
        """The required ops that are absent, in Akaros's order."""
        return [op for op in REQUIRED_OPS if not callable(getattr(self, op, None))]

    def validate(self) -> None:
        """Raise SchedOpsError naming every missing required op and every non-callable op."""
        bad = [op for op in ALL_OPS if getattr(self, op, None) is not None and not callable(getattr(self, op))]
        missing = self.missing()
        problems = []
        if missing:
            problems.append(f"missing required op(s) {', '.join(missing)}")
        if bad:
            problems.append(f"op(s) {', '.join(bad)} not callable")
        if problems:
            raise SchedOpsError(f"sched_ops {self.name!r}: " + "; ".join(problems))

    def __repr__(self) -> str:
        return f"<SchedOps {self.name!r}>"


def default_ops() -> dict:
    """The defaults for the optional ops, by name."""
    return {
        "sync_init": _sync_init,
        "sync_destroy": _sync_destroy,
        "sync_enqueue": _sync_enqueue,
        "sync_get_next": _sync_get_next,
        "sync_get_uth": _sync_get_uth,
        "sync_swap": _sync_swap,
        "sync_is_empty": _sync_is_empty,
        "preempt_pending": _preempt_pending,
        "thread_bulk_runnable": None,  # None: parlib loops over thread_runnable
    }
