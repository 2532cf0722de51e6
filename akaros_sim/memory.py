"""Address space: VMRs, protections and lazily backed regions.

One `AddressSpace` per process.  It owns the process's Unicorn instance and is
the single source of truth for what is mapped: a list of VMRs (virtual memory
regions: start, length, prot, name, per-page "backed" bits).  Each VMR's bytes
live in a host `mmap` buffer that is mapped into Unicorn with `mem_map_ptr`
(splitting such regions on unmap/protect costs no copy, unlike plain
`mem_map`, measured at 49 ms against 1 ms for a 64 MiB region).

Unicorn runs in UC_TLB_VIRTUAL mode and every TLB miss asks `tlb_perms`, so
protections and "not yet backed" pages are enforced here, in one place, and a
denied access leaves a precise record (address, access kind) for the CPU to
turn into an x86 trap.  A page of a VMR that is valid but not backed faults;
for an anonymous VMR (`anon=True`) the kernel zero-fills it on the spot
(akaros_sim.mm.handle_page_fault), for any other (a file's pages not in the
page cache) the fault is reflected with Akaros's PF_VMR_BACKED bit and
`populate` backs it (zeros, or the bytes of the backing object given at map time).

Host-side `read`/`write` are the kernel's view: they ignore protections, and a
write to an unbacked page backs it first.
"""

from __future__ import annotations

import bisect
import ctypes
import enum
import mmap
import struct

import attrs
from unicorn import UC_PROT_ALL, Uc

PAGE_SIZE = 4096
PAGE_SHIFT = 12


def page_up(addr: int) -> int:
    """addr rounded up to a page boundary."""
    return -(-addr // PAGE_SIZE) * PAGE_SIZE


_U64 = struct.Struct("<Q")
# User addresses are [USER_MIN, USER_TOP): page 0 stays unmapped so NULL
# faults, and the top 64 KiB below the canonical hole hold the emulated
# machine's GDT and boot code (see cpu.py).
USER_MIN = PAGE_SIZE
USER_TOP = 0x7FFF_FFFF_0000
KERNEL_BASE = USER_TOP
KERNEL_SIZE = 0x4000


class Prot(enum.IntFlag):
    """VMR protection bits, valued as POSIX PROT_* (and Unicorn's UC_PROT_*)."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


class Access(enum.IntEnum):
    """The kind of a guest memory access (Unicorn's UC_MEM_READ/WRITE/FETCH)."""

    READ = 16
    WRITE = 17
    FETCH = 18


# What an access needs from the page, with x86 paging semantics: any present
# page is readable, EXEC needs NX clear, WRITE needs the W bit.
_NEEDS = {Access.READ: Prot.READ, Access.WRITE: Prot.WRITE, Access.FETCH: Prot.EXEC}
_ACCESS = {int(a): a for a in Access}  # Unicorn's access code -> Access, without the enum's Python-level call
# (prot value, access code) -> the TLB perms to fill, or -1 to deny: plain ints, as IntFlag arithmetic is a
# Python-level call and this answers every TLB fill
_TLB_PERMS = {(p, int(a)): int(Prot(p) | Prot.READ) if Prot(p) & _NEEDS[a] or (a == Access.READ and p) else -1
              for p in range(8) for a in Access}  # fmt: skip


class MemError(ValueError):
    """A bad map/unmap/protect/read/write request; the message names the range."""


@attrs.frozen
class MemFault:
    """A guest access denied by the address space (recorded in the TLB-fill hook)."""

    addr: int
    access: Access
    in_vmr: bool  # the address lies in a VMR
    backed: bool  # ... and its page is backed
    prot: Prot  # the VMR's prot (NONE outside VMRs)


def _check_range(what: str, start: int, length: int) -> None:
    if start % PAGE_SIZE or length % PAGE_SIZE:
        raise MemError(f"{what}: expected page-aligned start and length, got start={start:#x} length={length:#x}")
    if length <= 0:
        raise MemError(f"{what}: expected length > 0, got {length:#x}")
    if start < USER_MIN or start + length > USER_TOP:
        raise MemError(
            f"{what}: range [{start:#x}, {start + length:#x}) is outside user space [{USER_MIN:#x}, {USER_TOP:#x})"
        )


@attrs.define(slots=True, eq=False)
class Vmr:
    """A virtual memory region.  Lifecycle: map -> (protect|populate|split)* -> unmap."""

    start: int
    end: int
    prot: Prot
    name: str
    # host storage: `buf` holds this VMR's bytes from `buf_off`
    buf: mmap.mmap = attrs.field(repr=False)
    buf_off: int = attrs.field(repr=False)
    # lazily backed pages: one byte per page, 1 = backed
    backed: bytearray = attrs.field(repr=False)
    # bytes a populated page is filled from (None: zeros), offset like buf_off
    backing: bytes | None = attrs.field(default=None, repr=False)
    backing_off: int = attrs.field(default=0, repr=False)
    # anonymous memory: the kernel zero-fills a page at its first touch (no reflected fault)
    anon: bool = attrs.field(default=False, repr=False)

    @property
    def length(self) -> int:
        return self.end - self.start

    def is_backed(self, addr: int) -> bool:
        return bool(self.backed[(addr - self.start) >> PAGE_SHIFT])

    def split(self, at: int) -> Vmr:
        """Cut this VMR at `at`; self keeps [start, at), the result is [at, end)."""
        pages = (at - self.start) >> PAGE_SHIFT
        tail = Vmr(
            at, self.end, self.prot, self.name, self.buf, self.buf_off + (at - self.start),
            self.backed[pages:], self.backing, self.backing_off + (at - self.start), self.anon,
        )  # fmt: skip
        self.end = at
        del self.backed[pages:]
        return tail


class AddressSpace:
    """One process's memory: VMRs over one Unicorn instance.

    Lifecycle: created empty (with its Uc), then map/unmap/protect/populate
    at will; the Cpu built on it installs the TLB-fill hook that calls
    `tlb_perms` on every TLB miss.
    """

    def __init__(self) -> None:
        from unicorn import UC_ARCH_X86, UC_MODE_64, UC_TLB_VIRTUAL
        from unicorn.x86_const import UC_CPU_X86_SANDYBRIDGE

        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # Must precede any other use of the instance.  Sandy Bridge has no
        # rdrand/rdseed, whose host randomness would break determinism.
        self.uc.ctl_set_cpu_model(UC_CPU_X86_SANDYBRIDGE)
        # The default TCG buffer reserves 1 GiB of address space per instance.
        self.uc.ctl_set_tcg_buffer_size(32 << 20)
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self._vmrs: list[Vmr] = []  # sorted by start, non-overlapping
        self._starts: list[int] = []
        self.last_fault: MemFault | None = None
        self.generation = 0  # bumped on every change of the map

    # -- lookup ---------------------------------------------------------------

    @property
    def vmrs(self) -> tuple[Vmr, ...]:
        return tuple(self._vmrs)

    def lookup(self, addr: int) -> Vmr | None:
        """The VMR containing `addr`, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._vmrs[i].end:
            return self._vmrs[i]
        return None

    def tlb_perms(self, addr: int, access: int) -> int:
        """Unicorn perms for the page of `addr`, or -1 (and `last_fault` set) to deny `access`."""
        vmr = self.lookup(addr)
        if vmr is not None and vmr.is_backed(addr):
            prot = vmr.prot
            perms = _TLB_PERMS[prot._value_, access]
            if perms >= 0:
                return perms
            self.last_fault = MemFault(addr, _ACCESS[access], True, True, prot)
            return -1
        if vmr is None:
            self.last_fault = MemFault(addr, _ACCESS[access], False, False, Prot.NONE)
        else:
            self.last_fault = MemFault(addr, _ACCESS[access], True, False, vmr.prot)
        return -1

    # -- map changes ------------------------------------------------------------

    def map(
        self, start: int, length: int, prot: Prot, name: str = "", *, backed: bool = True, backing: bytes | None = None,
        anon: bool = False,
    ) -> Vmr:
        """Map a new VMR.

        Args:
            start, length: page-aligned range inside user space.
            prot: its protection.
            name: shown in reports.
            backed: False leaves every page unbacked until `populate`.
            backing: initial contents (at most `length` bytes); with
                backed=False they are copied in page by page as pages are populated.
            anon: anonymous memory: an unbacked page is zero-filled by the
                kernel at its first touch instead of faulting to the 2LS.
        Returns:
            The new Vmr.
        Raises:
            MemError: misaligned, outside user space, or overlapping a VMR.
        """
        _check_range(f"map {name!r}", start, length)
        if backing is not None and len(backing) > length:
            raise MemError(f"map {name!r}: backing of {len(backing)} bytes is longer than the VMR ({length:#x})")
        for vmr in self._overlapping(start, start + length):
            raise MemError(
                f"map {name!r}: [{start:#x}, {start + length:#x}) overlaps VMR {vmr.name!r} [{vmr.start:#x}, {vmr.end:#x})"
            )
        try:
            buf = mmap.mmap(-1, length)
        except (OSError, OverflowError) as exc:
            raise MemError(f"map {name!r}: cannot allocate {length:#x} bytes for [{start:#x}, {start + length:#x}): "
                           f"{getattr(exc, 'strerror', None) or exc}") from None  # fmt: skip
        vmr = Vmr(start, start + length, Prot(prot), name, buf, 0, bytearray([int(backed)]) * (length >> PAGE_SHIFT),
                  anon=anon)  # fmt: skip
        if backing is not None:
            vmr.backing = bytes(backing)
            if backed:
                buf[: len(backing)] = backing
        host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        self._require_cpu("map")
        self.uc.mem_map_ptr(start, length, UC_PROT_ALL, host)
        i = bisect.bisect_left(self._starts, start)
        self._vmrs.insert(i, vmr)
        self._starts.insert(i, start)
        self._changed(start, start + length, code=bool(prot & Prot.EXEC))
        return vmr

    def unmap(self, start: int, length: int) -> int:
        """Unmap every page in the range (holes allowed); returns the bytes unmapped."""
        _check_range("unmap", start, length)
        self._require_cpu("unmap")
        end = start + length
        self._split_at(start)
        self._split_at(end)
        gone = list(self._overlapping(start, end))
        for vmr in gone:
            self.uc.mem_unmap(vmr.start, vmr.length)
            i = self._vmrs.index(vmr)
            del self._vmrs[i], self._starts[i]
        if gone:
            self._changed(start, end, code=True)
        return sum(v.length for v in gone)

    def protect(self, start: int, length: int, prot: Prot) -> None:
        """Change the protection of a fully mapped range; MemError if any page is unmapped."""
        _check_range("protect", start, length)
        end = start + length
        self._require_mapped("protect", start, end)
        self._split_at(start)
        self._split_at(end)
        for vmr in self._overlapping(start, end):
            vmr.prot = Prot(prot)
        self._changed(start, end, code=True)

    def populate(self, addr: int, npages: int = 1) -> int:
        """Back `npages` pages from the page of `addr`; returns how many were newly backed.

        Pages outside any VMR are skipped (Akaros's populate_va fails on them
        and the faulting access simply faults again).  The work is bounded by
        the unbacked pages that are mapped, whatever count the guest passed.
        """
        first = addr & ~(PAGE_SIZE - 1)
        end = min(first + max(npages, 0) * PAGE_SIZE, USER_TOP)
        done = 0
        for vmr in list(self._overlapping(first, end)):
            lo = (max(first, vmr.start) - vmr.start) >> PAGE_SHIFT
            hi = (min(end, vmr.end) - vmr.start + PAGE_SIZE - 1) >> PAGE_SHIFT
            i = vmr.backed.find(0, lo, hi)
            while i != -1:
                self._back_page(vmr, vmr.start + (i << PAGE_SHIFT))
                done += 1
                i = vmr.backed.find(0, i + 1, hi)
        if done:
            self.generation += 1
        return done

    # -- host access (the kernel's view) ------------------------------------------

    def read(self, addr: int, size: int) -> bytes:
        """Read bytes; MemError naming the first unmapped address. Unbacked pages read as their backing."""
        out = bytearray()
        for vmr, lo, hi in self._pieces("read", addr, size):
            for page in range(lo & ~(PAGE_SIZE - 1), hi, PAGE_SIZE):
                plo, phi = max(lo, page), min(hi, page + PAGE_SIZE)
                if vmr.is_backed(page):
                    out += vmr.buf[vmr.buf_off + plo - vmr.start : vmr.buf_off + phi - vmr.start]
                else:
                    out += self._backing_bytes(vmr, plo, phi)
        return bytes(out)

    def read_prefix(self, addr: int, size: int) -> bytes:
        """Up to `size` bytes at addr: as many as are mapped contiguously from it."""
        vmr = self.lookup(addr)
        if vmr is not None and addr >> PAGE_SHIFT == (addr + size - 1) >> PAGE_SHIFT and vmr.is_backed(addr):
            off = vmr.buf_off + addr - vmr.start  # fast path: within one backed page
            return vmr.buf[off : off + size]
        end = addr
        while end < addr + size:
            vmr = self.lookup(end)
            if vmr is None:
                break
            end = vmr.end
        return self.read(addr, min(size, end - addr)) if end > addr else b""

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes, backing unbacked pages first; MemError naming the first unmapped address.

        All or nothing: nothing is written (or backed) unless the whole range is mapped.
        """
        data = bytes(data)
        pos = 0
        code = False
        for vmr, lo, hi in list(self._pieces("write", addr, len(data))):
            for page in range(lo & ~(PAGE_SIZE - 1), hi, PAGE_SIZE):
                if not vmr.is_backed(page):
                    self._back_page(vmr, page)
                    self.generation += 1
            vmr.buf[vmr.buf_off + lo - vmr.start : vmr.buf_off + hi - vmr.start] = data[pos : pos + hi - lo]
            pos += hi - lo
            code |= bool(vmr.prot & Prot.EXEC)
        if code:
            # Unicorn does not invalidate translated code on host writes (issues #1148, #2258).
            self.uc.ctl_remove_cache(addr, addr + len(data))

    def _word(self, addr: int):
        """(buffer, offset) of an 8-byte word in one backed page of a data VMR, else None (the general path)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr & (PAGE_SIZE - 1) > PAGE_SIZE - 8:
            return None
        vmr = self._vmrs[i]
        if addr + 8 > vmr.end or vmr.prot & Prot.EXEC or not vmr.backed[(addr - vmr.start) >> PAGE_SHIFT]:
            return None
        return vmr.buf, vmr.buf_off + addr - vmr.start

    def read_u64(self, addr: int) -> int:
        word = self._word(addr) if addr >= 0 else None
        if word is not None:
            return _U64.unpack_from(*word)[0]
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def write_u64(self, addr: int, value: int) -> None:
        word = self._word(addr) if addr >= 0 else None
        if word is not None:  # one backed data page: straight into its buffer (no translated code to drop)
            _U64.pack_into(word[0], word[1], value & 0xFFFF_FFFF_FFFF_FFFF)
            return
        self.write(addr, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))

    def read_u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFF_FFFF))

    def read_cstr(self, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string of at most `limit` bytes."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(addr + len(out), min(64, limit - len(out), PAGE_SIZE - ((addr + len(out)) % PAGE_SIZE)))
            nul = chunk.find(0)
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
        return bytes(out)

    def load(self, program) -> None:
        """Map every segment of a Program (akaros_sim.program.Program), backed, with its prot."""
        for seg in program.segments:
            if seg.memsz == 0:
                continue
            length = (seg.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            self.map(seg.addr, length, seg.prot, f"{program.name}:{seg.name}", backing=seg.data)

    # -- internals ---------------------------------------------------------------

    def _overlapping(self, start: int, end: int):
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._vmrs) and self._vmrs[i].start < end:
            if self._vmrs[i].end > start:
                yield self._vmrs[i]
            i += 1

    def _split_at(self, at: int) -> None:
        vmr = self.lookup(at)
        if vmr is not None and vmr.start != at:
            tail = vmr.split(at)
            i = self._vmrs.index(vmr) + 1
            self._vmrs.insert(i, tail)
            self._starts.insert(i, at)

    def _require_mapped(self, what: str, start: int, end: int) -> None:
        addr = start
        for vmr in self._overlapping(start, end):
            if vmr.start > addr:
                break
            addr = vmr.end
        if addr < end:
            raise MemError(f"{what}: address {addr:#x} in [{start:#x}, {end:#x}) is not mapped")

    def _pieces(self, what: str, addr: int, size: int):
        if size < 0 or addr < 0:
            raise MemError(f"{what}: bad range addr={addr:#x} size={size}")
        end = addr + size
        while addr < end:
            vmr = self.lookup(addr)
            if vmr is None:
                raise MemError(f"{what}: address {addr:#x} is not mapped")
            hi = min(end, vmr.end)
            yield vmr, addr, hi
            addr = hi

    def _backing_bytes(self, vmr: Vmr, lo: int, hi: int) -> bytes:
        if vmr.backing is None:
            return bytes(hi - lo)
        off = vmr.backing_off + lo - vmr.start
        chunk = vmr.backing[max(off, 0) : max(off + hi - lo, 0)]
        return chunk + bytes(hi - lo - len(chunk))

    def _back_page(self, vmr: Vmr, page: int) -> None:
        off = vmr.buf_off + page - vmr.start
        vmr.buf[off : off + PAGE_SIZE] = self._backing_bytes(vmr, page, page + PAGE_SIZE)
        vmr.backed[(page - vmr.start) >> PAGE_SHIFT] = 1

    def _require_cpu(self, what: str) -> None:
        if self.uc is None:
            raise MemError(f"{what}: the run is over and its CPU released; memory can be read and written, not remapped")

    def release(self) -> None:
        """Close the Unicorn instance (the run is over); the VMRs' bytes stay readable and writable."""
        uc, self.uc = self.uc, None
        if uc is not None:
            uc._callbacks.clear()  # the hooks' bound methods point back at the Cpu
            uc._Uc__finalizer()  # uc_close now, not whenever the collector gets to it

    def _changed(self, start: int, end: int, code: bool) -> None:
        from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

        self.generation += 1
        if self.uc is None:
            return
        # Cached TLB entries carry the old perms; translated code may be stale.
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if code:
            self.uc.ctl_remove_cache(start, end)
