"""Export a trace as Chrome trace-event JSON, which ui.perfetto.dev and chrome://tracing open.

One process ("akaros-sim"), one track per vcore.  Each stretch of a uthread
running on a vcore is a complete ("X") slice named after the uthread; vcore
context between them is a slice named "vcore context"; faults, extable fixups,
RAS restarts, syscalls, signals, preemptions and ticks are instant ("i")
events on the vcore's track.  Timestamps are the trace's virtual time in
microseconds (the format's unit), so 1 ns is 0.001.
"""

from __future__ import annotations

import json

from akaros_sim.trace import Trace

PID = 1
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
# Kinds that end a uthread's stretch on its vcore.
_LEAVE = ("vcore_entry", "vcore_offline", "preempt", "run_end", "process_exit")


def _us(ns: int) -> float:
    return ns / 1000.0


def to_chrome(trace: Trace) -> dict:
    """The trace as a Chrome trace-event document (a dict ready for json.dump)."""
    events: list[dict] = [
        {"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": "akaros-sim"}},
    ]
    vcores = sorted({r.vc for r in trace.records if r.vc >= 0})
    for vc in vcores:
        events.append({"ph": "M", "pid": PID, "tid": vc, "name": "thread_name", "args": {"name": f"vcore {vc}"}})
        events.append({"ph": "M", "pid": PID, "tid": vc, "name": "thread_sort_index", "args": {"sort_index": vc}})
    events.append({"ph": "M", "pid": PID, "tid": KERNEL_TID, "name": "thread_name", "args": {"name": "kernel"}})
    open_run: dict[int, tuple[str, int]] = {}  # vcore -> (uthread, start ns)
    open_vctx: dict[int, int] = {}  # vcore -> start of vcore context
    end_t = max((r.t for r in trace.records), default=0)

    def close(vc: int, t: int) -> None:
        if vc in open_run:
            name, start = open_run.pop(vc)
            events.append({"ph": "X", "pid": PID, "tid": vc, "name": name, "cat": "uthread", "ts": _us(start),
                           "dur": _us(t - start)})  # fmt: skip
        if vc in open_vctx:
            start = open_vctx.pop(vc)
            events.append({"ph": "X", "pid": PID, "tid": vc, "name": "vcore context", "cat": "vcore", "ts": _us(start),
                           "dur": _us(t - start)})  # fmt: skip

    for rec in trace.records:
        vc = rec.vc
        if vc >= 0:
            if rec.kind == "run":
                close(vc, rec.t)
                open_run[vc] = (rec.uth or "?", rec.t)
            elif rec.kind in _LEAVE:
                close(vc, rec.t)
                if rec.kind == "vcore_entry":
                    open_vctx[vc] = rec.t
        if rec.kind in INSTANTS:
            args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in rec.details}
            if rec.uth:
                args["uthread"] = rec.uth
            events.append({"ph": "i", "s": "t", "pid": PID, "tid": vc if vc >= 0 else KERNEL_TID,
                           "name": INSTANTS[rec.kind], "cat": rec.kind, "ts": _us(rec.t), "args": args})  # fmt: skip
    for vc in list(open_run) + list(open_vctx):
        close(vc, end_t)
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"akaros_sim": dict(trace.header)}}


def export(trace: Trace, path) -> None:
    """Write the Chrome trace-event JSON for trace to path."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_chrome(trace), f, indent=None, separators=(",", ":"), sort_keys=True)
