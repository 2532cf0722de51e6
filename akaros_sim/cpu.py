"""The emulated x86-64 CPU: run a UserContext for a budget and say why it stopped.

`Cpu.run(ctx, budget)` loads `ctx` into the process's Unicorn instance, runs at
most `budget` instructions and returns a frozen stop record:

* `BudgetSpent`: the budget ran out; `rip` is the next instruction.
* `SyscallStop`: a `syscall` instruction (number in rax, arguments in rdi, rsi,
  rdx, r10, r8, r9); like hardware it leaves rip after the instruction,
  rcx = that rip and r11 = rflags.
* `TrapStop`: a hardware trap with x86 semantics (trap number, error code,
  aux = CR2 for #PF).  For faults rip is the faulting instruction, for traps
  (#BP, #DB single-step and icebp, `int 0x30`) the one after.

The guest runs in ring 3 (a tiny boot stub `iretq`s there once per Cpu), so
`hlt`, `cli`, `in`/`out`, control-register moves and `int n` through a DPL-0
gate raise #GP exactly as on hardware.  Unicorn's own deviations are corrected
here, each one tested in tests/test_cpu.py:

* `ud2` and other invalid opcodes arrive as UC_ERR_INSN_INVALID, not vector 6;
  `icebp` (0xF1) arrives the same way and is reported as the #DB trap it is.
* Unicorn hands `int n` to the interrupt hook before the IDT gate's DPL check;
  as in Akaros only vectors 3 (T_BRKPT) and 48 (T_SYSCALL) are DPL 3, every
  other `int n` becomes #GP with error code n*8+2 at the `int`.
* Unicorn never clears its "exception in flight" state, so the second
  contributory exception would be reported as a double fault and the third
  stops silently; after every exception the state is reset.
* `syscall` with no hook is a silent no-op; it is hooked.
* `rdtsc`/`rdtscp` would read the host TSC: they return `Cpu.tsc()`, by default
  the number of instructions this Cpu has retired.  The CPU model is Sandy
  Bridge, which has no `rdrand`/`rdseed`, so those are #UD instead of host
  randomness.
* A `call` to a non-canonical address is #GP at the call with nothing pushed,
  as on hardware (Akaros's Go runtime relies on it: `call rax` with
  rax>>48 == 0xDEAD).  A `jmp` or `ret` there is reported as #GP with rip =
  the target: Unicorn only sees the failed fetch, and nothing records where
  the branch was.

Instruction accounting is exact at full speed.  Budgets use Unicorn's
`count=` (exact, `until=0` so no translated block is invalidated per slice);
for a run that stops early the number of retired instructions is read from
Unicorn's own instruction counter (`uc_struct.emu_counter`, located once per
process by `calibrate()`): the faulting instruction is not counted, a syscall
or trap instruction is.  `rep` string instructions count one per iteration,
as Unicorn does.
"""

from __future__ import annotations

import ctypes
import functools
import struct

import attrs
from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UcError
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib

from akaros_sim.context import FL_ALWAYS, FL_USER_MASK, REG_NAMES, U64, PfErr, TrapNr, UserContext
from akaros_sim.disasm import disassemble, fault_address
from akaros_sim.memory import KERNEL_BASE, KERNEL_SIZE, Access, AddressSpace, Prot
from akaros_sim.stops import BudgetSpent, StopReason, SyscallStop, TrapStop

_GDT = (
    0,
    0x00AF9A000000FFFF,  # 0x08 kernel code, 64-bit
    0x00CF92000000FFFF,  # 0x10 kernel data
    0x00CFF2000000FFFF,  # 0x18 user data, DPL 3
    0x00AFFA000000FFFF,  # 0x20 user code, 64-bit, DPL 3
)
USER_CS, USER_SS = 0x23, 0x1B
_BOOT = KERNEL_BASE + 0x1000
_BOOT_USER = KERNEL_BASE + 0x1800  # where the boot stub lands in ring 3
# push ss(0x1b); push rsp(0); push rflags(0x202); push cs(0x23);
# mov rax, _BOOT_USER; push rax; iretq
_BOOT_CODE = (
    b"\x6a\x1b\x6a\x00\x68\x02\x02\x00\x00\x6a\x23\x48\xb8"
    + struct.pack("<Q", _BOOT_USER)
    + b"\x50\x48\xcf"
)
_BOOT_INSNS = 7

_UC_REGS = {
    "rax": x86.UC_X86_REG_RAX, "rbx": x86.UC_X86_REG_RBX, "rcx": x86.UC_X86_REG_RCX,
    "rdx": x86.UC_X86_REG_RDX, "rbp": x86.UC_X86_REG_RBP, "rsi": x86.UC_X86_REG_RSI,
    "rdi": x86.UC_X86_REG_RDI, "r8": x86.UC_X86_REG_R8, "r9": x86.UC_X86_REG_R9,
    "r10": x86.UC_X86_REG_R10, "r11": x86.UC_X86_REG_R11, "r12": x86.UC_X86_REG_R12,
    "r13": x86.UC_X86_REG_R13, "r14": x86.UC_X86_REG_R14, "r15": x86.UC_X86_REG_R15,
    "rip": x86.UC_X86_REG_RIP, "rflags": x86.UC_X86_REG_RFLAGS, "rsp": x86.UC_X86_REG_RSP,
    "fs_base": x86.UC_X86_REG_FS_BASE, "gs_base": x86.UC_X86_REG_GS_BASE,
}  # fmt: skip
_NREGS = len(REG_NAMES)
_RIP, _RFLAGS = REG_NAMES.index("rip"), REG_NAMES.index("rflags")

# Vectors whose IDT gate is DPL 3 in Akaros (kern/arch/x86/trap.c).
_USER_GATES = frozenset({TrapNr.BP, TrapNr.SYSCALL})
# Exceptions delivered after the instruction completed (rip is the next one).
_TRAP_KIND = frozenset({TrapNr.BP, TrapNr.DB, TrapNr.OF, TrapNr.SYSCALL})
_PF_U, _PF_W, _PF_I, _PF_P, _PF_VMR_BACKED = (int(f) for f in (PfErr.U, PfErr.W, PfErr.I, PfErr.P, PfErr.VMR_BACKED))


class _TlbEntry(ctypes.Structure):
    """Unicorn's uc_tlb_entry, written in place by the TLB fill hook."""

    _fields_ = (("paddr", ctypes.c_uint64), ("perms", ctypes.c_uint32))


# bool (*)(uc_engine *, uint64_t vaddr, uc_mem_type, uc_tlb_entry *, void *user_data)
_TLB_FILL_CFUNC = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_void_p)  # fmt: skip


class CpuError(RuntimeError):
    """The emulator did something this module does not understand (a bug, never guest behaviour)."""


def is_canonical(addr: int) -> bool:
    """Bits 63..47 all equal, as x86-64 requires of a linear address."""
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


# -- calibration ----------------------------------------------------------------


@attrs.frozen
class Calibration:
    """Offsets into Unicorn's private structures, found by experiment (see calibrate)."""

    counter_off: int  # uc_struct.emu_counter
    error_code_off: int  # CPUX86State.error_code within a context blob
    is_int_off: int  # CPUX86State.exception_is_int
    old_exception_off: int  # CPUX86State.old_exception


def _i32(blob: bytes, off: int) -> int:
    return struct.unpack_from("<i", blob, off)[0]


@functools.cache
def calibrate() -> Calibration:
    """Locate the Unicorn fields this module reads or resets, once per process.

    The layout depends on the Unicorn build, so nothing is hard-coded: a
    scratch CPU runs known snippets and the fields are found where their known
    values appear.  Raises CpuError if this build does not behave as measured.
    """
    probe = Cpu(AddressSpace(), _calibration=None)
    code = 0x10000
    probe.mem.map(code, 0x1000, Prot.READ | Prot.EXEC, "probe")

    def run(snippet: bytes, rax: int = 0, count: int = 100) -> bytes:
        probe.mem.write(code, snippet + b"\x90" * 8 + b"\x0f\x0b")
        probe._restore_ext(None)
        probe._uc.reg_write(x86.UC_X86_REG_RAX, rax)
        try:
            probe._uc.emu_start(code, 0, count=count)
        except UcError:
            pass
        return probe._save_ext()

    # emu_counter sits right before emu_count; a budget stop leaves them at
    # (budget + 1, budget).  Two different budgets pin the field down.
    uch = ctypes.cast(probe._uc._uch, ctypes.c_void_p).value
    candidates: set[int] | None = None
    for budget in (3, 0x3A1):
        run(b"\xeb\xfe", count=budget)  # jmp $
        raw = ctypes.string_at(uch, 4096)
        hits = {o for o in range(0, 4088, 8) if struct.unpack_from("<QQ", raw, o) == (budget + 1, budget)}
        candidates = hits if candidates is None else candidates & hits
    if len(candidates) != 1:
        raise CpuError(f"cannot locate Unicorn's instruction counter (candidates {sorted(candidates)})")
    counter_off = candidates.pop()

    # error_code: #GP(selector) from loading a selector beyond the GDT limit.
    a = run(b"\x8e\xd8", rax=0x100)  # mov ds, ax
    b = run(b"\x8e\xd8", rax=0x110)
    err = [o for o in range(0, len(a) - 4, 4) if (_i32(a, o), _i32(b, o)) == (0x100, 0x110)]
    # exception_is_int follows error_code: 1 after `int 0x80`, 0 after #GP.
    c = run(b"\xcd\x80")
    err = [o for o in err if _i32(c, o + 4) == 1 and _i32(a, o + 4) == 0]
    # old_exception: -1 when fresh, 0 after #DE, 13 after #GP.
    d = run(b"\x31\xc9\x48\xf7\xf1")  # xor ecx, ecx; div rcx
    fresh = probe._template
    old = [o for o in range(0, len(a) - 4, 4) if (_i32(fresh, o), _i32(d, o), _i32(a, o)) == (-1, 0, 13)]
    if len(err) != 1 or len(old) != 1:
        raise CpuError(f"cannot locate Unicorn's exception state (error_code {err}, old_exception {old})")
    return Calibration(counter_off, err[0], err[0] + 4, old[0])


# -- the CPU --------------------------------------------------------------------


class Cpu:
    """One emulated CPU over one address space (all vcores share it in turn).

    Lifecycle: built on an AddressSpace (installs every hook, then boots to
    ring 3 once); then `run` any number of contexts, in any order.  The
    CPU-internal state of the context that ran last stays live in Unicorn and
    is saved into its `fpstate` only when another context runs (lazy
    switching, as kernels do with FPU state); call `flush()` before copying
    a context that may be live.
    """

    def __init__(self, mem: AddressSpace, *, _calibration: Calibration | None | bool = True) -> None:
        self.mem = mem
        self._uc = uc = mem.uc
        self._uch = uc._uch
        self.retired = 0  # instructions retired by this Cpu, over all runs
        self.tsc = self.instructions  # what rdtsc returns (a runtime may replace it)
        self._running = False
        # per-run record, written by the hooks (two-context rule: hooks only record)
        self._intr: int | None = None
        self._syscall = False
        self._io_rip: int | None = None
        self._watch_stop = False
        self._booting = True
        self._live: UserContext | None = None  # whose fpstate is in Unicorn now
        # raw-ctypes register batch (the Python batch API costs ~58 us)
        self._reg_ids = (ctypes.c_int * _NREGS)(*(_UC_REGS[n] for n in REG_NAMES))
        self._uc_ctx = uc.context_save()

        # The TLB fill hook runs on every fault and every page first touched: registered through the
        # C API with the entry as an address, it skips the binding's wrapper frames and the entry
        # struct a denied access never writes.
        self._hook_error: BaseException | None = None
        self._tlb_cb = _TLB_FILL_CFUNC(self._on_tlb_fill)
        uc._Uc__do_hook_add(UC_HOOK_TLB_FILL, self._tlb_cb, 1, 0)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
        # Unicorn runs in/out even in ring 3 (it skips the IOPL/TSS check).
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        # The Python binding refuses RDTSC/RDTSCP insn hooks; the C API takes them.
        self._tsc_cb = uccallback(uc, HOOK_INSN_CPUID_CFUNC)(self._on_rdtsc)
        for insn in (x86.UC_X86_INS_RDTSC, x86.UC_X86_INS_RDTSCP):
            uc._Uc__do_hook_add(UC_HOOK_INSN, self._tsc_cb, 1, 0, ctypes.c_int(insn))
        self._boot()
        self._template = self._save_ext()
        self._cal = calibrate() if _calibration is True else _calibration
        if self._cal is not None:
            self._counter = ctypes.c_uint64.from_address(ctypes.cast(self._uch, ctypes.c_void_p).value + self._cal.counter_off)

    # -- boot ---------------------------------------------------------------------

    def _boot(self) -> None:
        """Enter ring 3 through `iretq`, so privilege checks behave as for user code."""
        uc = self._uc
        uc.mem_map(KERNEL_BASE, KERNEL_SIZE)
        uc.mem_write(KERNEL_BASE, struct.pack(f"<{len(_GDT)}Q", *_GDT))
        uc.mem_write(_BOOT, _BOOT_CODE)
        uc.mem_write(_BOOT_USER, b"\x90")
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, KERNEL_BASE, 8 * len(_GDT) - 1, 0))
        uc.reg_write(x86.UC_X86_REG_RSP, KERNEL_BASE + KERNEL_SIZE - 16)
        uc.emu_start(_BOOT, 0, count=_BOOT_INSNS)
        self._booting = False
        # Drop the TLB entries the boot made, so the kernel pages are denied from now on.
        uc.ctl(ucc.UC_CTL_TLB_FLUSH, ucc.UC_CTL_IO_WRITE)
        if uc.reg_read(x86.UC_X86_REG_CS) != USER_CS or uc.reg_read(x86.UC_X86_REG_SS) != USER_SS:
            raise CpuError("boot stub did not reach ring 3")

    # -- hooks (record and stop; never switch, map or start emulation here) ---------

    def _on_tlb_fill(self, _uch, vaddr, access, entry, _key) -> bool:
        try:
            if self._booting and KERNEL_BASE <= vaddr < KERNEL_BASE + KERNEL_SIZE:
                perms = 7
            else:
                perms = self.mem.tlb_perms(vaddr, access)
                if perms < 0:
                    return False
            fill = _TlbEntry.from_address(entry)
            fill.paddr = vaddr & ~0xFFF
            fill.perms = perms
            return True
        except BaseException as exc:  # (ctypes would print and drop it): Cpu.run raises it as a CpuError
            if self._hook_error is None:
                self._hook_error = exc
            self._uc.emu_stop()
            return False

    def _on_intr(self, uc, intno, _ud) -> None:
        self._intr = intno
        uc.emu_stop()

    def _on_syscall(self, uc, _ud) -> None:
        self._syscall = True
        uc.emu_stop()

    def _on_in(self, uc, _port, size, _ud) -> int:
        self._io_rip = uc.reg_read(x86.UC_X86_REG_RIP)
        self._io_counter = self._counter.value
        uc.emu_stop()
        # Return what the destination already holds, so the stopped `in` changes nothing.
        return uc.reg_read(x86.UC_X86_REG_RAX) & ((1 << (8 * size)) - 1)

    def _on_out(self, uc, _port, _size, _value, _ud) -> None:
        self._io_rip = uc.reg_read(x86.UC_X86_REG_RIP)
        self._io_counter = self._counter.value
        uc.emu_stop()

    def _on_rdtsc(self, _uc, _ud) -> int:
        value = self.tsc() & U64
        uc = self._uc
        uc.reg_write(x86.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
        uc.reg_write(x86.UC_X86_REG_RDX, value >> 32)
        return 1  # handled: Unicorn skips the instruction

    def instructions(self) -> int:
        """Instructions retired by this Cpu so far, exact even from inside a run."""
        if self._running:
            # inside a hook: the counter includes the instruction being executed
            return self.retired + self._counter.value - 1
        return self.retired

    def watch(self, addr: int, fn) -> None:
        """Before each instruction at `addr`, call fn(insns run so far in this slice); if it returns
        True the slice stops there, as if its budget were spent (the explorer's injection points)."""
        self._uc.hook_add(UC_HOOK_CODE, self._on_watch, fn, addr, addr)

    def _on_watch(self, uc, _addr, _size, fn) -> None:
        if fn(self._counter.value - 1):
            self._watch_stop = True
            uc.emu_stop()

    # -- running --------------------------------------------------------------------

    def run(self, ctx: UserContext, budget: int) -> StopReason:
        """Run `ctx` for at most `budget` instructions (>= 1) and write its registers back.

        Returns the stop record; on a TrapStop the context also carries the trap
        (`ctx.fault_pending`).  Raises ValueError for a bad budget, CpuError if
        Unicorn stops for a reason this module does not know.
        """
        if not isinstance(budget, int) or not 1 <= budget <= (1 << 62):
            raise ValueError(f"Cpu.run: expected a budget in [1, 2**62], got {budget!r}")
        if ctx is not self._live:
            self._switch_to(ctx)
        # Unicorn reads and writes the context's own register array in place.
        regs, ptrs = ctx.raw, ctx.ptrs
        regs[_RFLAGS] = (regs[_RFLAGS] & FL_USER_MASK) | FL_ALWAYS
        uclib.uc_reg_write_batch(self._uch, self._reg_ids, ptrs, _NREGS)
        self._intr = None
        self._syscall = False
        self._io_rip = None
        self._watch_stop = False
        self.mem.last_fault = None
        self._running = True
        try:
            status = uclib.uc_emu_start(self._uch, regs[_RIP], 0, 0, budget)
        finally:
            self._running = False
        uclib.uc_reg_read_batch(self._uch, self._reg_ids, ptrs, _NREGS)
        if self._hook_error is not None:
            exc, self._hook_error = self._hook_error, None
            raise CpuError(f"the TLB fill hook raised {type(exc).__name__}: {exc}") from exc
        counter = self._counter.value
        if self._watch_stop and status == ucc.UC_ERR_OK:
            self.retired += counter - 1  # the watched instruction has not run
            return BudgetSpent(counter - 1)
        if status == ucc.UC_ERR_OK and self._intr is None and not self._syscall and self._io_rip is None:
            if counter != budget + 1:
                raise CpuError(f"emulation stopped after {counter - 1} of {budget} instructions for no known reason")
            self.retired += budget
            return BudgetSpent(budget)
        stop = self._classify(ctx, status, counter)
        self.retired += stop.insns
        if isinstance(stop, TrapStop):
            ctx.set_trap(stop.trap_nr, stop.err, stop.aux)
        if self._intr is not None:
            self._reset_exception()
        return stop

    def _classify(self, ctx: UserContext, status: int, counter: int) -> StopReason:
        if self._syscall:
            # Hardware: rcx <- next rip, r11 <- rflags.  Unicorn sets neither.
            ctx.rcx, ctx.r11 = ctx.rip, ctx.rflags
            return SyscallStop(counter, ctx.rax, (ctx.rdi, ctx.rsi, ctx.rdx, ctx.r10, ctx.r8, ctx.r9))
        if self._io_rip is not None:  # in/out with IOPL 0 and no TSS bitmap: #GP(0)
            # The stop lands after the next instruction's count; use the count taken in the hook.
            ctx.rip = self._io_rip
            return TrapStop(self._io_counter - 1, TrapNr.GP)
        if self._intr is not None:
            return self._classify_intr(ctx, self._intr, counter)
        if status == ucc.UC_ERR_INSN_INVALID:
            if self.mem.read(ctx.rip, 1) == b"\xf1":  # icebp: a #DB trap, not #UD
                ctx.rip += 1
                return TrapStop(counter, TrapNr.DB)
            return TrapStop(counter - 1, TrapNr.UD)
        fault = self.mem.last_fault
        if status == ucc.UC_ERR_EXCEPTION and fault is not None:
            # A failed fetch never started its instruction; a data access did.
            insns = counter if fault.access == Access.FETCH else counter - 1
            if not is_canonical(fault.addr):
                if fault.access == Access.FETCH and self._undo_call(ctx):
                    return TrapStop(counter - 1, TrapNr.GP, 0, 0)
                return TrapStop(insns, TrapNr.GP, 0, 0)
            # The fill hook sees only the page; CR2 is the exact first faulting byte.
            if fault.access == Access.FETCH:
                addr = ctx.rip if ctx.rip >> 12 == fault.addr >> 12 else fault.addr
            else:
                addr = fault_address(self.mem, ctx, fault.addr & ~0xFFF)
            err = _PF_U  # (plain ints: IntFlag arithmetic is a Python-level call per operator)
            if fault.access == Access.WRITE:
                err |= _PF_W
            elif fault.access == Access.FETCH:
                err |= _PF_I
            if fault.backed and fault.prot != Prot.NONE:
                err |= _PF_P
            if fault.in_vmr and not fault.backed:
                err |= _PF_VMR_BACKED
            return TrapStop(insns, TrapNr.PF, err, addr)
        raise CpuError(f"emulation stopped with {UcError(status)} at rip={ctx.rip:#x} and no recorded cause")

    def _undo_call(self, ctx: UserContext) -> bool:
        """If a `call` jumped to the non-canonical rip, put the #GP back on the call.

        Hardware faults on the call itself and pushes nothing; Unicorn pushed
        the return address and faulted on the fetch.  The pushed address says
        where the call ended; a call instruction ending there is the culprit.
        """
        try:
            ret = self.mem.read_u64(ctx.rsp)
        except ValueError:
            return False
        for length in range(2, 8):
            insn = disassemble(self.mem, ret - length)
            if insn and insn[0].size == length and insn[0].mnemonic == "call":
                ctx.rip = ret - length
                ctx.rsp = (ctx.rsp + 8) & U64
                return True
        return False

    def _classify_intr(self, ctx: UserContext, intno: int, counter: int) -> TrapStop:
        self._uc.context_update(self._uc_ctx)
        ptr = self._uc_ctx.context.value
        is_int = ctypes.c_int32.from_address(ptr + self._cal.is_int_off).value
        error_code = ctypes.c_uint32.from_address(ptr + self._cal.error_code_off).value
        if is_int and intno not in _USER_GATES:
            # `int n` through a DPL-0 gate: #GP(IDT index) at the int instruction.
            ctx.rip -= 2
            return TrapStop(counter - 1, TrapNr.GP, intno * 8 + 2)
        if intno in _TRAP_KIND or is_int:
            return TrapStop(counter, intno)
        if intno in (TrapNr.DF, TrapNr.TS, TrapNr.NP, TrapNr.SS, TrapNr.GP, TrapNr.PF, TrapNr.AC):
            return TrapStop(counter - 1, intno, error_code)
        return TrapStop(counter - 1, intno)

    def release(self) -> None:
        """Free the Unicorn instance (the run is over); memory stays readable through the AddressSpace."""
        self._live = None
        self._counter = None
        self._uc = self._uch = self._uc_ctx = None
        self._tsc_cb = self._tlb_cb = None
        self.tsc = self.instructions
        self.mem.release()

    # -- lazy CPU-state switching ---------------------------------------------------

    def _switch_to(self, ctx: UserContext) -> None:
        if self._live is not None:
            self._live.fpstate = self._save_ext()
        self._restore_ext(ctx.fpstate)
        self._live = ctx

    def flush(self) -> None:
        """Save the live context's CPU state into its fpstate (before copying it)."""
        if self._live is not None:
            self._live.fpstate = self._save_ext()

    def forget(self, ctx: UserContext) -> None:
        """Drop `ctx` as the live context (its fpstate is saved first)."""
        if self._live is ctx:
            self.flush()
            self._live = None

    def _save_ext(self) -> bytes:
        self._uc.context_update(self._uc_ctx)
        return ctypes.string_at(self._uc_ctx.context.value, self._uc_ctx.size)

    def _reset_exception(self) -> None:
        # Unicorn leaves old_exception set after an exception: the next
        # contributory one would be reported as #DF, the third not at all.
        # (_classify_intr has just snapshotted the state into _uc_ctx.)
        ptr = self._uc_ctx.context.value
        ctypes.c_int32.from_address(ptr + self._cal.old_exception_off).value = -1
        self._uc.context_restore(self._uc_ctx)

    def _restore_ext(self, blob: bytes | None) -> None:
        blob = self._template if blob is None else blob
        ctypes.memmove(self._uc_ctx.context.value, blob, len(blob))
        self._uc.context_restore(self._uc_ctx)
