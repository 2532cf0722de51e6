"""ELF loading: a static x86-64 executable becomes a Program.

`load_elf` reads what a kernel's ELF loader would map and nothing it would
not: the PT_LOAD segments, rounded to pages exactly as mmap rounds them, plus
the metadata the simulator needs from the section table:

- `.symtab`: function, object and untyped symbols, name -> address;
- `__ex_table`: Linux's relative exception table.  Each 32-bit field holds
  the signed offset of its target from the field's own address, so an entry
  at address A is (insn = A + insn_rel, fixup = A + 4 + fixup_rel, data).
  The low byte of `data` is Linux's EX_TYPE_* (0 and 1 FIXUP, 3 UACCESS,
  0x40 our SKIP); its upper bits (Linux's register/flag/immediate operands)
  are ignored.  An sh_entsize of 8 selects the older two-field format, whose
  entries are all FIXUP;
- `__ras`: restartable atomic sequences, little-endian absolute 64-bit
  triples (start, end, restart), e.g. `.quad 1f, 2f, 1f`.

Only static, non-PIE executables are accepted (ELFCLASS64, little-endian,
EM_X86_64, ET_EXEC, no PT_INTERP or PT_DYNAMIC): the simulator has no dynamic
linker and does not relocate.  Anything else is an ElfError that names the
file and says what was expected and what was found.
"""

from __future__ import annotations

import io
import os
import struct

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.constants import P_FLAGS, SH_FLAGS
from elftools.elf.elffile import ELFFile

from akaros_sim.memory import PAGE_SIZE, Prot, page_up
from akaros_sim.program import ExtableEntry, ExtableType, Program, RasEntry, Segment

EXTABLE_SECTION = "__ex_table"
RAS_SECTION = "__ras"

# Linux's EX_DATA_TYPE_MASK: the low byte of an entry's data word is its type.
_EX_DATA_TYPE_MASK = 0xFF
# EX_TYPE_NONE (0) is read as EX_TYPE_DEFAULT: a zero data word means a plain fixup.
_EXTABLE_TYPES = {0: ExtableType.FIXUP, 1: ExtableType.FIXUP, 3: ExtableType.UACCESS, 0x40: ExtableType.SKIP}
# sh_entsize -> entry size; 0 means the tool did not record one: the 12-byte format.
_EXTABLE_ENTSIZES = {0: 12, 8: 8, 12: 12}
_EX_RELS = struct.Struct("<ii")  # insn_rel, fixup_rel
_EX_DATA = struct.Struct("<I")
_RAS_ENTRY = struct.Struct("<QQQ")  # start, end, restart

_SYMBOL_TYPES = ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
# When names repeat (local statics in different files), the strongest binding wins.
_BINDING_RANK = {"STB_GLOBAL": 0, "STB_WEAK": 1}

_ELF_MAGIC = b"\x7fELF"
_EI_CLASS, _EI_DATA, _EI_NIDENT = 4, 5, 16
_CLASS_NAMES = {0: "ELFCLASSNONE", 1: "ELFCLASS32", 2: "ELFCLASS64"}
_DATA_NAMES = {0: "ELFDATANONE", 1: "ELFDATA2LSB", 2: "ELFDATA2MSB"}


class ElfError(ValueError):
    """An ELF file load_elf cannot turn into a Program; the message names the file."""


def load_elf(path: str | os.PathLike) -> Program:
    """Load a static x86-64 executable as a Program.

    Args:
        path: the ELF file.  Program.name is its basename.

    Returns:
        A Program whose segments are the PT_LOAD segments in address order
        (each rounded down to its page, the gap filled with the file bytes a
        kernel's mmap would map there), whose symbols come from `.symtab`,
        whose entry is e_entry (None if 0), and whose extable and ras come
        from `__ex_table` and `__ras`, sorted by address.

    Raises:
        ElfError: the file cannot be read, is not an ELF file, is not a static
            ELFCLASS64 little-endian EM_X86_64 ET_EXEC executable, is
            truncated, has segments that share a page, or has a malformed
            `__ex_table` or `__ras`.  The message names the file.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            image = f.read()
    except OSError as e:
        raise ElfError(f"{where}: cannot read: {e.strerror or e}") from None
    _check_ident(where, image)
    try:
        elf = ELFFile(io.BytesIO(image))
        _check_header(where, elf, len(image))
        segments = _segments(where, elf, image)
        symbols = _symbols(elf)
        extable = _extable(where, elf)
        ras = _ras(where, elf)
    except _PyElfError as e:  # pyelftools' parse errors, ELFParseError included
        raise ElfError(f"{where}: malformed ELF: {e}") from None
    except OverflowError:  # BytesIO.seek past 2**63: a corrupt sh_name or st_name
        raise ElfError(f"{where}: malformed ELF: a string table offset is out of range") from None
    return Program(
        name=os.path.basename(where),
        segments=segments,
        symbols=symbols,
        entry=elf["e_entry"] or None,
        extable=extable,
        ras=ras,
    )


def _check_ident(where: str, image: bytes) -> None:
    """Check e_ident ourselves: pyelftools would happily parse a 32-bit file."""
    if image[:4] != _ELF_MAGIC:
        raise ElfError(f"{where}: not an ELF file (expected magic {_ELF_MAGIC!r}, got {image[:4]!r})")
    if len(image) < _EI_NIDENT:
        raise ElfError(f"{where}: truncated ELF identification (expected {_EI_NIDENT} bytes, got {len(image)})")
    ei_class, ei_data = image[_EI_CLASS], image[_EI_DATA]
    if ei_class != 2:
        raise ElfError(f"{where}: expected ELFCLASS64, got {_CLASS_NAMES.get(ei_class, ei_class)}")
    if ei_data != 1:
        raise ElfError(f"{where}: expected ELFDATA2LSB (little-endian), got {_DATA_NAMES.get(ei_data, ei_data)}")


def _check_header(where: str, elf: ELFFile, size: int) -> None:
    """Check machine and type, and that every header and section lies inside the file."""
    if elf["e_machine"] != "EM_X86_64":
        raise ElfError(f"{where}: expected e_machine EM_X86_64, got {elf['e_machine']}")
    if elf["e_type"] != "ET_EXEC":
        raise ElfError(f"{where}: expected e_type ET_EXEC (a static non-PIE executable), got {elf['e_type']}")
    # pyelftools reads past EOF as short data, so bounds are checked here.
    if elf["e_phoff"] + elf["e_phentsize"] * elf["e_phnum"] > size:
        raise ElfError(f"{where}: truncated: program headers end past the file's {size} bytes")
    if elf["e_shoff"]:
        if elf["e_shoff"] + elf["e_shentsize"] > size:
            raise ElfError(f"{where}: truncated: section headers start past the file's {size} bytes")
        if elf["e_shoff"] + elf["e_shentsize"] * elf.num_sections() > size:
            raise ElfError(f"{where}: truncated: section headers end past the file's {size} bytes")
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS" and section["sh_offset"] + section["sh_size"] > size:
            raise ElfError(
                f"{where}: truncated: section {section.name!r} ends at file offset "
                f"{section['sh_offset'] + section['sh_size']:#x}, past the file's {size} bytes"
            )


def _segments(where: str, elf: ELFFile, image: bytes) -> list[Segment]:
    """The PT_LOAD segments, page-aligned, in address order; no two may share a page."""
    segments = []
    loads = 0
    for phdr in elf.iter_segments():
        kind = phdr["p_type"]
        if kind in ("PT_INTERP", "PT_DYNAMIC"):
            raise ElfError(f"{where}: expected a statically linked executable, found {kind}")
        if kind != "PT_LOAD":
            continue
        index, loads = loads, loads + 1
        if phdr["p_memsz"] == 0:
            continue
        segments.append(_segment(where, elf, image, phdr, index))
    segments.sort(key=lambda s: s.addr)
    for low, high in zip(segments, segments[1:], strict=False):
        if page_up(low.end) > high.addr:
            raise ElfError(
                f"{where}: segments {low.name!r} [{low.addr:#x}, {low.end:#x}) and {high.name!r} "
                f"[{high.addr:#x}, {high.end:#x}) overlap once rounded to {PAGE_SIZE}-byte pages"
            )
    return segments


def _segment(where: str, elf: ELFFile, image: bytes, phdr, index: int) -> Segment:
    """One PT_LOAD as a Segment starting at its page, as mmap maps it."""
    vaddr, offset = phdr["p_vaddr"], phdr["p_offset"]
    filesz, memsz = phdr["p_filesz"], phdr["p_memsz"]
    if filesz > memsz:
        raise ElfError(f"{where}: PT_LOAD {index}: expected p_filesz <= p_memsz, got {filesz:#x} > {memsz:#x}")
    if offset + filesz > len(image):
        raise ElfError(
            f"{where}: truncated: PT_LOAD {index} ends at file offset {offset + filesz:#x}, "
            f"past the file's {len(image)} bytes"
        )
    # mmap maps from file offset (p_offset - pad); offsets before the file start read as zeros.
    pad = vaddr % PAGE_SIZE
    head = bytes(max(0, pad - offset)) + image[max(0, offset - pad) : offset]
    flags = phdr["p_flags"]
    prot = Prot.NONE
    if flags & P_FLAGS.PF_R:
        prot |= Prot.READ
    if flags & P_FLAGS.PF_W:
        prot |= Prot.WRITE
    if flags & P_FLAGS.PF_X:
        prot |= Prot.EXEC
    sections = [
        s.name
        for s in elf.iter_sections()
        if s["sh_flags"] & SH_FLAGS.SHF_ALLOC and s["sh_size"] and phdr.section_in_segment(s)
    ]
    return Segment(
        addr=vaddr - pad,
        data=head + image[offset : offset + filesz],
        prot=prot,
        name=" ".join(sections) or f"LOAD{index}",
        memsz=pad + memsz,
    )


def _symbols(elf: ELFFile) -> dict[str, int]:
    """Named, nonzero function/object/untyped symbols; globals beat weaks beat locals."""
    best: dict[str, tuple[int, int]] = {}
    for symtab in elf.iter_sections("SHT_SYMTAB"):
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] not in _SYMBOL_TYPES or not sym["st_value"] or not sym.name:
                continue
            rank = _BINDING_RANK.get(sym["st_info"]["bind"], 2)
            if sym.name not in best or rank < best[sym.name][0]:
                best[sym.name] = (rank, sym["st_value"])
    return {name: value for name, (_, value) in best.items()}


def _table_data(where: str, section, entsize: int) -> bytes:
    """The bytes of an allocated table section holding whole `entsize`-byte entries."""
    if section["sh_type"] == "SHT_NOBITS" or not section["sh_flags"] & SH_FLAGS.SHF_ALLOC:
        raise ElfError(
            f"{where}: {section.name}: expected an allocated section with contents, got {section['sh_type']}"
        )
    data = section.data()
    if len(data) % entsize:
        raise ElfError(f"{where}: {section.name}: size {len(data)} is not a multiple of its {entsize}-byte entries")
    return data


def _extable(where: str, elf: ELFFile) -> list[ExtableEntry]:
    """Decode `__ex_table` (relative fields), sorted by insn; duplicate insns are an error."""
    section = elf.get_section_by_name(EXTABLE_SECTION)
    if section is None:
        return []
    entsize = _EXTABLE_ENTSIZES.get(section["sh_entsize"])
    if entsize is None:
        raise ElfError(f"{where}: {EXTABLE_SECTION}: expected sh_entsize 0, 8 or 12, got {section['sh_entsize']}")
    data = _table_data(where, section, entsize)
    entries = []
    for i, offset in enumerate(range(0, len(data), entsize)):
        at = section["sh_addr"] + offset
        insn_rel, fixup_rel = _EX_RELS.unpack_from(data, offset)
        kind = ExtableType.FIXUP
        if entsize == 12:
            (value,) = _EX_DATA.unpack_from(data, offset + 8)
            kind = _EXTABLE_TYPES.get(value & _EX_DATA_TYPE_MASK)
            if kind is None:
                raise ElfError(
                    f"{where}: {EXTABLE_SECTION} entry {i} at {at:#x}: unknown type "
                    f"{value & _EX_DATA_TYPE_MASK:#x} (data {value:#x}); expected 0, 0x1, 0x3 or 0x40"
                )
        try:
            entries.append(ExtableEntry(insn=at + insn_rel, fixup=at + 4 + fixup_rel, type=kind))
        except ValueError as e:
            raise ElfError(f"{where}: {EXTABLE_SECTION} entry {i} at {at:#x}: {e}") from None
    entries.sort(key=lambda e: e.insn)
    for a, b in zip(entries, entries[1:], strict=False):
        if a.insn == b.insn:
            raise ElfError(f"{where}: {EXTABLE_SECTION}: two entries for insn {a.insn:#x}")
    return entries


def _ras(where: str, elf: ELFFile) -> list[RasEntry]:
    """Decode `__ras` (absolute triples), sorted by start; overlapping sequences are an error."""
    section = elf.get_section_by_name(RAS_SECTION)
    if section is None:
        return []
    entries = []
    for i, fields in enumerate(_RAS_ENTRY.iter_unpack(_table_data(where, section, _RAS_ENTRY.size))):
        try:
            entries.append(RasEntry(*fields))
        except ValueError as e:
            raise ElfError(f"{where}: {RAS_SECTION} entry {i}: {e}") from None
    entries.sort(key=lambda e: e.start)
    for a, b in zip(entries, entries[1:], strict=False):
        if a.end > b.start:
            raise ElfError(
                f"{where}: {RAS_SECTION}: sequences [{a.start:#x}, {a.end:#x}) and [{b.start:#x}, {b.end:#x}) overlap"
            )
    return entries
