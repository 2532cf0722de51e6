"""Injection points named by meaning, not by step index (docs/explore.md).

A point ("when") is one of:

    {"at_ns": 52000}                                      a virtual time
    {"uthread": "w3", "insns": 1200}                      a uthread's retired instruction count
    {"in": "vcore_context", "vcore": 0, "nth": 2}         the nth entry of vcore 0 into vcore context
    {"in_op": "thread_runnable", "vcore": 1, "nth": 3}    the nth call of a sched op on vcore 1
    {"ras": "inc", "uthread": "w3", "nth": 2, "offset": 1}
                                                          the nth time w3 is about to run the first
                                                          instruction of the sequence starting at
                                                          symbol `inc`, plus `offset` instructions
    {"code": "seq_start", ...}                            the same for any code symbol (no RAS needed)
    {"mutex": "queue", "uthread": "w3", "nth": 2}         right after w3 acquires the Mutex named "queue"
                                                          (its name in the trace) for the 2nd time: it holds it

Counting by meaning is what lets a saved schedule survive unrelated edits:
"the 2nd entry of w3 into `inc`" still names the same moment after another
uthread is renamed or an instruction is added elsewhere, where a step index
or a time would not.  Entries into code are seen by a CPU watch on the
symbol's address (Cpu.watch); a restart back to the sequence's start is an
entry too.  `Points` also records every point a run passes (`log`), which is
what the explorer chooses from.
"""

from __future__ import annotations

from collections import Counter

VCORE_CONTEXT_OP = "sched_entry"  # every pass of vcore context starts here
LOG_LIMIT = 50_000  # points recorded per run: enough for small scenarios, bounded for big ones


class PointError(ValueError):
    """A malformed point (the message shows it)."""


def _int(when: dict, key: str, minimum: int, default=None) -> int:
    value = when.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PointError(f"point {when!r}: expected {key} to be an int >= {minimum}, got {value!r}")
    return value


def normalize(when: dict) -> dict:
    """A validated copy of `when` with its defaults filled in (nth 1, offset 0)."""
    if not isinstance(when, dict):
        raise PointError(f"expected a point (a table), got {when!r}")
    if "at_ns" in when:
        out = {"at_ns": _int(when, "at_ns", 0)}
    elif "insns" in when:
        out = {"uthread": _name(when, "uthread"), "insns": _int(when, "insns", 1)}
    elif "in" in when:
        if when["in"] != "vcore_context":
            raise PointError(f"point {when!r}: `in` knows only \"vcore_context\"")
        out = {"in": "vcore_context", "vcore": _int(when, "vcore", 0), "nth": _int(when, "nth", 1, 1)}
    elif "in_op" in when:
        out = {"in_op": _name(when, "in_op"), "vcore": _int(when, "vcore", -1), "nth": _int(when, "nth", 1, 1)}
    elif "mutex" in when:
        out = {"mutex": _name(when, "mutex"), "uthread": _name(when, "uthread"), "nth": _int(when, "nth", 1, 1)}
    elif "ras" in when or "code" in when:
        key = "ras" if "ras" in when else "code"
        out = {key: _name(when, key), "uthread": _name(when, "uthread"), "nth": _int(when, "nth", 1, 1),
               "offset": _int(when, "offset", 0, 0)}  # fmt: skip
    else:
        raise PointError(f"point {when!r}: expected one of at_ns, insns, in, in_op, ras, code, mutex")
    extra = set(when) - set(out)
    if extra:
        raise PointError(f"point {when!r}: unknown key(s) {', '.join(sorted(extra))}")
    return out


def _name(when: dict, key: str) -> str:
    value = when.get(key)
    if not isinstance(value, str) or not value:
        raise PointError(f"point {when!r}: expected {key} to be a name, got {value!r}")
    return value


def label(when: dict) -> str:
    """A point in words, for the trace and reports."""
    if "at_ns" in when:
        return f"t={when['at_ns']} ns"
    if "insns" in when:
        return f"{when['uthread']} after {when['insns']} instructions"
    nth = f"entry #{when['nth']}"
    if "in" in when:
        return f"vcore {when['vcore']} vcore-context {nth}"
    if "in_op" in when:
        return f"{when['in_op']} on vcore {when['vcore']} call #{when['nth']}"
    if "mutex" in when:
        return f"{when['uthread']} holding mutex {when['mutex']} (acquisition #{when['nth']})"
    key = "ras" if "ras" in when else "code"
    off = f" +{when['offset']}" if when["offset"] else ""
    return f"{when['uthread']} {key} {when[key]} {nth}{off}"


class Points:
    """Resolves named points in one process and records the points a run passes.

    Lifecycle: made before the run (points_of); targets added; the run calls
    on_op (Process.call_op) and on_mutex (sync.Mutex), and the CPU watches call _on_code.
    """

    def __init__(self, proc) -> None:
        self.proc = proc
        self.log: list[dict] | None = None  # the points passed, in order, once record() is called
        self._op_counts: Counter = Counter()  # (op, vcore) -> calls so far
        self._op_targets: dict[tuple, list] = {}  # (op, vcore, nth) -> actions
        self._code_counts: Counter = Counter()  # (uthread, addr) -> entries so far
        self._code_last: dict[tuple, int] = {}  # (uthread, addr) -> instruction count of the last entry
        self._code_targets: dict[tuple, list] = {}  # (uthread, addr, nth) -> [(offset, action)]
        self._code_names: dict[int, tuple[str, str]] = {}  # watched addr -> (key, name)
        self._mutex_counts: Counter = Counter()  # (uthread, mutex) -> acquisitions so far
        self._mutex_targets: dict[tuple, list] = {}  # (uthread, mutex, nth) -> actions
        self._logged_mutexes: frozenset = frozenset()  # opt-in: a busy mutex would crowd LOG_LIMIT

    # -- targets ----------------------------------------------------------------------------

    def record(self, code_symbols=(), mutexes=()) -> None:
        """Log every point the run passes: op calls, vcore-context entries, entries into every declared
        RAS and each of `code_symbols`, and acquisitions of the Mutexes named in `mutexes`."""
        self.log = []
        self._logged_mutexes = frozenset(mutexes)
        ras = self.proc.ras
        for entry in ras.table.entries if ras is not None else ():
            self._watch(entry.start, "ras", self.symbol_at(entry.start) or hex(entry.start))
        for name in code_symbols:
            self._watch(self.resolve(name, "code"), "code", name)

    def add(self, when: dict, what: str, fn) -> None:
        """Call fn(vcore at the point) in kernel context at the point `when` (normalized)."""
        proc = self.proc
        if "at_ns" in when:
            proc.engine.schedule(when["at_ns"], "inject", self._fire, what, when, fn, None)
        elif "insns" in when:
            proc.guest.at_insns(when["uthread"], when["insns"], what, self._fire_uth, (when, fn, when["uthread"]))
        elif "in" in when or "in_op" in when:
            op = VCORE_CONTEXT_OP if "in" in when else when["in_op"]
            self._op_targets.setdefault((op, when["vcore"], when["nth"]), []).append((what, when, fn))
        elif "mutex" in when:
            self._mutex_targets.setdefault((when["uthread"], when["mutex"], when["nth"]), []).append((what, when, fn))
        else:
            key = "ras" if "ras" in when else "code"
            addr = self.resolve(when[key], key)
            self._watch(addr, key, when[key])
            proc.guest.triggers.setdefault(when["uthread"], [])  # so the trigger set mid-slice is seen after it
            self._code_targets.setdefault((when["uthread"], addr, when["nth"]), []).append(
                (when["offset"], what, when, fn))

    def resolve(self, name: str, key: str) -> int:
        """The address of symbol `name` ("prog:sym" or "sym"); for key "ras", a declared sequence's start."""
        prog, _, sym = name.rpartition(":")
        found = [p.symbols[sym] for p in self.proc.programs.values() if (not prog or p.name == prog) and sym in p.symbols]
        if len(found) != 1:
            raise PointError(f"point {key}={name!r}: {'no' if not found else 'more than one'} such symbol")
        ras = self.proc.ras
        if key == "ras" and (ras is None or all(e.start != found[0] for e in ras.table.entries)):
            raise PointError(f"point ras={name!r}: no restartable sequence starts there (use code= for any code)")
        return found[0]

    def symbol_at(self, addr: int) -> str | None:
        for prog in self.proc.programs.values():
            for name, value in prog.symbols.items():
                if value == addr:
                    return name
        return None

    def _watch(self, addr: int, key: str, name: str) -> None:
        if addr not in self._code_names:
            self._code_names[addr] = (key, name)
            self.proc.cpu.watch(addr, lambda ran, addr=addr: self._on_code(addr, ran))

    # -- passing points ---------------------------------------------------------------------------

    def on_op(self, name: str, vc) -> None:
        """Process.call_op: a sched op is about to run on vc (None: kernel context)."""
        vcore = vc.id if vc is not None else -1
        key = (name, vcore)
        self._op_counts[key] += 1
        nth = self._op_counts[key]
        log = self.log
        if log is not None and len(log) < LOG_LIMIT:
            if name == VCORE_CONTEXT_OP:
                log.append({"in": "vcore_context", "vcore": vcore, "nth": nth})
            else:
                log.append({"in_op": name, "vcore": vcore, "nth": nth})
        actions = self._op_targets.pop((name, vcore, nth), None)
        if actions:
            self._fire_here(actions, vcore)  # the preemption lands here, before the op runs

    def on_mutex(self, name: str, uth) -> None:
        """sync.Mutex: uth, running, has just acquired the mutex `name` (by the fast path, or handed over)."""
        key = (uth.name, name)
        self._mutex_counts[key] += 1
        nth = self._mutex_counts[key]
        log = self.log
        if log is not None and name in self._logged_mutexes and len(log) < LOG_LIMIT:
            log.append({"mutex": name, "uthread": uth.name, "nth": nth})
        actions = self._mutex_targets.pop((uth.name, name, nth), None)
        if actions:
            vc = self.proc.engine.current
            self._fire_here(actions, vc.id if vc is not None else None)  # before uth goes on holding it

    def _fire_here(self, actions, vcore) -> None:
        """Run each (what, when, fn) in kernel context now, before the caller goes on (it waits here)."""
        engine = self.proc.engine
        for what, when, fn in actions:
            engine.schedule(engine.time(), "inject", self._fire, what, when, fn, vcore)
        engine.sync()

    def _on_code(self, addr: int, ran: int) -> bool:
        """A CPU watch: the running uthread is about to run the instruction at addr.  True stops its slice."""
        vc = self.proc.engine.current
        uth = vc.current_uthread if vc is not None else None
        if uth is None:
            return False
        insns = uth.insns + ran
        key = (uth.name, addr)
        if self._code_last.get(key) == insns:
            return False  # the same entry, seen again after the slice stopped here
        self._code_last[key] = insns
        self._code_counts[key] += 1
        nth = self._code_counts[key]
        log = self.log
        if log is not None and len(log) < LOG_LIMIT:
            kind, name = self._code_names[addr]
            log.append({kind: name, "uthread": uth.name, "nth": nth})
        actions = self._code_targets.pop((uth.name, addr, nth), None)
        if not actions:
            return False
        for offset, what, when, fn in actions:
            # the trigger fires once the uthread has run `offset` more instructions (0: right here)
            self.proc.guest.at_insns(uth.name, max(1, insns + offset), what, self._fire_uth, (when, fn, uth.name))
        return True

    def _fire(self, what: str, when: dict, fn, vcore) -> None:
        self.proc.trace_event(None, "inject", what=what, point=label(when))
        fn(vcore)

    def _fire_uth(self, when: dict, fn, name: str) -> None:
        uth = self.proc.names.get(name)
        vc = uth.vcore if uth is not None else None
        fn(vc.id if vc is not None else None)


def points_of(proc) -> Points:
    """The process's Points, made on first use."""
    if proc.points is None:
        proc.points = Points(proc)
    return proc.points


def at_point(sim, when, what: str, fn, error=PointError, prefix: str = "at_point") -> dict:
    """Call fn(vcore running at the point, or None) in kernel context at `when`: a time in ns or a point
    (a dict).  Returns the normalized point."""
    proc = sim.proc
    if not isinstance(when, dict):
        when = {"at_ns": when}
    try:
        when = normalize(when)
    except PointError as exc:
        raise error(f"{prefix}: {exc}") from None
    if "at_ns" in when:
        sim.at(when["at_ns"], what, fn, None)  # the same record as any timed injection
    elif "insns" in when:
        sim.at_insns(when["uthread"], when["insns"], what, points_of(proc)._fire_uth, when, fn, when["uthread"])
    else:
        try:
            points_of(proc).add(when, f"{what} at {label(when)}", fn)
        except PointError as exc:
            raise error(f"{prefix}: {exc}") from None
    return when


def preempt(sim, when, vcore: int | None = None, warning_ns: int = 0, duration_ns: int | None = None,
            error=PointError) -> None:
    """Preempt `vcore` (None: the vcore running at the point) at `when`: a time in ns or a point (a dict)."""
    proc = sim.proc
    nvcores = len(proc.engine.vcores)
    if vcore is not None and (not isinstance(vcore, int) or isinstance(vcore, bool) or not 0 <= vcore < nvcores):
        raise error(f"preempt_at: no vcore {vcore} (the machine has {nvcores})")
    if vcore is None and (not isinstance(when, dict) or "at_ns" in when):
        raise error("preempt_at: a preemption at a time must name its vcore")
    kernel = proc.kernel

    def fire(here):
        target = vcore if vcore is not None else here
        if target is None:
            proc.trace_event(None, "inject_failed", why=f"no vcore runs at {label(when)}")
        else:
            kernel.preempt(target, warning_ns, duration_ns)

    what = f"preempt vcore {'here' if vcore is None else vcore}"
    when = at_point(sim, when, what, fire, error, "preempt_at")  # fire's label reads the normalized point
