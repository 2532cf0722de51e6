"""The docs: every example in docs/*.md runs, in order, and prints what the page says it prints.

Conventions a page follows (docs/README of sorts; this docstring is the spec):

* A ```python block runs.  The python blocks of one page run in order in one
  namespace, so a later block can use what an earlier one defined.  Blocks
  check their own results with `assert`.
* A ```python no-run block is shown but not run (a fragment, a signature).
* An ```output block right after a python block is that block's exact
  standard output.  A line that is just `...` stands for any number of lines.
* A ```console block holds `$ akaros-sim VERB ...` commands, each followed by
  its exact standard output (`...` elides, as above).  The command runs
  in-process through `akaros_sim.tools.cli.main` and must exit 0.  A command whose
  verb this build's CLI does not have yet is skipped with that reason (the
  rest of the page still runs); ```console no-run blocks are not run.
* Other fences (```sh, ```text, ```toml, ...) are for reading only.

Examples run in a scratch directory that mirrors the repository root
(symlinks), so `examples/trap_tour.s` resolves and files they write do not
land in the working tree.

Besides the examples, tests check that the required pages exist,
that relative links between pages point at files and headings that exist,
and that the Costs table in concepts.md lists every field of `Costs` with
its default.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
REQUIRED_PAGES = ("quickstart.md", "concepts.md", "architecture.md", "tutorial_first_2ls.md", "glossary.md")

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+)(?P<info>[^`]*)$")


@attrs.frozen
class Block:
    """One fenced block of a page: its info words, first line number (1-based) and text."""

    lang: str
    flags: tuple[str, ...]
    line: int
    text: str


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, words = m["fence"], m["info"].split()
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: code fence {fence} is never closed")
        body = "\n".join(lines[start:i]) + "\n"
        found.append(Block(words[0] if words else "", tuple(words[1:]), start + 1, body))
        i += 1
    return found


def match_output(expected: str, actual: str) -> bool:
    """Line-wise equality, where an expected line `...` matches any run of lines (trailing blanks ignored)."""
    want = [line.rstrip() for line in expected.rstrip("\n").splitlines()]
    got = [line.rstrip() for line in actual.rstrip("\n").splitlines()]
    if not any(line == "..." for line in want):
        return want == got
    chunks: list[list[str]] = [[]]
    for line in want:
        if line == "...":
            chunks.append([])
        else:
            chunks[-1].append(line)
    first, *middle, last = chunks
    if got[: len(first)] != first:
        return False
    pos = len(first)
    end = len(got) - len(last)
    if end < pos or (last and got[end:] != last):
        return False
    for chunk in middle:
        if not chunk:
            continue
        for k in range(pos, end - len(chunk) + 1):
            if got[k : k + len(chunk)] == chunk:
                pos = k + len(chunk)
                break
        else:
            return False
    return True


def _describe_mismatch(where: str, expected: str, actual: str) -> str:
    return f"{where}: output differs from the page\n--- the page says:\n{expected}--- the code printed:\n{actual}"


def _run_python(page: Path, block: Block, namespace: dict) -> str:
    # Padded with blank lines so a traceback names the page's own line numbers.
    code = compile("\n" * (block.line - 1) + block.text, str(page.relative_to(ROOT)), "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, namespace)  # noqa: S102 - running the documentation is the point
    return out.getvalue()


def _cli_verbs() -> set[str]:
    from akaros_sim.tools.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps subcommands in a private action
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def _console_commands(block: Block) -> list[tuple[int, str, str]]:
    """(line, command, expected output) for each `$ ` line of a console block."""
    commands: list[tuple[int, str, list[str]]] = []
    for offset, line in enumerate(block.text.splitlines()):
        if line.startswith("$ "):
            commands.append((block.line + offset, line[2:].strip(), []))
        elif commands:
            commands[-1][2].append(line)
        elif line.strip():
            raise AssertionError(f"line {block.line + offset}: console output before any `$ ` command")
    return [(ln, cmd, "\n".join(out) + "\n" if out else "") for ln, cmd, out in commands]


def _run_console(page: Path, block: Block) -> list[str]:
    """Run each command of a console block; returns the reasons for skipped commands."""
    from akaros_sim.tools.cli import main

    skipped = []
    verbs = _cli_verbs()
    for line, command, expected in _console_commands(block):
        argv = shlex.split(command)
        where = f"{page.name}:{line}: `{command}`"
        if not argv or argv[0] != "akaros-sim":
            raise AssertionError(f"{where}: console blocks run only `akaros-sim` commands (fence it as sh)")
        verb = next((a for a in argv[1:] if not a.startswith("-")), None)
        if verb not in verbs:
            skipped.append(f"{where}: this build's CLI has no verb {verb!r} yet")
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv[1:])
        assert rc == 0, f"{where}: exit status {rc}\n{out.getvalue()}"
        if expected and not match_output(expected, out.getvalue()):
            raise AssertionError(_describe_mismatch(where, expected, out.getvalue()))
    return skipped


def _scratch_root(tmp_path: Path) -> Path:
    """A directory whose entries are symlinks to the repository root's: examples read
    `examples/...` and `scenarios/...` as from the root, and a file they write
    (a trace, say) lands in the scratch directory, not in the working tree."""
    scratch = tmp_path / "root"
    scratch.mkdir()
    for entry in sorted(ROOT.iterdir()):
        if entry.name != ".git":
            (scratch / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return scratch


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run_and_print_what_the_page_says(page, monkeypatch, tmp_path):
    """Every runnable block of the page runs in order in one namespace; output blocks match what it printed."""
    monkeypatch.chdir(_scratch_root(tmp_path))
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    found = blocks(page)
    skipped: list[str] = []
    for i, block in enumerate(found):
        if "no-run" in block.flags:
            continue
        if block.lang == "python":
            printed = _run_python(page, block, namespace)
            nxt = found[i + 1] if i + 1 < len(found) else None
            if nxt is not None and nxt.lang == "output" and not match_output(nxt.text, printed):
                raise AssertionError(_describe_mismatch(f"{page.name}:{block.line}", nxt.text, printed))
        elif block.lang == "output":
            prev = found[i - 1] if i else None
            assert prev is not None and prev.lang == "python" and "no-run" not in prev.flags, (
                f"{page.name}:{block.line}: an output block must follow a runnable python block"
            )
        elif block.lang == "console":
            skipped += _run_console(page, block)
    if skipped:
        pytest.skip("every other example of the page passed; skipped " + "; ".join(skipped))


def test_required_pages_exist():
    """docs/ has the quickstart, concepts, the architecture, the first-2LS tutorial and the glossary."""
    missing = [name for name in REQUIRED_PAGES if not (DOCS / name).is_file()]
    assert missing == []


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page (outside code blocks)."""
    found, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_relative_links_resolve():
    """Every relative link in docs/*.md names a file that exists, and a #heading of it that exists."""
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_costs_table_lists_every_cost_with_its_default():
    """The Costs table in concepts.md has one row per Costs field, with the field's default value."""
    from akaros_sim.engine import Costs

    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d_,]+) \|", text, flags=re.M))
    defaults = {f.name: f.default for f in attrs.fields(Costs)}
    assert {name: int(value.replace("_", "").replace(",", "")) for name, value in rows.items()} == defaults


def test_match_output_elision():
    """`...` in stated output matches any run of lines, anywhere; other lines match exactly."""
    assert match_output("a\n...\nd\n", "a\nb\nc\nd\n")
    assert match_output("a\n...\n", "a\n")
    assert match_output("...\nc\n...\n", "a\nb\nc\nd\n")
    assert not match_output("a\n...\nd\n", "a\nb\nc\n")
    assert not match_output("a\nb\n", "a\nb\nc\n")
    assert match_output("a  \nb\n\n", "a\nb")


def test_blocks_reads_info_words_and_line_numbers(tmp_path):
    """A fence's first word is the language, the rest are flags; line numbers are the code's first line."""
    page = tmp_path / "p.md"
    page.write_text("text\n```python no-run\nx = 1\n```\n\n```output\n1\n```\n", encoding="utf-8")
    assert blocks(page) == [Block("python", ("no-run",), 3, "x = 1\n"), Block("output", (), 7, "1\n")]
