"""Expectations: what a scenario's run must show, and checking them after the run.

The `[expect]` table of a scenario (format in akaros_sim/tools/scenario.py and
docs/scenarios.md) becomes a frozen `Expectations`; after the run,
`check_expectations` turns each expectation into a frozen `Check(name, ok,
expected, got)`, in the order the format lists them.

A trace matcher (a `counts` key, an `order` entry) selects trace records:

* ``KIND``: every record of that kind;
* ``KIND:VALUE``: those whose main detail (`MAIN_DETAIL`: op for `op`, the
  syscall name for `syscall`, the trap number for `fault`, ...) is VALUE;
* ``KIND:KEY=VALUE``: those whose detail KEY is VALUE; several conditions
  join with ``&`` (``syscall:name=block&uth=slow``), and KEY may also be a
  record field: ``uth``, ``vc`` or ``t``.

Values compare as JSON text (``true``, ``null``, ``42``, ``["w0"]``, strings
as they are); an integer may also be written in hex (``aux=0x10000000``), and
for a ``trap`` detail a trap name works too (``fault:PF``).
"""

from __future__ import annotations

import json
import re
import types

import attrs

from akaros_sim.context import REG_NAMES, TrapNr
from akaros_sim.memory import MemError
from akaros_sim.simulation import RunEnd
from akaros_sim.tools.tomlcheck import TableReader, describe, is_instance, json_text, one_line

__all__ = ["MAIN_DETAIL", "Assertion", "Check", "Expectations", "Matcher", "check_expectations", "load_expect",
           "parse_matcher", "sometimes_held"]

U64 = (1 << 64) - 1

@attrs.frozen
class CountRange:
    """A count that must lie in [min, max] (max None: no upper bound)."""

    min: int = 0
    max: int | None = None

    def holds(self, n: int) -> bool:
        return n >= self.min and (self.max is None or n <= self.max)

    def __str__(self) -> str:
        if self.max is None:
            return f">= {self.min}"
        return f"{self.min}..{self.max}"


# The detail a `KIND:VALUE` matcher compares, per trace kind.
MAIN_DETAIL = types.MappingProxyType({
    "op": "op", "syscall": "name", "syscall_done": "name", "fault": "trap", "signal": "signo",
    "signal_prep": "signo", "sigaction": "signo", "event": "ev_type", "event_post": "ev_type", "run": "how",
    "vcore_entry": "why", "vcore_online": "how", "vcore_offline": "nice", "uthread_pause": "why",
    "preempt_recover": "stolen", "mutex_block": "mutex", "mutex_handoff": "mutex", "cv_wait": "cv",
    "inject": "what", "console": "text", "process_exit": "status", "run_end": "end", "uthread_exit": "target",
})  # fmt: skip
# Record fields a condition may test besides the details.
_RECORD_FIELDS = ("uth", "vc", "t")
# Details that name the uthread a record is about, besides the record's own uthread.
_INVOLVES = ("target", "stolen", "to", "uthread", "args")
_EXPECT_KEYS = ("end", "exit_status", "console", "console_contains", "report_contains", "retvals", "counts",
                "registers", "memory", "order")  # fmt: skip


@attrs.frozen
class Matcher:
    """Which trace records a counts key or an order entry selects (see the module docstring)."""

    text: str
    kind: str
    conds: tuple[tuple[str, str], ...] = ()  # (detail key, JSON text of its value), all must hold

    def matches(self, rec) -> bool:
        if rec.kind != self.kind:
            return False
        for key, value in self.conds:
            got = getattr(rec, key) if key in _RECORD_FIELDS else rec.get(key)
            if json_text(got) != value and not (isinstance(got, int) and _as_int(value) == got):
                return False
        return True


def _as_int(text: str) -> int | None:
    """An integer written in any base Python reads (0x10000000), else None."""
    try:
        return int(text, 0)
    except ValueError:
        return None


@attrs.frozen
class RegisterExpect:
    """Registers of a uthread's final saved context."""

    thread: str
    regs: tuple[tuple[str, int], ...]


@attrs.frozen
class MemoryExpect:
    """An unsigned little-endian integer of `size` bytes at `addr`."""

    what: str  # "main:counter" or "0x10000000" (+offset), for check names
    addr: int
    size: int
    value: int


@attrs.frozen
class OrderExpect:
    """Records matching `matchers` appear in this relative order (involving `thread`, if given)."""

    matchers: tuple[Matcher, ...]
    thread: str | None = None


@attrs.frozen
class Assertion:
    """An `[[expect.always]]` or `[[expect.sometimes]]` predicate over one run: a count of trace records in a
    range (`trace`, `preempted_in`), or a memory word at the end (`memory`)."""

    name: str
    matcher: Matcher | None = None
    count: CountRange = CountRange(1)
    memory: MemoryExpect | None = None


@attrs.frozen
class Expectations:
    """What the run must show; None or empty means "not checked"."""

    end: str | None = None
    exit_status: int | None = None
    console: str | None = None
    console_contains: tuple[str, ...] = ()
    report_contains: tuple[str, ...] = ()
    retvals: tuple[tuple[str, object], ...] = ()
    counts: tuple[tuple[Matcher, object], ...] = ()  # an int, or a CountRange
    registers: tuple[RegisterExpect, ...] = ()
    memory: tuple[MemoryExpect, ...] = ()
    order: tuple[OrderExpect, ...] = ()
    # exploration's assertions (docs/explore.md): an `always` is an invariant of every run; a `sometimes` is a
    # coverage goal that some explored run must meet, never a failure of one run
    always: tuple[Assertion, ...] = ()
    sometimes: tuple[Assertion, ...] = ()
    # `[expect.schedule]`: what this scenario's own 2LS's schedule shows (counts of blocks, orders), checked
    # under that 2LS only; the rest are invariants, which any correct 2LS must keep (akaros_sim.testing)
    schedule: Expectations | None = None


@attrs.frozen
class Check:
    """One expectation's outcome; `expected` and `got` are plain values or text."""

    name: str
    ok: bool
    expected: object
    got: object


# -- loading ------------------------------------------------------------------------------------------------


def load_expect(top: TableReader, threads: set[str], symbol_addr) -> Expectations:
    """Read the `[expect]` table of `top`.

    Args:
        top: the scenario's top-level table.
        threads: the names of the scenario's threads (others are errors).
        symbol_addr: symbol_addr(reader, key, 'program:symbol') -> address, raising on unknown names.

    Raises:
        ScenarioError: naming the key at fault.
    """
    r = top.sub("expect", (*_EXPECT_KEYS, "schedule", "always", "sometimes"), {})
    schedule = r.sub("schedule", _EXPECT_KEYS, None)
    return attrs.evolve(_read(r, threads, symbol_addr),
                        schedule=_read(schedule, threads, symbol_addr) if schedule is not None else None,
                        always=_load_assertions(r, "always", threads, symbol_addr),
                        sometimes=_load_assertions(r, "sometimes", threads, symbol_addr))  # fmt: skip


def _read(r: TableReader, threads: set[str], symbol_addr) -> Expectations:
    end = r.get("end", (str,), None)
    ends = [e.name.lower() for e in RunEnd]
    if end is not None and end not in ends:
        raise r.error("end", f"expected one of {', '.join(ends)}, got {end!r}")

    retvals = []
    for name, value in r.get("retvals", (dict,), {}).items():
        _known_thread(r, f"retvals.{name}", name, threads)
        if not is_instance(value, (int, str, bool, float)):
            raise r.error(f"retvals.{name}", f"expected an integer, string or boolean, got {describe(value)}")
        retvals.append((name, value))

    counts = []
    for text, n in r.get("counts", (dict,), {}).items():
        key = f"counts.{quote_key(text)}"
        if isinstance(n, dict):  # a range: { min = N } and/or { max = M }
            unknown = sorted(set(n) - {"min", "max"})
            if unknown or not n:
                raise r.error(key, f"expected an integer or a table with min and/or max, got keys {sorted(n)}")
            for bound in n.values():
                if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
                    raise r.error(key, f"expected integer bounds >= 0, got {describe(bound)}")
            n = CountRange(n.get("min", 0), n.get("max"))
        elif not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise r.error(key, f"expected an integer >= 0 or a table with min and/or max, got {describe(n)}")
        counts.append((parse_matcher(r, key, text), n))

    return Expectations(
        end=end, exit_status=r.int("exit_status", None, minimum=None), console=r.get("console", (str,), None),
        console_contains=r.strings("console_contains"), report_contains=r.strings("report_contains"),
        retvals=tuple(retvals), counts=tuple(counts), registers=_load_registers(r, threads),
        memory=_load_memory(r, symbol_addr), order=_load_order(r, threads),
    )  # fmt: skip


def _load_registers(r: TableReader, threads: set[str]) -> tuple[RegisterExpect, ...]:
    out = []
    for rr in r.tables("registers", ("thread", *REG_NAMES)):
        name = rr.get("thread", (str,))
        _known_thread(rr, "thread", name, threads)
        regs = tuple((reg, rr.int(reg, minimum=None) & U64) for reg in REG_NAMES if rr.has(reg))
        if not regs:
            raise rr.error("", f"expected at least one register ({', '.join(REG_NAMES)})")
        out.append(RegisterExpect(name, regs))
    return tuple(out)


_MEMORY_KEYS = ("symbol", "addr", "offset", "size", "value")


def _load_memory(r: TableReader, symbol_addr) -> tuple[MemoryExpect, ...]:
    return tuple(_memory_expect(mr, symbol_addr) for mr in r.tables("memory", _MEMORY_KEYS))


def _memory_expect(mr: TableReader, symbol_addr) -> MemoryExpect:
    """One [[expect.memory]] table, or an assertion's memory = {...}."""
    if mr.has("symbol") == mr.has("addr"):
        raise mr.error("", "expected exactly one of symbol, addr")
    offset = mr.int("offset", 0)
    if mr.has("symbol"):
        what = mr.get("symbol", (str,))
        addr = symbol_addr(mr, "symbol", what) + offset
    else:
        addr = mr.int("addr") + offset
        what = f"{addr - offset:#x}"
    if offset:
        what += f"+{offset:#x}"
    size = mr.int("size", 8)
    if size not in (1, 2, 4, 8):
        raise mr.error("size", f"expected 1, 2, 4 or 8, got {size}")
    raw = mr.get("value", (int, dict))
    if isinstance(raw, dict):  # a range: { min = N } and/or { max = M }
        if not raw or set(raw) - {"min", "max"}:
            raise mr.error("value", f"expected an integer or a table with min and/or max, got keys {sorted(raw)}")
        value = CountRange(mr.sub("value", ("min", "max")).int("min", 0),
                           mr.sub("value", ("min", "max")).int("max", None))  # fmt: skip
    else:
        value = mr.int("value", minimum=None) & ((1 << (8 * size)) - 1)
    return MemoryExpect(what, addr, size, value)


_PREDICATES = ("trace", "preempted_in", "memory")


def _load_assertions(r: TableReader, key: str, threads: set[str], symbol_addr) -> tuple[Assertion, ...]:
    """`[[expect.always]]` / `[[expect.sometimes]]`: a name and exactly one predicate each."""
    out = []
    for ar in r.tables(key, ("name", "count", *_PREDICATES)):
        given = [p for p in _PREDICATES if ar.has(p)]
        if len(given) != 1:
            raise ar.error("", f"expected exactly one of {', '.join(_PREDICATES)}; got {', '.join(given) or 'none'}")
        if ar.has("count") and given[0] == "memory":
            raise ar.error("count", "only allowed with trace or preempted_in")
        count = _count_range(ar, "count", ar.get("count", (int, dict), {"min": 1}))
        if given[0] == "memory":
            mem = _memory_expect(ar.sub("memory", _MEMORY_KEYS), symbol_addr)
            out.append(Assertion(ar.get("name", (str,), f"memory {mem.what}"), memory=mem))
            continue
        if given[0] == "trace":
            matcher = parse_matcher(ar, "trace", ar.get("trace", (str,)))
        else:
            matcher = parse_matcher(ar, "preempted_in", _preempted_in(ar.sub("preempted_in", ("ras", "in", "uthread")),
                                                                      threads, symbol_addr))  # fmt: skip
        out.append(Assertion(ar.get("name", (str,), matcher.text), matcher=matcher, count=count))
    return tuple(out)


def _preempted_in(pr: TableReader, threads: set[str], symbol_addr) -> str:
    """A preemption that landed inside a RAS (it restarted the sequence), in vcore context, or on a uthread,
    as a trace matcher."""
    if len(pr.table) != 1:
        raise pr.error("", f"expected exactly one of ras, in, uthread; got {', '.join(sorted(pr.table)) or 'none'}")
    if pr.has("ras"):
        return f"ras_restart:seq={symbol_addr(pr, 'ras', pr.get('ras', (str,))):#x}&why=preempted"
    if pr.has("in"):
        if pr.get("in", (str,)) != "vcore_context":
            raise pr.error("in", f"expected \"vcore_context\", got {pr.table['in']!r}")
        return "preempt:in_vcore_ctx=true"
    name = pr.get("uthread", (str,))
    _known_thread(pr, "uthread", name, threads)
    return f"preempt:uthread={name}"


def _count_range(r: TableReader, key: str, n) -> CountRange:
    if isinstance(n, int):
        if n < 0:
            raise r.error(key, f"expected an integer >= 0, got {n}")
        return CountRange(n, n)
    bad = sorted(set(n) - {"min", "max"})
    if bad or not n or any(not isinstance(b, int) or isinstance(b, bool) or b < 0 for b in n.values()):
        raise r.error(key, f"expected an integer or a table with integer min and/or max >= 0, got {n!r}")
    return CountRange(n.get("min", 0), n.get("max"))


def _load_order(r: TableReader, threads: set[str]) -> tuple[OrderExpect, ...]:
    out = []
    for orr in r.tables("order", ("kinds", "thread")):
        kinds = orr.strings("kinds")
        if len(kinds) < 2:
            raise orr.error("kinds", f"expected at least two matchers, got {len(kinds)}")
        matchers = tuple(parse_matcher(orr, f"kinds[{i}]", text) for i, text in enumerate(kinds))
        thread = orr.get("thread", (str,), None)
        if thread is not None:
            _known_thread(orr, "thread", thread, threads)
        out.append(OrderExpect(matchers, thread))
    return tuple(out)


def _known_thread(r: TableReader, key: str, name: str, threads: set[str]) -> None:
    if name not in threads:
        raise r.error(key, f"unknown thread {name!r} (threads: {', '.join(sorted(threads))})")


def quote_key(text: str) -> str:
    """A counts key as written in TOML (quoted unless bare)."""
    return text if re.fullmatch(r"[\w-]+", text) else json.dumps(text)


def parse_matcher(r: TableReader, key: str, text: str) -> Matcher:
    """Parse 'KIND', 'KIND:VALUE' or 'KIND:KEY=VALUE[&KEY=VALUE...]' (errors name `key` in `r`)."""
    kind, sep, rest = text.partition(":")
    if not re.fullmatch(r"[A-Za-z_]\w*", kind):
        raise r.error(key, f"expected a trace kind ('KIND', 'KIND:VALUE' or 'KIND:KEY=VALUE'), got {text!r}")
    if not sep:
        return Matcher(text, kind)
    parts = rest.split("&")
    if all(re.match(r"[A-Za-z_]\w*=", part) for part in parts):
        conds = [tuple(part.split("=", 1)) for part in parts]
    else:
        detail = MAIN_DETAIL.get(kind)
        if detail is None:
            raise r.error(
                key, f"kind {kind!r} has no main detail for 'KIND:VALUE'; write '{kind}:KEY=VALUE' "
                f"(kinds with one: {', '.join(sorted(MAIN_DETAIL))})"
            )  # fmt: skip
        conds = [(detail, rest)]
    for i, (detail, value) in enumerate(conds):
        if detail == "trap" and value.lstrip("#").upper() in TrapNr.__members__:
            conds[i] = (detail, str(int(TrapNr[value.lstrip("#").upper()])))
    return Matcher(text, kind, tuple(conds))


# -- checking ----------------------------------------------------------------------------------------------


def check_expectations(exp: Expectations, sim, result, schedule: bool = True) -> list[Check]:
    """Every expectation against a finished run (a Simulation and its RunResult), in format order; the
    `[expect.schedule]` ones last, named `schedule.…` (left out with schedule=False: the invariants only)."""
    checks = _check(exp, sim, result)
    if schedule and exp.schedule is not None:
        checks += [attrs.evolve(c, name=f"schedule.{c.name}") for c in _check(exp.schedule, sim, result)]
    return checks


def _check(exp: Expectations, sim, result) -> list[Check]:
    checks: list[Check] = []
    if exp.end is not None:
        got = result.end.name.lower()
        checks.append(Check("end", got == exp.end, exp.end, got))
    if exp.exit_status is not None:
        checks.append(Check("exit_status", result.exit_status == exp.exit_status, exp.exit_status, result.exit_status))
    console = "".join(sim.kernel.console)
    if exp.console is not None:
        checks.append(Check("console", console == exp.console, exp.console, console))
    for i, text in enumerate(exp.console_contains):
        checks.append(Check(f"console_contains[{i}]", text in console, text, console))
    report = result.report or ""
    for i, text in enumerate(exp.report_contains):
        checks.append(Check(f"report_contains[{i}]", text in report, text, result.report))
    for name, want in exp.retvals:
        uth = _find_uthread(sim, name)
        if uth is None or not uth.has_exited:
            checks.append(Check(f"retvals.{name}", False, want, "not created" if uth is None else "has not exited"))
        else:
            checks.append(Check(f"retvals.{name}", _same_value(want, uth.exit_value), want, uth.exit_value))
    for matcher, want in exp.counts:
        got = sum(1 for rec in sim.trace if matcher.matches(rec))
        ok = want.holds(got) if isinstance(want, CountRange) else got == want
        checks.append(Check(f"counts.{quote_key(matcher.text)}", ok, str(want) if isinstance(want, CountRange) else want,
                            got))  # fmt: skip
    for i, reg_exp in enumerate(exp.registers):
        uth = _find_uthread(sim, reg_exp.thread)
        for reg, want in reg_exp.regs:
            got = getattr(uth.ctx, reg) if uth is not None else "not created"
            checks.append(Check(f"registers[{i}].{reg_exp.thread}.{reg}", got == want, want, got))
    for i, mem_exp in enumerate(exp.memory):
        checks.append(Check(f"memory[{i}].{mem_exp.what}", *_memory_check(sim, mem_exp)))
    for i, order in enumerate(exp.order):
        checks.append(_check_order(f"order[{i}]", sim.trace, order))
    for i, assertion in enumerate(exp.always):
        checks.append(Check(f"always[{i}] {assertion.name}", *_assertion_check(sim, assertion)))
    return checks


def _memory_check(sim, mem_exp: MemoryExpect) -> tuple[bool, object, object]:
    try:
        got = int.from_bytes(sim.mem.read(mem_exp.addr, mem_exp.size), "little")
    except MemError as exc:
        got = f"unreadable: {one_line(exc)}"
    want = mem_exp.value
    if isinstance(want, CountRange):
        return isinstance(got, int) and want.holds(got), str(want), got
    return got == want, want, got


def _assertion_check(sim, assertion: Assertion) -> tuple[bool, object, object]:
    if assertion.memory is not None:
        return _memory_check(sim, assertion.memory)
    got = sum(1 for rec in sim.trace if assertion.matcher.matches(rec))
    return assertion.count.holds(got), f"{assertion.matcher.text} count {assertion.count}", got


def sometimes_held(exp: Expectations, sim) -> tuple[bool, ...]:
    """Which of the `sometimes` assertions held in this finished run (in their order)."""
    return tuple(_assertion_check(sim, a)[0] for a in exp.sometimes)


def _find_uthread(sim, name: str):
    try:
        return sim.uthread(name)
    except KeyError:
        return None


def _same_value(want, got) -> bool:
    if isinstance(want, int) and not isinstance(want, bool) and isinstance(got, int) and not isinstance(got, bool):
        return want & U64 == got & U64  # a guest's -1 comes back as 2**64 - 1
    return type(want) is type(got) and want == got


def _involves(rec, thread: str) -> bool:
    if rec.uth == thread:
        return True
    return any(
        key in _INVOLVES and (value == thread or (isinstance(value, tuple) and thread in value))
        for key, value in rec.details
    )


def _check_order(name: str, trace, order: OrderExpect) -> Check:
    expected = " -> ".join(m.text for m in order.matchers)
    matched, last_t = 0, None
    for rec in trace:
        if matched == len(order.matchers):
            break
        if order.thread is not None and not _involves(rec, order.thread):
            continue
        if order.matchers[matched].matches(rec):
            matched += 1
            last_t = rec.t
    if matched == len(order.matchers):
        return Check(name, True, expected, expected)
    after = f" after t={last_t}" if last_t is not None else ""
    got = f"matched {matched} of {len(order.matchers)}: no {order.matchers[matched].text!r}{after}"
    return Check(name, False, expected, got)
