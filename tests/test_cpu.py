"""The emulated CPU: every stop kind with x86 semantics, and exact accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, SyscallStop, TrapStop, is_canonical
from akaros_sim.memory import AddressSpace, Prot
from conftest import CODE, DATA, STACK_TOP, Machine, assemble_bytes

U = int(PfErr.U)
LAZY = 0x900000  # a VMR whose pages are not backed yet
RO = 0xA00000  # a read-only page


@pytest.fixture
def m() -> Machine:
    machine = Machine()
    machine.mem.map(LAZY, 0x2000, Prot.READ | Prot.WRITE, "lazy", backed=False)
    machine.mem.map(RO, 0x1000, Prot.READ, "ro")
    return machine


def run(m: Machine, source: str, budget: int = 1000, at: int = CODE, **regs: int):
    ctx = m.load(source, at=at, **regs)
    return m.cpu.run(ctx, budget), ctx


# -- traps and faults -------------------------------------------------------------


def test_divide_error_is_fault_at_div():
    """#DE: trap 0, rip at the div, the div not counted."""
    m = Machine()
    stop, ctx = run(m, "mov eax, 7; xor ecx, ecx; div rcx")  # 5 + 2 bytes before div
    assert stop == TrapStop(insns=2, trap_nr=TrapNr.DE, err=0, aux=0)
    assert ctx.rip == CODE + 7
    assert (ctx.fault_pending, ctx.trap_nr) == (True, 0)


def test_repeated_divide_errors_never_become_double_faults():
    """Unicorn's stale exception state is reset: the 5th #DE is still #DE, not #DF."""
    m = Machine()
    ctx = m.load("xor ecx, ecx; div rcx")
    stops = []
    for _ in range(5):
        ctx.rip = CODE
        stops.append(m.cpu.run(ctx, 100).trap_nr)
    assert stops == [0, 0, 0, 0, 0]


def test_breakpoint_is_trap_after_int3():
    """#BP from int3 (1 byte) and int 3 (2 bytes): rip after the instruction, counted."""
    m = Machine()
    stop, ctx = run(m, "nop; int3")
    assert (stop, ctx.rip) == (TrapStop(2, TrapNr.BP), CODE + 2)
    stop, ctx = run(m, ".byte 0xcd, 3")  # int 3 as CD 03: clang's assembler would shorten `int 3` to int3
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.BP), CODE + 2)


def test_icebp_is_debug_trap():
    """icebp (0xF1) raises #DB as a trap; Unicorn's invalid-opcode report is corrected."""
    m = Machine()
    stop, ctx = run(m, "nop; .byte 0xf1")  # int1 / icebp, a mnemonic clang's assembler lacks
    assert (stop, ctx.rip) == (TrapStop(2, TrapNr.DB), CODE + 2)


def test_single_step_flag_raises_debug_trap_after_next_instruction():
    """rflags.TF: #DB after the first instruction that runs with TF set."""
    m = Machine()
    # pushfq; set TF on the stack copy; popfq (TF takes effect after popfq); nop traps
    stop, ctx = run(m, "pushfq; or qword ptr [rsp], 0x100; popfq; nop; nop")
    assert stop == TrapStop(4, TrapNr.DB)
    assert ctx.rip == CODE + 1 + 8 + 1 + 1  # pushfq, or (8 bytes), popfq, nop


@pytest.mark.parametrize("source", ["ud2", "rdrand rax", "rdseed rax", "lock nop"])
def test_invalid_opcode_is_ud_fault(source):
    """#UD: trap 6 at the instruction (rdrand/rdseed too: the CPU model has neither)."""
    m = Machine()
    stop, ctx = run(m, "nop; " + source)
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.UD), CODE + 1)


@pytest.mark.parametrize(
    "source",
    ["hlt", "cli", "sti", "mov rax, cr0", "mov cr3, rax", "in al, 0x60", "out 0x80, al", "wrmsr", "rdmsr", "lgdt [rsp]", "invlpg [rsp]"],
)
def test_privileged_instructions_raise_gp_in_user_mode(source):
    """hlt and privileged instructions: #GP(0) at the instruction, as from ring 3."""
    m = Machine()
    stop, ctx = run(m, "nop; " + source)
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.GP, 0, 0), CODE + 1)


def test_int_through_kernel_gate_is_gp_with_idt_error_code():
    """int 0x80 hits a DPL-0 gate: #GP, err = 0x80*8+2, rip at the int."""
    m = Machine()
    stop, ctx = run(m, "nop; int 0x80")
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.GP, 0x80 * 8 + 2), CODE + 1)


def test_int_0x30_is_akaros_syscall_trap():
    """int 0x30 (T_SYSCALL, DPL 3) is a trap 48 with rip after it."""
    m = Machine()
    stop, ctx = run(m, "int 0x30")
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.SYSCALL), CODE + 2)


def test_non_canonical_data_access_is_gp_without_cr2():
    """A load from a non-canonical address: #GP(0), aux 0, rip at the load."""
    m = Machine()
    stop, ctx = run(m, "mov rax, 0x8000000000000000; mov rbx, [rax]")  # movabs is 10 bytes
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.GP, 0, 0), CODE + 10)


def test_branch_to_non_canonical_address_is_gp_at_target():
    """jmp to a non-canonical address: #GP(0), rip = the target (documented deviation)."""
    m = Machine()
    stop, ctx = run(m, "mov rax, 0xffff000000000000; jmp rax")
    assert (stop, ctx.rip) == (TrapStop(2, TrapNr.GP, 0, 0), 0xFFFF000000000000)


def test_call_to_non_canonical_address_is_gp_at_the_call():
    """call rax with a non-canonical rax: #GP at the 2-byte call, nothing pushed (Go's 0xDEAD trick)."""
    m = Machine()
    stop, ctx = run(m, "mov rax, 0xdead000000601000; nop; call rax")  # movabs 10 bytes + nop
    assert (stop, ctx.rip, ctx.rsp) == (TrapStop(2, TrapNr.GP, 0, 0), CODE + 11, STACK_TOP - 8)


def test_segment_load_fault_reports_selector_error_code():
    """mov ds with a selector past the GDT limit: #GP(selector)."""
    m = Machine()
    stop, _ = run(m, "mov eax, 0x100; mov ds, ax")
    assert stop == TrapStop(1, TrapNr.GP, 0x100)


# -- page faults ------------------------------------------------------------------


def test_read_unmapped_page_fault():
    """Read of an unmapped page: #PF err=U, CR2 = exact address, rip at the load."""
    m = Machine()
    stop, ctx = run(m, "mov rax, 0x500123; mov rbx, [rax]")  # mov r64, imm32 is 7 bytes
    assert (stop, ctx.rip) == (TrapStop(1, TrapNr.PF, U, 0x500123), CODE + 7)


def test_write_unmapped_page_fault():
    """Write to an unmapped page: #PF err=W|U."""
    m = Machine()
    stop, _ = run(m, "mov rax, 0x500008; mov [rax], rbx")
    assert stop == TrapStop(1, TrapNr.PF, PfErr.W | PfErr.U, 0x500008)


def test_null_dereference_faults():
    """Page 0 is never mapped: a NULL read is #PF at address 0."""
    m = Machine()
    stop, _ = run(m, "xor eax, eax; mov rbx, [rax]")
    assert stop == TrapStop(1, TrapNr.PF, U, 0)


def test_write_to_read_only_page_is_protection_fault(m):
    """Write to a present read-only page: #PF err=P|W|U."""
    stop, ctx = run(m, f"mov rax, {RO + 16}; mov [rax], rbx; nop")
    assert stop == TrapStop(1, TrapNr.PF, PfErr.P | PfErr.W | PfErr.U, RO + 16)
    assert ctx.rip == CODE + 7


def test_read_of_read_only_page_succeeds(m):
    """Reads of a read-only page work; the next stop is the budget."""
    m.mem.write_u64(RO, 0x1122334455667788)
    stop, ctx = run(m, f"mov rax, {RO}; mov rbx, [rax]", budget=2)
    assert (stop, ctx.rbx) == (BudgetSpent(2), 0x1122334455667788)


def test_fetch_from_unmapped_page_is_instruction_fault():
    """Jump to an unmapped page: #PF err=U|I, rip = CR2 = target, jump counted."""
    m = Machine()
    stop, ctx = run(m, "mov rax, 0x500000; jmp rax")
    assert (stop, ctx.rip) == (TrapStop(2, TrapNr.PF, PfErr.U | PfErr.I, 0x500000), 0x500000)


def test_fetch_from_non_executable_page_is_protection_fault():
    """Jump into a data (RW, NX) page: #PF err=P|U|I."""
    m = Machine()
    stop, ctx = run(m, f"mov rax, {DATA}; jmp rax")
    assert (stop, ctx.rip) == (TrapStop(2, TrapNr.PF, PfErr.P | PfErr.U | PfErr.I, DATA), DATA)


def test_fetch_crossing_into_unmapped_page():
    """An instruction straddling the end of code: #PF at the next page, rip at its start."""
    m = Machine()
    at = CODE + 0x2000 - 4  # the code VMR ends at CODE + 0x2000
    m.mem.write(at, assemble_bytes("mov rax, 0x1122334455667788", at)[:4])  # 10 bytes, 6 missing
    ctx = UserContext(rip=at)
    stop = m.cpu.run(ctx, 10)
    assert (stop, ctx.rip) == (TrapStop(0, TrapNr.PF, PfErr.U | PfErr.I, CODE + 0x2000), at)


def test_access_straddling_into_unmapped_page_reports_first_unmapped_byte():
    """An 8-byte read across the end of data: CR2 = the first byte of the missing page."""
    m = Machine()
    stop, _ = run(m, f"mov rax, {DATA + 0x2000 - 3}; mov rbx, [rax]")
    assert stop == TrapStop(1, TrapNr.PF, U, DATA + 0x2000)


def test_not_yet_backed_vmr_faults_with_vmr_backed_bit(m):
    """A valid but unpopulated VMR page: #PF not-present with PF_VMR_BACKED, then works once populated."""
    stop, ctx = run(m, f"mov rax, {LAZY + 0x1010}; mov qword ptr [rax], 5; mov rbx, [rax]")
    assert stop == TrapStop(1, TrapNr.PF, PfErr.W | PfErr.U | PfErr.VMR_BACKED, LAZY + 0x1010)
    assert m.mem.populate(ctx.aux) == 1
    ctx.clear_trap()
    stop = m.cpu.run(ctx, 2)
    assert (stop, ctx.rbx, m.mem.read_u64(LAZY + 0x1010)) == (BudgetSpent(2), 5, 5)


# -- syscall ----------------------------------------------------------------------


def test_syscall_reports_number_and_six_arguments():
    """syscall: nr from rax, args rdi rsi rdx r10 r8 r9; rip after; rcx/r11 set as hardware does."""
    m = Machine()
    regs = dict(rax=60, rdi=1, rsi=2, rdx=3, r10=4, r8=5, r9=6)
    stop, ctx = run(m, "nop; syscall", **regs)
    assert stop == SyscallStop(insns=2, nr=60, args=(1, 2, 3, 4, 5, 6))
    assert (ctx.rip, ctx.rcx, ctx.r11) == (CODE + 3, CODE + 3, ctx.rflags)
    assert not ctx.fault_pending


# -- budgets, accounting, determinism -----------------------------------------------

LOOP = """
    mov rcx, 50
top:
    mov rax, [rdi]
    add rax, rcx
    mov [rdi], rax
    call bump
    dec rcx
    jnz top
    hlt
bump:
    add qword ptr [rdi + 8], 3
    ret
"""  # 1 + 50 * 8 instructions, then hlt (#GP)
LOOP_INSNS = 1 + 50 * 8


def test_budget_stop_leaves_rip_at_next_instruction():
    """A budget of 3 runs exactly 3 instructions."""
    m = Machine()
    stop, ctx = run(m, "nop; nop; nop; nop; nop", budget=3)
    assert (stop, ctx.rip) == (BudgetSpent(3), CODE + 3)


def test_early_stop_counts_exactly():
    """A loop ending in hlt reports exactly the instructions it retired."""
    m = Machine()
    stop, ctx = run(m, LOOP, budget=10_000, rdi=DATA)
    assert stop == TrapStop(LOOP_INSNS, TrapNr.GP)
    assert m.mem.read_u64(DATA + 8) == 150
    assert m.cpu.retired == LOOP_INSNS


def test_sliced_run_equals_unbounded_run():
    """Many small budgets reach the same registers, memory and count as one run."""
    whole, sliced = Machine(), Machine()
    ctx_w = whole.load(LOOP, rdi=DATA)
    whole.cpu.run(ctx_w, 10_000)
    ctx_s = sliced.load(LOOP, rdi=DATA)
    total, budgets = 0, [1, 2, 3, 5, 7, 11]
    i = 0
    while True:
        stop = sliced.cpu.run(ctx_s, budgets[i % len(budgets)])
        total += stop.insns
        i += 1
        if not isinstance(stop, BudgetSpent):
            break
    assert total == LOOP_INSNS == sliced.cpu.retired
    assert ctx_s == ctx_w
    assert sliced.mem.read(DATA, 16) == whole.mem.read(DATA, 16)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40))
def test_random_budget_split_never_changes_the_result(budgets):
    """Property: however a run is split into budgets, final registers and memory are the same."""
    ref = Machine()
    ctx_r = ref.load(LOOP, rdi=DATA)
    spent = sum(budgets)
    if spent <= LOOP_INSNS:  # (exactly LOOP_INSNS stops before the final trap, as the split run does)
        ref.cpu.run(ctx_r, spent)
    else:
        ref.cpu.run(ctx_r, 10_000)
    m = Machine()
    ctx = m.load(LOOP, rdi=DATA)
    for b in budgets:
        if not isinstance(m.cpu.run(ctx, b), BudgetSpent):
            break
    assert ctx == ctx_r
    assert m.mem.read(DATA, 16) == ref.mem.read(DATA, 16)


def test_rdtsc_returns_retired_instruction_count():
    """rdtsc is deterministic: by default it reads the instructions retired so far."""
    m = Machine()
    stop, ctx = run(m, "nop; nop; rdtsc; hlt")
    assert (ctx.rax, ctx.rdx) == (2, 0)
    m.cpu.tsc = lambda: 0x1_2345_6789
    stop, ctx = run(m, "rdtsc; hlt")
    assert (ctx.rax, ctx.rdx) == (0x2345_6789, 1)


def test_two_contexts_alternate_on_one_address_space():
    """Two contexts interleaved share memory but keep their own registers and SSE state."""
    m = Machine()
    src = """
        movq xmm0, rsi
    again:
        movq rax, xmm0
        add qword ptr [rdi], rax
        jmp again
    """
    a = m.load(src, rdi=DATA, rsi=1)
    b = UserContext(rip=CODE, rsp=STACK_TOP - 0x1000, rdi=DATA, rsi=100)
    for _ in range(10):
        assert m.cpu.run(a, 3) == BudgetSpent(3)
        assert m.cpu.run(b, 3) == BudgetSpent(3)
    # each ran movq once, then 9 of its 3-instruction loop passes... by count:
    # 30 instructions each = movq + 29 loop insns -> adds on insns 3, 6, ..., 30? (2nd of each pass)
    per_ctx_adds = len([i for i in range(1, 30) if i % 3 == 2])
    assert m.mem.read_u64(DATA) == per_ctx_adds * 1 + per_ctx_adds * 100
    assert (a.rax, b.rax) == (1, 100)


def test_user_cannot_raise_iopl_through_rflags():
    """rflags is sanitised like a kernel return: IOPL stays 0, so cli still faults."""
    m = Machine()
    stop, ctx = run(m, "cli", rflags=0x3202)
    assert stop == TrapStop(0, TrapNr.GP)
    assert ctx.rflags & 0x3000 == 0


def test_bad_budget_is_rejected():
    """A budget below 1 is a ValueError naming Cpu.run."""
    m = Machine()
    with pytest.raises(ValueError, match="Cpu.run: expected a budget"):
        m.cpu.run(UserContext(rip=CODE), 0)


def test_two_cpus_do_not_share_state():
    """Two address spaces with their own CPUs run independently in one process."""
    a, b = Machine(), Machine()
    stop_a, ctx_a = run(a, "mov rax, 1; mov [rdi], rax; hlt", rdi=DATA)
    stop_b, ctx_b = run(b, "mov rax, 2; mov [rdi], rax; hlt", rdi=DATA)
    assert (a.mem.read_u64(DATA), b.mem.read_u64(DATA)) == (1, 2)
    assert a.cpu.retired == b.cpu.retired == 2


def test_is_canonical():
    """Canonical addresses have bits 63..47 equal."""
    assert is_canonical(0x7FFF_FFFF_FFFF) and is_canonical(0xFFFF_8000_0000_0000)
    assert not is_canonical(0x8000_0000_0000) and not is_canonical(0x8000_0000_0000_0000)


def test_trap_describe_names_page_fault_bits():
    """TrapStop.describe spells out the #PF error bits and address."""
    text = TrapStop(0, TrapNr.PF, PfErr.W | PfErr.U | PfErr.VMR_BACKED, 0x900010).describe()
    assert text == "#PF (trap 14) err=0x80000006 [W|U|VMR_BACKED] addr=0x900010"


def test_cpu_builds_on_fresh_address_space():
    """A Cpu on an empty address space faults on its first fetch."""
    cpu = Cpu(AddressSpace())
    stop = cpu.run(UserContext(rip=0x10000), 10)
    assert stop == TrapStop(0, TrapNr.PF, PfErr.U | PfErr.I, 0x10000)
