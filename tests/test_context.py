"""UserContext: the register file, its validation, and the reflected-trap fields."""

from __future__ import annotations

import pytest

from akaros_sim.context import FL_ALWAYS, GPR_NAMES, REG_NAMES, U64, PfErr, TrapNr, UserContext


def test_reg_names_are_trapframe_order():
    """REG_NAMES is the hw_trapframe order: the 15 GPRs, then rip, rflags, rsp, fs_base, gs_base."""
    assert REG_NAMES == (
        "rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags", "rsp", "fs_base", "gs_base",
    )  # fmt: skip
    assert REG_NAMES[: len(GPR_NAMES)] == GPR_NAMES


def test_defaults():
    """A new context has rflags 0x202 (IF and the reserved bit), every other field 0, no fault pending."""
    ctx = UserContext()
    assert ctx.regs() == {name: (0x202 if name == "rflags" else 0) for name in REG_NAMES}
    assert FL_ALWAYS == 0x202
    assert (ctx.trap_nr, ctx.err, ctx.aux, ctx.fault_pending, ctx.fpstate) == (0, 0, 0, False, None)


def test_regs_lists_every_register_in_order():
    """regs() maps every register name to its value, keys in REG_NAMES order."""
    ctx = UserContext(**{name: i + 1 for i, name in enumerate(REG_NAMES)})
    regs = ctx.regs()
    assert list(regs) == list(REG_NAMES)
    assert list(regs.values()) == list(range(1, len(REG_NAMES) + 1))


@pytest.mark.parametrize("name", REG_NAMES)
@pytest.mark.parametrize("value", [-1, 1 << 64, 1.0, "0"], ids=["negative", "2**64", "float", "str"])
def test_constructor_rejects_non_u64(name, value):
    """Every register rejects a value that is not an int in [0, 2**64) at construction, naming the field."""
    with pytest.raises(ValueError) as exc:
        UserContext(**{name: value})
    assert str(exc.value) == f"UserContext.{name}: expected an unsigned 64-bit int, got {value!r}"


@pytest.mark.parametrize("name", REG_NAMES)
def test_assignment_rejects_non_u64_and_keeps_old_value(name):
    """Assigning an out-of-range value to a register raises naming the field and leaves the old value."""
    ctx = UserContext(**{name: 7})
    for value in (-1, 1 << 64):
        with pytest.raises(ValueError) as exc:
            setattr(ctx, name, value)
        assert str(exc.value) == f"UserContext.{name}: expected an unsigned 64-bit int, got {value!r}"
    assert getattr(ctx, name) == 7


def test_accepts_the_u64_bounds():
    """0 and 2**64 - 1 are valid register values, at construction and on assignment."""
    ctx = UserContext(rax=U64, rflags=0)
    ctx.gs_base = U64
    ctx.rax = 0
    assert (ctx.rax, ctx.rflags, ctx.gs_base, U64) == (0, 0, U64, (1 << 64) - 1)


def test_copy_is_independent():
    """copy() is equal to the original; changing either's registers or trap afterwards leaves the other alone."""
    ctx = UserContext(rax=1, rip=0x400000, rsp=0x7FFFF8)
    ctx.set_trap(TrapNr.PF, 6, 0x1234)
    ctx.fpstate = b"\x01\x02"
    dup = ctx.copy()
    assert dup == ctx
    assert dup is not ctx
    assert dup.fpstate is ctx.fpstate  # immutable, shared
    dup.rax = 2
    dup.clear_trap()
    ctx.rip = 0x400010
    assert (ctx.rax, ctx.rip, ctx.fault_pending, ctx.trap_nr, ctx.err, ctx.aux) == (1, 0x400010, True, 14, 6, 0x1234)
    assert (dup.rax, dup.rip, dup.fault_pending, dup.trap_nr, dup.err, dup.aux) == (2, 0x400000, False, 0, 0, 0)


def test_copy_keeps_validation():
    """A copy validates assignments like the original."""
    dup = UserContext().copy()
    with pytest.raises(ValueError) as exc:
        dup.rsp = -8
    assert str(exc.value) == "UserContext.rsp: expected an unsigned 64-bit int, got -8"


def test_equality_ignores_fpstate():
    """Two contexts with the same registers and trap fields are equal whatever their fpstate."""
    assert UserContext(rax=1, fpstate=b"a") == UserContext(rax=1, fpstate=b"b")
    assert UserContext(rax=1) != UserContext(rax=2)


def test_set_trap_and_clear_trap():
    """set_trap records number, err and aux and marks a fault pending; clear_trap zeroes them all."""
    ctx = UserContext(rip=0x400000)
    ctx.set_trap(TrapNr.PF, PfErr.U | PfErr.W, 0x601008)
    assert (ctx.trap_nr, ctx.err, ctx.aux, ctx.fault_pending) == (14, 6, 0x601008, True)
    assert type(ctx.trap_nr) is int
    ctx.set_trap(TrapNr.UD)
    assert (ctx.trap_nr, ctx.err, ctx.aux, ctx.fault_pending) == (6, 0, 0, True)
    ctx.clear_trap()
    assert (ctx.trap_nr, ctx.err, ctx.aux, ctx.fault_pending) == (0, 0, 0, False)
    assert ctx.rip == 0x400000
    assert ctx == UserContext(rip=0x400000)


def test_str_without_fault_is_one_line_per_register():
    """str() prints one line per register in trapframe order, each as 16 hex digits."""
    ctx = UserContext(rax=0xDEADBEEF, r15=1, rip=0x400000, rsp=0x7FFFF8, gs_base=U64)
    assert str(ctx) == "\n".join(
        [
            "  rax     0x00000000deadbeef",
            "  rbx     0x0000000000000000",
            "  rcx     0x0000000000000000",
            "  rdx     0x0000000000000000",
            "  rbp     0x0000000000000000",
            "  rsi     0x0000000000000000",
            "  rdi     0x0000000000000000",
            "  r8      0x0000000000000000",
            "  r9      0x0000000000000000",
            "  r10     0x0000000000000000",
            "  r11     0x0000000000000000",
            "  r12     0x0000000000000000",
            "  r13     0x0000000000000000",
            "  r14     0x0000000000000000",
            "  r15     0x0000000000000001",
            "  rip     0x0000000000400000",
            "  rflags  0x0000000000000202",
            "  rsp     0x00000000007ffff8",
            "  fs_base 0x0000000000000000",
            "  gs_base 0xffffffffffffffff",
        ]
    )


def test_str_with_fault_adds_trap_err_aux():
    """With a fault pending, str() adds the trap number and name, err and aux after the registers."""
    ctx = UserContext(rip=0x400000)
    ctx.set_trap(TrapNr.PF, PfErr.P | PfErr.W | PfErr.U, 0x601010)
    lines = str(ctx).split("\n")
    assert len(lines) == len(REG_NAMES) + 3
    assert [line.split()[0] for line in lines[: len(REG_NAMES)]] == list(REG_NAMES)
    assert lines[len(REG_NAMES) :] == [
        "  trap    0x0000000e PF",
        "  err     0x00000007",
        "  aux     0x0000000000601010",
    ]


def test_str_with_unknown_trap_number():
    """A trap number with no TrapNr name prints as '?'."""
    ctx = UserContext()
    ctx.set_trap(0x99)
    assert str(ctx).split("\n")[len(REG_NAMES) :] == [
        "  trap    0x00000099 ?",
        "  err     0x00000000",
        "  aux     0x0000000000000000",
    ]


def test_str_after_clear_trap_has_no_trap_lines():
    """After clear_trap, str() is back to the register lines only."""
    ctx = UserContext()
    ctx.set_trap(TrapNr.GP, 0x1A)
    ctx.clear_trap()
    assert str(ctx) == str(UserContext())
    assert len(str(ctx).split("\n")) == len(REG_NAMES)


def test_context_is_slotted():
    """UserContext is a slots class: unknown attributes cannot be added by typo."""
    ctx = UserContext()
    with pytest.raises(AttributeError):
        ctx.rpi = 1  # typo for rip
