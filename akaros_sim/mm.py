"""The kernel's memory management (Akaros's kern/src/mm.c): mmap, munmap, mprotect and page faults.

`do_mmap` makes a VMR *anonymous* when `MAP_ANONYMOUS` is set or `fd` is
negative (`!(flags & MAP_ANON) && fd >= 0` names a file).  The kernel fills an
anonymous page itself at its first touch: `__hpf` finds no file on the VMR,
`upage_alloc(p, &page, TRUE)` gives it a zeroed page, and the uthread carries
on, with no reflected fault and no 2LS involvement.  Here that is
`handle_page_fault`: `page_zero_ns` of kernel time and a `page_zero` record.

A file page that is not in the page cache is the other case: `__hpf` gets
-EAGAIN from `pm_load_page_nowait` and the trap is reflected to the 2LS with
`PF_VMR_BACKED` set, which populates it (`SYS_populate_va`).  The simulator
has no file system: a mapping of any `fd >= 0` without `MAP_ANONYMOUS` stands
for a file of zeros none of whose pages is cached, as does a scenario's
`[[mappings]]` entry with `backed = false`.  `MAP_POPULATE` backs every page
at mmap time, for either kind.
"""

from __future__ import annotations

import errno

import attrs

from akaros_sim.context import PfErr, TrapNr, neg_errno
from akaros_sim.memory import PAGE_SIZE, MemError, Prot, page_up

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20  # kern/include/ros/mman.h (MAP_ANON)
MAP_POPULATE = 0x8000
MMAP_BASE = 0x2000_0000_0000  # where mmap places regions without MAP_FIXED

_VMR_BACKED = int(PfErr.VMR_BACKED)  # a plain int: IntFlag arithmetic is a Python-level call


class Mm:
    """One process's mmap state and its kernel-side page-fault handling."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self._next_mmap = MMAP_BASE

    # -- syscalls ---------------------------------------------------------------------------

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = 0, off: int = 0) -> int:
        """SYS_mmap (sys_mmap -> do_mmap): the address, or -errno."""
        length = page_up(length)
        if length == 0 or prot & ~7:
            return neg_errno(errno.EINVAL)
        fd &= 0xFFFF_FFFF  # an int, as do_mmap takes it: -1 is "no file"
        anon = bool(flags & MAP_ANONYMOUS) or bool(fd >> 31)
        mem = self.proc.mem
        if flags & MAP_FIXED:
            if addr % PAGE_SIZE:
                return neg_errno(errno.EINVAL)
            try:
                mem.unmap(addr, length)
            except MemError:
                return neg_errno(errno.EINVAL)
        else:
            addr = self._next_mmap
            self._next_mmap += length + PAGE_SIZE  # leave a hole between regions
        try:
            mem.map(addr, length, Prot(prot), "mmap", backed=bool(flags & MAP_POPULATE), anon=anon)
        except MemError:
            return neg_errno(errno.ENOMEM)
        return addr

    def munmap(self, addr: int, length: int) -> int:
        try:
            self.proc.mem.unmap(addr, page_up(length))
        except MemError:
            return neg_errno(errno.EINVAL)
        return 0

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        if prot & ~7:
            return neg_errno(errno.EINVAL)
        try:
            self.proc.mem.protect(addr, page_up(length), Prot(prot))
        except MemError:
            return neg_errno(errno.ENOMEM)
        return 0

    # -- page faults ---------------------------------------------------------------------------

    def handle_page_fault(self, uth, stop):
        """A user #PF, before it is reflected (kern/arch/x86/trap.c -> handle_page_fault -> __hpf).

        Returns None when the kernel resolved it (an anonymous page, zero-filled;
        the uthread retries the access), else the trap to reflect: as it came for
        a file page not in the page cache (PF_VMR_BACKED), without PF_VMR_BACKED
        where __hpf fails (-EFAULT: no VMR any more; -EPERM: the VMR's prot).
        """
        if stop.trap_nr != TrapNr.PF or not stop.err & _VMR_BACKED:
            return stop
        proc = self.proc
        proc.engine.sync()  # act on the address space as it is now, not as the slice ran ahead
        mem, ctx = proc.mem, uth.ctx
        vmr = mem.lookup(stop.aux)
        if vmr is not None and vmr.is_backed(stop.aux):
            ctx.clear_trap()  # a peer filled it meanwhile (map_page_at_addr): the access is retried
            return None
        if vmr is not None and not vmr.anon:
            return stop  # -EAGAIN: reflected with PF_VMR_BACKED
        if vmr is None or not _allows(vmr.prot, stop.err):
            stop = attrs.evolve(stop, err=stop.err & ~_VMR_BACKED)
            ctx.set_trap(stop.trap_nr, stop.err, stop.aux)
            return stop
        proc.engine.advance(proc.costs.page_zero_ns)
        page = stop.aux & ~(PAGE_SIZE - 1)
        mem.populate(page, 1)  # upage_alloc(..., zero=TRUE) and map_page_at_addr
        ctx.clear_trap()
        proc.trace_event(uth.vcore, "page_zero", uth=uth, addr=page, rip=ctx.rip)
        return None


def _allows(prot: Prot, err: int) -> bool:
    """__hpf's `vmr->vm_prot & prot` for the access the error code describes (x86: present means readable)."""
    if err & PfErr.W:
        return bool(prot & Prot.WRITE)
    if err & PfErr.I:
        return bool(prot & Prot.EXEC)
    return bool(prot)
