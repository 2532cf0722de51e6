"""The C toolchain (akaros_sim.toolchain, `akaros-sim cc`, `c = [...]` programs): build, run, reproduce, cache, errors.

Every test here needs the ziglang package (a dependency in pyproject.toml).
Where it is not installed they are skipped, with the reason in pytest's
summary (-rs); under CI=true they run anyway and fail, since CI installs it.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from akaros_sim import Simulation, toolchain
from akaros_sim.elf import load_elf
from akaros_sim.tools.cli import main
from akaros_sim.tools.scenario import ScenarioError, load_scenario, run_scenario
from schedops.pthread import PthreadSched

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "tests" / "c"

pytestmark = pytest.mark.skipif(
    not toolchain.available() and os.environ.get("CI") != "true",
    reason="the ziglang package is not installed (pip install ziglang): no C toolchain",
)

SUM_C = """\
long result;
long data[3] = {7, 11, 13};

long weighted(long k)
{
    long s = 0;
    for (int i = 0; i < 3; i++)
        s += data[i] * (i + k);
    result = s;
    return s;
}
"""

DOUBLE_S = """\
.intel_syntax noprefix
.globl twice
twice:
    lea rax, [rdi + rdi]
    ret
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test builds into its own cache directory (AKAROS_SIM_CACHE)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AKAROS_SIM_CACHE", str(cache))
    return cache


def write(folder: Path, files: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files if not name.endswith(".h")]


def test_a_c_guest_compiles_loads_and_runs(tmp_path):
    """C and Intel-syntax assembly link into one ELF whose functions run as guest uthreads."""
    sources = write(tmp_path / "src", {"sum.c": SUM_C, "double.s": DOUBLE_S})
    program = load_elf(toolchain.build(sources))
    assert {"weighted", "twice", "result", "data"} <= set(program.symbols)
    sim = Simulation(vcores=1, seed=1)
    sim.load(program)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("w", program.symbol("weighted"), 2)
    sim.spawn_guest("t", program.symbol("twice"), 21)
    sim.run()
    assert sim.uthread("w").exit_value == 7 * 2 + 11 * 3 + 13 * 4
    assert sim.uthread("t").exit_value == 42
    assert int.from_bytes(sim.proc.mem.read(program.symbol("result"), 8), "little") == 99


def test_the_shipped_c_scenario_passes():
    """tests/hello_c.toml builds tests/c/hello.c at load time; its retvals, memory and console hold."""
    run = run_scenario(load_scenario(ROOT / "tests" / "hello_c.toml"))
    assert run.ok, [c.name for c in run.checks if not c.ok]
    assert dict(run.scenario.files).keys() == {"c/akaros.h", "c/hello.c"}


def test_builds_are_reproducible_across_directories(tmp_path):
    """The same sources built twice, and in two directories, give the same bytes (no path, date or build-id)."""
    a = write(tmp_path / "one", {"sum.c": SUM_C, "double.s": DOUBLE_S})
    b = write(tmp_path / "elsewhere" / "two", {"sum.c": SUM_C, "double.s": DOUBLE_S})
    first = toolchain.compile_sources(a)
    assert toolchain.compile_sources(a) == first
    assert toolchain.compile_sources(b) == first
    with_debug = toolchain.compile_sources(a, ["-g"])
    assert toolchain.compile_sources(b, ["-g"]) == with_debug
    assert str(tmp_path).encode() not in with_debug


def test_a_second_build_is_a_cache_hit(tmp_path, monkeypatch, private_cache):
    """The second build of the same inputs runs no compiler; a changed source, header or flag does."""
    sources = write(tmp_path, {"sum.c": SUM_C, "extra.h": "#define N 3\n"})
    built = toolchain.build(sources)
    assert built.parent == private_cache / "cc"
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    assert toolchain.build(sources) == built and calls == []
    assert toolchain.build(sources, ["-O0"]) != built and len(calls) == 1
    (tmp_path / "extra.h").write_text("#define N 4\n", encoding="utf-8")
    assert toolchain.build(sources) != built and len(calls) == 2


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    """AKAROS_SIM_CACHE first, then $XDG_CACHE_HOME/akaros-sim, then ~/.cache/akaros-sim."""
    monkeypatch.setenv("AKAROS_SIM_CACHE", str(tmp_path / "x"))
    assert toolchain.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("AKAROS_SIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert toolchain.cache_dir() == tmp_path / "xdg" / "akaros-sim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert toolchain.cache_dir() == tmp_path / "home" / ".cache" / "akaros-sim"


def test_a_compile_error_names_the_file_and_line(tmp_path):
    """The compiler's first error line, with the file as the caller named it."""
    sources = write(tmp_path, {"bad.c": "long f(void)\n{\n    return y;\n}\n"})
    with pytest.raises(toolchain.ToolchainError) as info:
        toolchain.build(sources)
    assert str(info.value) == f"{sources[0]}:3:12: error: use of undeclared identifier 'y'"


def test_a_link_error_is_one_line(tmp_path):
    """An undefined symbol is lld's one error line."""
    sources = write(tmp_path, {"ext.c": "long g(void);\nlong f(void) { return g(); }\n"})
    with pytest.raises(toolchain.ToolchainError, match=r"^ld\.lld: error: undefined symbol: g$"):
        toolchain.build(sources)


def test_bad_inputs_are_refused_before_compiling(tmp_path):
    """A flag off the allow-list, a non-source suffix and a missing file are ToolchainErrors."""
    sources = write(tmp_path, {"sum.c": SUM_C})
    with pytest.raises(toolchain.ToolchainError, match="flag '-fplugin=evil.so' is not allowed"):
        toolchain.build(sources, ["-fplugin=evil.so"])
    with pytest.raises(toolchain.ToolchainError, match="expected a .c, .s or .S source, got .txt"):
        toolchain.build([tmp_path / "notes.txt"])
    with pytest.raises(toolchain.ToolchainError, match="cannot read"):
        toolchain.build([tmp_path / "nosuch.c"])


def test_a_scenario_compile_error_is_one_line_exit_2(tmp_path, capsys):
    """`run` of a scenario whose C does not compile: one line naming the key and file:line, exit 2."""
    write(tmp_path, {"bad.c": "long f(void) { return y; }\n"})
    path = tmp_path / "s.toml"
    path.write_text('description = "x"\n[machine]\nvcores = 1\nseed = 1\n[[programs]]\nname = "p"\nc = ["bad.c"]\n'
                    '[[threads]]\nname = "t"\nprogram = "p"\nentry = "f"\n', encoding="utf-8")  # fmt: skip
    assert main(["run", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"akaros-sim: {path}: programs[0].c: {tmp_path / 'bad.c'}:1:23: error: use of undeclared identifier 'y'\n"
    with pytest.raises(ScenarioError):
        load_scenario(path)


def test_the_cc_verb_writes_the_elf(tmp_path, monkeypatch, capsys):
    """`akaros-sim cc FILE... -o OUT` writes the ELF; without -o it is FILE's stem + .elf in the current directory."""
    shutil.copy(C_DIR / "hello.c", tmp_path)
    shutil.copy(C_DIR / "akaros.h", tmp_path)
    out = tmp_path / "out" / "h.elf"
    out.parent.mkdir()
    assert main(["cc", "-Wall", "-Werror", str(tmp_path / "hello.c"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: {out.stat().st_size} bytes, ")
    assert "greet" in load_elf(out).symbols
    monkeypatch.chdir(tmp_path / "out")
    assert main(["cc", str(tmp_path / "hello.c")]) == 0
    assert (tmp_path / "out" / "hello.elf").read_bytes() == out.read_bytes()
    assert main(["cc", str(tmp_path / "nope.c")]) == 2
    assert capsys.readouterr().err == f"akaros-sim: {tmp_path / 'nope.c'}: no such file\n"


def test_the_c_sources_and_the_runtime_are_package_data():
    """Every file a shipped C scenario or the runtime needs matches a package-data pattern of pyproject.toml,
    so `akaros-sim run c_mmap_stress` works from a plain install (the build reads them beside the scenario)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = {"akaros_sim": ROOT / "akaros_sim", "akaros_sim.scenarios": ROOT / "scenarios"}
    needed = [*(ROOT / "scenarios" / "c").iterdir(), *(p for p in toolchain.RUNTIME_DIR.rglob("*") if p.is_file())]
    assert len(needed) >= 10
    for path in needed:
        owners = [(pkg, path.relative_to(folder).as_posix()) for pkg, folder in patterns.items()
                  if path.is_relative_to(folder)]  # fmt: skip
        assert any(_glob_matches(rel, pat) for pkg, rel in owners for pat in data["package-data"][pkg]), path


def _glob_matches(rel: str, pattern: str) -> bool:
    """setuptools' package-data glob: `*` stays inside one path segment."""
    parts, pats = rel.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pats, strict=True))


SYSTEM_TOOLS = ("gcc", "cc", "clang", "c++", "g++", "ld", "as", "ld.lld", "lld")
NO_COMPILER_SCRIPT = """
import sys
from akaros_sim.asm import assemble
from akaros_sim.tools.cli import main
for source in sys.argv[1:]:
    if main(["cc", source]) != 0:
        sys.exit(f"cc {source} failed")
program = assemble("start: mov edx, end - start\\nend: ret\\n.data\\nv: .quad start", backend="clang")
print(program.symbol("v"), program.segments[1].data.hex())
"""


@pytest.mark.skipif(os.name != "posix", reason="the decoy tools are shell scripts")
def test_no_system_compiler_is_used(tmp_path):
    """With PATH stripped of every directory holding gcc, cc, clang, ld or as, and decoys of them first on PATH
    that log any call, `akaros-sim cc` builds every shipped C guest and the clang assembler backend assembles,
    from an empty cache (so both really compile): no decoy runs."""
    decoys, log = tmp_path / "decoys", tmp_path / "decoy-calls.log"
    decoys.mkdir()
    for tool in SYSTEM_TOOLS:
        (decoys / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit 1\n', encoding="utf-8")
        (decoys / tool).chmod(0o755)
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in SYSTEM_TOOLS)]  # fmt: skip
    cache = tmp_path / "cache"
    env = {**os.environ, "PATH": os.pathsep.join([str(decoys), *kept]), "AKAROS_SIM_CACHE": str(cache),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    sources = sorted((ROOT / "scenarios" / "c").glob("*.c")) + [C_DIR / "hello.c"]
    assert len(sources) == 4
    proc = subprocess.run([sys.executable, "-c", NO_COMPILER_SCRIPT, *map(str, sources)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not log.exists(), log.read_text(encoding="utf-8")
    for source in sources:
        assert load_elf(tmp_path / f"{source.stem}.elf").symbols
    assert len(list((cache / "cc").glob("*.elf"))) == 4 and len(list((cache / "asm").glob("*.elf"))) == 1
    assert proc.stdout.splitlines()[-1] == f"{0x401000} {(0x400000).to_bytes(8, 'little').hex()}"
