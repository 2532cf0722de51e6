"""Interposition: replace one sched_ops op by a chain of handlers that keeps the previous op.

`interpose(ops, "thread_refl_fault")` swaps the op for a `HandlerChain`.
Handlers are registered at the head or the tail and walked in order; each
returns a `FaultStatus`:

| status                  | meaning                                                     |
| ----------------------- | ----------------------------------------------------------- |
| CONTINUE_NEXT_HANDLER   | not mine: ask the next; after the last, the previous op     |
| FAULT_FIXED             | I changed the context: the uthread resumes at once, on the  |
|                         | same vcore, and the 2LS never sees the fault                |
| FAIL                    | fatal: the process ends with a report naming the handler    |

On any other op (`thread_runnable`, `thread_paused`, ...) handlers observe:
the previous op always runs after them, so a chain cannot lose a uthread,
and a handler that answers FAULT_FIXED there is an error naming it.

Chains stack: interposing an op that is already a chain wraps it again, and
`uninterpose` removes one layer wherever it sits.  A walk uses the handler
list as it was when the walk began, so (un)registering from inside a handler
takes effect at the next call.  A handler that raises, or returns anything
but a FaultStatus, ends the process with a report naming it and what it did;
the trace so far is kept.
"""

from __future__ import annotations

import enum
import struct
from itertools import compress
from operator import ne

from akaros_sim.context import REG_NAMES, UserContext

_REGS = struct.Struct(f"<{len(REG_NAMES)}Q")  # a context's registers, as Unicorn lays them out


class FaultStatus(enum.Enum):
    """What a handler in a chain decided."""

    CONTINUE_NEXT_HANDLER = "continue"
    FAULT_FIXED = "fixed"
    FAIL = "fail"


class InterposeError(ValueError):
    """Bad use of a chain: the message names the chain and the handler."""


def handler_name(handler) -> str:
    """A stable, host-independent name for a handler (its qualified name)."""
    name = getattr(handler, "name", None)
    if isinstance(name, str):
        return name
    func = getattr(handler, "__func__", handler)
    qual = getattr(func, "__qualname__", None) or type(handler).__qualname__
    return qual.rsplit("<locals>.", 1)[-1]  # a nested function is named as itself


class HandlerFailed(Exception):
    """A handler returned FAIL, raised, or returned something that is not a FaultStatus."""

    def __init__(self, chain: HandlerChain, handler, what: str) -> None:
        super().__init__(f"handler {handler_name(handler)!r} on {chain.op_name}: {what}")
        self.handler = handler
        self.what = what


class HandlerChain:
    """A callable that stands in for one op.  Lifecycle: interpose -> register/unregister* -> uninterpose."""

    def __init__(
        self, ops, op_name: str, previous, tracer=None, trace_previous: bool = True, trace_unchanged: bool = True
    ) -> None:
        self.ops = ops
        self.op_name = op_name
        self.previous = previous
        self.handlers: list = []
        self._names: dict[int, tuple] = {}  # id(handler) -> (handler, its name)
        self.tracer = tracer  # tracer(kind, subject uthread or None, **details), or None
        self.trace_previous = trace_previous  # record "chain_previous" when the walk falls through
        self.trace_unchanged = trace_unchanged  # record a CONTINUE that changed nothing

    def _name(self, handler) -> str:
        name = self._names.get(id(handler))  # (a name cache, never iterated: id order reaches nothing)
        if name is None or name[0] is not handler:
            name = self._names[id(handler)] = (handler, handler_name(handler))
        return name[1]

    def register(self, handler, insert_tail: bool = False) -> None:
        """Add a handler at the head (default) or the tail; registering one twice is an error."""
        if not callable(handler):
            raise InterposeError(f"{self.op_name} chain: handler {handler!r} is not callable")
        if any(h is handler or h == handler for h in self.handlers):
            raise InterposeError(f"{self.op_name} chain: handler {handler_name(handler)!r} is already registered")
        if insert_tail:
            self.handlers.append(handler)
        else:
            self.handlers.insert(0, handler)

    def unregister(self, handler) -> bool:
        """Remove a handler; False if it was not registered."""
        for i, h in enumerate(self.handlers):
            if h is handler or h == handler:
                del self.handlers[i]
                return True
        return False

    def __call__(self, *args):
        for handler in tuple(self.handlers):
            status = self._consult(handler, args)
            if status is FaultStatus.FAULT_FIXED:
                if self.op_name != "thread_refl_fault":
                    raise HandlerFailed(self, handler, "returned FAULT_FIXED, which only a thread_refl_fault "
                                        "handler may: skipping the previous op here could lose a uthread")  # fmt: skip
                return FaultStatus.FAULT_FIXED
            if status is FaultStatus.FAIL:
                raise HandlerFailed(self, handler, "returned FAIL")
        if self.tracer is not None and self.trace_previous:
            self.tracer("chain_previous", args[0] if args else None, op=self.op_name)
        return self.previous(*args)

    def _consult(self, handler, args) -> FaultStatus:
        ctx = args[1] if self.tracer is not None and len(args) > 1 and isinstance(args[1], UserContext) else None
        before = bytes(ctx.raw) if ctx is not None else None
        try:
            status = handler(*args)
        except HandlerFailed:
            raise
        except Exception as exc:
            raise HandlerFailed(self, handler, f"raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(status, FaultStatus):
            raise HandlerFailed(self, handler, f"returned {status!r}, not a FaultStatus")
        if self.tracer is not None:
            changed = ()
            after = bytes(ctx.raw) if ctx is not None else None
            if after != before:
                old_regs, new_regs = _REGS.unpack(before), _REGS.unpack(after)
                changed = tuple(
                    (REG_NAMES[i], old_regs[i], new_regs[i])
                    for i in compress(range(len(REG_NAMES)), map(ne, old_regs, new_regs))
                )
            if not changed and status is FaultStatus.CONTINUE_NEXT_HANDLER and not self.trace_unchanged:
                return status
            subject = args[0] if args else None
            self.tracer("handler", subject, op=self.op_name, handler=self._name(handler), status=status._name_,
                        changed=changed)  # fmt: skip
        return status

    def __repr__(self) -> str:
        return f"<HandlerChain {self.op_name} [{', '.join(handler_name(h) for h in self.handlers)}]>"


def interpose(ops, op_name: str, tracer=None) -> HandlerChain:
    """Replace ops.<op_name> by a new chain whose previous op is the current one (a chain stacks)."""
    previous = getattr(ops, op_name, None)
    if not callable(previous):
        raise InterposeError(f"interpose: sched_ops {getattr(ops, 'name', ops)!r} has no op {op_name!r} to interpose")
    chain = HandlerChain(ops, op_name, previous, tracer)
    setattr(ops, op_name, chain)
    return chain


def uninterpose(ops, chain: HandlerChain) -> None:
    """Remove one chain layer, wherever it is in the stack of chains on its op."""
    current = getattr(ops, chain.op_name)
    if current is chain:
        setattr(ops, chain.op_name, chain.previous)
        return
    while isinstance(current, HandlerChain):
        if current.previous is chain:
            current.previous = chain.previous
            return
        current = current.previous
    raise InterposeError(f"uninterpose: {chain!r} is not interposed on {chain.op_name}")
