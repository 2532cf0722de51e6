"""The assembler's second backend: clang's integrated assembler and lld, from the ziglang wheel.

Keystone has wheels for x86-64 hosts only; on the others (macOS arm64, Linux
aarch64) akaros_sim.asm hands its parsed source here.  The statements keystone
would see go, one per line, into a single `.intel_syntax noprefix` file that
Zig's clang assembles (``zig cc -target x86_64-linux-musl -c``); lld links it
with a script that puts `.text` at the base and `.data` at its address, which
resolves every label, relocation and cross-section reference.  A table of
`.quad LABEL` in a non-allocated section gives each label's address.

Results are cached like C builds (akaros_sim.toolchain): under the sha256 of
the toolchain version and the generated file, in ``cache_dir()/asm``; a failure
is cached as the generated line and clang's message, so only the source
lines' text is looked up again.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from akaros_sim import toolchain
from akaros_sim.memory import page_up

__all__ = ["ClangAsmError", "assemble_sections"]

_CACHE_FORMAT = "akaros-sim asm clang 1"
_TABLE = ".akaros_asm_labels"  # the label table's section: not allocated, so it takes no address
# In our syntax (keystone's) a bare operand naming a label is an immediate (`mov edx, end - start`,
# `movabs rax, counter`); clang reads one as a memory load, and takes an immediate only as `offset SYM`
# of a single symbol.  So such an operand becomes `offset __asm_imm_N`, with `__asm_imm_N = expr` before it.
_REGISTER = re.compile(
    r"[re]?[abcd]x|[abcd][lh]|[re]?(?:si|di|bp|sp|ip)|(?:si|di|bp|sp)l|r(?:[89]|1[0-5])[dwb]?|[c-gs]s"
    r"|[xyz]mm\d+|k[0-7]|[cd]r\d+|st|ptr|byte|word|dword|qword|tbyte|xmmword|ymmword|zmmword|offset|short|near|far",
    re.I,
)
_NAME = re.compile(r"(?<![\w.$])[A-Za-z_.$][\w.$]*")
_NUMBER = re.compile(r"\b(?:0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9][0-9a-fA-F]*[hH]?)\b")
_EQUATE = re.compile(r"^[A-Za-z_.$][\w.$]*\s*=(?!=)|^\.(?:set|equ|equiv)\b", re.I)
_PREFIX = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "data16", "rex64", "notrack", "bnd"})
_BRANCH = re.compile(r"j\w+|call|loop\w*|xbegin", re.I)  # their label operand is a target, not a value
_DIAGNOSTIC = re.compile(r"^(?:.*[\\/])?in\.s:(\d+):\d+: error: (.*)$")


class ClangAsmError(Exception):
    """clang or lld rejected the source: `lineno` is the source line at fault (None if unknown), `why` the reason."""

    def __init__(self, why: str, lineno: int | None = None, statement: str | None = None):
        super().__init__(why)
        self.why, self.lineno, self.statement = why, lineno, statement


def assemble_sections(text_lines: Sequence, data_lines: Sequence, base: int, data_base: int | None):
    """Assemble and link the parsed lines (akaros_sim.asm's: lineno, statements, labels).

    Returns (text bytes, data bytes, data address, {label: address}), as the
    keystone layout does; raises ClangAsmError with the failing source line.
    """
    source, where = _source(text_lines, data_lines)
    labels = [lab for line in (*text_lines, *data_lines) for lab in line.labels]
    script = _script(base, data_base)
    outcome = _cached(source, script)
    if isinstance(outcome, tuple):
        gen_line, why = outcome
        lineno, statement = where.get(gen_line, (None, None))
        raise ClangAsmError(why, lineno, statement)
    with io.BytesIO(outcome) as f:
        elf = ELFFile(f)
        text, _ = _section(elf, ".text", base)
        data, dbase = _section(elf, ".data", data_base if data_base is not None else page_up(base + len(text)))
        table = elf.get_section_by_name(_TABLE)
        table = table.data() if table is not None else b""
    addrs = struct.unpack(f"<{len(labels)}Q", table) if labels else ()
    return text, data, dbase, dict(zip(labels, addrs, strict=True))


def _section(elf: ELFFile, name: str, default: int) -> tuple[bytes, int]:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_size"] == 0:
        return b"", default
    return section.data(), section["sh_addr"]


def _source(text_lines: Sequence, data_lines: Sequence) -> tuple[str, dict[int, tuple[int, str]]]:
    """The file clang assembles, and {its line: (source line, statement)}."""
    out = [".intel_syntax noprefix"]
    where: dict[int, tuple[int, str]] = {}
    for section, lines in ((".text", text_lines), (".data", data_lines)):
        out.append(section)
        for line in lines:
            for stmt in line.statements:
                for generated in _immediates(stmt, len(out)):
                    out.append(generated)
                    where[len(out)] = (line.lineno, stmt)
    out.append(f'.section {_TABLE},"",@progbits')
    out += [f".quad {lab}" for line in (*text_lines, *data_lines) for lab in line.labels]
    return "\n".join(out) + "\n", where


def _immediates(stmt: str, serial: int) -> list[str]:
    """`stmt` as clang should read it: each bare operand naming a symbol made an immediate through an equate."""
    if stmt.startswith(".") or stmt.endswith(":") or _EQUATE.match(stmt):
        return [stmt]
    words = stmt.split(None, 1)
    prefix = ""
    while len(words) == 2 and words[0].lower() in _PREFIX:
        prefix += words[0] + " "
        words = words[1].split(None, 1)
    if len(words) < 2 or _BRANCH.fullmatch(words[0]):
        return [stmt]
    equates, operands = [], []
    for operand in _operands(words[1]):
        names = [n for n in _NAME.findall(_NUMBER.sub(" ", operand)) if not _REGISTER.fullmatch(n)]
        if names and not re.search(r"[\[\]:]", operand) and not re.search(r"\b(?:ptr|offset)\b", operand, re.I):
            equate = f"__asm_imm_{serial}_{len(equates)}"
            equates.append(f"{equate} = {operand.strip()}")
            operand = f" offset {equate}" if operand.startswith(" ") else f"offset {equate}"
        operands.append(operand)
    return [*equates, f"{prefix}{words[0]} {','.join(operands)}"]


def _operands(text: str) -> list[str]:
    """Split operands at top-level commas (not inside brackets or parentheses)."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c in "[(") - (c in "])")
        if c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return [*out, text[start:]]


def _script(base: int, data_base: int | None) -> str:
    """The linker script: .text at base, .data at data_base or the page after .text, nothing else loaded."""
    data = f"{data_base:#x}" if data_base is not None else "ALIGN(0x1000)"
    return (
        f"SECTIONS {{\n  . = {base:#x};\n  .text : {{ *(.text) }}\n  .data {data} : {{ *(.data) }}\n"
        f"  {_TABLE} 0 (INFO) : {{ *({_TABLE}) }}\n  /DISCARD/ : {{ *(.note*) *(.comment) }}\n}}\n"
    )


def _cached(source: str, script: str) -> bytes | tuple[int, str]:
    """The linked ELF, or (generated line, reason) for a failure; from the cache when it has them."""
    digest = hashlib.sha256()
    for part in (_CACHE_FORMAT, toolchain.toolchain_version(), source, script):
        digest.update(part.encode() + b"\0")
    folder = toolchain.cache_dir() / "asm"
    path = folder / digest.hexdigest()
    if path.with_suffix(".elf").is_file():
        return path.with_suffix(".elf").read_bytes()
    if path.with_suffix(".err").is_file():
        line, _, why = path.with_suffix(".err").read_text(encoding="utf-8").partition("\n")
        return int(line), why
    outcome = _build(source, script)
    suffix, data = (".elf", outcome) if isinstance(outcome, bytes) else (".err", f"{outcome[0]}\n{outcome[1]}".encode())
    toolchain.store(path.with_suffix(suffix), data)
    return outcome


def _build(source: str, script: str) -> bytes | tuple[int, str]:
    zig = toolchain.zig_command()
    with tempfile.TemporaryDirectory(prefix="akaros-sim-asm-") as tmp:
        Path(tmp, "in.s").write_text(source, encoding="utf-8")
        Path(tmp, "link.ld").write_text(script, encoding="utf-8")
        proc = _run([*zig, "cc", "-target", "x86_64-linux-musl", "-g0", "-c", "in.s", "-o", "in.o"], tmp)
        if proc.returncode != 0 or not Path(tmp, "in.o").is_file():
            return _first_error(proc.stderr + proc.stdout, proc.returncode)
        if undefined := _undefined(Path(tmp, "in.o").read_bytes()):
            return _line_naming(source, undefined[0]), f"undefined symbol {undefined[0]!r}"
        proc = _run([*zig, "ld.lld", "-T", "link.ld", "--no-check-sections", "-e", "0", "in.o", "-o", "out.elf"], tmp)
        if proc.returncode != 0 or not Path(tmp, "out.elf").is_file():
            return 0, toolchain.first_error(proc.stderr + proc.stdout, None, proc.returncode)
        return Path(tmp, "out.elf").read_bytes()


def _run(command: list[str], cwd: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ClangAsmError(f"cannot run the toolchain: {exc.strerror or exc}") from None


def _first_error(output: str, returncode: int) -> tuple[int, str]:
    for line in output.splitlines():
        if m := _DIAGNOSTIC.match(line.strip()):
            return int(m[1]), f"clang: {m[2]}"
    return 0, toolchain.first_error(output, None, returncode)


def _undefined(obj: bytes) -> list[str]:
    """The symbols the object uses but does not define (sorted), which lld would report without a line."""
    try:
        symtab = ELFFile(io.BytesIO(obj)).get_section_by_name(".symtab")
    except ELFError:
        return []
    names = (s.name for s in symtab.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF") if symtab else ()
    return sorted(names)


def _line_naming(source: str, symbol: str) -> int:
    """The first generated line that names `symbol` (0 if none does)."""
    word = re.compile(rf"(?<![\w.$]){re.escape(symbol)}(?![\w.$])")
    return next((i for i, line in enumerate(source.splitlines(), 1) if word.search(line)), 0)
