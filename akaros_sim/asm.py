"""Assembler: Intel-syntax x86-64 source text -> Program, through keystone or clang.

Two backends take the same syntax and give the same Program: keystone where it
is importable (its wheels are x86-64 only), else clang's assembler from the
ziglang wheel (akaros_sim.asm_clang).  `backend=` or $AKAROS_SIM_ASM
(`keystone` or `clang`) chooses one.  Encodings may differ where x86 has two
(docs/scenarios.md, "Assembly: two backends"); the checks below apply to both.

`assemble(source)` builds a frozen Program: a `.text` segment (READ|EXEC) at
`base`, a `.data` segment (READ|WRITE) at `data_base` (default: the first page
boundary after `.text`), every label as a symbol, `_start` (else `base`) as
the entry, and the extable and RAS entries our two directives name.  Empty
segments are omitted: an empty source gives a Program with no segments.

Syntax (keystone's Intel dialect, one file, no preprocessor):

- Statements end at a newline or `;`.  Comments: `#` or `//` to end of line,
  `/* ... */` (may span lines).
- `.text` / `.data` (or `.section .text` / `.section .data`) switch section.
  Each section may name the other's labels: `.quad func`, `movabs rax, x`,
  `lea rsi, [rip + counter]`, `mov rax, [counter]`.
- `name:` defines a label.  `.L` labels work everywhere (our directives too)
  but are left out of `Program.symbols`.  Keystone rejects numeric labels.
- Constants (`name = expr`, `.set`, `.equ`) are local to their section.
- Data: `.byte .word .short .long .int .quad .ascii .asciz .string .zero
  .space .skip .fill .align .balign .p2align`; in `.data` an `.align` with no
  fill value pads with zeros (keystone would pad with NOPs).
- `.extable INSN, FIXUP[, TYPE]`, TYPE one of `fixup` (default), `uaccess`,
  `skip`; `.ras START, END[, RESTART]`, RESTART defaulting to START.  The
  arguments are labels (defined anywhere in the file) or integer addresses.
- `.type .size .file .ident .intel_syntax` are ignored; macros, conditionals,
  includes, `.cfi_*` and other sections are rejected (some crash keystone).

Keystone quirks handled here (measured with keystone 0.9.2; rejected with either backend, so a
source means the same to both):

- A bare numeric memory operand is RIP-relative: `mov rbx, [0x500000]`
  assembles as `mov rbx, [rip + 0x500000]`, as do `fs:[0x10]` and `[N]` for a
  constant N.  These are rejected: use a register base (`[rax]`) or a label
  (`[rip + label]` or `[label]`).
- Labels starting with `.` or `$` are rejected inside `[...]`; they are
  renamed (`__asm_dot_...`) on the way to the backend.
- How cross-section references are resolved and a failing line found:
  akaros_sim.asm_keystone.
- An unterminated string hangs keystone and an unbalanced `[` reads as
  `[0]`; both are rejected before either backend runs.
"""

from __future__ import annotations

import functools
import os
import re

import attrs

from akaros_sim import asm_clang, asm_keystone
from akaros_sim.memory import PAGE_SIZE, Prot
from akaros_sim.program import ExtableEntry, ExtableType, Program, RasEntry, Segment

__all__ = ["BACKENDS", "AsmError", "assemble", "default_backend"]

BACKENDS = ("keystone", "clang")

_RESERVED = "__asm_"
# Keystone rejects names starting with these inside [...], so labels are renamed for it.
_MANGLE = {".": "__asm_dot_", "$": "__asm_dollar_"}
# Directives with no effect on a flat image; keystone miscounts .type and .size.
_IGNORED = frozenset({".type", ".size", ".file", ".ident", ".intel_syntax"})
_UNSUPPORTED = re.compile(
    r"\.(cfi_\w+|pushsection|popsection|previous|bss|include|incbin|macro|endm|rept|irpc?|endr"
    r"|if\w*|else\w*|endif|att_syntax|code16|code32)$"
)

_NAME = r"[A-Za-z_.$][\w.$]*"
_LABEL = re.compile(rf"({_NAME})\s*:(?!:)\s*")
_EQUATE = re.compile(rf"(?:({_NAME})\s*=(?!=)|\.(?:set|equ|equiv)\s+({_NAME})\s*,)\s*(.*)$", re.I)
_NUMBER = re.compile(r"\b(?:0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9][0-9a-fA-F]*[hH]?)\b")
_STRING = re.compile(r"(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')")  # split() keeps them
_MEMORY = re.compile(r"\[([^\[\]]*)\]")
_SEGMENT_NUMBER = re.compile(r"\b[cdefgs]s\s*:\s*[-+(\s]*[0-9]", re.I)
_DATA_ALIGN = re.compile(r"(\.(?:b|p2)?align)\s+([^,]+)$", re.I)


class AsmError(ValueError):
    """Source that cannot be assembled; the message names program, line and text."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


@attrs.frozen
class _Line:
    """One source line's share of one section."""

    lineno: int
    text: str
    statements: tuple[str, ...]  # for keystone, labels as `name:` statements
    labels: tuple[str, ...]


@attrs.frozen
class _Directive:
    """A `.extable` or `.ras` directive, resolved after layout."""

    lineno: int
    text: str
    kind: str
    args: tuple[str, ...]


@attrs.frozen
class _Parsed:
    """The source sorted into sections, with our directives set aside."""

    text: tuple[_Line, ...]
    data: tuple[_Line, ...]
    directives: tuple[_Directive, ...]


def default_backend() -> str:
    """$AKAROS_SIM_ASM if set, else keystone when it is importable, else clang."""
    return os.environ.get("AKAROS_SIM_ASM") or ("keystone" if asm_keystone.available() else "clang")


def assemble(
    source: str, base: int = 0x400000, *, name: str = "asm", data_base: int | None = None, backend: str | None = None
) -> Program:
    """Assemble Intel-syntax x86-64 `source` into a Program.

    Args:
        source: assembly text (syntax in the module docstring).
        base: page-aligned address of the `.text` segment.
        name: program name, used in the Program and in error messages.
        data_base: page-aligned address of the `.data` segment; by default the
            first page boundary after the end of `.text`.
        backend: `keystone` or `clang`; by default default_backend().

    Returns:
        A frozen Program; identical arguments return the same (cached) object.

    Raises:
        ValueError: `base` or `data_base` is not a page-aligned address, or
            the backend is unknown or (keystone) not installed.
        AsmError: the source does not assemble; the message reads
            `name:LINE: what: 'line text'` plus the backend's reason when it has one.
    """
    for field, value in (("base", base), ("data_base", data_base)):
        if value is not None and (not isinstance(value, int) or value < 0 or value % PAGE_SIZE):
            raise ValueError(f"assemble: expected a page-aligned {field}, got {value!r}")
    backend = backend or default_backend()
    if backend not in BACKENDS or (backend == "keystone" and not asm_keystone.available()):
        why = "is not installed" if backend == "keystone" else f"is unknown (expected one of {', '.join(BACKENDS)})"
        raise ValueError(f"assemble: backend {backend!r} (backend= or $AKAROS_SIM_ASM) {why}")
    return _assemble_cached(source, base, name, data_base, backend)


@functools.lru_cache(maxsize=256)
def _assemble_cached(source: str, base: int, name: str, data_base: int | None, backend: str) -> Program:
    parsed = _parse(source, name)
    if backend == "clang":
        text, data, dbase, raw_labels = _clang(name, parsed, base, data_base)
    else:
        try:
            text, data, dbase, raw_labels = asm_keystone.layout(name, parsed.text, parsed.data, base, data_base)
        except asm_keystone.KeystoneAsmError as e:
            raise AsmError(str(e), e.lineno) from None
    labels = {_unmangle(n): a for n, a in raw_labels.items()}
    if text and data and dbase < base + len(text) and base < dbase + len(data):
        raise AsmError(f"{name}: data_base {dbase:#x} overlaps .text [{base:#x}, {base + len(text):#x})")
    segments = []
    if text:
        segments.append(Segment(addr=base, data=text, prot=Prot.READ | Prot.EXEC, name=".text"))
    if data:
        segments.append(Segment(addr=dbase, data=data, prot=Prot.READ | Prot.WRITE, name=".data"))
    extable, ras = _tables(name, parsed.directives, labels)
    return Program(
        name=name,
        segments=segments,
        symbols={n: a for n, a in labels.items() if not n.startswith(".L")},
        entry=labels.get("_start", base),
        extable=extable,
        ras=ras,
    )


def _clang(name: str, parsed: _Parsed, base: int, data_base: int | None):
    try:
        return asm_clang.assemble_sections(parsed.text, parsed.data, base, data_base)
    except asm_clang.ClangAsmError as e:
        line = next((x for x in parsed.text + parsed.data if x.lineno == e.lineno), None)
        if line is None:
            raise AsmError(f"{name}: {e.why}") from None
        why = f"{e.statement!r}: {e.why}" if len([s for s in line.statements if not s.endswith(":")]) > 1 else e.why
        kind = "directive" if e.statement and e.statement.startswith(".") else "instruction"
        raise AsmError(f"{name}:{line.lineno}: bad {kind}: {line.text.strip()!r} ({why})", line.lineno) from None


def _fail(name: str, lineno: int, text: str, what: str) -> AsmError:
    return AsmError(f"{name}:{lineno}: {what}: {text.strip()!r}", lineno)


# --- Parsing: split lines into sections, statements, labels and our directives.


def _parse(source: str, name: str) -> _Parsed:
    parser = _Parser(name)
    in_comment = False
    for lineno, text in enumerate(source.splitlines(), 1):
        try:
            statements, in_comment = _split(text, in_comment)
        except ValueError as e:
            raise _fail(name, lineno, text, str(e)) from None
        parser.line(lineno, text, statements)
    if in_comment:
        raise AsmError(f"{name}: unterminated /* comment at end of source")
    return parser.result()


class _Parser:
    """Sorts statements into sections; lifecycle: line() for each source line, then result() once."""

    def __init__(self, name: str):
        self.name = name
        self.section = ".text"
        self.sections: dict[str, list[_Line]] = {".text": [], ".data": []}
        self.directives: list[_Directive] = []
        self.label_lines: dict[str, int] = {}
        self.equates: dict[str, tuple[int, str]] = {}
        self.constants: set[str] = set()  # equates of plain numbers, for the [N] check

    def line(self, lineno: int, text: str, statements: list[str]) -> None:
        parts: dict[str, tuple[list[str], list[str]]] = {}  # section -> (statements, labels)
        for stmt in statements:
            while m := _LABEL.match(stmt):
                stmt = stmt[m.end() :]
                self.label(lineno, text, m[1])
                stmts, labels = parts.setdefault(self.section, ([], []))
                stmts.append(f"{m[1]}:")
                labels.append(m[1])
            if stmt and (stmt := self.statement(lineno, text, stmt)):
                parts.setdefault(self.section, ([], []))[0].append(stmt)
        for section, (stmts, labels) in parts.items():
            self.sections[section].append(_Line(lineno, text, tuple(stmts), tuple(labels)))

    def label(self, lineno: int, text: str, label: str) -> None:
        if label.startswith(_RESERVED):
            raise _fail(self.name, lineno, text, f"label {label!r} uses the reserved prefix {_RESERVED!r}")
        if label in self.label_lines:
            first = self.label_lines[label]
            raise _fail(self.name, lineno, text, f"duplicate label {label!r} (first defined on line {first})")
        self.label_lines[label] = lineno

    def statement(self, lineno: int, text: str, stmt: str) -> str | None:
        """Handle our directives here; return what keystone should see, if anything."""
        head, *tail = stmt.split(None, 1)
        word, rest = head.lower(), tail[0] if tail else ""
        if word in (".text", ".data"):
            self.section = word
        elif word == ".section":
            self.section = rest.split(",")[0].strip()
            if self.section not in self.sections:  # keystone crashes on .section
                raise _fail(self.name, lineno, text, f"unsupported section {self.section!r} (use .text or .data)")
        elif word in (".extable", ".ras"):
            self.directives.append(_directive(self.name, lineno, text, word, rest))
        elif _UNSUPPORTED.match(word):
            raise _fail(self.name, lineno, text, f"unsupported directive {word}")
        elif word not in _IGNORED:
            if m := _EQUATE.match(stmt):
                equate = m[1] or m[2]
                self.equates.setdefault(equate, (lineno, text))
                if not _identifiers(m[3]) - self.constants:
                    self.constants.add(equate)
            return _rewrite(self.name, lineno, text, stmt, self.section, self.constants)
        return None

    def result(self) -> _Parsed:
        for equate, (lineno, text) in self.equates.items():
            if equate in self.label_lines:  # `x = 5` would silently redefine label x
                raise _fail(self.name, lineno, text, f"{equate!r} is also a label (line {self.label_lines[equate]})")
        # keystone rejects labels starting with `.` or `$` inside [...]: rename them.
        odd = sorted((lab for lab in self.label_lines if lab[0] in _MANGLE), key=len, reverse=True)
        rename = _renamer(odd)
        return _Parsed(*(tuple(map(rename, self.sections[s])) for s in (".text", ".data")), tuple(self.directives))


def _renamer(labels: list[str]):
    if not labels:
        return lambda line: line
    names = re.compile(r"(?<![\w.$])(" + "|".join(map(re.escape, labels)) + r")(?![\w.$])")

    def in_code(stmt: str) -> str:
        parts = _STRING.split(stmt)  # odd indexes are string literals
        return "".join(p if i % 2 else names.sub(lambda m: _mangle(m[1]), p) for i, p in enumerate(parts))

    return lambda line: attrs.evolve(
        line, statements=tuple(map(in_code, line.statements)), labels=tuple(map(_mangle, line.labels))
    )


def _mangle(label: str) -> str:
    return _MANGLE[label[0]] + label[1:] if label[0] in _MANGLE else label


def _unmangle(name: str) -> str:
    for first, prefix in _MANGLE.items():
        if name.startswith(prefix):
            return first + name[len(prefix) :]
    return name


def _split(text: str, in_comment: bool) -> tuple[list[str], bool]:
    """The statements of one line, comments removed; also whether a /* comment is still open."""
    statements, current, i = [], [], 0
    while i < len(text):
        if in_comment:
            end = text.find("*/", i)
            if end < 0:
                break
            in_comment, i = False, end + 2
            current.append(" ")
            continue
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < len(text) and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):  # keystone loops forever on an unterminated string
                raise ValueError("unterminated string")
            current.append(text[i : j + 1])
            i = j + 1
        elif c == "#" or text.startswith("//", i):
            break
        elif text.startswith("/*", i):
            in_comment, i = True, i + 2
        elif c == ";":
            statements.append("".join(current))
            current, i = [], i + 1
        else:
            current.append(c)
            i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()], in_comment


# Register names that may appear in a memory operand (never labels or constants).
_REGISTERS = frozenset(
    [f"r{n}" for n in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip")]
    + [f"e{n}" for n in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip")]
    + [f"r{i}{s}" for i in range(8, 16) for s in ("", "d", "w", "b")]
    + ["fs", "gs", "cs", "ds", "es", "ss"]
)


def _identifiers(expr: str) -> set[str]:
    return set(re.findall(_NAME, _NUMBER.sub(" ", expr)))


def _rewrite(name: str, lineno: int, text: str, stmt: str, section: str, constants: set[str]) -> str:
    """Check one keystone statement for the traps keystone sets; return it as keystone should see it."""
    bare = _STRING.sub('""', stmt)
    if bare.count("[") != bare.count("]") or bare.count("(") != bare.count(")"):
        raise _fail(name, lineno, text, "unbalanced brackets")  # keystone reads `[rbx` as `[0]`
    for operand in _MEMORY.findall(bare):
        if not _identifiers(operand) - constants:
            raise _fail(
                name, lineno, text,
                f"memory operand [{operand.strip()}] has no register or label; keystone would encode it as "
                "[rip + ...]: use a register base or [rip + label]",
            )
        names = _identifiers(operand) - _REGISTERS
        if names & constants and names - constants:
            raise _fail(
                name, lineno, text,
                f"memory operand [{operand.strip()}] mixes a label ({', '.join(sorted(names - constants))}) with a "
                f"named constant ({', '.join(sorted(names & constants))}); keystone silently drops one of them: "
                "write the offset as a number or go through a register",
            )
    if _SEGMENT_NUMBER.search(bare):
        raise _fail(name, lineno, text, "segment:number operand; keystone makes it [rip + ...]: use a register base")
    if section == ".data" and (m := _DATA_ALIGN.match(stmt)):
        return f"{m[1]} {m[2].strip()}, 0"  # zero padding, not NOPs
    return stmt


def _directive(name: str, lineno: int, text: str, kind: str, rest: str) -> _Directive:
    args = tuple(a.strip() for a in rest.split(",")) if rest else ()
    if not 2 <= len(args) <= 3 or not all(args):
        usage = ".extable INSN, FIXUP[, TYPE]" if kind == ".extable" else ".ras START, END[, RESTART]"
        raise _fail(name, lineno, text, f"expected {usage}")
    return _Directive(lineno, text, kind, args)


# --- Tables: resolve .extable and .ras arguments once every label has its address.


def _tables(name: str, directives: tuple[_Directive, ...], labels: dict[str, int]):
    extable: dict[int, tuple[ExtableEntry, _Directive]] = {}
    ras: list[tuple[RasEntry, _Directive]] = []
    for d in directives:
        addrs = [_address(name, d, arg, labels) for arg in d.args[:2]]
        if d.kind == ".extable":
            try:
                kind = ExtableType.from_name(d.args[2]) if len(d.args) == 3 else ExtableType.FIXUP
            except ValueError as e:
                raise _fail(name, d.lineno, d.text, str(e)) from None
            if addrs[0] in extable:
                first = extable[addrs[0]][1].lineno
                raise _fail(name, d.lineno, d.text, f"second .extable entry for {addrs[0]:#x} (first on line {first})")
            extable[addrs[0]] = (ExtableEntry(insn=addrs[0], fixup=addrs[1], type=kind), d)
        else:
            restart = _address(name, d, d.args[2], labels) if len(d.args) == 3 else addrs[0]
            try:
                ras.append((RasEntry(start=addrs[0], end=addrs[1], restart=restart), d))
            except ValueError as e:
                raise _fail(name, d.lineno, d.text, str(e)) from None
    ras.sort(key=lambda r: (r[0].start, r[0].end))
    for (prev, pd), (cur, cd) in zip(ras, ras[1:], strict=False):
        if cur.start < prev.end:
            raise _fail(name, cd.lineno, cd.text, f".ras [{cur.start:#x}, {cur.end:#x}) overlaps line {pd.lineno}")
    return [e for _, (e, _) in sorted(extable.items())], [r for r, _ in ras]


def _address(name: str, d: _Directive, arg: str, labels: dict[str, int]) -> int:
    if arg in labels:
        return labels[arg]
    try:
        return int(arg, 0)
    except ValueError:
        raise _fail(name, d.lineno, d.text, f"unknown label {arg!r} in {d.kind}") from None
