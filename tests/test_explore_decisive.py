"""The deciding events on the timeline (issue 14, item 3): explore's failing trace carries them in its header,
and explain, report and the Perfetto export show them by record number."""

from __future__ import annotations

import json
import re

import pytest
from test_perfetto import check_trace_events

from akaros_sim.tools.cli import main
from akaros_sim.tools.perfetto import to_chrome
from akaros_sim.trace import Trace


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    """lost_wakeup's planted race, found by exhaustive search, saved with its trace: (dir, trace, schedule)."""
    where = tmp_path_factory.mktemp("decisive")
    cx, trace = where / "cx.json", where / "t.jsonl"
    assert main(["explore", "lost_wakeup", "--strategy", "exhaustive", "--out", str(cx), "--trace", str(trace)]) == 1
    return where, trace, json.loads(cx.read_text(encoding="utf-8"))


def _expected(trace: Trace) -> tuple[int, int]:
    """The two events, found in the trace itself: the injection, and the completion of the syscall that the
    preempted thread_blockon_sysc was about to register for (ann's block)."""
    records = trace.records
    inject = next(i for i, r in enumerate(records) if r.kind == "inject")
    done = next(i for i in range(inject, len(records)) if records[i].kind == "syscall_done")
    sysc = records[done].get("sysc")
    issued = next(r for r in records if r.kind == "syscall" and r.get("sysc") == sysc)
    assert (issued.uth, issued.get("name")) == ("ann", "block")
    return inject, done


def test_the_failing_trace_carries_the_deciding_events_as_record_numbers(found):
    _, path, saved = found
    trace = Trace.read(path)
    inject, done = _expected(trace)
    d = trace.header["decisive"]
    assert d["records"] == [inject, done] == saved["decisive"]["records"]
    assert (d["key"], d["failing"], d["passing"]) == ("nth", 1, 4)
    assert trace.records[inject].get("what").startswith("preempt vcore 1")
    assert trace.header["schedule"]["choices"] == saved["choices"]


def test_explain_names_the_deciding_events(found, capsys):
    _, path, _ = found
    inject, done = _expected(Trace.read(path))
    assert main(["explain", str(path), "--kind", "console"]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("deciding events (their order decides the failure):")
    first, second, verdict = out[at + 1 : at + 4]
    assert re.match(rf"#{inject} +6,082 ns  kernel +injection: preempt vcore 1 .* \(about vcore 1 \[ann\]: #\d+\)$",
                    first)  # fmt: skip
    assert re.match(rf"#{done} +[\d,]+ ns  kernel +the kernel completes syscall #\d+ block -> 0x0 "
                    r"\(about vcore 1 \[ann\]: #\d+\)$", second)  # fmt: skip
    assert verdict == f"fails in this order (nth 1); passes when #{done} comes first (nth 4)"


def test_the_replayed_trace_carries_them_only_when_it_is_the_saved_run(found, capsys):
    where, path, saved = found
    again = where / "again.jsonl"
    assert main(["explore", "lost_wakeup", "--replay", str(where / "cx.json"), "--trace", str(again)]) == 1
    assert Trace.read(again).header["decisive"] == Trace.read(path).header["decisive"]
    assert again.read_bytes() == path.read_bytes()  # the same run, told the same way
    passing = dict(saved, choices=[{"preempt": {"vcore": 1, "when": {"in_op": "thread_blockon_sysc", "vcore": 1,
                                                                      "nth": 4}}}])  # fmt: skip
    (where / "pass.json").write_text(json.dumps(passing), encoding="utf-8")
    other = where / "pass.jsonl"
    assert main(["explore", "lost_wakeup", "--replay", str(where / "pass.json"), "--trace", str(other)]) == 0
    assert "decisive" not in Trace.read(other).header  # its record numbers would point at other events
    capsys.readouterr()
    assert main(["explain", str(other), "--kind", "console"]) == 0
    assert "deciding events" not in capsys.readouterr().out


def test_report_marks_them_on_the_gantt_and_in_the_summary(found, tmp_path):
    _, path, _ = found
    inject, done = _expected(Trace.read(path))
    page = tmp_path / "r.html"
    assert main(["report", str(path), "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    marks = re.findall(r'<g class="m-decisive" data-record="(\d+)"><title>([^<]*)</title>', text)
    assert [int(n) for n, _ in marks] == [inject, done]
    assert marks[0][1].startswith("deciding event 1 of 2: 6,082 ns (ann), #") and "injection: preempt" in marks[0][1]
    assert "completes syscall" in marks[1][1]
    summary = re.search(r"<th>deciding events</th><td>([^<]*)</td>", text).group(1)
    assert summary.startswith(f"#{inject}: injection: preempt vcore 1") and f"then #{done}: the kernel" in summary
    assert summary.endswith("this order fails (nth 1); the other passes (nth 4)")


def test_report_in_a_browser_draws_both_marks(found, tmp_path):
    from test_report import _dump_dom  # its Chromium helper (skips where there is none)

    _, path, _ = found
    page = tmp_path / "r.html"
    assert main(["report", str(path), "--html", str(page)]) == 0
    dom, _ = _dump_dom(page, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-decisive="2"' in body and 'data-ready="1"' in body and "data-errors" not in body


def test_the_perfetto_export_has_them_as_instants_joined_by_a_flow(found):
    _, path, _ = found
    trace = Trace.read(path)
    inject, done = _expected(trace)
    doc = to_chrome(trace)
    assert check_trace_events(doc) == []
    ours = [e for e in doc["traceEvents"] if e.get("cat") == "decisive"]
    instants = [e for e in ours if e["ph"] == "i"]
    assert [(e["name"], e["args"]["record"], e["tid"], e["args"]["uthread"]) for e in instants] == [
        ("deciding event 1", inject, 1, "ann"), ("deciding event 2", done, 1, "ann")]  # fmt: skip
    assert [(e["ph"], e["ts"]) for e in ours if e["ph"] in "sf"] == [("s", instants[0]["ts"]), ("f", instants[1]["ts"])]


def test_a_header_entry_that_does_not_fit_the_trace_is_said_in_one_line(found, tmp_path, capsys):
    _, path, _ = found
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["decisive"]["records"] = [10**6, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n", encoding="utf-8")
    assert main(["explain", str(bad), "--kind", "console"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "deciding events: the header's entry does not fit this trace"
    page = tmp_path / "r.html"
    assert main(["report", str(bad), "--html", str(page)]) == 0
    assert 'class="m-decisive"' not in page.read_text(encoding="utf-8")
    assert not [e for e in to_chrome(Trace.read(bad))["traceEvents"] if e.get("cat") == "decisive"]


def test_an_instruction_that_decides_has_no_record_and_is_told_as_explore_put_it(tmp_path, capsys):
    """The unprotected counter: the passing run differs by the instruction w2 runs before its preemption,
    which no record shows; the injection is still marked by its record number."""
    from test_explore import small

    path = small(tmp_path, "ras_counter_unprotected")
    trace = tmp_path / "t.jsonl"
    assert main(["explore", str(path), "--watch", "seq_start..seq_end", "--trace", str(trace)]) == 1
    capsys.readouterr()
    header = Trace.read(trace).header["decisive"]
    inject = next(i for i, r in enumerate(Trace.read(trace).records) if r.kind == "inject")
    assert header["records"] == [inject, None] and header["key"] == "offset"
    assert main(["explain", str(trace), "--kind", "console"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith(f"#{inject} ") and "injection: preempt vcore here at w2 code seq_start" in out[-3]
    assert out[-2] == "(no record) w2 runs seq_start+2 (mov qword ptr [rsi], rax) first"
    assert out[-1] == "fails in this order (offset 1); passes when that instruction comes first (offset 3)"
    marks = re.findall(r'class="m-decisive" data-record="(\d+)"', _page(trace, tmp_path))
    assert marks == [str(inject)]


def _page(trace, tmp_path) -> str:
    page = tmp_path / "r.html"
    assert main(["report", str(trace), "--html", str(page)]) == 0
    return page.read_text(encoding="utf-8")
