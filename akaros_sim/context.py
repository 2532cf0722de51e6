"""UserContext: the x86-64 user register file plus reflected-trap fields.

This is what Akaros keeps in `struct user_context` for a uthread: the general
registers a kernel saves in a `hw_trapframe`, and, for a context that stopped on
a hardware trap, the trap number, error code and aux word (CR2 for a page
fault) that the kernel reflects to user space.  `fpstate` holds everything else
the emulated CPU carries (x87/SSE registers, flags of the emulator itself) as
an opaque snapshot, the way Akaros keeps FP state in `uth->as`.
"""

from __future__ import annotations

import ctypes
import enum

# Register order of Akaros's hw_trapframe (kern/arch/x86/ros/trapframe64.h),
# which is also the order a trapframe is printed in.
GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
REG_NAMES = GPR_NAMES + ("rip", "rflags", "rsp", "fs_base", "gs_base")
_REG_INDEX = {name: i for i, name in enumerate(REG_NAMES)}
_RFLAGS_INDEX = _REG_INDEX["rflags"]

U64 = (1 << 64) - 1


def neg_errno(code: int) -> int:
    """-code as a syscall's 64-bit return value (what rax holds)."""
    return -code & U64


# rflags bits user code may change (CF PF AF ZF SF TF DF OF AC ID); IF and the
# reserved bit 1 are always set, IOPL stays 0, as a kernel enforces on return.
FL_USER_MASK = 0x0DD5 | 0x40000 | 0x200000
FL_ALWAYS = 0x202


class TrapNr(enum.IntEnum):
    """x86 vector numbers, named as in Akaros's kern/arch/x86/trap.h."""

    DE = 0  # divide error
    DB = 1  # debug
    NMI = 2
    BP = 3  # breakpoint
    OF = 4  # overflow
    BR = 5  # bound
    UD = 6  # invalid opcode
    NM = 7  # device not available
    DF = 8  # double fault
    TS = 10
    NP = 11
    SS = 12
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16  # x87 FP error
    AC = 17  # alignment check
    MC = 18
    XM = 19  # SIMD FP
    SYSCALL = 48  # Akaros's T_SYSCALL software interrupt


class PfErr(enum.IntFlag):
    """Page-fault error code bits (Akaros's PF_ERROR_* plus PF_VMR_BACKED)."""

    P = 0x1  # protection violation on a present page (0: not present)
    W = 0x2  # the access was a write
    U = 0x4  # the access came from user mode (always, here)
    I = 0x10  # noqa: E741 - the access was an instruction fetch
    VMR_BACKED = 0x80000000  # a valid VMR whose page is not populated yet


def _check_u64(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64:
        raise ValueError(f"UserContext.{name}: expected an unsigned 64-bit int, got {value!r}")
    return value


def _reg_property(index: int, name: str) -> property:
    def get(self) -> int:
        return self.raw[index]

    def set(self, value: int) -> None:
        self.raw[index] = _check_u64(name, value)

    return property(get, set, doc=f"{name} (u64)")


_RegArray = ctypes.c_uint64 * len(REG_NAMES)
_PtrArray = ctypes.c_void_p * len(REG_NAMES)


class UserContext:
    """The saved state of a user context.

    Lifecycle: made by whoever creates a uthread (entry rip, stack rsp), run
    by `Cpu.run`, which writes back every register and, when the run stopped
    on a trap, the trap fields; a fault handler may edit any register before
    the context runs again.

    The registers live in a ctypes array that Unicorn reads and writes in
    place (`uc_reg_{read,write}_batch` with `ptrs`), which is what keeps a
    slice switch cheap; as attributes they are validated u64 ints.
    """

    __slots__ = ("raw", "ptrs", "trap_nr", "err", "aux", "fault_pending", "fpstate")

    def __init__(
        self, *, trap_nr: int = 0, err: int = 0, aux: int = 0, fault_pending: bool = False,
        fpstate: bytes | None = None, **regs: int,
    ) -> None:  # fmt: skip
        self.raw = _RegArray()
        base = ctypes.addressof(self.raw)
        self.ptrs = _PtrArray(*(base + 8 * i for i in range(len(REG_NAMES))))
        self.raw[_RFLAGS_INDEX] = FL_ALWAYS
        for name, value in regs.items():
            if name not in _REG_INDEX:
                raise TypeError(f"UserContext: unknown register {name!r} (expected one of {', '.join(REG_NAMES)})")
            self.raw[_REG_INDEX[name]] = _check_u64(name, value)
        # reflected trap (tf_trapno, tf_err, the aux word), valid when fault_pending
        self.trap_nr = trap_nr
        self.err = err
        self.aux = aux
        self.fault_pending = fault_pending
        # emulated CPU state beyond the registers (x87/SSE), opaque; not compared
        self.fpstate = fpstate

    def __eq__(self, other) -> bool:
        if not isinstance(other, UserContext):
            return NotImplemented
        return tuple(self.raw) == tuple(other.raw) and (
            self.trap_nr, self.err, self.aux, self.fault_pending
        ) == (other.trap_nr, other.err, other.aux, other.fault_pending)

    __hash__ = None

    def __repr__(self) -> str:
        regs = ", ".join(f"{name}={value}" for name, value in zip(REG_NAMES, self.raw, strict=True))
        return (
            f"UserContext({regs}, trap_nr={self.trap_nr}, err={self.err}, aux={self.aux}, "
            f"fault_pending={self.fault_pending})"
        )

    def regs(self) -> dict[str, int]:
        """The registers by name, in trapframe order."""
        return dict(zip(REG_NAMES, self.raw, strict=True))

    def copy(self) -> UserContext:
        """An independent copy (fpstate is immutable and shared)."""
        return UserContext(
            trap_nr=self.trap_nr, err=self.err, aux=self.aux, fault_pending=self.fault_pending,
            fpstate=self.fpstate, **self.regs(),
        )  # fmt: skip

    def set_trap(self, trap_nr: int, err: int = 0, aux: int = 0) -> None:
        """Mark this context as carrying a reflected trap."""
        self.trap_nr, self.err, self.aux, self.fault_pending = int(trap_nr), err, aux, True

    def clear_trap(self) -> None:
        """Forget the reflected trap, as parlib does before calling thread_refl_fault."""
        self.trap_nr, self.err, self.aux, self.fault_pending = 0, 0, 0, False

    def __str__(self) -> str:
        lines = [f"  {name:<7} 0x{getattr(self, name):016x}" for name in REG_NAMES]
        if self.fault_pending:
            try:
                trap = TrapNr(self.trap_nr).name
            except ValueError:
                trap = "?"
            lines.append(f"  trap    0x{self.trap_nr:08x} {trap}")
            lines.append(f"  err     0x{self.err:08x}")
            lines.append(f"  aux     0x{self.aux:016x}")
        return "\n".join(lines)


for _i, _name in enumerate(REG_NAMES):
    setattr(UserContext, _name, _reg_property(_i, _name))
del _i, _name
