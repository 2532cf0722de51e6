"""Tests for akaros_sim.asm: every test runs with both backends (real keystone, real clang from the ziglang
wheel), checked with capstone and Unicorn.  A backend that is not installed is skipped (failing under CI=true)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import capstone
import pytest
import unicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import x86_const

from akaros_sim import asm_keystone, toolchain
from akaros_sim.asm import BACKENDS, AsmError, assemble, default_backend
from akaros_sim.memory import PAGE_SIZE, Prot
from akaros_sim.program import ExtableEntry, ExtableType, RasEntry
from akaros_sim.tools.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
BASE = 0x400000
INSTALLED = {"keystone": asm_keystone.available(), "clang": toolchain.available()}


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request, monkeypatch):
    """The backend a test assembles with, through $AKAROS_SIM_ASM (as a user would choose it)."""
    if not INSTALLED[request.param]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the {request.param} assembler backend is not installed; CI installs both")
        pytest.skip(f"the {request.param} assembler backend is not installed")
    monkeypatch.setenv("AKAROS_SIM_ASM", request.param)
    return request.param


def disasm(program, segment=0):
    """[(address, mnemonic, op_str)] of one segment, decoded by capstone."""
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    seg = program.segments[segment]
    return [(i.address, i.mnemonic, i.op_str) for i in cs.disasm(seg.data, seg.addr)]


def rip_targets(program):
    """{instruction address: absolute address of its [rip + disp] operand}."""
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    seg = program.segments[0]
    targets = {}
    for insn in cs.disasm(seg.data, seg.addr):
        for op in insn.operands:
            if op.type == capstone.x86.X86_OP_MEM and op.mem.base == capstone.x86.X86_REG_RIP:
                targets[insn.address] = insn.address + insn.size + op.mem.disp
    return targets


# --- Labels and branches


def test_labels_are_absolute_addresses():
    """Every label is a symbol holding its absolute address."""
    p = assemble(
        """
        _start:
            mov eax, 1      # 5 bytes
        second:
            nop             # 1 byte
        third:
            ret
        """
    )
    assert dict(p.symbols) == {"_start": BASE, "second": BASE + 5, "third": BASE + 6}
    assert p.symbol("third") == BASE + 6


def test_forward_and_backward_branches():
    """Branches to labels before and after them decode to the labels' addresses."""
    p = assemble(
        """
        top:
            dec rcx
            jnz top         # backward
            jmp out         # forward
            nop
        out:
            call top
        """,
        base=0x10000,
    )
    top, out = p.symbol("top"), p.symbol("out")
    assert [(m, o) for _, m, o in disasm(p)] == [
        ("dec", "rcx"),
        ("jne", hex(top)),
        ("jmp", hex(out)),
        ("nop", ""),
        ("call", hex(top)),
    ]


def test_label_on_same_line_and_semicolons_and_comments():
    """`label: insn`, `;` separators and #, //, /* */ comments all work."""
    p = assemble(
        """
        a: nop; nop   // two nops
        b: /* inline */ nop # trailing
        /* a comment
           over lines */ c: ret
        """
    )
    assert p.segments[0].data == b"\x90\x90\x90\xc3"
    assert (p.symbol("a"), p.symbol("b"), p.symbol("c")) == (BASE, BASE + 2, BASE + 3)


def test_local_labels_are_usable_but_not_symbols():
    """`.L` labels resolve (in branches, [...], .quad and .extable) but are left out of the symbol table."""
    p = assemble(
        """
        f:  jmp .Lout
            nop
        .Lout:
            mov rax, [rip + .Lvar]  # keystone itself rejects .-names inside [...]
            ret
        .extable f, .Lout
        .data
        .Lvar: .quad .Lout
        .ascii ".Lvar"              # not renamed inside strings
        """
    )
    assert dict(p.symbols) == {"f": BASE}
    assert disasm(p)[0] == (BASE, "jmp", hex(BASE + 3))
    assert rip_targets(p) == {BASE + 3: BASE + PAGE_SIZE}
    assert p.segments[1].data == (BASE + 3).to_bytes(8, "little") + b".Lvar"
    assert p.extable == (ExtableEntry(insn=BASE, fixup=BASE + 3),)


def test_prefixed_instructions_assemble():
    """Instructions with rep/lock prefixes (counted specially by keystone) assemble."""
    p = assemble("rep movsb\nlock xadd [rdi], eax\nrep stosq\nret")
    assert [m for _, m, _ in disasm(p)] == ["rep movsb", "lock xadd", "rep stosq", "ret"]


def test_entry_is_start_else_base():
    """entry is `_start` when defined, else the text base."""
    assert assemble("nop\n_start: ret").entry == BASE + 1
    assert assemble("nop\nret", base=0x20000).entry == 0x20000


def test_empty_source_has_no_segments():
    """An empty (or comment-only) source gives a Program with no segments or symbols."""
    p = assemble("# nothing here\n", name="empty")
    assert (p.name, p.segments, dict(p.symbols), p.entry) == ("empty", (), {}, BASE)


def test_same_arguments_return_cached_program():
    """Assembling the same source twice returns the same immutable Program."""
    assert assemble("nop\nret", name="c") is assemble("nop\nret", name="c")


# --- Sections


def test_text_and_data_segments():
    """.text is READ|EXEC at base, .data is READ|WRITE at the next page boundary."""
    p = assemble(".text\nnop\n.data\nx: .quad 7\n.text\nret")
    text, data = p.segments
    assert (text.name, text.addr, text.data, text.prot) == (".text", BASE, b"\x90\xc3", Prot.READ | Prot.EXEC)
    assert (data.name, data.addr, data.prot) == (".data", BASE + PAGE_SIZE, Prot.READ | Prot.WRITE)
    assert data.data == (7).to_bytes(8, "little")
    assert p.symbol("x") == BASE + PAGE_SIZE


def test_default_data_base_follows_long_text():
    """With more than a page of code, .data starts at the first page boundary after it."""
    p = assemble(".zero 5000\nret\n.data\nd: .byte 1")
    assert p.segments[1].addr == BASE + 2 * PAGE_SIZE


def test_data_only_source_omits_text():
    """A source with only .data content has only a .data segment."""
    p = assemble(".data\nv: .long 5")
    assert [(s.name, s.addr) for s in p.segments] == [(".data", BASE)]


def test_code_references_data_labels():
    """lea/mov [rip + label] reach the data label's address; movabs loads it; [label] is absolute."""
    p = assemble(
        """
        _start:
            lea rsi, [rip + counter]
            mov rax, [rip + counter]
            movabs rbx, counter
            mov rcx, [counter]
            ret
        .data
        pad: .quad 0
        counter: .quad 0
        """,
        data_base=0x600000,
    )
    counter = p.symbol("counter")
    assert counter == 0x600008
    insns = disasm(p)
    assert sorted(set(rip_targets(p).values())) == [counter]
    assert len(rip_targets(p)) == 2
    assert insns[2][1:] == ("movabs", f"rbx, {counter:#x}")
    assert insns[3][1:] == ("mov", f"rcx, qword ptr [{counter:#x}]")


def test_data_references_code_labels():
    """`.quad func` in .data holds func's absolute address."""
    p = assemble("nop\nfunc: ret\n.data\nfptr: .quad func\n.long func")
    assert p.segments[1].data == (BASE + 1).to_bytes(8, "little") + (BASE + 1).to_bytes(4, "little")


def test_data_below_text():
    """An explicit data_base below the text base still resolves both ways."""
    p = assemble("_start: lea rdi, [rip + v]\nret\n.data\nv: .quad _start", base=0x400000, data_base=0x200000)
    assert rip_targets(p) == {BASE: 0x200000}
    assert p.segments[1].data == BASE.to_bytes(8, "little")


def test_section_directive_forms():
    """`.section .data` / `.section .text` switch sections like `.data` / `.text`."""
    p = assemble(".section .data\nd: .byte 1\n.section .text\nret")
    assert [s.name for s in p.segments] == [".text", ".data"]


def test_program_runs_in_unicorn():
    """Code bumps a .data counter through [rip + label] and calls through a .data function pointer."""
    p = assemble(
        """
        _start:
            lea rsi, [rip + counter]
            add qword ptr [rsi], 5
            mov rax, [rip + counter]
            call [rip + fptr]       # func adds 100 to rax
        done:
            hlt
        func:
            add rax, 100
            ret
        .data
        counter: .quad 37
        fptr:    .quad func
        """
    )
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    for seg in p.segments:
        uc.mem_map(seg.addr, PAGE_SIZE, int(seg.prot))
        uc.mem_write(seg.addr, seg.data)
    uc.mem_map(0x7000_0000, PAGE_SIZE, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
    uc.reg_write(x86_const.UC_X86_REG_RSP, 0x7000_0000 + PAGE_SIZE)
    uc.emu_start(p.entry, p.symbol("done"))
    assert uc.reg_read(x86_const.UC_X86_REG_RAX) == 142
    assert uc.mem_read(p.symbol("counter"), 8) == (42).to_bytes(8, "little")


# --- Data directives


def test_data_directives_produce_exact_bytes():
    """Each supported data directive emits exactly the expected bytes."""
    p = assemble(
        """
        .data
        .byte 1, 0xff
        .word 0x1234
        .long 0x89abcdef
        .quad -1
        .ascii "ab"
        .asciz "cd"
        .string "e;#f"
        .zero 2
        .space 3
        .align 8
        .byte 9
        """
    )
    assert p.segments[0].data == (
        b"\x01\xff" + b"\x34\x12" + b"\xef\xcd\xab\x89" + b"\xff" * 8
        + b"ab" + b"cd\0" + b"e;#f\0" + b"\0\0" + b"\0\0\0"
        + b"\0"  # .align 8: offset 31 -> 32
        + b"\x09"
    )


def test_align_pads_text_with_nops_and_data_with_zeros():
    """.align pads .text with NOPs (keystone's choice) but .data with zeros."""
    p = assemble("ret\n.align 4\nf: ret\n.data\n.byte 1\n.p2align 2\n.byte 2")
    assert p.symbol("f") == BASE + 4
    assert [m for _, m, _ in disasm(p)] == ["ret", "nop", "ret"]
    assert p.segments[1].data == b"\x01\0\0\0\x02"


# --- .extable and .ras


def test_extable_types_and_default():
    """.extable records insn/fixup addresses with each type, FIXUP by default, sorted by insn."""
    p = assemble(
        """
        .extable c, fix, skip
        a:  mov rax, [rdi]
        b:  mov rbx, [rdi]
        c:  mov rcx, [rdi]
        fix: ret
        .extable b, fix, uaccess
        .extable a, fix
        .extable 0x123, 0x456, FIXUP
        """
    )
    a, b, c, fix = (p.symbol(n) for n in ("a", "b", "c", "fix"))
    assert p.extable == (
        ExtableEntry(insn=0x123, fixup=0x456, type=ExtableType.FIXUP),
        ExtableEntry(insn=a, fixup=fix, type=ExtableType.FIXUP),
        ExtableEntry(insn=b, fixup=fix, type=ExtableType.UACCESS),
        ExtableEntry(insn=c, fixup=fix, type=ExtableType.SKIP),
    )


def test_ras_with_and_without_restart():
    """.ras records [start, end) and restart, defaulting restart to start, sorted by start."""
    p = assemble(
        """
        .ras s2, e2, r2
        s1: nop
        e1: nop
        r2: nop
        s2: nop
            nop
        e2: ret
        .ras s1, e1
        """
    )
    sym = p.symbol
    assert p.ras == (
        RasEntry(start=sym("s1"), end=sym("e1"), restart=sym("s1")),
        RasEntry(start=sym("s2"), end=sym("e2"), restart=sym("r2")),
    )


def test_directives_name_labels_of_either_section():
    """.extable and .ras arguments may be labels defined later, in .text or .data."""
    p = assemble(".extable x, f\n.ras f, g\nf: nop\ng: ret\n.data\nx: .byte 0")
    assert p.extable == (ExtableEntry(insn=p.symbol("x"), fixup=p.symbol("f")),)
    assert p.ras == (RasEntry(start=BASE, end=BASE + 1, restart=BASE),)


# --- Errors


def error_of(source, **kwargs):
    with pytest.raises(AsmError) as info:
        assemble(source, **kwargs)
    return str(info.value)


def test_bad_instruction_names_line_and_text(backend):
    """A bad instruction's error names the program, its 1-based line and its text, then the backend's reason."""
    msg = error_of("nop\nnop\nmovq rax,, 1\nnop\nret", name="prog")
    reason = {"keystone": "KS_ERR_ASM_EXPR_TOKEN", "clang": "(clang: unknown token in expression)"}[backend]
    assert msg.startswith("prog:3: bad instruction: 'movq rax,, 1' (") and reason in msg


def test_error_lines_count_comments_blanks_and_data():
    """Line numbers count every source line, in either section."""
    assert error_of("# c\n\n.data\n.byte 1\n.byte 256\n").startswith("asm:5: bad directive: '.byte 256'")
    assert error_of("jmp later\nfoo rax\nlater: ret").startswith("asm:2: bad instruction: 'foo rax'")


def test_silently_skipped_statement_is_an_error():
    """A statement keystone drops without an error (middle of a line) is still reported."""
    msg = error_of("nop\nnop; movq rax,, 1; nop\nret")
    assert msg.startswith("asm:2: bad instruction: 'nop; movq rax,, 1; nop' ('movq rax,, 1'")


def test_undefined_symbol_names_line():
    """A reference to an undefined label names the referencing line."""
    assert error_of("nop\njmp nowhere\nret").startswith("asm:2: bad instruction: 'jmp nowhere'")


def test_unknown_label_in_extable_and_ras():
    """An unknown label in .extable or .ras names the line and the label."""
    assert error_of("a: nop\n.extable a, nofix") == "asm:2: unknown label 'nofix' in .extable: '.extable a, nofix'"
    assert error_of(".ras start, a\na: nop") == "asm:1: unknown label 'start' in .ras: '.ras start, a'"


def test_bad_extable_type():
    """An unknown .extable type names the line and the accepted types."""
    msg = error_of("a: nop\n.extable a, a, retry")
    assert msg.startswith("asm:2: unknown extable type 'retry' (expected one of fixup, uaccess, skip)")


def test_bad_directive_arity():
    """.extable and .ras need two or three arguments."""
    assert error_of("a: nop\n.ras a").startswith("asm:2: expected .ras START, END[, RESTART]")


def test_duplicate_label():
    """A label defined twice (even across sections) is an error naming it."""
    msg = error_of("a: nop\n.data\na: .byte 1")
    assert msg == "asm:3: duplicate label 'a' (first defined on line 1): 'a: .byte 1'"


def test_equate_named_like_a_label_is_rejected():
    """`x = 5` where x is also a label is an error (keystone would silently redefine the label)."""
    assert error_of("x = 5\nnop\n.data\nx: .byte 1").startswith("asm:1: 'x' is also a label (line 4)")


def test_bad_ras_and_duplicate_extable():
    """An empty or overlapping RAS, or two extable entries for one insn, are errors naming the line."""
    assert "expected start < end" in error_of("a: nop\nb: ret\n.ras b, a")
    assert error_of("a: nop\nb: nop\nc: ret\n.ras a, c\n.ras b, c").startswith("asm:5: .ras")
    assert error_of("a: nop\n.extable a, a\n.extable a, a, skip").startswith("asm:3: second .extable entry")


def test_bad_base_alignment():
    """An unaligned base or data_base is a ValueError naming it."""
    with pytest.raises(ValueError, match="base, got 4194305"):
        assemble("nop", base=0x400001)
    with pytest.raises(ValueError, match="data_base, got 16"):
        assemble("nop", data_base=16)


def test_data_base_overlapping_text():
    """A data_base inside .text is an error naming it."""
    assert "data_base 0x400000 overlaps .text" in error_of("nop\n.data\n.byte 1", data_base=BASE)


def test_bare_numeric_memory_operand_is_rejected():
    """`[0x500000]`, `fs:[0x10]`, `gs:0x10` and `[CONST]` are rejected (keystone makes them RIP-relative)."""
    for line in ("mov rbx, [0x500000]", "mov rax, fs:[0x10]", "mov rax, gs:0x10", "mov byte ptr [CONST + 8], 1"):
        msg = error_of(f"CONST = 0x1000\nnop\n{line}")
        assert msg.startswith("asm:3: ") and msg.endswith(f": {line!r}")
        assert "rip" in msg


def test_keystone_quirk_bare_memory_operand(backend):
    """Documents the quirk: keystone encodes `mov rbx, [0x500000]` as `mov rbx, [rip + 0x500000]`."""
    if backend != "keystone":
        pytest.skip("a quirk of keystone itself")
    ks = asm_keystone.keystone.Ks(asm_keystone.keystone.KS_ARCH_X86, asm_keystone.keystone.KS_MODE_64)
    assert ks.asm("mov rbx, [0x500000]", BASE, as_bytes=True)[0] == bytes.fromhex("488b1d00005000")


def test_register_and_label_memory_operands_are_accepted():
    """Memory operands with a register or a label are not mistaken for bare numbers."""
    p = assemble("x: mov rbx, [rax + 0x10]\nmov rbx, [rip + 8]\nmov rbx, fs:[rax]\nmov rbx, [x + 8]")
    assert len(disasm(p)) == 4


def test_lexical_traps_are_rejected():
    """Unterminated strings (keystone hangs) and unbalanced brackets (keystone reads [0]) are errors."""
    assert error_of('nop\n.ascii "abc') == "asm:2: unterminated string: '.ascii \"abc'"
    assert error_of("lea rax, [rip + 8") == "asm:1: unbalanced brackets: 'lea rax, [rip + 8'"


def test_unsupported_section_and_directive():
    """Other sections and directives keystone mishandles are errors naming the line."""
    msg = error_of("nop\n.section .rodata")
    assert msg == "asm:2: unsupported section '.rodata' (use .text or .data): '.section .rodata'"
    assert error_of(".cfi_startproc") == "asm:1: unsupported directive .cfi_startproc: '.cfi_startproc'"


# --- Property: label addresses are the sum of the instruction sizes before them

SIZED = [  # (instruction, encoded length)
    ("nop", 1), ("ret", 1), ("push rbx", 1), ("xor eax, eax", 2), ("mov rax, rbx", 3),
    ("lea rax, [rax + 8]", 4), ("mov eax, 1", 5), ("movabs rax, 0x123456789", 10),
]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(SIZED), st.none()), max_size=25),  # None: a label line
    st.sampled_from([0x1000, BASE, 0x7F0000000000]),
)
def test_label_address_is_base_plus_preceding_sizes(items, base):
    """For random nop/mov/... and label lines, each label sits at base + bytes of the instructions before it."""
    lines, expected, offset = [], {}, 0
    for i, item in enumerate(items):
        if item is None:
            lines.append(f"L{i}:")
            expected[f"L{i}"] = base + offset
        else:
            lines.append(f"    {item[0]}")
            offset += item[1]
    p = assemble("\n".join(lines), base=base)
    assert dict(p.symbols) == expected
    assert sum(len(s.data) for s in p.segments) == offset


def test_label_plus_named_constant_in_a_memory_operand_is_rejected():
    """[rip + label + CONST] would lose the label or the constant in keystone: an AsmError naming both."""
    src = ".text\nOFF = 8\ninc qword ptr [rip + stats + OFF]\nret\n.data\nstats: .zero 16\n"
    with pytest.raises(AsmError, match=r"asm:3: memory operand \[rip \+ stats \+ OFF\] mixes a label \(stats\) "
                                       r"with a named constant \(OFF\)"):  # fmt: skip
        assemble(src, 0x400000)


# --- The backends: chosen by argument or environment, same Program for the shipped sources


def test_bare_label_operands_are_immediates(backend):
    """`mov edx, end - start`, `movabs rbx, label` and `push label` take values, not loads, in both backends
    (clang alone would read a bare label as memory)."""
    p = assemble("start: mov edx, end - start\nmovabs rbx, v\npush start + 8\nend: ret\n.data\nv: .quad 1")
    v, end = p.symbol("v"), p.symbol("end")
    assert [(m, o) for _, m, o in disasm(p)] == [
        ("mov", f"edx, {end - BASE:#x}"), ("movabs", f"rbx, {v:#x}"), ("push", f"{BASE + 8:#x}"), ("ret", ""),
    ]  # fmt: skip


def test_the_backend_is_an_argument_or_the_environment(backend, monkeypatch):
    """$AKAROS_SIM_ASM picks the default; backend= overrides it; an unknown name is a ValueError naming both."""
    assert default_backend() == backend
    monkeypatch.delenv("AKAROS_SIM_ASM")
    assert default_backend() == ("keystone" if INSTALLED["keystone"] else "clang")
    other = "clang" if backend == "keystone" else "keystone"
    if INSTALLED[other]:
        assert assemble("nop\nret", backend=other).segments[0].data == b"\x90\xc3"
    with pytest.raises(ValueError, match=r"backend 'nasm' \(backend= or \$AKAROS_SIM_ASM\) is unknown"):
        assemble("nop", backend="nasm")


def _shipped_sources():
    """Every shipped assembly program: scenarios (and exercises) with `source`/`file`, the examples, uaccess."""
    out = [(p.name, ROOT / "examples" / p.name) for p in sorted((ROOT / "examples").glob("*.s"))]
    for path in sorted([*ROOT.glob("scenarios/*.toml"), *ROOT.glob("exercises/*.toml")]):
        programs = tomllib.loads(path.read_text(encoding="utf-8")).get("programs", [])
        if any({"source", "file"} & p.keys() for p in programs):
            out.append((path.name, path))
    return out


@pytest.mark.parametrize("name,path", _shipped_sources(), ids=[n for n, _ in _shipped_sources()])
def test_both_backends_give_the_same_program_for_shipped_sources(backend, name, path, monkeypatch):
    """The shipped guests assemble to the same bytes, symbols and tables with either backend, so their traces
    do not depend on the host (docs/scenarios.md lists where encodings may differ: no shipped source uses those forms)."""
    if not all(INSTALLED.values()):
        pytest.skip("needs both backends")
    other = "clang" if backend == "keystone" else "keystone"
    assembled = [i for i, p in enumerate(tomllib.loads(path.read_text(encoding="utf-8")).get("programs", []))
                 if {"source", "file"} & p.keys()] if path.suffix == ".toml" else []  # fmt: skip

    def programs(chosen):
        monkeypatch.setenv("AKAROS_SIM_ASM", chosen)
        if path.suffix == ".s":
            return [assemble(path.read_text(encoding="utf-8"), name=name)]
        return [load_scenario(path).programs[i].program for i in assembled]

    mine = programs(backend)
    assert mine and mine == programs(other)
