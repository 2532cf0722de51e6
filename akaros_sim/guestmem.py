"""The one path by which the runtime writes (and reads) guest memory on the guest's behalf.

Every store the host makes into guest memory for the guest (a signal frame, a
TLS word, a syscall result, a join result, the Go table, a new uthread's
return address) goes through `write_for_guest`, so a failure has one of two
Akaros outcomes and never escapes `run()` as a Python exception:

* `efault=True`: the kernel's `copy_to_user`/`memcpy_to_user` (kern/src/
  syscall.c, e.g. sys_nanosleep's `*rem`): the syscall returns -EFAULT and the
  process goes on.
* otherwise the store is made by parlib or the 2LS in vcore context, and the
  page fault there is not a uthread's: the kernel's `reflect_unhandled_trap`
  (kern/arch/x86/trap.c, a fault with the vcore in vcore context, or with
  notifications disabled) prints the trap and calls `proc_destroy`: the
  process ends with status -1 and a report naming the trap (14, #PF), the
  address and the context (the vcore, and what it was writing).
"""

from __future__ import annotations

from akaros_sim.memory import MemError

PF_REPORT = "page fault in vcore context (vcore {vc}) {what} at {addr:#x}: {exc}"


def _vcore_id(proc) -> str:
    vc = proc.engine.current
    return str(vc.id) if vc is not None else "-"


def vcore_ctx_fault(proc, what: str, addr: int, exc: Exception) -> None:
    """reflect_unhandled_trap -> proc_destroy: a #PF in vcore context ends the process."""
    proc.exit(-1, "exit", PF_REPORT.format(vc=_vcore_id(proc), what=what, addr=addr, exc=exc))


def write_for_guest(proc, addr: int, data: bytes | int, what: str, *, efault: bool = False,
                    report=None) -> bool:  # fmt: skip
    """Store data (bytes, or an int as a u64) at addr for the guest.  True if it was written.

    On a fault: with efault, False and nothing else (the caller returns -EFAULT);
    otherwise the process ends (report(exc) if given, else the vcore-context #PF report).
    """
    try:
        if isinstance(data, int):
            proc.mem.write_u64(addr, data)
        else:
            proc.mem.write(addr, data)
    except (MemError, ValueError) as exc:
        if not efault:
            if report is not None:
                proc.exit(-1, "exit", report(exc))
            else:
                vcore_ctx_fault(proc, what, addr, exc)
        return False
    return True


def read_for_guest(proc, addr: int, size: int, what: str) -> bytes | None:
    """A load in vcore context for the guest (the Go table's sentinel): None, and the process ends, on a fault."""
    try:
        return proc.mem.read(addr, size)
    except (MemError, ValueError) as exc:
        vcore_ctx_fault(proc, what, addr, exc)
        return None
