"""Restartable atomic sequences: the table, declaring sequences, and the restart on every involuntary stop.

Guest programs here are tiny and say what they do in comments.  A tick storm
ticks a vcore after every K guest instructions; a sequence of L instructions
can only complete when some K >= L, so the storms here draw K from well above
the longest sequence.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.interpose import FaultStatus
from akaros_sim.kernel import EV_PREEMPT_PENDING, SYS_block
from akaros_sim.memory import PAGE_SIZE, Prot
from akaros_sim.program import RasEntry
from akaros_sim.ras import RasError, RasTable
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.tools.scenario import load_scenario, run_scenario
from schedops.pthread import PthreadSched
from schedops.roundrobin import RoundRobinSched

ROOT = Path(__file__).resolve().parents[1]
STORM = (400, 900)  # tick-storm interval, in instructions
U64 = (1 << 64) - 1


def counter_source(pad: int = 0, ras: str = ".ras seq_start, seq_end") -> str:
    """worker(n, &counter): n plain load / add / store increments; `pad` nops widen the load-to-store window."""
    nops = "".join("    nop\n" for _ in range(pad))
    return f"""
worker:
    mov rcx, rdi
again:
seq_start:
    mov rax, [rsi]              # load
    add rax, 1                  # add
{nops}    mov [rsi], rax              # store: commits
seq_end:
    dec rcx
    jnz again
    ret
abort:                          # an rseq-style abort handler: count the abort, retry
    inc qword ptr [rip + aborts]
    jmp seq_start
{ras}
.data
counter: .quad 0
aborts: .quad 0
"""


def counter_run(*, threads=4, iters=500, pad=0, seed=7, storm=STORM, ras=".ras seq_start, seq_end", sched=None):
    """Guest uthreads on ONE vcore incrementing one counter under a tick storm; returns (sim, program)."""
    program = assemble(counter_source(pad, ras), name="counter")
    sim = Simulation(1, seed=seed)
    sim.load(program)
    sim.set_sched(sched or RoundRobinSched())
    for i in range(threads):
        sim.spawn_guest(f"w{i}", program.symbols["worker"], iters, program.symbols["counter"])
    sim.tick_storm(0, 1 << 40, *storm)
    result = sim.run(until_ns=2_000_000)  # runs need well under 1 ms of virtual time
    assert result.end is RunEnd.ALL_EXITED, result
    return sim, program


def restarts(sim) -> list:
    return [rec for rec in sim.trace if rec.kind == "ras_restart"]


def involving(sim, name: str, kinds: set[str]) -> list[tuple]:
    """(kind, vcore, main detail) of the records of these kinds that are about uthread `name`."""
    main = {"run": "how", "preempt": "uthread", "preempt_recover": "stolen", "uthread_pause": "why",
            "ras_restart": "why", "uthread_exit": "retval", "fault": "trap", "syscall_done": "name"}  # fmt: skip
    out = []
    for rec in sim.trace:
        if rec.kind in kinds and (rec.uth == name or name in (v for _, v in rec.details)):
            out.append((rec.kind, rec.vc, rec.get(main[rec.kind])))
    return out


# -- the table ---------------------------------------------------------------------------------------


def test_overlapping_sequences_are_rejected_naming_both_ranges():
    """Two sequences that overlap are a RasError naming both [start, end) ranges."""
    with pytest.raises(RasError, match=r"^RAS \[0x1008, 0x1020\) overlaps \[0x1000, 0x1010\)$"):
        RasTable([RasEntry(0x1008, 0x1020, 0x1008), RasEntry(0x1000, 0x1010, 0x1000)])


def test_adjacent_sequences_are_allowed():
    """A sequence may start where the previous one ends (end is exclusive)."""
    table = RasTable([RasEntry(0x1010, 0x1020, 0x1010), RasEntry(0x1000, 0x1010, 0x1000)])
    assert [e.start for e in table.entries] == [0x1000, 0x1010]


def test_a_restart_strictly_inside_its_sequence_is_rejected():
    """Restarting in the middle of the sequence would skip its first instructions: RasError naming both."""
    with pytest.raises(RasError, match=r"RAS \[0x1000, 0x1010\): restart 0x1008 lies inside the sequence"):
        RasTable([RasEntry(0x1000, 0x1010, 0x1008)])
    assert issubclass(RasError, ValueError)


@pytest.mark.parametrize("restart", [0x1000, 0x0FF0, 0x1010, 0x5000], ids=["start", "before", "end", "far"])
def test_a_restart_at_start_or_outside_is_accepted(restart):
    """The restart is the start (Bershad's RAS) or an abort handler anywhere outside (rseq)."""
    assert RasTable([RasEntry(0x1000, 0x1010, restart)]).entries[0].restart == restart


def test_an_empty_or_reversed_sequence_is_rejected():
    """start must lie before end."""
    with pytest.raises(ValueError, match=r"RasEntry: expected start < end, got start=0x1010 end=0x1010"):
        RasEntry(0x1010, 0x1010, 0x1010)


def test_lookup_finds_the_sequence_containing_rip():
    """lookup(rip) is the sequence with start <= rip < end, found by bisection, whatever the input order."""
    b, a = RasEntry(0x2000, 0x2008, 0x2000), RasEntry(0x1000, 0x1010, 0x0F00)
    table = RasTable([b, a])
    assert len(table) == 2 and table.entries == (a, b)
    probes = [0x0, 0xFFF, 0x1000, 0x100F, 0x1010, 0x1FFF, 0x2000, 0x2007, 0x2008, U64]
    assert [table.lookup(rip) for rip in probes] == [None, None, a, a, None, None, b, b, None, None]
    assert RasTable().lookup(0x1000) is None


def test_with_entries_returns_a_new_validated_table():
    """with_entries leaves the table alone and validates the union."""
    table = RasTable([RasEntry(0x1000, 0x1010, 0x1000)])
    bigger = table.with_entries([RasEntry(0x3000, 0x3010, 0x3000)])
    assert (len(table), len(bigger)) == (1, 2)
    with pytest.raises(RasError, match=r"overlaps \[0x1000, 0x1010\)"):
        table.with_entries([RasEntry(0x100C, 0x1014, 0x100C)])


# -- declaring sequences -------------------------------------------------------------------------------


def test_ras_directive_declares_sequences_that_load_installs():
    """`.ras` entries reach the Program; loading it installs one RAS handler on thread_paused and the resume path."""
    program = assemble(counter_source(ras=".ras seq_start, seq_end\n.ras abort, abort_end, worker\nabort_end:"),
                       name="c")  # fmt: skip
    sym = program.symbols
    assert program.ras == (
        RasEntry(sym["seq_start"], sym["seq_end"], sym["seq_start"]),
        RasEntry(sym["abort"], sym["abort_end"], sym["worker"]),
    )
    sim = Simulation(1)
    assert sim.ras is None
    sim.load(program)
    assert sim.ras.table.entries == program.ras
    assert sim.chain("thread_paused").handlers == [sim.ras.on_paused]
    assert sim.resume_chain.handlers == [sim.ras.on_resume]


def test_a_program_whose_restart_lies_inside_is_not_loaded():
    """A `.ras` restart strictly inside its sequence is a RasError at load, before anything is mapped."""
    program = assemble("a: nop\nb: nop\nc: ret\n.ras a, c, b", name="bad")
    sim = Simulation(1)
    with pytest.raises(RasError, match=r"restart 0x400001 lies inside the sequence"):
        sim.load(program)
    assert (sim.programs, sim.ras, sim.mem.lookup(0x400000)) == ({}, None, None)


def test_add_ras_defaults_the_restart_to_start_and_validates_against_loaded_programs():
    """Simulation.add_ras(start, end[, restart]) joins the process's one table; overlaps name both ranges."""
    program = assemble(counter_source(), name="c")
    sym = program.symbols
    sim = Simulation(1)
    sim.load(program)
    sim.add_ras(0x5000, 0x5010)
    sim.add_ras(0x6000, 0x6010, restart=0x7000)
    assert sim.ras.table.entries[:2] == (RasEntry(0x5000, 0x5010, 0x5000), RasEntry(0x6000, 0x6010, 0x7000))
    with pytest.raises(RasError, match=rf"RAS \[{sym['seq_start'] + 3:#x}, 0x500000\) overlaps "
                                       rf"\[{sym['seq_start']:#x}, {sym['seq_end']:#x}\)"):  # fmt: skip
        sim.add_ras(sym["seq_start"] + 3, 0x500000)
    with pytest.raises(RasError, match="lies inside the sequence"):
        sim.add_ras(0x8000, 0x8010, restart=0x8004)
    assert len(sim.ras.table) == 3
    assert sim.chain("thread_paused").handlers == [sim.ras.on_paused]  # still one handler


# -- the restart, per kind of involuntary stop --------------------------------------------------------


def test_a_tick_restarts_an_interrupted_sequence_on_one_vcore():
    """Round-robin on one vcore: a tick inside load/add/store restarts it before the uthread runs again; exact count."""
    sim, program = counter_run()
    sym = program.symbols
    assert sim.mem.read_u64(sym["counter"]) == 4 * 500
    found = restarts(sim)
    assert len(found) >= 5
    for rec in found:
        assert (rec.get("seq"), rec.get("new_rip"), rec.get("why")) == (sym["seq_start"], sym["seq_start"], "notify")
        assert sym["seq_start"] < rec.get("old_rip") < sym["seq_end"]
    # Each restart happens as the uthread is popped, before it runs: run, ras_restart, the handler's rip change.
    records = list(sim.trace)
    for i, rec in enumerate(records):
        if rec.kind == "ras_restart":
            before, after = records[i - 1], records[i + 1]
            assert (before.kind, before.uth, before.get("how")) == ("run", rec.uth, "run_uthread")
            assert (after.kind, after.get("handler"), after.get("changed")) == (
                "handler", "RasHandler.on_resume", (("rip", rec.get("old_rip"), rec.get("new_rip")),))


def test_without_the_sequence_the_same_counter_loses_updates():
    """The same run without `.ras` loses increments: a uthread stores a stale value after others ran."""
    sim, program = counter_run(ras="")
    assert sim.mem.read_u64(program.symbols["counter"]) < 4 * 500
    assert restarts(sim) == []


def test_a_notification_under_pthread_restarts_in_place():
    """pthread resumes a notified uthread on the same vcore (run_current_uthread); the sequence still restarts."""
    sim, program = counter_run(threads=1, iters=3000, pad=3, sched=PthreadSched())
    assert sim.mem.read_u64(program.symbols["counter"]) == 3000
    records = list(sim.trace)
    runs = [records[i - 1] for i, rec in enumerate(records) if rec.kind == "ras_restart"]
    assert runs and {(r.kind, r.vc, r.get("how")) for r in runs} == {("run", 0, "run_current_uthread")}


# A: spins outside any sequence on vcore 0.  B: on vcore 1, one long sequence
# (an increment with a 2000-iteration spin between its load and its store);
# r12/r13 = the vcore id at fs:[0] before and after, r14 counts sequence starts.
STEAL_SRC = """
a_entry:
    mov ecx, 3000
a_spin:
    dec ecx
    jnz a_spin
    ret
b_entry:                        # b(&counter) -> the vcore it finished on
    xor ecx, ecx
    mov r12, qword ptr fs:[rcx]
seq_start:
    inc r14
    mov rax, [rdi]
    mov ecx, 2000
b_spin:
    dec ecx
    jnz b_spin
    add rax, 1
    mov [rdi], rax
seq_end:
    xor ecx, ecx
    mov r13, qword ptr fs:[rcx]
    mov rax, r13
    ret
.ras seq_start, seq_end
.data
counter: .quad 0
"""


class _ListeningPthread(PthreadSched):
    """pthread with a handler for EV_PREEMPT_PENDING: a warning interrupts the running uthread at once."""

    def sched_init(self) -> None:
        super().sched_init()
        parlib.register_ev_handler(EV_PREEMPT_PENDING, lambda msg, ev_type: None)


def steal_run(warning_ns: int = 0, ras: bool = True):
    """pthread on 2 vcores; vcore 1 is preempted (for long) while B is inside its sequence (warned first,
    with a handler that listens for the warning, if warning_ns)."""
    program = assemble(STEAL_SRC if ras else STEAL_SRC.replace(".ras seq_start, seq_end", ""), name="steal")
    sim = Simulation(2)
    sim.load(program)
    sim.set_sched(_ListeningPthread() if warning_ns else PthreadSched())
    sim.spawn_guest("a", program.symbols["a_entry"], program.symbols["counter"])
    sim.spawn_guest("b", program.symbols["b_entry"], program.symbols["counter"])
    sim.preempt_at(3000, 1, warning_ns=warning_ns, duration_ns=1_000_000)
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim, program


def test_a_preempted_uthread_is_restarted_when_stolen_and_finishes_on_another_vcore():
    """Preemption under pthread: vcore 0 steals B, thread_paused restarts it (why=preempted), it ends on vcore 0."""
    sim, program = steal_run()
    b = sim.uthread("b")
    kinds = {"run", "preempt", "preempt_recover", "uthread_pause", "ras_restart", "uthread_exit"}
    assert involving(sim, "b", kinds) == [
        ("run", 1, "run_uthread"),
        ("preempt", 1, "b"),
        ("preempt_recover", 0, "b"),
        ("uthread_pause", 0, "preempted"),
        ("ras_restart", 0, "preempted"),
        ("run", 0, "run_uthread"),
        ("uthread_exit", 0, 0),
    ]
    (rec,) = restarts(sim)
    sym = program.symbols
    assert (rec.uth, rec.get("new_rip")) == ("b", sym["seq_start"])
    assert sym["seq_start"] < rec.get("old_rip") < sym["seq_end"]
    assert (b.ctx.r12, b.ctx.r13, b.ctx.r14) == (1, 0, 2)  # vcore 1, then vcore 0; the sequence ran twice
    assert sim.mem.read_u64(sym["counter"]) == 1


def test_a_warned_preemption_pauses_and_restarts_the_uthread():
    """With a warning (and a handler listening for it), vcore 1 hands B back itself (preempt_pending) and
    yields; B restarts (why=notify).

    The warning must outlast the notification's path: vcore entry, the event and the op take 500 ns.
    """
    sim, _ = steal_run(warning_ns=1000)
    b = sim.uthread("b")
    kinds = {"run", "uthread_pause", "ras_restart", "uthread_exit"}
    assert involving(sim, "b", kinds) == [
        ("run", 1, "run_uthread"),
        ("uthread_pause", 1, "preempt_pending"),
        ("ras_restart", 1, "notify"),
        ("run", 0, "run_uthread"),
        ("uthread_exit", 0, 0),
    ]
    assert (b.ctx.r12, b.ctx.r13, b.ctx.r14) == (1, 0, 2)


def test_the_tls_vcore_id_follows_the_uthread_to_its_new_vcore():
    """fs:[0] is the vcore a guest uthread runs on, rewritten when it migrates (no RAS needed to see it)."""
    sim, program = steal_run(ras=False)
    b = sim.uthread("b")
    assert (b.ctx.r12, b.ctx.r13, b.ctx.r14, b.exit_value) == (1, 0, 1, 0)
    assert sim.mem.read_u64(b.tls) == 0 and sim.mem.read_u64(b.tls + 8) == b.id
    assert restarts(sim) == []


FAULT_SRC = """
f_entry:                        # f(&counter, &source): counter = *source + 1, in one sequence
seq_start:
    inc r12                     # counts sequence starts
load:
    mov rax, [rsi]              # faults (the page is not there yet)
after_load:
    add rax, 1
    mov [rdi], rax
seq_end:
    mov rax, r12
    ret
.ras seq_start, seq_end
.data
counter: .quad 0
"""
SOURCE_PAGE = 0x1000_0000


def fault_run(handler=None, backed_later: bool = True):
    program = assemble(FAULT_SRC, name="f")
    sim = Simulation(1)
    sim.load(program)
    if backed_later:
        sim.mem.map(SOURCE_PAGE, PAGE_SIZE, Prot.READ | Prot.WRITE, "source", backed=False)
    if handler is not None:
        sim.register_fault_handler(handler)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("f", program.symbols["f_entry"], program.symbols["counter"], SOURCE_PAGE)
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim, program


def test_a_reflected_page_fault_inside_a_sequence_restarts_it():
    """A VMR-backed #PF in the sequence: pthread populates the page, and the uthread restarts at the start."""
    sim, program = fault_run()
    sym = program.symbols
    kinds = {"fault", "syscall_done", "run", "ras_restart", "uthread_exit"}
    assert involving(sim, "f", kinds) == [
        ("run", 0, "run_uthread"),
        ("fault", 0, 14),
        ("run", 0, "run_uthread"),
        ("ras_restart", 0, "fault"),
        ("uthread_exit", 0, 2),  # r12: the sequence started twice
    ]
    (rec,) = restarts(sim)
    assert (rec.get("old_rip"), rec.get("new_rip")) == (sym["load"], sym["seq_start"])
    assert sim.mem.read_u64(sym["counter"]) == 1


def test_a_fault_fixed_by_a_handler_is_not_restarted():
    """FAULT_FIXED is authoritative: the uthread resumes where the handler put it, inside the sequence."""
    program = assemble(FAULT_SRC, name="f")

    def fake_load(uth, ctx):
        if ctx.rip == program.symbols["load"]:
            ctx.rax, ctx.rip = 41, program.symbols["after_load"]
            return FaultStatus.FAULT_FIXED
        return FaultStatus.CONTINUE_NEXT_HANDLER

    sim, _ = fault_run(fake_load, backed_later=False)  # nothing mapped: a plain #PF the handler fixes
    assert restarts(sim) == []
    assert [(r.kind, r.get("rip")) for r in sim.trace if r.kind in ("fault", "fault_fixed")] == [
        ("fault", program.symbols["load"]), ("fault_fixed", program.symbols["after_load"])]  # fmt: skip
    assert (sim.uthread("f").exit_value, sim.mem.read_u64(program.symbols["counter"])) == (1, 42)


def test_an_abort_handler_outside_the_sequence_receives_control():
    """rseq style: an interrupted uthread resumes at the abort handler, which counts the abort and retries."""
    sim, program = counter_run(ras=".ras seq_start, seq_end, abort")
    sym = program.symbols
    found = restarts(sim)
    assert found and {(r.get("seq"), r.get("new_rip")) for r in found} == {(sym["seq_start"], sym["abort"])}
    assert sim.mem.read_u64(sym["aborts"]) == len(found)
    assert sim.mem.read_u64(sym["counter"]) == 4 * 500


SYSCALL_SRC = """
s_entry:                        # s(&counter, nr, arg): a syscall in the middle of a sequence
    mov r8, rdi
seq_start:
    inc r12                     # counts sequence starts
    mov rax, [r8]
    mov r9, rax
    mov eax, esi
    mov edi, edx
    syscall                     # a voluntary stop: blocks or yields the uthread
    add r9, 1
    mov [r8], r9
seq_end:
    mov rax, r12
    ret
.ras seq_start, seq_end
.data
counter: .quad 0
"""


@pytest.mark.parametrize("nr,arg,threads", [(SYS_block, 5000, 1), (0x1001, 0, 2)], ids=["block", "yield"])
def test_a_syscall_inside_a_sequence_does_not_restart_it(nr, arg, threads):
    """Blocking in, or yielding from, a sequence is voluntary: the uthread resumes after the syscall."""
    program = assemble(SYSCALL_SRC, name="s")
    sim = Simulation(1)
    sim.load(program)
    sim.set_sched(PthreadSched())
    for i in range(threads):
        sim.spawn_guest(f"s{i}", program.symbols["s_entry"], program.symbols["counter"], nr, arg)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert restarts(sim) == []
    assert [sim.uthread(f"s{i}").exit_value for i in range(threads)] == [1] * threads
    if nr == SYS_block:
        assert sim.trace.counts()["syscall_done"] == 1 and sim.mem.read_u64(program.symbols["counter"]) == 1


def test_python_uthreads_running_guest_code_are_restarted_too():
    """call_guest runs the sequence on the Python uthread's own context; ticks restart it the same way."""
    from akaros_sim import parlib

    program = assemble(counter_source(), name="c")
    sym = program.symbols

    def py(n):
        return parlib.call_guest(sym["worker"], n, sym["counter"])

    sim = Simulation(1, seed=3)
    sim.load(program)
    sim.set_sched(RoundRobinSched())
    for i in range(3):
        sim.spawn_python(f"p{i}", py, 800)
    sim.tick_storm(0, 1 << 40, *STORM)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert sim.mem.read_u64(sym["counter"]) == 3 * 800
    assert restarts(sim) and {r.uth for r in restarts(sim)} <= {"p0", "p1", "p2"}


SIGRETURN_SRC = """
SAVED_RIP = 120
main:
    mov eax, 0x1002             # sigaction(SIGFPE, fpe_handler)
    mov edi, 8
    lea rsi, [rip + fpe_handler]
    syscall
    xor ecx, ecx
seq_start:
    inc r12                     # counts sequence starts
    mov eax, 700
    xor edx, edx
    div rcx                     # #DE
after_div:
    inc r13
seq_end:
    mov rax, r12
    ret
fpe_handler:                    # resume after the division, still inside the sequence
    lea rax, [rip + after_div]
    mov [rdx + SAVED_RIP], rax
    ret
.ras seq_start, seq_end
"""


def test_the_context_a_signal_handler_returns_inside_a_sequence_is_kept():
    """A guest signal handler's returned context is authoritative, like FAULT_FIXED: sigreturn does not restart."""
    program = assemble(SIGRETURN_SRC, name="sig")
    sim = Simulation(1)
    sim.load(program)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("f", program.symbols["main"])
    result = sim.run(max_insns=5_000)
    assert result.end is RunEnd.ALL_EXITED
    # the #DE restarts the sequence before the signal frame is built, as Linux's rseq does; then no more
    assert [r.get("why") for r in restarts(sim)] == ["fault"]
    assert sim.uthread("f").exit_value == 1


# -- properties, determinism, the shipped scenario ----------------------------------------------------------


@settings(max_examples=15, deadline=None, database=None)
@given(
    lo=st.integers(12, 400),      # the longest sequence (pad 6) is 9 instructions
    spread=st.integers(0, 400),
    seed=st.integers(0, 2**32 - 1),
    pad=st.integers(0, 6),
)
def test_the_protected_counter_is_exact_and_every_restart_is_well_formed(lo, spread, seed, pad):
    """Any storm, seed and sequence length: the count is exact; each restart came from inside and went to start."""
    sim, program = counter_run(threads=3, iters=300, pad=pad, seed=seed, storm=(lo, lo + spread))
    sym = program.symbols
    assert sim.mem.read_u64(sym["counter"]) == 900
    for rec in restarts(sim):
        assert rec.get("seq") == sym["seq_start"]
        assert sym["seq_start"] <= rec.get("old_rip") < sym["seq_end"]
        assert rec.get("new_rip") == sym["seq_start"]


def test_same_seed_same_trace_other_seed_other_trace():
    """A RAS run is a pure function of its seed: byte-identical traces; another seed changes the interleaving."""
    one, _ = counter_run(iters=300, seed=11)
    two, _ = counter_run(iters=300, seed=11)
    other, _ = counter_run(iters=300, seed=12)
    assert one.trace.digest() == two.trace.digest() and one.trace.to_jsonl() == two.trace.to_jsonl()
    assert one.trace.records != other.trace.records  # not just the header's seed

    def where(sim):
        return [(r.t, r.uth, r.get("old_rip")) for r in restarts(sim)]

    assert where(one) and where(other) and where(one) != where(other)


def test_ras_percpu_without_its_ras_table_loses_updates():
    """scenarios/ras_percpu.toml holds because of its [[ras]]: without it the summed per-vcore counters fall short."""
    scenario = load_scenario(ROOT / "scenarios" / "ras_percpu.toml")
    assert scenario.ras and run_scenario(scenario).ok
    bare = run_scenario(attrs.evolve(scenario, ras=()))
    failed = {c.name: c for c in bare.checks if not c.ok}
    assert "memory[0].main:total" in failed and failed["memory[0].main:total"].got < 10_000
    assert failed["counts.ras_restart"].got == 0
