"""Uthread: a user-level thread (a greenlet plus a UserContext) and its state machines.

Two kinds share one type, as DESIGN.md says: a guest uthread runs emulated code
from an entry address on its own guest stack; a Python uthread runs a Python
function that calls the parlib API (and may run guest code on its own context
with `call_guest`).  Names follow Akaros's parlib (user/parlib/uthread.c).

Lifecycle (UthState):

    NOT_RUNNING --run_uthread--> RUNNING --yield/pause/stop/fault--> NOT_RUNNING
    NOT_RUNNING --thread_exited--> EXITED            (terminal; ours, not Akaros's)

Join state (JoinState), as parlib's join_ctl:

    JOINABLE --exit--> EXITED --join--> (thread_exited)
    JOINABLE --join--> HAS_JOINER --exit--> (joiner woken, thread_exited)
    JOINABLE --detach--> DETACHED --exit--> (thread_exited)
    EXITED --detach--> (thread_exited)
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs

from akaros_sim.context import UserContext

if TYPE_CHECKING:
    from greenlet import greenlet


class UthState(enum.Enum):
    """Akaros's UT_RUNNING / UT_NOT_RUNNING, plus a terminal EXITED."""

    NOT_RUNNING = "not_running"
    RUNNING = "running"
    EXITED = "exited"


_UTH_TRANSITIONS = {
    UthState.NOT_RUNNING: {UthState.RUNNING, UthState.EXITED},
    UthState.RUNNING: {UthState.NOT_RUNNING},
    UthState.EXITED: set(),
}


class UthFlag(enum.IntFlag):
    """Parlib's uthread flags (uthread.h)."""

    NONE = 0
    DONT_MIGRATE = 0x1
    SAVED = 0x2
    FPSAVED = 0x4
    IS_THREAD0 = 0x8


class JoinState(enum.Enum):
    """Parlib's join_ctl states."""

    DETACHED = 1
    JOINABLE = 2
    HAS_JOINER = 3
    EXITED = 4


_JOIN_TRANSITIONS = {
    JoinState.JOINABLE: {JoinState.EXITED, JoinState.HAS_JOINER, JoinState.DETACHED},
    JoinState.HAS_JOINER: set(),
    JoinState.DETACHED: set(),
    JoinState.EXITED: set(),
}


class UthreadStateError(RuntimeError):
    """An illegal transition: names the uthread, the state it was in and the one asked for."""


class UthreadKind(enum.Enum):
    GUEST = "guest"
    PYTHON = "python"


@attrs.frozen
class UthreadEntry:
    """What a new uthread runs: guest code at `entry`, or a Python function, with args."""

    name: str
    kind: UthreadKind
    entry: int = 0  # guest: entry address
    func: Any = None  # python: callable
    args: tuple = ()
    detached: bool = False

    @classmethod
    def guest(cls, name: str, entry: int, *args: int, detached: bool = False) -> UthreadEntry:
        if len(args) > 6:
            raise ValueError(f"uthread {name!r}: at most 6 register arguments, got {len(args)}")
        return cls(name, UthreadKind.GUEST, entry=entry, args=tuple(args), detached=detached)

    @classmethod
    def python(cls, name: str, func, *args, detached: bool = False) -> UthreadEntry:
        if not callable(func):
            raise ValueError(f"uthread {name!r}: expected a callable, got {func!r}")
        return cls(name, UthreadKind.PYTHON, func=func, args=tuple(args), detached=detached)


class Uthread:
    """A user thread.  A 2LS may subclass it to embed its own fields (as pthread_tcb does).

    Fields are grouped by owner, as in xv6's struct proc.
    """

    def __init__(self, entry: UthreadEntry) -> None:
        # identity (set at creation, never changed)
        self.entry = entry
        self.name = entry.name
        self.kind = entry.kind
        self.id = -1  # assigned by uthread_init, in creation order
        # parlib (uthread.c)
        self._state = UthState.NOT_RUNNING
        self.flags = int(UthFlag.SAVED)  # UthFlag bits, kept as a plain int (cheap arithmetic)
        self.sysc = None  # the syscall it is blocked on, if any
        self.join_state = JoinState.DETACHED if entry.detached else JoinState.JOINABLE
        self.retval: Any = None
        self.joiner: Uthread | None = None
        self.notif_disabled_depth = 0
        self.sync_next = None
        # saved machine state: registers for guest code (Python uthreads use it for call_guest)
        self.ctx = UserContext()
        self.stack_lo = 0  # guest stack [stack_lo, stack_hi), a guard page below
        self.stack_hi = 0
        # signals (parlib sigstate)
        self.sig_pending: tuple[int, int, int] | None = None  # (signo, code, addr) to deliver
        self.sigdata: int = 0  # guest address of the saved context while a handler runs
        # involuntary stops (RAS): why it was last stopped against its will, until it runs again
        self.interrupted: str | None = None
        self.tls = 0  # guest address of its TLS block (fs_base): [0] vcore id, [8] uthread id
        # runtime (engine): the greenlet and where it runs
        self.greenlet: greenlet | None = None
        self.vcore = None  # the vcore it last ran on
        self.exit_value: Any = None
        self.has_exited = False  # its function returned or it called uthread_exit
        self.insns = 0  # guest instructions it has retired

    # -- state machines ------------------------------------------------------------

    @property
    def state(self) -> UthState:
        return self._state

    def set_state(self, new: UthState) -> None:
        if new not in _UTH_TRANSITIONS[self._state]:
            raise UthreadStateError(f"uthread {self.name!r}: illegal transition {self._state.name} -> {new.name}")
        self._state = new

    def set_join_state(self, new: JoinState) -> None:
        if new not in _JOIN_TRANSITIONS[self.join_state]:
            raise UthreadStateError(
                f"uthread {self.name!r}: illegal join transition {self.join_state.name} -> {new.name}"
            )
        self.join_state = new

    def __repr__(self) -> str:
        return f"<Uthread {self.name!r} {self._state.name} {self.kind.value}>"
