"""Scenarios: a TOML file that is a complete, self-checking experiment.

A scenario names the machine, the 2LS, the guest programs, the threads to
start, the injections (kernel events at virtual times) and the expectations
the run must meet.  `load_scenario` reads and validates it into a frozen
`Scenario`; `build` turns that into a ready `Simulation`; `run_scenario` runs
it and checks the expectations.  Every error is a `ScenarioError` whose
message is one line: ``FILE: KEY.PATH: what was expected, what was got``.

The format (docs/scenarios.md is the full reference)::

    description = "one line story"          # required
    [machine]
    vcores = 4                               # default 1 (the process's max vcores)
    seed = 1                                 # default 0
    [machine.costs]                          # optional: any field of akaros_sim.engine.Costs
    insn_ns = 1
    [scheduler]                              # optional; default name = "pthread"
    name = "pthread"                         # "pthread" | "thread0" | "module:attr" | "file.py:attr"
    [scheduler.params]                       # keyword args to the 2LS constructor
    [[programs]]
    name = "main"
    base = 0x400000                          # optional; default 0x400000 + 0x100000 * index
    source = "..."                           # or file = "x.s" or elf = "x.elf" (relative to the scenario)
    [[mappings]]                             # extra VMRs
    name = "heap"                            # start, length page-aligned; prot: "r", "rw", "rx", "rwx", "none"
    start = 0x10000000
    length = 0x10000
    prot = "rw"
    backed = false                           # default true; false: every page faults on first touch
    [[threads]]                              # created in order through sched_ops.thread_create
    name = "w0"
    program = "main"                         # guest: entry is a symbol or an address (default: the
    entry = "worker"                         #   program's entry); args (at most 6) are ints or
    args = [1, "main:counter"]               #   "prog:symbol" strings (the symbol's address)
    # or: python = "file.py:function" | "module:function"; args are passed as they are
    detached = false                         # optional
    [[injections]]                           # kernel events at a virtual time (at_ns), one kind each:
    at_ns = 20000
    preempt = 1                              # preempt vcore 1 (warning_ns, duration_ns optional)
    # or: syscall_latency = { nr = 2, ns = 5000 }   (nr: a number or a name such as "nanosleep")
    [run]
    until_ns = 100_000_000                   # optional budgets (until_ns defaults to 1 s of virtual time)
    max_insns = 10_000_000
    stall_ns = 1_000_000_000                 # optional: the watchdog's limit on a ready uthread left unrun
    [expect]
    end = "all_exited"                       # a RunEnd name in lower case
    exit_status = 0
    console = "exact text"                   # or console_contains = ["...", ...] (each appears)
    report_contains = ["..."]                # the fault report holds each string
    retvals = { w0 = 100 }                   # uthread exit values
    counts = { fault = 2, "op:thread_refl_fault" = 2 }   # number of trace records matching
    [[expect.registers]]                     # a uthread's final saved registers
    thread = "w0"
    rbx = 100
    [[expect.memory]]                        # an int of `size` bytes (1/2/4/8, default 8)
    symbol = "main:counter"                  # or addr = 0x...; optional offset
    value = 4
    [[expect.order]]                         # records matching these appear in this relative order
    kinds = ["op:thread_refl_fault", "signal", "sigreturn"]
    thread = "f"                             # optional: only records involving this uthread
    [[expect.always]]                        # holds on every run (and sometimes: on some explored run)
    name = "no fault"                        # optional; one predicate: trace = MATCHER (count = N | {min, max}),
    trace = "fault"                          #   preempted_in = { ras = "prog:sym" | in = "vcore_context" |
    count = 0                                #   uthread = NAME }, or memory = { symbol = ..., value = ... }

A trace matcher (counts keys, order kinds) is ``KIND``, ``KIND:VALUE`` (the
kind's main detail: op for op, name for syscall, trap for fault, ...; see
`akaros_sim.tools.expect.MAIN_DETAIL`) or ``KIND:KEY=VALUE[&KEY=VALUE...]`` (KEY a
detail or the record's ``uth``, ``vc``, ``t``); values compare as JSON text
(``true``, ``null``, ``42``, ``["w0"]``), integers also in hex, traps also by
name (``fault:PF``).

Python code named by a scenario (threads, a 2LS in a file) is imported once
per process and cached in `sys.modules` under a name derived from its path,
so two runs use the same module object: its functions must keep no state
between runs (create Mutexes, queues and counters inside the run, for example
in a main thread that passes them to the threads it creates).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import tomllib
import types
from pathlib import Path

import attrs

from akaros_sim.asm import AsmError, assemble
from akaros_sim.elf import ElfError, load_elf
from akaros_sim.engine import Costs
from akaros_sim.kernel import SYSCALL_NAMES
from akaros_sim.memory import PAGE_SIZE, USER_MIN, USER_TOP, MemError, Prot
from akaros_sim.points import PointError, normalize
from akaros_sim.process import DEFAULT_STALL_NS, MAX_STALL_NS
from akaros_sim.program import Program
from akaros_sim.simulation import MAX_VCORES, RunResult, Simulation, SimulationError
from akaros_sim.toolchain import ToolchainError, check_cflags
from akaros_sim.toolchain import build as build_c
from akaros_sim.toolchain import inputs as c_inputs
from akaros_sim.tools.expect import Check, Expectations, check_expectations, load_expect
from akaros_sim.tools.tomlcheck import ScenarioError, TableReader, describe, freeze, one_line
from akaros_sim.trace import Trace
from akaros_sim.uthread import UthreadEntry
from akaros_sim.workloads import WorkloadError, expand_workloads

__all__ = [
    "BUILTIN_SCHEDULERS",
    "Check",
    "Scenario",
    "ScenarioError",
    "ScenarioRun",
    "build",
    "load_scenario",
    "load_scenario_text",
    "parse_overrides",
    "run_scenario",
]

# The 2LSes known by name, as import references: akaros_sim never imports schedops statically.
BUILTIN_SCHEDULERS = types.MappingProxyType(
    {
        "pthread": "schedops.pthread:PthreadSched",
        "thread0": "schedops.thread0:Thread0Sched",
        "roundrobin": "schedops.roundrobin:RoundRobinSched",
        "worksteal": "schedops.worksteal:WorkStealSched",
        "priority": "schedops.priority:PrioritySched",
        "stride": "schedops.stride:StrideSched",
        "cfs": "schedops.cfs:CfsSched",
        "edf": "schedops.edf:EdfSched",
        "lottery": "schedops.lottery:LotterySched",
    }
)
# Guest libraries shipped with the package, by name: (module, function building the Program).
LIBRARIES = types.MappingProxyType({"uaccess": "akaros_sim.uaccess:uaccess_program"})
DEFAULT_SCHEDULER = "pthread"
PROGRAM_BASE = 0x400000  # where programs[0] is assembled unless it says otherwise
PROGRAM_STRIDE = 0x100000  # ... and programs[i] at PROGRAM_BASE + i * PROGRAM_STRIDE
MAX_GUEST_ARGS = 6  # rdi rsi rdx rcx r8 r9
U64 = (1 << 64) - 1

_PROT_LETTERS = {"r": Prot.READ, "w": Prot.WRITE, "x": Prot.EXEC}
_NAME = re.compile(r"[A-Za-z_][\w.-]*$")


# -- records ---------------------------------------------------------------------------------------------


@attrs.frozen
class ProgramSpec:
    """A guest program, assembled or loaded when the scenario is loaded."""

    name: str
    program: Program


@attrs.frozen
class MappingSpec:
    """An extra VMR."""

    name: str
    start: int
    length: int
    prot: Prot
    backed: bool


@attrs.frozen
class ThreadSpec:
    """A uthread to start: guest code at `entry`, or the Python function `func`."""

    name: str
    entry: UthreadEntry


@attrs.frozen
class Injection:
    """A kernel event at `at_ns`, or when uthread `thread` has retired `at_insns` guest instructions.

    `kind` is one of _INJECTION_KINDS; `params` its arguments.
    """

    at_ns: int | None
    kind: str
    params: tuple[tuple[str, object], ...]
    at_insns: int | None = None
    thread: str | None = None

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


@attrs.frozen
class HandlerSpec:
    """A fault handler registered on the process's thread_refl_fault chain, in file order."""

    ref: str
    handler: object = attrs.field(repr=False)
    insert_tail: bool = False


@attrs.frozen
class RasSpec:
    """A restartable atomic sequence declared in the scenario (start, end, restart addresses)."""

    start: int
    end: int
    restart: int


@attrs.frozen
class Scenario:
    """A validated scenario.  Lifecycle: load_scenario -> build / run_scenario (any number of times)."""

    path: Path
    description: str
    vcores: int = 1
    seed: int = 0
    costs: Costs = Costs()
    scheduler: str = DEFAULT_SCHEDULER
    sched_factory: object = attrs.field(default=None, repr=False)
    sched_params: tuple[tuple[str, object], ...] = ()
    programs: tuple[ProgramSpec, ...] = ()
    mappings: tuple[MappingSpec, ...] = ()
    threads: tuple[ThreadSpec, ...] = ()
    injections: tuple[Injection, ...] = ()
    handlers: tuple[HandlerSpec, ...] = ()
    ras: tuple[RasSpec, ...] = ()
    until_ns: int | None = None
    max_insns: int | None = None
    stall_ns: int = DEFAULT_STALL_NS  # the contract checker's watchdog limit
    expect: Expectations = Expectations()
    text: str = attrs.field(default="", repr=False)  # the file as read (a trace header carries it)
    overrides: tuple[tuple[str, object], ...] = ()  # --sched / --set, applied over the text (a header carries them)
    files: tuple = attrs.field(default=(), repr=False)  # (relative path, bytes) of every file it loads


@attrs.frozen
class ScenarioRun:
    """A finished run: the simulation, its RunResult and the checked expectations."""

    scenario: Scenario
    sim: Simulation
    result: RunResult
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


# -- loading ---------------------------------------------------------------------------------------------

DEFAULT_UNTIL_NS = 1_000_000_000  # a scenario's virtual-time budget unless [run] until_ns says otherwise: 1 s

_TOP_KEYS = (
    "description", "machine", "scheduler", "programs", "mappings", "threads", "injections", "handlers", "ras",
    "run", "expect",
)  # fmt: skip


def load_scenario(path, overrides=()) -> Scenario:
    """Read and validate a scenario file.

    Args:
        path: the TOML file; relative paths inside it are relative to its directory.
        overrides: (dotted key, value) pairs set over the file's tables (parse_overrides).

    Returns:
        A frozen Scenario (programs assembled, Python references imported).

    Raises:
        ScenarioError: the file cannot be read or parsed, or anything in it is
            invalid; the one-line message names the file, the key, what was
            expected and what was got.
    """
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{file}: not UTF-8 text: {exc.reason}") from None
    return load_scenario_text(text, path, overrides)


# Short forms of an override's first key part.
_OVERRIDE_ALIASES = {"vcores": "machine.vcores", "seed": "machine.seed", "costs": "machine.costs",
                     "sched": "scheduler.name", "until_ns": "run.until_ns"}  # fmt: skip


def parse_overrides(items, sched: str | None = None) -> tuple[tuple[str, object], ...]:
    """`--sched NAME` and `--set KEY=VALUE` as override pairs, the 2LS first.

    KEY is a dotted path into the scenario's tables (`machine.vcores`,
    `machine.costs.insn_ns`, `scheduler.params.tick_ns`, `run.until_ns`; the
    short forms `vcores`, `seed`, `costs.X`, `sched`, `until_ns` work too).
    VALUE is read as a TOML value; a bare word is a string.
    """
    out: list[tuple[str, object]] = [("scheduler.name", sched)] if sched is not None else []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(_NAME.match(part) for part in key.split(".")):
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY such as machine.vcores=4")
        head, _, rest = key.partition(".")
        key = _OVERRIDE_ALIASES.get(head, head) + (f".{rest}" if rest else "")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.append((key, value))
    return tuple(out)


def _apply_overrides(data: dict, overrides, file: str) -> None:
    """Set each (dotted key, value) in the parsed scenario; a new 2LS name drops the old 2LS's params."""
    for key, value in overrides:
        *tables, last = key.split(".")
        node = data
        for i, part in enumerate(tables):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ScenarioError(f"{file}: override {key}: {'.'.join(tables[: i + 1])} is not a table")
        if key == "scheduler.name" and node.get("name", DEFAULT_SCHEDULER) != value:
            node.pop("params", None)  # another 2LS's params are not this one's
        node[last] = value


def load_scenario_text(text: str, path, overrides=()) -> Scenario:
    """Validate scenario text as if it were the file `path` (relative references resolve there),
    with `overrides` set over its tables.

    This is how a trace replays: its header carries the scenario's text, path and overrides.
    """
    path = Path(path)
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{file}: invalid TOML: {one_line(exc)}") from None
    overrides = tuple((k, freeze(v)) for k, v in overrides)
    _apply_overrides(data, [(k, _thaw(v)) for k, v in overrides], file)
    try:  # [[workloads]] stand for drivers in [[threads]], a program and mappings (akaros_sim/workloads.py)
        expand_workloads(data)
    except WorkloadError as exc:
        raise ScenarioError(f"{file}: {exc}") from None
    top = TableReader(file, "", data, _TOP_KEYS)
    description = top.get("description", (str,))
    if not description.strip() or "\n" in description.strip():
        raise top.error("description", f"expected a one-line story, got {describe(description)}")

    machine = top.sub("machine", ("vcores", "seed", "costs"), {})
    vcores = machine.int("vcores", 1, minimum=1)
    if vcores > MAX_VCORES:
        raise machine.error("vcores", f"expected at most {MAX_VCORES} vcores, got {vcores}")
    seed = machine.int("seed", 0, minimum=None)
    costs = _load_costs(machine.sub("costs", tuple(f.name for f in attrs.fields(Costs)), {}))

    sched = top.sub("scheduler", ("name", "params"), {})
    sched_name = sched.get("name", (str,), DEFAULT_SCHEDULER)
    ref = BUILTIN_SCHEDULERS.get(sched_name, sched_name)
    if ":" not in ref:
        raise sched.error(
            "name", f"unknown 2LS {sched_name!r} (expected one of {', '.join(BUILTIN_SCHEDULERS)}, "
            "'module:attr' or 'file.py:attr')"
        )  # fmt: skip
    factory = _resolve_ref(sched, "name", ref, path.parent)
    if not callable(factory):
        raise sched.error("name", f"expected a 2LS class or factory, got {describe(factory)}")
    params = sched.get("params", (dict,), {})
    sched_params = tuple((k, freeze(v)) for k, v in params.items())

    programs = _load_programs(top, path.parent)
    mappings = _load_mappings(top)
    _check_overlaps(file, programs, mappings)
    prog_by_name = {p.name: p.program for p in programs}
    threads = _load_threads(top, prog_by_name, path.parent)
    injections = _load_injections(top, vcores, {t.name for t in threads})
    handlers = _load_handlers(top, path.parent)
    ras = _load_ras(top, prog_by_name)

    run = top.sub("run", ("until_ns", "max_insns", "stall_ns"), {})
    until_ns = run.int("until_ns", DEFAULT_UNTIL_NS, minimum=1)  # a run always ends
    max_insns = run.int("max_insns", None, minimum=1)
    stall_ns = run.int("stall_ns", DEFAULT_STALL_NS, minimum=1)
    if stall_ns > MAX_STALL_NS:
        raise run.error("stall_ns", f"expected an integer <= {MAX_STALL_NS}, got {stall_ns}")

    expect = load_expect(
        top, {t.name for t in threads}, lambda reader, key, ref: _symbol_addr(reader, key, ref, prog_by_name)
    )
    return Scenario(
        path=path, description=description.strip(), vcores=vcores, seed=seed, costs=costs, scheduler=sched_name,
        sched_factory=factory, sched_params=sched_params, programs=tuple(programs), mappings=tuple(mappings),
        threads=tuple(threads), injections=tuple(injections), handlers=tuple(handlers), ras=tuple(ras),
        until_ns=until_ns, max_insns=max_insns, stall_ns=stall_ns, expect=expect, text=text, overrides=overrides,
        files=_referenced_files(data, ref, path.parent),
    )  # fmt: skip


def _embed(data: bytes) -> dict:
    """A file's bytes as a JSON value: its text when it is UTF-8, else base64."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _file_of(ref: str) -> str | None:
    """The file part of a Python reference 'file.py:name' (None for 'module:name')."""
    target, sep, _ = ref.rpartition(":")
    return target if sep and (target.endswith(".py") or "/" in target or os.sep in target) else None


def _referenced_files(data: dict, sched_ref: str, base_dir: Path) -> tuple[tuple[str, bytes], ...]:
    """Every file the (already validated) scenario loads, as (path relative to it, bytes), sorted.

    A trace's header carries them, so it replays anywhere and names no path of
    the machine it was made on.
    """
    names = set()
    for prog in data.get("programs", ()):
        names.update(prog[key] for key in ("file", "elf") if key in prog)
        if "c" in prog:  # the sources and the headers beside them, as the build read them
            names.update(os.path.relpath(f, base_dir) for f in c_inputs([base_dir / s for s in prog["c"]]))
    refs = [sched_ref] + [t.get("python", "") for t in data.get("threads", ())]
    refs += [h.get("python", "") for h in data.get("handlers", ())]
    names.update(f for f in map(_file_of, refs) if f)
    return tuple(sorted((name, (base_dir / name).read_bytes()) for name in names))


def _load_costs(reader: TableReader) -> Costs:
    values = {}
    for key in reader.table:
        values[key] = reader.int(key, minimum=1 if key == "slice_insns" else 0)
    try:
        return Costs(**values)
    except ValueError as exc:
        raise reader.error("", one_line(exc)) from None


def _load_programs(top: TableReader, base_dir: Path) -> list[ProgramSpec]:
    programs: list[ProgramSpec] = []
    keys = ("name", "base", "source", "file", "elf", "library", "c", "cflags")
    for index, r in enumerate(top.tables("programs", keys)):
        name = _name(r, "name")
        if name in {p.name for p in programs}:
            raise r.error("name", f"duplicate program name {name!r}")
        given = [k for k in ("source", "file", "elf", "library", "c") if r.has(k)]
        if len(given) != 1:
            raise r.error("", f"expected exactly one of source, file, elf, library, c; got {', '.join(given) or 'none'}")
        if r.has("cflags") and given[0] != "c":
            raise r.error("cflags", "allowed only with c")
        if given[0] == "c":
            program = _load_c(r, name, base_dir)
        elif given[0] == "library":
            lib = r.get("library", (str,))
            if lib not in LIBRARIES:
                raise r.error("library", f"unknown library {lib!r} (expected one of {', '.join(LIBRARIES)})")
            module, func = LIBRARIES[lib].split(":")
            build_lib = getattr(importlib.import_module(module), func)
            try:
                program = build_lib(r.int("base"), name) if r.has("base") else build_lib(name=name)
            except ValueError as exc:
                raise r.error("base", one_line(exc)) from None
        elif given[0] == "elf":
            if r.has("base"):
                raise r.error("base", "not allowed with elf (an ELF has fixed addresses)")
            elf_path = base_dir / r.get("elf", (str,))
            try:
                program = attrs.evolve(load_elf(elf_path), name=name)
            except ElfError as exc:
                raise r.error("elf", one_line(exc)) from None
        else:
            base = r.int("base", PROGRAM_BASE + PROGRAM_STRIDE * index)
            if given[0] == "file":
                src_path = base_dir / r.get("file", (str,))
                try:
                    source = src_path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    reason = getattr(exc, "strerror", None) or one_line(exc)
                    raise r.error("file", f"cannot read {str(src_path)!r}: {reason}") from None
            else:
                source = r.get("source", (str,))
            try:
                program = assemble(source, base, name=name)
            except (AsmError, ValueError) as exc:
                raise r.error(given[0], one_line(exc)) from None
        programs.append(ProgramSpec(name, program))
    return programs


def _load_c(r: TableReader, name: str, base_dir: Path) -> Program:
    """A `c = [...]` program: its sources compiled (or found in the cache) and loaded as an ELF."""
    if r.has("base"):
        raise r.error("base", "not allowed with c (the linker fixes the addresses)")
    sources = r.strings("c")
    if not sources:
        raise r.error("c", "expected at least one source file")
    cflags = r.strings("cflags")
    for i, flag in enumerate(cflags):
        try:
            check_cflags([flag])
        except ToolchainError as exc:
            raise r.error(f"cflags[{i}]", one_line(exc)) from None
    for i, path in enumerate(sources):
        if not (base_dir / path).is_file():
            raise r.error(f"c[{i}]", f"no such file {str(base_dir / path)!r}")
    try:
        return attrs.evolve(load_elf(build_c([base_dir / s for s in sources], cflags)), name=name)
    except ToolchainError as exc:
        raise r.error("c", one_line(exc)) from None
    except ElfError as exc:
        raise r.error("c", one_line(exc)) from None


def _load_mappings(top: TableReader) -> list[MappingSpec]:
    mappings = []
    for r in top.tables("mappings", ("name", "start", "length", "prot", "backed")):
        name = _name(r, "name")
        start, length = r.int("start"), r.int("length", minimum=1)
        for key, value in (("start", start), ("length", length)):
            if value % PAGE_SIZE:
                raise r.error(key, f"expected a multiple of the page size ({PAGE_SIZE:#x}), got {value:#x}")
        prot = _parse_prot(r, r.get("prot", (str,), "rw"))
        mappings.append(MappingSpec(name, start, length, prot, r.get("backed", (bool,), True)))
    return mappings


def _parse_prot(r: TableReader, text: str) -> Prot:
    if text in ("none", "-", ""):
        return Prot.NONE
    prot = Prot.NONE
    for ch in text:
        bit = _PROT_LETTERS.get(ch)
        if bit is None or prot & bit:
            raise r.error("prot", f"expected letters from 'rwx' (each at most once) or 'none', got {text!r}")
        prot |= bit
    return prot


def _check_overlaps(file: str, programs: list[ProgramSpec], mappings: list[MappingSpec]) -> None:
    ranges = []
    for i, spec in enumerate(programs):
        for seg in spec.program.segments:
            end = (seg.end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            ranges.append((seg.addr, end, f"programs[{i}] ({spec.name!r} {seg.name or 'segment'})"))
    for i, m in enumerate(mappings):
        ranges.append((m.start, m.start + m.length, f"mappings[{i}] ({m.name!r})"))
    ranges.sort()
    for (lo, hi, what), (lo2, hi2, what2) in zip(ranges, ranges[1:], strict=False):
        if lo2 < hi:
            raise ScenarioError(
                f"{file}: {what2}: [{lo2:#x}, {hi2:#x}) overlaps {what} [{lo:#x}, {hi:#x}); expected disjoint ranges"
            )


def _load_threads(top: TableReader, programs: dict[str, Program], base_dir: Path) -> list[ThreadSpec]:
    threads: list[ThreadSpec] = []
    for r in top.tables("threads", ("name", "program", "entry", "python", "args", "detached")):
        name = _name(r, "name")
        if name in {t.name for t in threads}:
            raise r.error("name", f"duplicate thread name {name!r}")
        detached = r.get("detached", (bool,), False)
        args = r.get("args", (list,), [])
        if r.has("python"):
            for key in ("program", "entry"):
                if r.has(key):
                    raise r.error(key, "not allowed with python (a thread is guest code or a Python function)")
            func = _resolve_ref(r, "python", r.get("python", (str,)), base_dir)
            if not callable(func):
                raise r.error("python", f"expected a function, got {describe(func)}")
            entry = UthreadEntry.python(name, func, *freeze(args), detached=detached)
        else:
            entry = _guest_entry(r, name, programs, args, detached)
        threads.append(ThreadSpec(name, entry))
    if not threads:
        raise top.error("threads", "expected at least one [[threads]] table, got none")
    return threads


def _guest_entry(r: TableReader, name: str, programs: dict[str, Program], args: list, detached: bool) -> UthreadEntry:
    if not r.has("program"):
        raise r.error("program", "missing (a guest thread names its program; or give python = 'file.py:function')")
    prog_name = r.get("program", (str,))
    program = programs.get(prog_name)
    if program is None:
        raise r.error("program", f"unknown program {prog_name!r} (programs: {', '.join(programs) or 'none'})")
    entry = r.get("entry", (str, int), None)
    if entry is None:
        if program.entry is None:
            raise r.error("entry", f"missing, and program {prog_name!r} has no entry point")
        addr = program.entry
    elif isinstance(entry, str):
        if entry not in program.symbols:
            raise r.error("entry", f"unknown symbol {entry!r} in program {prog_name!r}")
        addr = program.symbols[entry]
    else:
        if not 0 <= entry <= U64:
            raise r.error("entry", f"expected an address in [0, 2**64), got {entry}")
        addr = entry
    if len(args) > MAX_GUEST_ARGS:
        raise r.error("args", f"expected at most {MAX_GUEST_ARGS} register arguments, got {len(args)}")
    values = []
    for i, arg in enumerate(args):
        if isinstance(arg, str):
            values.append(_symbol_addr(r, f"args[{i}]", arg, programs))
        elif isinstance(arg, int) and not isinstance(arg, bool):
            if not -(1 << 63) <= arg <= U64:  # a register holds 64 bits: a signed or an unsigned value
                raise r.error(f"args[{i}]", f"expected a 64-bit value (-2**63 .. 2**64 - 1), got {arg}")
            values.append(arg & U64)
        else:
            raise r.error(f"args[{i}]", f"expected an integer or a 'program:symbol' string, got {describe(arg)}")
    return UthreadEntry.guest(name, addr, *values, detached=detached)


def _symbol_addr(r: TableReader, key: str, ref: str, programs: dict[str, Program]) -> int:
    """The address named by 'program:symbol' (optionally '+offset')."""
    text, _, offset = ref.partition("+")
    prog_name, sep, symbol = text.strip().partition(":")
    if not sep or not symbol:
        raise r.error(key, f"expected 'program:symbol', got {ref!r}")
    program = programs.get(prog_name)
    if program is None:
        raise r.error(key, f"unknown program {prog_name!r} (programs: {', '.join(programs) or 'none'})")
    if symbol not in program.symbols:
        raise r.error(key, f"unknown symbol {symbol!r} in program {prog_name!r}")
    try:
        extra = int(offset.strip(), 0) if offset else 0
    except ValueError:
        raise r.error(key, f"expected 'program:symbol+OFFSET' with an integer offset, got {ref!r}") from None
    return program.symbols[symbol] + extra


def _name(r: TableReader, key: str) -> str:
    value = r.get(key, (str,))
    if not _NAME.match(value):
        raise r.error(key, f"expected a name (letters, digits, _ . -), got {value!r}")
    return value


# -- Python references -------------------------------------------------------------------------------------


def _resolve_ref(r: TableReader, key: str, ref: str, base_dir: Path):
    """The object named by 'module:attr' or 'path/file.py:attr' (relative to the scenario)."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise r.error(key, f"expected 'module:name' or 'file.py:name', got {ref!r}")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(r, key, (base_dir / target).resolve())
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # any import failure is the scenario's error
            raise r.error(key, f"cannot import module {target!r}: {type(exc).__name__}: {one_line(exc)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise r.error(key, f"{target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _import_file(r: TableReader, key: str, path: Path):
    """Import a Python file once per process (cached in sys.modules under a name derived from its path)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"akaros_scenario_{stem}_{digest}"
    module = sys.modules.get(mod_name)
    if module is not None:
        return module
    if not path.is_file():
        raise r.error(key, f"no such Python file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[mod_name]
        if not isinstance(exc, Exception):
            raise
        raise r.error(key, f"cannot import {str(path)!r}: {type(exc).__name__}: {one_line(exc)}") from None
    return module


# -- injections ------------------------------------------------------------------------------------------


_INJECTION_KINDS = ("preempt", "syscall_latency", "tick_storm", "unmap", "protect", "map", "signal")


def _load_injections(top: TableReader, vcores: int, threads: set[str]) -> list[Injection]:
    out = []
    keys = ("at_ns", "at_insns", "thread", "when", *_INJECTION_KINDS, "warning_ns", "duration_ns")
    for r in top.tables("injections", keys):
        when = None
        if r.has("when"):  # a point named by meaning (akaros_sim/points.py); only for preempt
            if r.has("at_ns") or r.has("at_insns") or not r.has("preempt"):
                raise r.error("when", "expected preempt with when, and neither at_ns nor at_insns")
            try:
                when = normalize(_thaw(r.get("when", (dict,))))
            except PointError as exc:
                raise r.error("when", one_line(exc)) from None
        elif r.has("at_ns") == r.has("at_insns"):
            raise r.error("", "expected exactly one of at_ns, at_insns (with thread), when")
        at_ns = r.int("at_ns") if r.has("at_ns") else None
        at_insns = r.int("at_insns", minimum=1) if r.has("at_insns") else None
        thread = None
        if at_insns is not None:
            thread = r.get("thread", (str,))
            if thread not in threads:
                raise r.error("thread", f"unknown thread {thread!r} (threads: {', '.join(sorted(threads)) or 'none'})")
        elif r.has("thread"):
            raise r.error("thread", "only allowed with at_insns")
        given = [k for k in _INJECTION_KINDS if r.has(k)]
        if len(given) != 1:
            raise r.error("", f"expected exactly one of {', '.join(_INJECTION_KINDS)}; got {', '.join(given) or 'none'}")
        kind = given[0]
        if kind != "preempt":
            for key in ("warning_ns", "duration_ns"):
                if r.has(key):
                    raise r.error(key, "only allowed with preempt")
        if kind == "tick_storm":
            if at_ns is None:
                raise r.error("at_insns", "a tick_storm starts at a time: use at_ns")
            sub = r.sub("tick_storm", ("min_insns", "max_insns", "until_ns", "vcores"))
            lo, hi = sub.int("min_insns", minimum=1), sub.int("max_insns", minimum=1)
            if hi < lo:
                raise sub.error("max_insns", f"expected >= min_insns ({lo}), got {hi}")
            params = {"min_insns": lo, "max_insns": hi, "until_ns": sub.int("until_ns", 1 << 62, minimum=at_ns)}
            targets = sub.get("vcores", (list,), list(range(vcores)))
            for v in targets:
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < vcores:
                    raise sub.error("vcores", f"expected vcore ids < {vcores}, got {describe(v)}")
            params["vcores"] = tuple(targets)
        elif kind == "preempt":
            vcore = None if when is not None and r.get("preempt", (int, str)) == "here" else r.int("preempt")
            if vcore is not None and vcore >= vcores:
                raise r.error("preempt", f"expected a vcore id < {vcores} (machine.vcores), got {vcore}")
            params = {"vcore": vcore, "warning_ns": r.int("warning_ns", 0)}
            if when is not None:
                params["when"] = when
            if r.has("duration_ns"):
                params["duration_ns"] = r.int("duration_ns")
        elif kind == "syscall_latency":
            sub = r.sub("syscall_latency", ("nr", "ns"))
            nr = sub.get("nr", (int, str))
            if isinstance(nr, str):
                numbers = {v: k for k, v in SYSCALL_NAMES.items()}
                if nr not in numbers:
                    raise sub.error("nr", f"unknown syscall {nr!r} (known: {', '.join(numbers)})")
                nr = numbers[nr]
            params = {"nr": nr, "ns": sub.int("ns")}
        elif kind in ("unmap", "protect", "map"):
            allowed = {"unmap": ("start", "length"), "protect": ("start", "length", "prot"),
                       "map": ("start", "length", "prot", "backed", "name")}[kind]  # fmt: skip
            sub = r.sub(kind, allowed)
            start, length = sub.int("start"), sub.int("length", minimum=1)
            for key, value in (("start", start), ("length", length)):
                if value % PAGE_SIZE:
                    raise sub.error(key, f"expected a multiple of the page size ({PAGE_SIZE:#x}), got {value:#x}")
            if start < USER_MIN or start + length > USER_TOP:
                raise sub.error("start", f"expected a range inside user space [{USER_MIN:#x}, {USER_TOP:#x}), "
                                         f"got [{start:#x}, {start + length:#x})")  # fmt: skip
            params = {"start": start, "length": length}
            if kind != "unmap":
                params["prot"] = int(_parse_prot(sub, sub.get("prot", (str,), "rw")))
            if kind == "map":
                params["backed"] = sub.get("backed", (bool,), True)
                params["name"] = sub.get("name", (str,), "injected")
        else:  # signal
            sub = r.sub("signal", ("thread", "signo"))
            target = sub.get("thread", (str,))
            if target not in threads:
                raise sub.error("thread", f"unknown thread {target!r} (threads: {', '.join(sorted(threads)) or 'none'})")
            params = {"thread": target, "signo": sub.int("signo", minimum=1)}
            if params["signo"] >= 64:
                raise sub.error("signo", f"expected a signal number 1..63, got {params['signo']}")
        out.append(Injection(at_ns, kind, tuple(params.items()), at_insns, thread))
    return out


def _load_handlers(top: TableReader, base_dir: Path) -> list[HandlerSpec]:
    out = []
    for r in top.tables("handlers", ("python", "insert_tail")):
        ref = r.get("python", (str,))
        if ":" not in ref:
            raise r.error("python", f"expected 'file.py:function' or 'module:function', got {ref!r}")
        handler = _resolve_ref(r, "python", ref, base_dir)
        if not callable(handler):
            raise r.error("python", f"expected a callable handler(uth, ctx) -> FaultStatus, got {describe(handler)}")
        out.append(HandlerSpec(ref, handler, r.get("insert_tail", (bool,), False)))
    return out


def _load_ras(top: TableReader, programs: dict[str, Program]) -> list[RasSpec]:
    from akaros_sim.ras import RasError, RasTable

    out = []
    entries = []
    for r in top.tables("ras", ("start", "end", "restart")):
        addrs = {}
        for key in ("start", "end", "restart"):
            if key == "restart" and not r.has(key):
                addrs[key] = addrs["start"]
                continue
            value = r.get(key, (int, str))
            addrs[key] = _symbol_addr(r, key, value, programs) if isinstance(value, str) else value
        if not addrs["start"] < addrs["end"]:
            raise r.error("end", f"expected an address after start ({addrs['start']:#x}), got {addrs['end']:#x}")
        out.append(RasSpec(addrs["start"], addrs["end"], addrs["restart"]))
        from akaros_sim.program import RasEntry

        entries.append(RasEntry(addrs["start"], addrs["end"], addrs["restart"]))
        try:
            RasTable(entries + [e for p in programs.values() for e in p.ras])
        except RasError as exc:
            raise r.error("", one_line(exc)) from None
    return out


def _apply_injection(sim: Simulation, inj: Injection) -> None:
    p = inj.param
    if inj.kind == "tick_storm":
        sim.tick_storm(inj.at_ns, p("until_ns"), p("min_insns"), p("max_insns"), list(p("vcores")))
        return
    if inj.kind == "preempt":
        when = p("when") or ({"at_ns": inj.at_ns} if inj.at_insns is None else
                             {"uthread": inj.thread, "insns": inj.at_insns})  # fmt: skip
        sim.preempt_at(dict(when), p("vcore"), p("warning_ns"), p("duration_ns"))
        return
    if inj.kind == "syscall_latency":
        name = SYSCALL_NAMES.get(p("nr"), str(p("nr")))
        what, fn, args = f"syscall_latency {name} {p('ns')} ns", sim.set_syscall_latency, (p("nr"), p("ns"))
    elif inj.kind == "unmap":
        what, fn, args = f"unmap [{p('start'):#x}, +{p('length'):#x})", _inject_unmap, (sim, p("start"), p("length"))
    elif inj.kind == "protect":
        what = f"protect [{p('start'):#x}, +{p('length'):#x}) {Prot(p('prot')).name or 'NONE'}"
        fn, args = _inject_protect, (sim, p("start"), p("length"), Prot(p("prot")))
    elif inj.kind == "map":
        what = f"map [{p('start'):#x}, +{p('length'):#x})"
        fn, args = _inject_map, (sim, p("start"), p("length"), Prot(p("prot")), p("name"), p("backed"))
    elif inj.kind == "signal":
        what, fn, args = f"signal {p('signo')} to {p('thread')}", sim.signal_thread, (p("thread"), p("signo"))
    else:  # pragma: no cover - _load_injections admits only the kinds above
        raise ScenarioError(f"{sim.trace.header.get('scenario')}: unknown injection kind {inj.kind!r}")
    if inj.at_insns is not None:
        sim.at_insns(inj.thread, inj.at_insns, what, fn, *args)
    else:
        sim.at(inj.at_ns, what, fn, *args)


def _inject_unmap(sim: Simulation, start: int, length: int) -> None:
    sim.mem.unmap(start, length)


def _inject_protect(sim: Simulation, start: int, length: int, prot: Prot) -> None:
    try:
        sim.mem.protect(start, length, prot)
    except MemError as exc:
        sim.trace_event(None, "inject_failed", why=one_line(exc))


def _inject_map(sim: Simulation, start: int, length: int, prot: Prot, name: str, backed: bool) -> None:
    try:
        sim.mem.map(start, length, prot, name, backed=backed)
    except MemError as exc:
        sim.trace_event(None, "inject_failed", why=one_line(exc))


# -- building and running ---------------------------------------------------------------------------------


def build(scenario: Scenario, trace: bool = True) -> Simulation:
    """A Simulation ready to run: programs loaded, VMRs mapped, 2LS installed, threads and injections queued
    (with `trace=False`, one that keeps no records: results and metrics only).

    Raises:
        ScenarioError: the 2LS rejects its params, or a program or mapping cannot be placed.
    """
    file = str(scenario.path)
    from akaros_sim import __version__

    header = {
        "version": __version__, "seed": scenario.seed, "vcores": scenario.vcores, "scenario": scenario.path.name,
        "scenario_text": scenario.text, "sched": scenario.scheduler,
    }  # fmt: skip
    if scenario.overrides:
        header["overrides"] = [[k, _thaw(v)] for k, v in scenario.overrides]
    if scenario.files:  # what the scenario loads rides along, so the trace replays anywhere
        header["scenario_files"] = {name: _embed(data) for name, data in scenario.files}
    sim = Simulation(scenario.vcores, seed=scenario.seed, costs=scenario.costs,
                     trace=Trace(header) if trace else False, stall_ns=scenario.stall_ns)
    for i, spec in enumerate(scenario.programs):
        try:
            sim.load(spec.program)
        except MemError as exc:
            raise ScenarioError(f"{file}: programs[{i}]: cannot load {spec.name!r}: {one_line(exc)}") from None
    for i, m in enumerate(scenario.mappings):
        try:
            sim.mem.map(m.start, m.length, m.prot, m.name, backed=m.backed)
        except MemError as exc:
            raise ScenarioError(f"{file}: mappings[{i}]: cannot map {m.name!r}: {one_line(exc)}") from None
    params = {k: _thaw(v) for k, v in scenario.sched_params}
    try:
        sched = scenario.sched_factory(**params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{file}: scheduler.params: {scenario.scheduler!r} rejects them: {one_line(exc)}") from None
    try:
        sim.set_sched(sched).validate()
    except (TypeError, ValueError) as exc:  # SchedOpsError is a ValueError
        raise ScenarioError(f"{file}: scheduler.name: {scenario.scheduler!r} is not a 2LS: {one_line(exc)}") from None
    for spec in scenario.handlers:
        sim.register_fault_handler(spec.handler, spec.insert_tail)
    for spec in scenario.ras:
        sim.add_ras(spec.start, spec.end, spec.restart)
    for spec in scenario.threads:
        sim.spawn(spec.entry)
    for i, inj in enumerate(scenario.injections):
        try:
            _apply_injection(sim, inj)
        except SimulationError as exc:
            raise ScenarioError(f"{file}: injections[{i}]: {one_line(exc)}") from None
    return sim


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, types.MappingProxyType):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def run_scenario(scenario_or_path, trace_path=None, watch=None) -> ScenarioRun:
    """Load (if given a path), build and run a scenario, then check its expectations.

    Args:
        scenario_or_path: a Scenario, or the path of a scenario file.
        trace_path: if given, the JSONL trace is written there, whatever the outcome
            (also when the run raises).
        watch: if given, a callable that gets the built Simulation and returns a context
            manager held for the run (the CLI's progress line).

    Returns:
        A ScenarioRun; `.ok` tells whether every expectation held.

    Raises:
        ScenarioError: the scenario is invalid.
    """
    scenario = scenario_or_path if isinstance(scenario_or_path, Scenario) else load_scenario(scenario_or_path)
    sim = build(scenario)
    try:
        with watch(sim) if watch is not None else contextlib.nullcontext():
            result = sim.run(until_ns=scenario.until_ns, max_insns=scenario.max_insns)
    finally:
        if trace_path is not None:
            sim.trace.write(trace_path)
    return ScenarioRun(scenario, sim, result, tuple(check_expectations(scenario.expect, sim, result)))


