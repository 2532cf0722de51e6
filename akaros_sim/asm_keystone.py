"""The assembler's keystone backend: akaros_sim.asm's parsed sections -> bytes and label addresses.

Keystone quirks handled here (measured with keystone 0.9.2; the ones a
statement can trip are rejected by akaros_sim.asm's parser, for both backends):

- In `[rip + sym]` a symbol defined as a number is a displacement, and
  `ks.sym_resolver` symbols are 4 bytes off in PC-relative uses.  So each
  section is assembled with the other's labels defined relative to a label at
  its own start (`x = __asm_section_start + 0x1000`), which every form
  resolves correctly, and re-assembled until no label moves.
- A bad statement followed by more statements is often dropped without an
  error; the statement count (prefixes like `rep`, `lock` count one extra)
  gives it away.  Errors carry no usable line, so the failing line is found
  by bisecting over prefixes of the source.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

from akaros_sim.memory import page_up

try:
    import keystone
except ImportError:  # no wheel for this host (keystone has x86-64 ones only): akaros_sim.asm uses clang
    keystone = None

__all__ = ["KeystoneAsmError", "available", "layout"]

# Cross-section layout passes; a pass that moves no label ends the loop, which
# takes two passes unless an address change resizes an instruction.
_MAX_PASSES = 8
# Label we put at offset 0 of every section to anchor the other section's labels.
_ANCHOR = "__asm_section_start"
_SKIPPED = "keystone skipped a statement without an error"
# Instruction prefixes keystone counts as statements of their own.
_PREFIXES = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "data16", "rex64"})


class KeystoneAsmError(Exception):
    """Keystone rejected the source: the message names program, line and text; `lineno` the line."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


class _KsFailure(Exception):
    """Keystone rejected (or silently skipped part of) a source; carries the reason."""


def available() -> bool:
    """Whether keystone is importable."""
    return keystone is not None


def layout(name: str, text_lines: Sequence, data_lines: Sequence, base: int, data_base: int | None):
    """Assemble akaros_sim.asm's parsed lines (lineno, text, statements, labels) of both sections.

    Returns (text bytes, data bytes, data address, {label: address});
    raises KeystoneAsmError naming the failing line.
    """
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    data_guess = data_base if data_base is not None else base
    data_labels = {lab: data_guess for line in data_lines for lab in line.labels}
    for _ in range(_MAX_PASSES):
        text, text_labels = _assemble_section(ks, name, text_lines, base, data_labels)
        dbase = data_base if data_base is not None else page_up(base + len(text))
        data, new_data_labels = _assemble_section(ks, name, data_lines, dbase, text_labels)
        if new_data_labels == data_labels:  # .text was built with the right data addresses
            return text, data, dbase, {**text_labels, **data_labels}
        data_labels = new_data_labels
    raise KeystoneAsmError(f"{name}: cross-section label addresses did not settle after {_MAX_PASSES} passes")


def _assemble_section(ks, name: str, lines: Sequence, addr: int, extern: dict[str, int]):
    """Assemble one section at `addr` with `extern` labels defined; returns (bytes, {label: address})."""
    if not lines:
        return b"", {}
    labels = [lab for line in lines for lab in line.labels]
    prelude = [f"{_ANCHOR}:"] + [
        f"{sym} = {_ANCHOR} {'+' if value >= addr else '-'} {abs(value - addr):#x}" for sym, value in extern.items()
    ]
    body = [s for line in lines for s in line.statements]
    # The label table: one .quad per label after the code, read back from the end.
    table = [f".quad {lab}" for lab in labels]
    try:
        out = _run(ks, prelude + body + table, addr)
    except _KsFailure as e:
        raise _diagnose(ks, name, lines, prelude, addr, str(e)) from None
    size = len(out) - 8 * len(labels)
    return out[:size], dict(zip(labels, struct.unpack(f"<{len(labels)}Q", out[size:]), strict=True))


def _run(ks, statements: list[str], addr: int) -> bytes:
    """Assemble one statement per line; _KsFailure if keystone errs or skips a statement."""
    try:
        out, count = ks.asm("\n".join(statements), addr, as_bytes=True)
    except keystone.KsError as e:
        raise _KsFailure(str(e)) from None
    prefixes = (itertools.takewhile(_PREFIXES.__contains__, s.lower().split()[:-1]) for s in statements)
    expected = len(statements) + sum(len(list(p)) for p in prefixes)
    if count != expected:
        raise _KsFailure(f"{_SKIPPED} ({count} of {expected} statements)")
    return out or b""


def _diagnose(ks, name: str, lines: Sequence, prelude: list[str], addr: int, reason: str) -> KeystoneAsmError:
    """Find the first line whose statements make keystone fail, by bisecting over prefixes."""

    def failure(k: int, last: tuple[str, ...] = ()) -> str | None:
        # Labels of the lines left out stay defined so forward references resolve;
        # they go first so that a failing statement is last, where keystone reports it.
        later = [f"{lab}:" for line in lines[k:] for lab in line.labels]
        try:
            _run(ks, prelude + later + [s for line in lines[:k] for s in line.statements] + list(last), addr)
        except _KsFailure as e:
            return str(e)
        return None

    why = failure(len(lines))
    if why is None or failure(0) is not None:
        return KeystoneAsmError(f"{name}: keystone: {reason}")
    good, bad = 0, len(lines)
    while bad - good > 1:
        mid = (good + bad) // 2
        if (w := failure(mid)) is None:
            good = mid
        else:
            bad, why = mid, w
    line = lines[bad - 1]
    statements = [s for s in line.statements if not s.endswith(":")]
    if why.startswith(_SKIPPED):  # keystone reports an error only for the last statement: ask per statement
        for stmt in statements:
            if (w := failure(bad - 1, (stmt,))) is not None:
                why = f"{stmt!r}: {w}"
                break
    kind = "directive" if statements and statements[-1].startswith(".") else "instruction"
    return KeystoneAsmError(f"{name}:{line.lineno}: bad {kind}: {line.text.strip()!r} ({why})", line.lineno)
