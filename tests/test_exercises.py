"""The exercises: each grader passes the model solution, fails the starter, and the page shows the solution as shipped.

Layout (docs/exercises.md explains it to teachers): exercises/NAME.toml is the
grader, exercises/NAME.EXT beside it the starter the student edits (the
grader names it by its file name), exercises/solutions/NAME.EXT the model
solution.  A solution is graded as a student's file would be: the grader and
the solution are copied into one scratch directory under the starter's name.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from akaros_sim.tools.scenario import run_scenario

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"
PAGE = ROOT / "docs" / "exercises.md"

# exercise name -> the file the student edits (its grader refers to it by this name)
STUDENT_FILES = {
    "div_by_zero": "div_by_zero.py",
    "percpu_counter": "percpu_counter.s",
    "lost_wakeup": "lost_wakeup.py",
}
NAMES = list(STUDENT_FILES)


def grade(name: str, answer: str, tmp_path: Path):
    """Run exercise `name`'s grader on `answer` (the text of the student's file) in a scratch directory."""
    shutil.copy(EXERCISES / f"{name}.toml", tmp_path)
    (tmp_path / STUDENT_FILES[name]).write_text(answer, encoding="utf-8")
    return run_scenario(tmp_path / f"{name}.toml")


def solution(name: str) -> str:
    return (SOLUTIONS / STUDENT_FILES[name]).read_text(encoding="utf-8")


def starter(name: str) -> str:
    return (EXERCISES / STUDENT_FILES[name]).read_text(encoding="utf-8")


def failed(run) -> list[str]:
    return [check.name for check in run.checks if not check.ok]


def test_every_exercise_has_a_grader_a_starter_and_a_solution():
    """exercises/ holds exactly the three exercises, each complete; nothing stray in solutions/."""
    assert sorted(p.stem for p in EXERCISES.glob("*.toml")) == sorted(NAMES)
    assert sorted(p.name for p in SOLUTIONS.iterdir()) == sorted(STUDENT_FILES.values())
    for student_file in STUDENT_FILES.values():
        assert (EXERCISES / student_file).is_file()


@pytest.mark.parametrize("name", NAMES)
def test_the_model_solution_passes_its_grader_twice_with_the_same_trace(name, tmp_path):
    """Every expectation holds for the model solution, and a second run writes a byte-identical trace."""
    first = grade(name, solution(name), tmp_path)
    assert first.checks and failed(first) == []
    second = run_scenario(tmp_path / f"{name}.toml")
    assert second.ok
    assert first.sim.trace.digest() == second.sim.trace.digest()


@pytest.mark.parametrize("name", NAMES)
def test_the_starter_fails_its_grader(name):
    """Run where students run it, the grader fails the unsolved exercise (so it can fail at all)."""
    run = run_scenario(EXERCISES / f"{name}.toml")
    assert not run.ok
    assert "end" in failed(run) or "memory[0].main:total" in failed(run)


def _ras_at(text: str, start_before: str, end_after: str) -> str:
    """The starter with a sequence from the line `start_before` to the line `end_after`, both included."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(start_before))
    last = next(i for i, line in enumerate(lines) if line.strip().startswith(end_after))
    lines[last + 1 : last + 1] = ["seq_end:\n"]
    lines[first:first] = ["seq_start:\n"]
    return "".join(lines).replace(".data\n", ".ras seq_start, seq_end\n\n.data\n")


@pytest.mark.parametrize(
    ("start", "end"),
    [("mov rax, [rdx]", "mov [rdx], rax"), ("xor ecx, ecx", "dec r8")],
    ids=["without-the-vcore-id-read", "past-the-commit"],
)
def test_the_counter_grader_fails_the_classic_wrong_sequences(start, end, tmp_path):
    """A sequence that leaves the vcore-id read out loses increments; one that goes past the store counts twice."""
    run = grade("percpu_counter", _ras_at(starter("percpu_counter"), start, end), tmp_path)
    assert failed(run) == ["memory[0].main:total"]


def test_the_counter_solution_is_the_starter_plus_the_sequence():
    """The model solution changes no instruction of the starter: it only adds the labels and the .ras line."""

    def code(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    added = [line for line in code(solution("percpu_counter")) if line not in code(starter("percpu_counter"))]
    assert added == ["seq_start:", "seq_end:", ".ras seq_start, seq_end"]


def test_the_div_grader_fails_a_handler_that_fixes_every_divide_error(tmp_path):
    """A handler that makes every #DE return -1 also swallows the one pthread must turn into a SIGFPE."""
    greedy = solution("div_by_zero").replace("or not main.symbol", "and not main.symbol")
    assert greedy != solution("div_by_zero")
    run = grade("div_by_zero", greedy, tmp_path)
    assert "retvals.elsewhere" in failed(run) and 'counts."signal:8"' in failed(run)


# -- the page ----------------------------------------------------------------------------------------------

_DETAILS = re.compile(r"<details><summary>Model solution</summary>\n(.*?)</details>", re.S)
_FENCED = re.compile(r"^`(exercises/solutions/[\w.]+)`[^\n]*\n\n```[^\n]*\n(.*?)^```$", re.S | re.M)


def test_the_page_shows_each_model_solution_byte_for_byte():
    """Each exercise's fold on docs/exercises.md quotes its solution file exactly, so the page cannot drift."""
    shown = {}
    for fold in _DETAILS.findall(PAGE.read_text(encoding="utf-8")):
        for path, body in _FENCED.findall(fold):
            shown[path] = body
    assert sorted(shown) == sorted(f"exercises/solutions/{f}" for f in STUDENT_FILES.values())
    for path, body in shown.items():
        assert body == (ROOT / path).read_text(encoding="utf-8"), f"docs/exercises.md shows an old {path}"


def test_the_page_tells_how_to_run_each_grader():
    text = PAGE.read_text(encoding="utf-8")
    for name in NAMES:
        assert f"akaros-sim run exercises/{name}.toml" in text
