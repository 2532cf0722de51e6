"""Export a trace as Chrome trace-event JSON, which ui.perfetto.dev and chrome://tracing open.

Two processes.  "vcores" has a track per vcore: complete ("X") slices for
each uthread running on it (named after the uthread), "vcore context"
between them, and "offline" / "preempted" while the kernel has its pcore;
faults, fixups, RAS restarts, syscalls, signals, preemptions and ticks are
instants on it.  "uthreads" has a track per uthread (in creation order) with
its states over time (concepts.md, "Uthread time"): "running (vcore N)",
"runnable", "blocked: CAUSE".  Flow arrows join a uthread's runs on two
vcores (a migration) and each fault's story on its vcore: the fault, the
handlers' decisions, the fixup, the resume.  Counter tracks follow the number
of runnable uthreads and of vcores online.  A failing run's trace from
`explore --trace` adds its two deciding events (the header's `decisive`) as
instants named "deciding event 1" and "2" on the track of the vcore they are
about, joined by a flow in their failing order.  Timestamps are virtual time in
microseconds (the format's unit), so 1 ns is 0.001.
"""

from __future__ import annotations

import json

from akaros_sim.timeline import BLOCKED, RUNNABLE, RUNNING, spans
from akaros_sim.tools.explain import concerns, deciding_records, sentence
from akaros_sim.trace import Trace

VCORES_PID, UTHREADS_PID = 1, 2
KERNEL_TID = 10_000  # records with no vcore (kernel events) go on their own track

# Trace kinds shown as instant events, and what to call them.
INSTANTS = {
    "fault": "fault",
    "extable_fixup": "extable fixup",
    "fault_fixed": "fault fixed",
    "ras_restart": "RAS restart",
    "syscall": "syscall",
    "syscall_done": "syscall done",
    "signal": "signal",
    "sigreturn": "sigreturn",
    "preempt": "preempt",
    "preempt_warn": "preempt warning",
    "preempt_recover": "preempt recovery",
    "tick": "tick",
    "handler": "handler",
    "process_exit": "process exit",
    "inject": "injection",
    "mutex_handoff": "mutex hand-off",
}
# The steps of a fault's story after the fault itself, joined by one flow (ended by the resume).
_STORY_STEPS = frozenset({"handler", "extable_fixup", "fault_fixed", "ras_restart", "signal", "signal_prep"})


def _us(ns: int) -> float:
    return ns / 1000.0


def _meta(pid: int, tid: int, name: str, value) -> dict:
    key = "sort_index" if name.endswith("sort_index") else "name"
    return {"ph": "M", "pid": pid, "tid": tid, "name": name, "args": {key: value}}


def _slice(pid: int, tid: int, name: str, cat: str, start: int, end: int, args: dict | None = None) -> dict:
    ev = {"ph": "X", "pid": pid, "tid": tid, "name": name, "cat": cat, "ts": _us(start), "dur": _us(end - start)}
    if args:
        ev["args"] = args
    return ev


def _vcore_slices(vc: int, states: list[tuple], runs: list[tuple]) -> list[dict]:
    """A vcore's track: its kernel states, and its online time split into uthread runs and vcore context."""
    out = []
    runs = sorted(runs)
    for start, end, state in states:
        if state != "online":
            out.append(_slice(VCORES_PID, vc, state, "vcore", start, end))
            continue
        at = start
        for r_start, r_end, name in runs:
            if r_end <= start or r_start >= end:
                continue
            if r_start > at:
                out.append(_slice(VCORES_PID, vc, "vcore context", "vcore", at, r_start))
            out.append(_slice(VCORES_PID, vc, name, "uthread", r_start, r_end))
            at = max(at, r_end)
        if end > at:
            out.append(_slice(VCORES_PID, vc, "vcore context", "vcore", at, end))
    return out


def _flows(records, runs_by_uth: dict[str, list[tuple]]) -> list[dict]:
    """Flow arrows: a uthread's consecutive runs on different vcores, and each fault's story."""
    out = []
    flow_id = 0
    for runs in runs_by_uth.values():
        for (a_start, _a_end, a_vc), (b_start, _b_end, b_vc) in zip(runs, runs[1:], strict=False):
            if a_vc != b_vc:
                flow_id += 1
                out.append({"ph": "s", "pid": VCORES_PID, "tid": a_vc, "name": "migration", "cat": "migration",
                            "id": flow_id, "ts": _us(a_start)})  # fmt: skip
                out.append({"ph": "f", "bp": "e", "pid": VCORES_PID, "tid": b_vc, "name": "migration",
                            "cat": "migration", "id": flow_id, "ts": _us(b_start)})  # fmt: skip
    story: dict[str, int] = {}  # uthread -> the id of its fault story in progress
    for rec in records:
        kind = rec.kind
        if kind == "fault" and rec.vc >= 0:
            if rec.uth in story:  # a story that never resumed (a second fault meanwhile): close it here
                out.append(_flow("f", story.pop(rec.uth), rec))
            flow_id += 1
            story[rec.uth] = flow_id
            out.append(_flow("s", flow_id, rec))
        elif kind in _STORY_STEPS and rec.uth in story and rec.vc >= 0:
            out.append(_flow("t", story[rec.uth], rec))
        elif kind == "run" and rec.uth in story:
            out.append(_flow("f", story.pop(rec.uth), rec))
    end = next((r for r in reversed(records) if r.kind == "run_end"), None)
    for fid in story.values():  # stories still open when the run ended (the process died of the fault)
        out.append({"ph": "f", "bp": "e", "pid": VCORES_PID, "tid": KERNEL_TID, "name": "fault story",
                    "cat": "fault", "id": fid, "ts": _us(end.t if end else 0)})  # fmt: skip
    return out


def _flow(ph: str, fid: int, rec) -> dict:
    ev = {"ph": ph, "pid": VCORES_PID, "tid": rec.vc, "name": "fault story", "cat": "fault", "id": fid,
          "ts": _us(rec.t)}  # fmt: skip
    if ph == "f":
        ev["bp"] = "e"  # bind to the slice enclosing the resume: the uthread's next run
    return ev


def _decisive(trace: Trace) -> list[dict]:
    """The deciding events as instants, each on the track of the vcore it is about (the kernel's if none),
    and a flow from the first to the second when both are records."""
    found = deciding_records(trace)
    if found is None:
        return []
    records = trace.records
    out, ends = [], []
    for i, (number, text) in enumerate(found[0], start=1):
        if number is None:
            continue
        rec = records[number]
        about = concerns(records, number)
        vc = rec.vc if rec.vc >= 0 else (about[0] if about is not None and about[0] >= 0 else KERNEL_TID)
        uth = rec.uth or (about[1] if about is not None else "")
        args = {"record": number, "event": sentence(rec), "explore": text, **({"uthread": uth} if uth else {})}
        out.append({"ph": "i", "s": "t", "pid": VCORES_PID, "tid": vc, "name": f"deciding event {i}",
                    "cat": "decisive", "ts": _us(rec.t), "args": args})  # fmt: skip
        ends.append((vc, rec.t))
    if len(ends) == 2:
        for ph, (vc, t) in zip(("s", "f"), ends, strict=True):
            ev = {"ph": ph, "pid": VCORES_PID, "tid": vc, "name": "deciding order", "cat": "decisive", "id": 1,
                  "ts": _us(t)}  # fmt: skip
            if ph == "f":
                ev["bp"] = "e"
            out.append(ev)
    return out


def _counters(records) -> list[dict]:
    """Counter tracks: uthreads runnable, and vcores online, at each change."""
    out = []
    state: dict[str, str] = {}
    runnable = online = 0
    for rec in records:
        if rec.kind == "uthread_state":
            was, now = state.get(rec.uth), rec.get("state")
            state[rec.uth] = now
            delta = (now == RUNNABLE) - (was == RUNNABLE)
            if delta:
                runnable += delta
                out.append({"ph": "C", "pid": UTHREADS_PID, "tid": 0, "name": "runnable uthreads",
                            "ts": _us(rec.t), "args": {"runnable": runnable}})  # fmt: skip
        elif rec.kind in ("vcore_online", "vcore_offline", "preempt", "change_to_vcore"):
            online += 1 if rec.kind == "vcore_online" else -1
            out.append({"ph": "C", "pid": VCORES_PID, "tid": 0, "name": "vcores online", "ts": _us(rec.t),
                        "args": {"online": online}})  # fmt: skip
    return out


def to_chrome(trace: Trace) -> dict:
    """The trace as a Chrome trace-event document (a dict ready for json.dump)."""
    records = trace.records
    uth_spans, vc_spans, _end = spans(trace)
    events: list[dict] = [_meta(VCORES_PID, 0, "process_name", "vcores"),
                          _meta(UTHREADS_PID, 0, "process_name", "uthreads"),
                          _meta(VCORES_PID, 0, "process_sort_index", 0), _meta(UTHREADS_PID, 0, "process_sort_index", 1)]
    vcores = sorted(set(vc_spans) | {r.vc for r in records if r.vc >= 0})
    for vc in vcores:
        events += [_meta(VCORES_PID, vc, "thread_name", f"vcore {vc}"), _meta(VCORES_PID, vc, "thread_sort_index", vc)]
    events.append(_meta(VCORES_PID, KERNEL_TID, "thread_name", "kernel"))
    runs_on: dict[int, list[tuple]] = {vc: [] for vc in vcores}
    runs_by_uth: dict[str, list[tuple]] = {}
    for tid, (name, states) in enumerate(uth_spans.items(), start=1):
        events += [_meta(UTHREADS_PID, tid, "thread_name", name), _meta(UTHREADS_PID, tid, "thread_sort_index", tid)]
        for start, end, state, cause, vc in states:
            if state == RUNNING:
                label, args = f"running (vcore {vc})", {"vcore": vc}
                runs_on.setdefault(vc, []).append((start, end, name))
                runs_by_uth.setdefault(name, []).append((start, end, vc))
            elif state == BLOCKED:
                label, args = f"blocked: {cause}", {"cause": cause}
            else:
                label, args = state, None
            events.append(_slice(UTHREADS_PID, tid, label, state, start, end, args))
    for vc in vcores:
        events += _vcore_slices(vc, vc_spans.get(vc, []), runs_on.get(vc, []))
    for rec in records:
        if rec.kind in INSTANTS:
            args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in rec.details}
            if rec.uth:
                args["uthread"] = rec.uth
            events.append({"ph": "i", "s": "t", "pid": VCORES_PID, "tid": rec.vc if rec.vc >= 0 else KERNEL_TID,
                           "name": INSTANTS[rec.kind], "cat": rec.kind, "ts": _us(rec.t), "args": args})  # fmt: skip
    events += _flows(records, runs_by_uth)
    events += _decisive(trace)
    events += _counters(records)
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"akaros_sim": dict(trace.header)}}


def export(trace: Trace, path) -> None:
    """Write the Chrome trace-event JSON for trace to path."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_chrome(trace), f, indent=None, separators=(",", ":"), sort_keys=True)
