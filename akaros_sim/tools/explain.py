"""Narrate a trace in plain sentences, for teaching: what happened, where, and why.

Each record becomes one line: virtual time, vcore, uthread, then a sentence.
sched_ops calls name the op and its arguments; fault records show the trap
and the faulting instruction disassembled; handler records in a chain show
the handler, its status and the registers it changed (before -> after).
"""

from __future__ import annotations

import attrs

from akaros_sim.context import TrapNr
from akaros_sim.kernel import (
    EV_ALARM,
    EV_PREEMPT_PENDING,
    EV_SYSCALL,
    EV_USER_IPI,
    EV_VCORE_PREEMPT,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
)
from akaros_sim.timeline import CAUSES
from akaros_sim.trace import Trace, TraceRecord

_EVENTS = {
    EV_PREEMPT_PENDING: "EV_PREEMPT_PENDING (a preemption warning)",
    EV_VCORE_PREEMPT: "EV_VCORE_PREEMPT (a vcore was preempted)",
    EV_USER_IPI: "EV_USER_IPI",
    EV_ALARM: "EV_ALARM",
    EV_SYSCALL: "EV_SYSCALL (a syscall completed)",
}
_STATUS = {
    "CONTINUE_NEXT_HANDLER": "declined (CONTINUE_NEXT_HANDLER): the next handler is asked",
    "FAULT_FIXED": "fixed it (FAULT_FIXED): the uthread resumes at once and the 2LS never sees the fault",
    "FAIL": "failed (FAIL): the process will end",
}


# Each syscall's parameters as Akaros's prototypes (and parlib's) name them, with how to show each:
# "d" signed decimal, "x" hex, "prot" PROT_ bits, "map" MAP_ flags.  Arguments past the last are not shown.
_PROTOTYPES = {
    "null": (), "getvcoreid": (), "gettime": (), "uthread_yield": (), "sigreturn": (),
    "block": (("usec", "d"),), "exit": (("status", "d"),), "proc_yield": (("being_nice", "d"),),
    "write": (("fd", "d"), ("buf", "x"), ("len", "d")),
    "mmap": (("addr", "x"), ("len", "d"), ("prot", "prot"), ("flags", "map"), ("fd", "d"), ("offset", "d")),
    "munmap": (("addr", "x"), ("len", "d")),
    "mprotect": (("addr", "x"), ("len", "d"), ("prot", "prot")),
    "populate_va": (("addr", "x"), ("nr_pgs", "d")),
    "nanosleep": (("req", "x"), ("rem", "x")),
    "uthread_exit": (("retval", "x"),), "guest_return": (("value", "x"),),
    "sigaction": (("signo", "d"), ("handler", "x")),
}  # fmt: skip
_PROT_BITS = ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"))
_MAP_BITS = ((1, "MAP_SHARED"), (2, "MAP_PRIVATE"), (MAP_FIXED, "MAP_FIXED"), (MAP_ANONYMOUS, "MAP_ANONYMOUS"),
             (MAP_POPULATE, "MAP_POPULATE"))  # fmt: skip


def _bits(value: int, names, none: str) -> str:
    parts = [name for bit, name in names if value & bit]
    rest = value & ~sum(bit for bit, _ in names)
    parts += [f"{rest:#x}"] if rest else []
    return "|".join(parts) or none


def _syscall_args(name: str, args) -> str:
    """A syscall's arguments named and shown as its prototype says (unknown syscalls: all six in hex)."""
    prototype = _PROTOTYPES.get(name)
    if prototype is None:
        return ", ".join(_hex(a) for a in args)
    shown = []
    for (param, how), value in zip(prototype, tuple(args) + (0,) * len(prototype), strict=False):
        value &= (1 << 64) - 1
        if how == "d":
            text = str(value - (1 << 64) if value >> 63 else value)
        elif how == "prot":
            text = _bits(value, _PROT_BITS, "PROT_NONE")
        elif how == "map":
            text = _bits(value, _MAP_BITS, "0")
        else:
            text = f"{value:#x}"
        shown.append(f"{param}={text}")
    return ", ".join(shown)


def _trap(nr) -> str:
    try:
        return f"#{TrapNr(nr).name} (trap {nr})"
    except ValueError:
        return f"trap {nr}"


def _hex(v) -> str:
    return f"{v:#x}" if isinstance(v, int) else str(v)


def sentence(rec: TraceRecord) -> str:
    """One plain sentence for a record (falls back to its kind and details)."""
    g = rec.get
    k = rec.kind
    if k == "sched_init":
        return f"the process starts; the 2LS {g('sched')!r} initialises (sched_ops.sched_init)"
    if k == "op":
        args = ", ".join(str(a) for a in (g("args") or ()))
        return f"sched_ops.{g('op')}({args}) is called"
    if k == "uthread_state":
        cause = g("cause")
        return f"{rec.uth} is now {g('state')}" + (f" on {cause}: {CAUSES.get(cause, cause)}" if cause else "")
    if k == "vcore_online":
        return f"the kernel starts this vcore ({g('how')}); the process wants {g('amt_wanted')} vcore(s)"
    if k == "vcore_offline":
        how = "yields nicely to a preemption warning" if g("nice") else "has nothing to run and yields"
        return f"the vcore {how}; it goes offline (the process now wants {g('amt_wanted')})"
    if k == "vcore_entry":
        cur = g("cur")
        tail = f", interrupted from {cur}" if cur and g("why") in ("notify", "fault") else ""
        return f"vcore context starts fresh at vcore_entry (because: {g('why')}{tail})"
    if k == "run":
        return {
            "run_uthread": f"run_uthread: {rec.uth} starts running",
            "run_current_uthread": f"run_current_uthread: {rec.uth} resumes where it was interrupted",
            "fault_fixed": f"{rec.uth} resumes at once after its fault was fixed",
        }.get(g("how"), f"{rec.uth} runs ({g('how')})")
    if k == "uthread_create":
        return f"uthread {rec.uth} is created ({g('type')} code, id {g('id')})"
    if k == "uthread_exit":
        return f"uthread {g('target')} exits with {g('retval')!r} (join state {g('join')})"
    if k == "uthread_cleanup":
        return f"the 2LS frees uthread {g('target')}"
    if k == "syscall":
        return f"syscall #{g('sysc')} {g('name')}({_syscall_args(g('name'), g('args') or ())})"
    if k == "syscall_done":
        return f"the kernel completes syscall #{g('sysc')} {g('name')} -> {_hex(g('ret'))}"
    if k == "event_post":
        return f"the kernel posts {_EVENTS.get(g('ev_type'), g('ev_type'))} to this vcore's mailbox"
    if k == "event":
        return f"handle_events: {_EVENTS.get(g('ev_type'), g('ev_type'))}"
    if k == "console":
        return f"console: {g('text')!r}"
    if k == "fault":
        return (f"{rec.uth} faults: {_trap(g('trap'))} err={_hex(g('err'))} addr={_hex(g('aux'))} "
                f"at {g('insn')}; the kernel reflects it to vcore context")  # fmt: skip
    if k == "handler":
        changed = "; ".join(f"{r} {_hex(a)} -> {_hex(b)}" for r, a, b in (g("changed") or ()))
        text = f"handler {g('handler')!r} on {g('op')} {_STATUS.get(g('status'), g('status'))}"
        return text + (f"; it changed {changed}" if changed else "")
    if k == "chain_previous":
        return f"no handler took it: the chain calls the 2LS's own {g('op')}"
    if k == "extable_fixup":
        return (f"the exception table has the faulting instruction {_hex(g('insn'))}: "
                f"{g('type')} fixup, continue at {_hex(g('fixup'))}")  # fmt: skip
    if k == "fault_fixed":
        return f"the fault is fixed; {rec.uth} will resume at {_hex(g('rip'))}"
    if k == "signal_prep":
        return f"the 2LS turns the fault into signal {g('signo')} (code {g('code')}, addr {_hex(g('addr'))}) for {g('target')}"
    if k == "signal":
        return f"{rec.uth} runs its signal handler at {_hex(g('handler'))} for signal {g('signo')} (frame at {_hex(g('frame'))})"
    if k == "sigreturn":
        return f"the handler returns; {rec.uth} continues from its saved context at {_hex(g('rip'))}"
    if k == "sigaction":
        return f"signal {g('signo')} handler set to {_hex(g('handler'))}"
    if k == "preempt":
        what = "in vcore context" if g("in_vcore_ctx") else f"running {g('uthread')}"
        return f"the kernel preempts this vcore ({what}); it is away until t={g('until')}"
    if k == "preempt_warn":
        return f"the kernel warns this vcore: preemption at t={g('deadline')} unless it yields"
    if k == "preempt_recover":
        stolen = g("stolen")
        tail = f"steals its uthread {stolen}" if stolen else "finds no uthread to steal"
        return f"handle_vc_preempt for vcore {g('victim')}: this vcore {tail}"
    if k == "uthread_pause":
        return f"{g('target')} is paused (copied out) and handed to the 2LS ({g('why')})"
    if k == "notify":
        return f"a notification interrupts {rec.uth} into vcore context"
    if k == "tick":
        return "a tick fires on this vcore"
    if k == "ras_restart":
        return (f"{rec.uth} was stopped inside the RAS at {_hex(g('seq'))} ({g('why')}): "
                f"rip {_hex(g('old_rip'))} -> {_hex(g('new_rip'))}")  # fmt: skip
    if k == "mutex_block":
        return f"{rec.uth} blocks on mutex {g('mutex')!r}"
    if k == "mutex_handoff":
        return f"mutex {g('mutex')!r} is handed straight to {g('to')}"
    if k == "inject":
        return f"injection: {g('what')}"
    if k == "process_exit":
        return f"the process exits with status {g('status')} ({g('why')})"
    if k == "run_end":
        return f"the run ends: {g('end')} after {g('insns')} guest instructions"
    details = ", ".join(f"{key}={value!r}" for key, value in rec.details)
    return f"{k}" + (f": {details}" if details else "")


# the records that tell a fault's story, besides thread_refl_fault calls and the resume after a fixup
_FAULT_STORY = frozenset({"fault", "handler", "chain_previous", "extable_fixup", "fault_fixed", "signal_prep",
                          "signal", "sigreturn", "ras_restart", "process_exit"})  # fmt: skip


@attrs.frozen
class Selection:
    """Which records to narrate: each field left at its default selects everything."""

    threads: tuple[str, ...] = ()  # records about these uthreads
    vcore: int | None = None  # records on this vcore
    t_from: int | None = None  # records at or after this virtual time (ns)
    t_to: int | None = None  # records at or before this virtual time (ns)
    kinds: tuple[str, ...] = ()  # records of these kinds
    around: int | None = None  # record #around and the `context` records before it
    context: int = 20
    limit: int | None = None  # at most this many lines
    by_time: bool = False  # merge the vcores' records in virtual-time order (default: emission order)
    faults: bool = False  # only each fault's story: the fault, the chain's decisions, the fixup, the resume

    def _in_a_fault_story(self, rec: TraceRecord) -> bool:
        if rec.kind in _FAULT_STORY:
            return True
        if rec.kind == "op":
            return dict(rec.details).get("op") == "thread_refl_fault"
        return rec.kind == "run" and dict(rec.details).get("how") == "fault_fixed"

    @property
    def narrowed(self) -> bool:
        return self != Selection(context=self.context, by_time=self.by_time)

    def keeps(self, rec: TraceRecord) -> bool:
        return ((not self.threads or rec.uth in self.threads)
                and (self.vcore is None or rec.vc == self.vcore)
                and (self.t_from is None or rec.t >= self.t_from)
                and (self.t_to is None or rec.t <= self.t_to)
                and (not self.kinds or rec.kind in self.kinds)
                and (not self.faults or self._in_a_fault_story(rec)))  # fmt: skip


def narrate(trace: Trace, brief: bool = False, select: Selection | None = None) -> list[str]:
    """The story of a trace, one line per record (with brief, sched_ops calls are left out;
    uthread_state records only with `--kind uthread_state`).

    `select` narrows it (a thread, a vcore, a time window, kinds, a limit; with `around`, only
    record #around and the `context` records before it: the records a report's "(at trace
    record #N)" points into) or orders it by virtual time.  A narrowed story leads each line
    with the record's index.
    """
    select = select or Selection()
    records = trace.records
    # uthread_state records restate the story's own sentences: told only when asked for by kind
    quiet = {"uthread_state"}.difference(select.kinds) | ({"op"} if brief else set())
    if select.around is None:
        chosen = [(i, rec) for i, rec in enumerate(records) if rec.kind not in quiet and select.keeps(rec)]
    else:
        around = select.around
        if not 0 <= around < len(records):
            raise ValueError(f"--around {around}: the trace has records #0 to #{len(records) - 1}")
        chosen = []  # record #around, and the `context` told records before it
        for i in range(around - 1, -1, -1):
            if len(chosen) >= select.context:
                break
            if records[i].kind not in quiet and select.keeps(records[i]):
                chosen.append((i, records[i]))
        chosen = [*reversed(chosen), (around, records[around])]
    if select.by_time:
        chosen.sort(key=lambda pair: (pair[1].t, pair[0]))  # stable: same-time records keep their order
    if select.limit is not None:
        chosen = chosen[: select.limit]
    numbered = select.narrowed or select.by_time

    def line(index: int, rec: TraceRecord) -> str:
        return _line(index, rec, numbered)

    if select.faults and not select.by_time:
        return _fault_stories(chosen, line)
    return [line(index, rec) for index, rec in chosen]


def _line(index: int, rec: TraceRecord, numbered: bool = True) -> str:
    where = f"vcore {rec.vc}" if rec.vc >= 0 else "kernel "
    who = f"[{rec.uth}]" if rec.uth else ""
    mark = f"#{index:<7}" if numbered else ""
    return f"{mark}{rec.t:>12,} ns  {where:<8} {who:<12} {sentence(rec)}"


def deciding_records(trace: Trace) -> tuple[list[tuple[int | None, str]], dict] | None:
    """The deciding events explore put in the header of a failing run's trace (docs/explore.md): each as
    (record number, or None for an event with no record of its own, such as an instruction; its text as
    explore put it), and the header's entry; None when the trace has none or they do not fit it."""
    d = trace.header.get("decisive")
    if not isinstance(d, dict) or not isinstance(d.get("records"), list) or len(d["records"]) != 2:
        return None
    out = []
    for number, text in zip(d["records"], (d.get("first"), d.get("then")), strict=True):
        if number is not None and (type(number) is not int or not 0 <= number < len(trace)):
            return None
        out.append((number, str(text)))
    return out, d


def concerns(records: list, i: int) -> tuple[int, str, int] | None:
    """The vcore and uthread a kernel-side record is about, and the record that says so: an injection's
    first effect at its time, a completion's syscall.  None: the record names them itself, or nothing does."""
    rec = records[i]
    if rec.vc >= 0:
        return None
    if rec.kind == "inject":
        j = next((j for j in range(i + 1, len(records)) if records[j].t == rec.t and records[j].vc >= 0), None)
    elif rec.kind == "syscall_done":
        sysc = rec.get("sysc")
        j = next((j for j in range(i - 1, -1, -1) if records[j].kind == "syscall" and records[j].get("sysc") == sysc),
                 None)  # fmt: skip
    else:
        j = None
    return None if j is None else (records[j].vc, records[j].uth, j)


def _concerns(records: list, i: int) -> str:
    about = concerns(records, i)
    if about is None:
        return ""
    vc, uth, j = about
    who = f" [{uth}]" if uth else ""
    return f" (about vcore {vc}{who}: #{j})"


def deciding(trace: Trace) -> list[str]:
    """The "deciding events" section: the two events whose order decides the failure, and which order fails."""
    found = deciding_records(trace)
    if found is None:
        return [] if "decisive" not in trace.header else ["deciding events: the header's entry does not fit this trace"]
    events, d = found
    records = trace.records
    lines = ["deciding events (their order decides the failure):"]
    for number, text in events:
        lines.append(_line(number, records[number]) + _concerns(records, number) if number is not None
                     else f"{'(no record)':<12}{text}")  # fmt: skip
    second = f"#{events[1][0]}" if events[1][0] is not None else "that instruction"
    lines.append(f"fails in this order ({d.get('key')} {d.get('failing')}); passes when {second} comes first "
                 f"({d.get('key')} {d.get('passing')})")  # fmt: skip
    return lines


# details that differ between two tellings of the same fault story (the data address, the old registers)
_INCIDENTAL = frozenset({"addr", "aux", "changed", "frame"})


def _fault_stories(chosen: list, line) -> list[str]:
    """Each fault's story (its records up to the uthread's next fault) told once in full per kind of
    story; a story told the same way again (same uthread, instruction, handlers, decisions) is counted,
    and one line after the first telling says how many more there were."""
    stories: list[list] = []
    open_story: dict[str, list] = {}  # uthread -> its story being collected
    story = None
    for index, rec in chosen:
        # a kernel-side record belongs to the uthread it names, or (process_exit) to the story going on
        who = rec.uth or dict(rec.details).get("target")
        if who is not None and (rec.kind == "fault" or who not in open_story):
            open_story[who] = []
            stories.append(open_story[who])
        if who is not None:
            story = open_story[who]
        elif story is None:
            story = []
            stories.append(story)
        story.append((index, rec))
    told: dict[tuple, list] = {}  # signature -> [first story, indices of the repeats]
    for story in stories:
        signature = tuple((rec.kind, rec.uth, tuple(kv for kv in rec.details if kv[0] not in _INCIDENTAL))
                          for _, rec in story)  # fmt: skip
        if signature in told:
            told[signature][1].append(story[0][0])
        else:
            told[signature] = [story, []]
    lines = []
    for story, repeats in told.values():  # in the order each kind of story was first told
        lines += [line(index, rec) for index, rec in story]
        if repeats:
            lines.append(f"{'':>8}... told the same way {len(repeats):,} more time(s), the faults at records "
                         f"#{repeats[0]} to #{repeats[-1]}")  # fmt: skip
    return lines
