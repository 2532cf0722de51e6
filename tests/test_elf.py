"""Tests for akaros_sim.elf: loading the committed fixtures in tests/elf/.

The fixtures are built by tests/elf/build.sh; the addresses below are what
`nm -n` and `readelf -lW` printed for the committed files.  Error cases patch
header fields of a copy in tmp_path, so no compiler is needed here.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akaros_sim.elf import ElfError, load_elf
from akaros_sim.memory import Prot
from akaros_sim.program import ExtableEntry, ExtableType, Program, RasEntry

FIXTURES = Path(__file__).parent / "elf"
EXTABLE = FIXTURES / "extable.elf"
EXTABLE8 = FIXTURES / "extable8.elf"
HELLO = FIXTURES / "hello.elf"

R, RW, RX = Prot.READ, Prot.READ | Prot.WRITE, Prot.READ | Prot.EXEC

# ELF64 header and table field offsets (System V gABI).
E_TYPE, E_MACHINE, E_PHOFF = 0x10, 0x12, 0x20
P_TYPE, P_VADDR, PHDR_SIZE = 0x00, 0x10, 56
SH_SIZE, SH_ENTSIZE = 0x20, 0x38


def _read(program: Program, addr: int, size: int) -> bytes:
    """The `size` bytes at `addr` as the program's segments would map them (bss as zeros)."""
    for seg in program.segments:
        if seg.addr <= addr and addr + size <= seg.end:
            start = addr - seg.addr
            return (seg.data + bytes(seg.memsz - len(seg.data)))[start : start + size]
    raise AssertionError(f"{addr:#x}+{size} is not inside one segment")


def _copy(tmp_path: Path, fixture: Path) -> tuple[Path, bytearray]:
    """A writable copy of `fixture` in tmp_path, and its bytes to patch."""
    path = tmp_path / fixture.name
    shutil.copyfile(fixture, path)
    return path, bytearray(path.read_bytes())


def _section_offset(image: bytes, name: str) -> tuple[int, int]:
    """(file offset of the section header, file offset of the contents) of section `name`."""
    elf = ELFFile(io.BytesIO(bytes(image)))
    index = elf.get_section_index(name)
    return elf["e_shoff"] + index * elf["e_shentsize"], elf.get_section(index)["sh_offset"]


def _load_error(path: Path, *fragments: str) -> str:
    """Load `path`, expecting an ElfError naming it and containing each fragment."""
    with pytest.raises(ElfError) as info:
        load_elf(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- segments ---------------------------------------------------------------


def test_extable_segments():
    """Each PT_LOAD becomes a page-aligned Segment with its prot, sections and bss size."""
    program = load_elf(EXTABLE)
    got = [(s.addr, s.prot, s.name, len(s.data), s.memsz) for s in program.segments]
    assert got == [
        (0x400000, R, "LOAD0", 0x120, 0x120),  # ELF and program headers
        (0x401000, RX, ".text", 0x28, 0x28),
        (0x402000, R, ".rodata __ex_table __ras", 0x50, 0x50),
        (0x403000, RW, ".data .bss", 0x58, 0x160),  # p_vaddr 0x403050, filesz 8, memsz 0x110
    ]


def test_unaligned_segment_begins_with_the_file_bytes_before_it():
    """A p_vaddr inside a page is rounded down and the gap holds the file bytes mmap would map."""
    image = EXTABLE.read_bytes()
    data = load_elf(EXTABLE).segments[3]
    # p_offset 0x2050 -> the page starts at file offset 0x2000 (.rodata, the tables, then .data).
    assert data.data == image[0x2000:0x2058]


def test_hello_segments():
    """With -z noseparate-code the headers share the R-X segment and .data's page starts at offset 0."""
    program = load_elf(HELLO)
    got = [(s.addr, s.prot, s.name, len(s.data), s.memsz) for s in program.segments]
    assert got == [
        (0x400000, RX, ".text .rodata __ex_table", 0x16C, 0x16C),
        (0x401000, RW, ".data .bss", 0x178, 0x200),  # p_vaddr 0x401170, p_offset 0x170
    ]
    assert program.segments[1].data == HELLO.read_bytes()[:0x178]


def test_bss_lies_past_the_file_data():
    """Symbols in .bss fall between the end of a segment's data and its memsz, and read as zeros."""
    program = load_elf(EXTABLE)
    data = program.segments[3]
    for name, size in [("counter", 8), ("scratch", 256)]:
        addr = program.symbol(name)
        assert data.addr + len(data.data) <= addr and addr + size <= data.end
        assert _read(program, addr, size) == bytes(size)


# -- symbols and entry --------------------------------------------------------


def test_extable_symbols():
    """.symtab gives every named, nonzero function, object and untyped symbol (as nm printed)."""
    assert dict(load_elf(EXTABLE).symbols) == {
        "__bss_start": 0x403058,
        "_edata": 0x403058,
        "_end": 0x403160,
        "_start": 0x401000,
        "counter": 0x403058,
        "ex_default_fixup": 0x40101C,
        "ex_default_insn": 0x401016,
        "ex_fixup_fixup": 0x40101B,
        "ex_fixup_insn": 0x401014,
        "ex_skip_insn": 0x401011,
        "ex_uaccess_fixup": 0x40101A,
        "ex_uaccess_insn": 0x40100E,
        "magic": 0x403050,
        "message": 0x402000,
        "ras_incr": 0x40101D,
        "ras_incr_end": 0x401027,
        "ras_incr_start": 0x40101D,
        "scratch": 0x403060,
    }


def test_hello_symbols():
    """A C program's functions, globals and inline-asm labels are all in the symbol table."""
    assert dict(load_elf(HELLO).symbols) == {
        "__bss_start": 0x401178,
        "_edata": 0x401178,
        "_end": 0x401200,
        "_start": 0x400100,
        "calls": 0x401170,
        "greeting": 0x400150,
        "probe": 0x4000F0,
        "probe_done": 0x4000F3,
        "probe_fixup": 0x400143,
        "probe_insn": 0x4000F0,
        "results": 0x401180,
    }


def test_symbols_point_at_their_bytes():
    """Reading segment data at a symbol's address gives the value the source put there."""
    extable, hello = load_elf(EXTABLE), load_elf(HELLO)
    assert _read(extable, extable.symbol("magic"), 8) == (0x1122334455667788).to_bytes(8, "little")
    assert _read(extable, extable.symbol("message"), 7) == b"akaros\0"
    assert _read(extable, extable.symbol("ex_uaccess_insn"), 3) == bytes.fromhex("488b18")  # mov (%rax),%rbx
    assert _read(hello, hello.symbol("greeting"), 14) == b"hello from C\n\0"
    assert _read(hello, hello.symbol("calls"), 8) == (1).to_bytes(8, "little")


def test_entry_and_name():
    """entry is e_entry (the _start symbol) and name is the file's basename."""
    for path in (EXTABLE, EXTABLE8, HELLO):
        program = load_elf(str(path))
        assert (program.name, program.entry) == (path.name, program.symbol("_start"))


# -- __ex_table and __ras ------------------------------------------------------


def test_extable_entries_match_their_labels():
    """Relative 12-byte entries decode to the labels' addresses and types, sorted by insn."""
    program = load_elf(EXTABLE)
    sym = program.symbol
    assert program.extable == (
        ExtableEntry(sym("ex_uaccess_insn"), sym("ex_uaccess_fixup"), ExtableType.UACCESS),
        ExtableEntry(sym("ex_skip_insn"), sym("ex_skip_insn"), ExtableType.SKIP),  # data 0x140
        ExtableEntry(sym("ex_fixup_insn"), sym("ex_fixup_fixup"), ExtableType.FIXUP),
        ExtableEntry(sym("ex_default_insn"), sym("ex_default_fixup"), ExtableType.FIXUP),  # data 0
    )


def test_extable_entsize_12_is_the_default_format(tmp_path):
    """An explicit sh_entsize of 12 decodes exactly as the unrecorded 0."""
    path, image = _copy(tmp_path, EXTABLE)
    header, _ = _section_offset(image, "__ex_table")
    struct.pack_into("<Q", image, header + SH_ENTSIZE, 12)
    path.write_bytes(image)
    assert load_elf(path).extable == load_elf(EXTABLE).extable


def test_extable_8_byte_format():
    """sh_entsize 8 selects the older (insn_rel, fixup_rel) entries, all FIXUP."""
    program = load_elf(EXTABLE8)
    assert program.extable == (ExtableEntry(program.symbol("old_insn"), program.symbol("old_fixup")),)


def test_hello_inline_asm_extable():
    """An _ASM_EXTABLE-style entry emitted from C inline asm decodes to its labels."""
    program = load_elf(HELLO)
    assert program.extable == (
        ExtableEntry(program.symbol("probe_insn"), program.symbol("probe_fixup"), ExtableType.UACCESS),
    )


def test_ras_entries():
    """__ras absolute triples become RasEntry records; programs without one have none."""
    program = load_elf(EXTABLE)
    sym = program.symbol
    assert program.ras == (RasEntry(sym("ras_incr_start"), sym("ras_incr_end"), sym("ras_incr_start")),)
    assert load_elf(HELLO).ras == ()
    assert load_elf(EXTABLE8).ras == ()


# -- errors ------------------------------------------------------------------


def test_missing_file(tmp_path):
    """A file that does not exist is an ElfError naming it."""
    _load_error(tmp_path / "nope.elf", "cannot read")


@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho not an elf\n", b"\x7fEL"])
def test_not_an_elf_file(tmp_path, content):
    """A file without the ELF magic is an ElfError naming it and what was found."""
    path = tmp_path / "script.sh"
    path.write_bytes(content)
    _load_error(path, "not an ELF file", repr(content[:4]))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "expected"),
    [
        (4, "<B", 1, "expected ELFCLASS64, got ELFCLASS32"),
        (5, "<B", 2, "expected ELFDATA2LSB (little-endian), got ELFDATA2MSB"),
        (E_MACHINE, "<H", 3, "expected e_machine EM_X86_64, got EM_386"),
        (E_MACHINE, "<H", 0xB7, "expected e_machine EM_X86_64, got EM_AARCH64"),
        (E_TYPE, "<H", 3, "expected e_type ET_EXEC (a static non-PIE executable), got ET_DYN"),
        (E_TYPE, "<H", 1, "got ET_REL"),
    ],
)
def test_wrong_kind_of_elf(tmp_path, offset, fmt, value, expected):
    """A 32-bit, big-endian, non-x86-64, PIE or relocatable file is rejected with expected vs found."""
    path, image = _copy(tmp_path, EXTABLE)
    struct.pack_into(fmt, image, offset, value)
    path.write_bytes(image)
    _load_error(path, expected)


def test_dynamically_linked(tmp_path):
    """A PT_INTERP segment means a dynamic executable, which is rejected."""
    path, image = _copy(tmp_path, EXTABLE)
    phoff = struct.unpack_from("<Q", image, E_PHOFF)[0]
    struct.pack_into("<I", image, phoff + P_TYPE, 3)  # first PT_LOAD -> PT_INTERP
    path.write_bytes(image)
    _load_error(path, "expected a statically linked executable, found PT_INTERP")


def test_segments_sharing_a_page(tmp_path):
    """Two PT_LOADs that overlap once rounded to pages are an ElfError naming both."""
    path, image = _copy(tmp_path, HELLO)
    phoff = struct.unpack_from("<Q", image, E_PHOFF)[0]
    # Move the data segment from 0x401168 to 0x400168, into the text segment's page;
    # its sections keep their sh_addr, so it is named by its PT_LOAD index.
    struct.pack_into("<Q", image, phoff + PHDR_SIZE + P_VADDR, 0x400168)
    path.write_bytes(image)
    _load_error(
        path, "segments '.text .rodata __ex_table' [0x400000, 0x40016c) and 'LOAD1' [0x400000, 0x4001f8) overlap"
    )


def test_bad_extable_type(tmp_path):
    """An entry whose type byte is not 0, 1, 3 or 0x40 is an ElfError naming its index and value."""
    path, image = _copy(tmp_path, EXTABLE)
    _, contents = _section_offset(image, "__ex_table")
    struct.pack_into("<I", image, contents + 12 + 8, 0x302)  # entry 1's data word
    path.write_bytes(image)
    _load_error(path, "__ex_table entry 1 at 0x402014: unknown type 0x2 (data 0x302)")


def test_extable_size_not_whole_entries(tmp_path):
    """An __ex_table whose size is not a multiple of its entry size is an ElfError."""
    path, image = _copy(tmp_path, EXTABLE)
    header, _ = _section_offset(image, "__ex_table")
    struct.pack_into("<Q", image, header + SH_SIZE, 0x2F)
    path.write_bytes(image)
    _load_error(path, "__ex_table: size 47 is not a multiple of its 12-byte entries")


def test_extable_unknown_entsize(tmp_path):
    """An sh_entsize other than 0, 8 or 12 is an ElfError."""
    path, image = _copy(tmp_path, EXTABLE)
    header, _ = _section_offset(image, "__ex_table")
    struct.pack_into("<Q", image, header + SH_ENTSIZE, 16)
    path.write_bytes(image)
    _load_error(path, "expected sh_entsize 0, 8 or 12, got 16")


def test_extable_duplicate_insn(tmp_path):
    """Two entries for one faulting instruction are ambiguous, so an ElfError."""
    path, image = _copy(tmp_path, EXTABLE)
    _, contents = _section_offset(image, "__ex_table")
    # Entry 1 (at 0x402014) now also points at entry 0's insn, ex_fixup_insn (0x401014).
    struct.pack_into("<i", image, contents + 12, 0x401014 - 0x402014)
    path.write_bytes(image)
    _load_error(path, "two entries for insn 0x401014")


def test_ras_size_not_whole_entries(tmp_path):
    """A __ras whose size is not a multiple of 24 is an ElfError."""
    path, image = _copy(tmp_path, EXTABLE)
    header, _ = _section_offset(image, "__ras")
    struct.pack_into("<Q", image, header + SH_SIZE, 16)
    path.write_bytes(image)
    _load_error(path, "__ras: size 16 is not a multiple of its 24-byte entries")


def test_ras_empty_sequence(tmp_path):
    """A __ras entry with start >= end is an ElfError naming the entry."""
    path, image = _copy(tmp_path, EXTABLE)
    _, contents = _section_offset(image, "__ras")
    struct.pack_into("<Q", image, contents + 8, 0x40101D)  # end = start
    path.write_bytes(image)
    _load_error(path, "__ras entry 0: RasEntry: expected start < end, got start=0x40101d end=0x40101d")


@pytest.mark.parametrize("size", [16, 0x30, 0x100, 0x1010, 0x2030, 0x2330, 9639])
def test_truncated_file(tmp_path, size):
    """A file cut short anywhere is an ElfError naming it."""
    path, image = _copy(tmp_path, EXTABLE)
    path.write_bytes(image[:size])
    message = _load_error(path)
    assert re.search(r"truncated|malformed", message), message


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fixture=st.sampled_from([EXTABLE, EXTABLE8, HELLO]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_corrupt_files_never_leak_pyelftools_errors(tmp_path, fixture, edits):
    """Overwriting a few bytes anywhere either still loads or raises ElfError, nothing else."""
    image = bytearray(fixture.read_bytes())
    for offset, value in edits:
        image[offset % len(image)] = value
    path = tmp_path / "corrupt.elf"
    path.write_bytes(image)
    try:
        load_elf(path)
    except ElfError as e:
        assert str(path) in str(e)
