"""Disassembly (capstone) for reports, instruction lengths, and fault addresses.

Besides printing the instruction at an address, this module answers the one
question the CPU cannot get from Unicorn: the exact linear address of a faulting
data access.  Unicorn's TLB-fill hook only sees the page; CR2 is recomputed
from the faulting instruction's memory operands and the registers it faulted
with (a faulting instruction has not changed any of them).
"""

from __future__ import annotations

import functools

import attrs
from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsError
from capstone import x86_const as cx

from akaros_sim.context import REG_NAMES

MAX_INSN = 15  # longest x86 instruction


@attrs.frozen
class Insn:
    """One decoded instruction."""

    addr: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    def __str__(self) -> str:
        text = f"{self.mnemonic} {self.op_str}".strip()
        return f"{self.addr:#x}: {self.raw.hex(' ')}  {text}"


@functools.cache
def _cs(detail: bool) -> Cs:
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = detail
    return cs


def _read_code(mem, addr: int) -> bytes:
    """Up to MAX_INSN bytes at addr, fewer if the mapping ends sooner."""
    return mem.read_prefix(addr, MAX_INSN)


def disassemble(mem, addr: int, count: int = 1) -> list[Insn]:
    """Decode up to `count` instructions at `addr` from an AddressSpace (fewer if undecodable)."""
    out: list[Insn] = []
    for _ in range(count):
        code = _read_code(mem, addr)
        insn = next(_cs(False).disasm(code, addr, 1), None)
        if insn is None:
            break
        out.append(Insn(insn.address, insn.size, insn.mnemonic, insn.op_str, bytes(insn.bytes)))
        addr += insn.size
    return out


def describe_insn(mem, addr: int) -> str:
    """The instruction at addr as one line, or a note that it cannot be decoded."""
    return _describe(_read_code(mem, addr), addr)


@functools.lru_cache(maxsize=4096)
def _describe(code: bytes, addr: int) -> str:
    insn = next(_cs(False).disasm(code, addr, 1), None)
    if insn is None:
        return f"{addr:#x}: <no decodable instruction>"
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    return f"{addr:#x}: {bytes(insn.bytes).hex(' ')}  {text}"


def insn_length(mem, addr: int) -> int:
    """The length in bytes of the instruction at addr; ValueError if it cannot be decoded."""
    insns = disassemble(mem, addr)
    if not insns:
        raise ValueError(f"no decodable instruction at {addr:#x}")
    return insns[0].size


_STRING_SRC = ("movs", "lods", "cmps", "outs")
_STRING_DST = ("movs", "stos", "cmps", "scas", "ins")
_U64 = (1 << 64) - 1
_REG64 = {"rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}


_REG_INDEX = {name: i for i, name in enumerate(REG_NAMES)}


def _index(name: str | None) -> int | None:
    """A register's index in UserContext.raw (the recipe reads registers by index, not by name)."""
    return None if name is None else _REG_INDEX[name]


def _reg_ref(name: str | None) -> tuple[str | None, int]:
    """(UserContext field, mask) for a capstone address register; 'rip' means the next rip."""
    if name is None:
        return None, 0
    if name == "rip" or name in _REG64:
        return name, _U64
    if name.startswith("e") and "r" + name[1:] in _REG64:  # 32-bit addressing
        return "r" + name[1:], 0xFFFF_FFFF
    if name.startswith("r") and name.endswith("d") and name[:-1] in _REG64:  # r8d..r15d
        return name[:-1], 0xFFFF_FFFF
    return None, 0


@functools.lru_cache(maxsize=4096)
def _recipe(code: bytes, addr: int) -> tuple:
    """How to compute each memory range the instruction touches: a tuple of
    (base, base_mask, index, index_mask, scale, disp, segment, size)."""
    try:
        insn = next(_cs(True).disasm(code, addr, 1), None)
    except CsError:
        insn = None
    if insn is None:
        return ()
    out = []
    for op in insn.operands:
        if op.type != cx.X86_OP_MEM:
            continue
        mem = op.mem
        base, bmask = _reg_ref(insn.reg_name(mem.base) if mem.base else None)
        index, imask = _reg_ref(insn.reg_name(mem.index) if mem.index else None)
        seg = insn.reg_name(mem.segment) if mem.segment else None
        disp = mem.disp + (addr + insn.size if base == "rip" else 0)
        if base == "rip":
            base = None
        seg = _REG_INDEX[seg + "_base"] if seg in ("fs", "gs") else None
        out.append((_index(base), bmask, _index(index), imask, mem.scale, disp, seg, op.size or 8))
    name = insn.mnemonic.split()[-1]
    if name.startswith("push") or name == "call":
        out.append((_REG_INDEX["rsp"], _U64, None, 0, 1, -8, None, 8))
    elif name.startswith(("pop", "ret", "iret")):
        out.append((_REG_INDEX["rsp"], _U64, None, 0, 1, 0, None, 8))
    elif name == "leave":
        out.append((_REG_INDEX["rbp"], _U64, None, 0, 1, 0, None, 8))
    if name.startswith(_STRING_SRC):
        out.append((_REG_INDEX["rsi"], _U64, None, 0, 1, 0, None, 8))
    if name.startswith(_STRING_DST):
        out.append((_REG_INDEX["rdi"], _U64, None, 0, 1, 0, None, 8))
    return tuple(out)


def access_ranges(mem, ctx) -> list[tuple[int, int]]:
    """The (address, size) memory ranges the instruction at ctx.rip touches, explicit and implicit."""
    out = []
    raw = ctx.raw
    for base, bmask, index, imask, scale, disp, seg, size in _recipe(_read_code(mem, ctx.rip), ctx.rip):
        ea = disp
        if base is not None:
            ea += raw[base] & bmask
        if index is not None:
            ea += (raw[index] & imask) * scale
        if seg is not None:
            ea += raw[seg]
        out.append((ea & _U64, size))
    return out


def fault_address(mem, ctx, page: int) -> int:
    """CR2 for a data fault on `page` by the instruction at ctx.rip.

    The first byte of the access that lies in the faulting page: the operand's
    own address, or the page start when the access straddles into it.  Falls
    back to the page start when no operand of the instruction touches it.
    """
    for ea, size in access_ranges(mem, ctx):
        if ea < page + 4096 and ea + size > page:
            return max(ea, page)
    return page
