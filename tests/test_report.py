"""akaros-sim report: one self-contained HTML page per run, checked as text and in a headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from akaros_sim import Simulation, parlib
from akaros_sim.tools import report
from akaros_sim.tools.cli import main
from akaros_sim.tools.scenario import run_scenario
from akaros_sim.trace import Trace
from schedops.pthread import PthreadSched

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("pthread_faults", "handler_chain")
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """scenario -> (its trace path, its report path), each scenario run once into a trace."""
    out = {}
    for name in SCENARIOS:
        where = tmp_path_factory.mktemp(name)
        trace = where / f"{name}.jsonl"
        run_scenario(ROOT / "scenarios" / f"{name}.toml", trace_path=trace)
        page = where / f"{name}.html"
        assert main(["report", str(trace), "--html", str(page)]) == 0
        out[name] = (trace, page)
    return out


def _uthreads(trace: Trace) -> list[str]:
    """The uthreads of a trace in creation order (their first uthread_state record)."""
    return list(dict.fromkeys(r.uth for r in trace.records if r.kind == "uthread_state"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_row_per_uthread_and_a_story_per_fault(made, name):
    """One gantt-row per uthread in creation order, one <details id="fault-N"> per fault with its instruction."""
    trace_path, page_path = made[name]
    trace, page = Trace.read(trace_path), page_path.read_text(encoding="utf-8")
    rows = re.findall(r'<g class="gantt-row" data-uthread="([^"]*)"', page)
    assert rows == _uthreads(trace) and rows
    faults = trace.of_kind("fault")
    stories = re.findall(r'<details id="fault-(\d+)"', page)
    assert stories == [str(n) for n in range(1, min(len(faults), report.STORIES_SHOWN) + 1)] and stories
    for fault in faults:
        assert f'<code class="insn">{fault.get("insn")}</code>' in page
    assert page.count('<a href="#fault-') == len(faults)  # these faults are far enough apart to get a mark each


def test_the_chain_s_decisions_and_register_diff_are_told(made):
    """handler_chain's first fault: each handler's decision in explain's words, skip_magic's rip change as a row."""
    page = made["handler_chain"][1].read_text(encoding="utf-8")
    story = page[page.index('<details id="fault-1"') : page.index('<details id="fault-2"')]
    assert "handler &#x27;declines_all&#x27; on thread_refl_fault declined (CONTINUE_NEXT_HANDLER)" in story
    assert "fixed it (FAULT_FIXED)" in story
    assert "<td>skip_magic</td><td>rip</td><td>0x400005</td><td>0x400007</td>" in story
    assert "it ran again at 1,602 ns on vcore 0; its code goes on at 0x400007" in story


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_page_needs_no_network(made, name):
    """Nothing is fetched: no src/href to another host, no stylesheet links, no external scripts or fonts."""
    page = made[name][1].read_text(encoding="utf-8")
    assert re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, flags=re.I) == []
    assert "http://" not in page and "https://" not in page
    assert re.findall(r"<link\b|<script[^>]*\bsrc=|@import|url\(|<iframe|<img", page, flags=re.I) == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_trace_same_bytes(made, name, tmp_path):
    """Made again (elsewhere, from the scenario run afresh) the page is byte-identical; it holds no host path."""
    trace_path, page_path = made[name]
    again = tmp_path / "again.html"
    assert main(["report", str(trace_path), "--html", str(again)]) == 0
    assert again.read_bytes() == page_path.read_bytes()
    direct = tmp_path / "direct.html"
    assert main(["report", str(ROOT / "scenarios" / f"{name}.toml"), "--html", str(direct)]) == 0
    assert direct.read_bytes() == page_path.read_bytes()
    assert str(tmp_path) not in again.read_text(encoding="utf-8")
    assert str(trace_path.parent) not in again.read_text(encoding="utf-8")


def test_a_hostile_uthread_name_is_escaped(tmp_path):
    """Uthread names come from user files: one that is markup shows as text, in the rows, tables and tooltips."""
    sim = Simulation(vcores=1, seed=1)
    sim.set_sched(PthreadSched())
    sim.spawn_python(HOSTILE, lambda: parlib.compute(100))
    sim.spawn_python('a&b"c', lambda: parlib.compute(100))
    sim.run()
    sim.trace.write(tmp_path / "hostile.jsonl")
    out = tmp_path / "hostile.html"
    assert main(["report", str(tmp_path / "hostile.jsonl"), "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert HOSTILE not in page and "alert(1)</" not in page
    assert 'data-uthread="&lt;script&gt;alert(1)&lt;/script&gt;"' in page
    assert 'data-uthread="a&amp;b&quot;c"' in page
    assert page.count("<script>") == 2  # the page's own two


def test_stories_past_the_cap_are_counted(made, monkeypatch, tmp_path):
    """Past STORIES_SHOWN a line counts the rest, and their marks link to it (a trace with thousands of faults
    still gives a small page)."""
    monkeypatch.setattr(report, "STORIES_SHOWN", 2)
    out = tmp_path / "capped.html"
    assert main(["report", str(made["handler_chain"][0]), "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert re.findall(r'<details id="(fault-\d+)"', page) == ["fault-1", "fault-2"]
    assert '<p id="faults-more">... and 4 more fault(s)' in page
    assert page.count('<a href="#faults-more">') == 4


@pytest.mark.parametrize(
    "make, source_name, out_name, words",
    [
        (None, "missing.jsonl", "out.html", "cannot read"),
        ("garbage\n", "garbage.jsonl", "out.html", "not an akaros-sim trace"),
        ('{"a": 1}\n', "other.jsonl", "out.html", "not an akaros-sim trace"),
        (None, "missing.toml", "out.html", "cannot read"),
        ("trace", "run.jsonl", "no/such/dir/out.html", "cannot write"),
    ],
)
def test_bad_input_is_one_line_and_status_2(made, tmp_path, capsys, make, source_name, out_name, words):
    """A missing file, a file that is not a trace, an OUT that cannot be written: one line naming it, status 2."""
    source = tmp_path / source_name
    if make == "trace":
        shutil.copy(made["pthread_faults"][0], source)
    elif make is not None:
        source.write_text(make)
    out = tmp_path / out_name
    rc = main(["report", str(source), "--html", str(out)])
    err = capsys.readouterr().err
    named = out_name if make == "trace" else source_name
    assert rc == 2
    assert err.startswith("akaros-sim: ") and err.count("\n") == 1, err
    assert words in err and named in err and "Traceback" not in err
    assert not out.exists()


# -- in a real browser ------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.path.exists("/usr/bin/chromium"):
        found = "/usr/bin/chromium"
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is not installed: .ci/run should have installed it (apt-get install chromium)")
    reason = "Chromium is not installed (apt-get install chromium): the report's browser test cannot run"
    print(reason)
    pytest.skip(reason)


def _dump_dom(page: Path, tmp_path: Path, fragment: str = "") -> tuple[str, str]:
    """Load the page in headless Chromium (no network, no profile) and return (the DOM after load, stderr)."""
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_page_runs_in_a_browser(made, name, tmp_path):
    """Chromium loads the page with no script error; its own script counts the rows (one per uthread) and marks
    itself ready; loaded at #fault-2 (a fault mark's link), it opens that story."""
    trace_path, page = made[name]
    started = time.monotonic()
    dom, stderr = _dump_dom(page, tmp_path, "#fault-2")
    print(f"chromium: {time.monotonic() - started:.1f} s")
    body = re.search(r"<body[^>]*>", dom)
    assert body is not None, dom[:500]
    assert f'data-rows="{len(_uthreads(Trace.read(trace_path)))}"' in body.group(0)
    assert 'data-ready="1"' in body.group(0)
    assert "data-errors" not in body.group(0)
    assert _console_lines(stderr) == []
    assert re.search(r'<details id="fault-2"[^>]*\bopen\b', dom)
    assert not re.search(r'<details id="fault-1"[^>]*\bopen\b', dom)


def test_a_click_on_a_fault_mark_opens_its_story(made, tmp_path):
    """A click on the third fault's mark in the Gantt chart opens <details id="fault-3"> and no other."""
    page = made["handler_chain"][1].read_text(encoding="utf-8")
    click = """<script>
document.querySelector('a[href="#fault-3"] path').dispatchEvent(new MouseEvent("click", {bubbles: true}));
</script>"""
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.replace("\n</body>", click + "\n</body>"), encoding="utf-8")
    dom, stderr = _dump_dom(clicked, tmp_path)
    assert re.findall(r'<details id="(fault-\d+)"[^>]*\bopen\b', dom) == ["fault-3"]
    assert _console_lines(stderr) == []


def test_the_browser_check_sees_a_script_error(made, tmp_path):
    """The checks above are not vacuous: a failing script shows in data-errors and in Chromium's console log."""
    page = made["pthread_faults"][1].read_text(encoding="utf-8")
    last = page.rindex("<script>")
    broken = tmp_path / "broken.html"
    broken.write_text(page[:last] + "<script>no_such_function();</script>" + page[last:], encoding="utf-8")
    dom, stderr = _dump_dom(broken, tmp_path)
    assert re.search(r'<body[^>]*data-errors="[^"]*no_such_function', dom)
    assert any("no_such_function" in line for line in _console_lines(stderr))
