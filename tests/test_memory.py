"""AddressSpace: VMR bookkeeping, host access, and what the guest sees through the TLB."""

from __future__ import annotations

import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, TrapStop
from akaros_sim.memory import PAGE_SIZE, USER_MIN, USER_TOP, AddressSpace, MemError, Prot
from akaros_sim.program import Program, Segment
from conftest import CODE, DATA, STACK_TOP, assemble_bytes

RW = Prot.READ | Prot.WRITE
RX = Prot.READ | Prot.EXEC
BASE = 0x1000_0000  # a free range for AddressSpace-only tests
LAZY = 0x610000  # a free range in the `machine` layout (between data and stack)
VMR_BACKED = int(PfErr.VMR_BACKED)
U, W, P = int(PfErr.U), int(PfErr.W), int(PfErr.P)

# Guest snippets (one instruction each, run with budget 1).
LOAD = "mov rax, qword ptr [rbx]"  # read 8 bytes at rbx
STORE = "mov qword ptr [rbx], rcx"  # write rcx to rbx


def layout(mem: AddressSpace) -> list[tuple[int, int, Prot, str]]:
    """The VMR list as (start, end, prot, name) tuples."""
    return [(v.start, v.end, v.prot, v.name) for v in mem.vmrs]


def pf(addr: int, err: int, insns: int = 0) -> TrapStop:
    """The stop record of a page fault at `addr`."""
    return TrapStop(insns, TrapNr.PF, err, addr)


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` recognisable bytes (never NUL)."""
    return bytes(1 + (seed + i) % 251 for i in range(n))


# -- map --------------------------------------------------------------------------


def test_map_adds_vmr_in_sorted_order():
    """map keeps the VMR list sorted by start, whatever the order of the calls."""
    mem = AddressSpace()
    mem.map(BASE + 0x4000, 0x1000, RW, "c")
    mem.map(BASE, 0x2000, RX, "a")
    mem.map(BASE + 0x2000, 0x1000, Prot.READ, "b")
    assert layout(mem) == [
        (BASE, BASE + 0x2000, RX, "a"),
        (BASE + 0x2000, BASE + 0x3000, Prot.READ, "b"),
        (BASE + 0x4000, BASE + 0x5000, RW, "c"),
    ]


def test_map_returns_zeroed_vmr_found_by_lookup():
    """A new VMR reads as zeros and `lookup` finds it from its first to its last byte only."""
    mem = AddressSpace()
    vmr = mem.map(BASE, 0x2000, RW, "x")
    assert (vmr.start, vmr.end, vmr.prot, vmr.name, vmr.length) == (BASE, BASE + 0x2000, RW, "x", 0x2000)
    assert mem.read(BASE, 0x2000) == bytes(0x2000)
    assert mem.lookup(BASE) is vmr
    assert mem.lookup(BASE + 0x1FFF) is vmr
    assert mem.lookup(BASE - 1) is None
    assert mem.lookup(BASE + 0x2000) is None


@pytest.mark.parametrize(
    ("start", "length", "message"),
    [
        (BASE + 1, 0x1000, "map 'x': expected page-aligned start and length, got start=0x10000001 length=0x1000"),
        (BASE, 0x1001, "map 'x': expected page-aligned start and length, got start=0x10000000 length=0x1001"),
        (BASE, 0, "map 'x': expected length > 0, got 0x0"),
        (BASE, -0x1000, "map 'x': expected length > 0, got -0x1000"),
        (0, 0x1000, "map 'x': range [0x0, 0x1000) is outside user space [0x1000, 0x7fffffff0000)"),
        (
            USER_TOP - 0x1000,
            0x2000,
            "map 'x': range [0x7ffffffef000, 0x7fffffff1000) is outside user space [0x1000, 0x7fffffff0000)",
        ),
    ],
    ids=["misaligned-start", "misaligned-length", "zero-length", "negative-length", "below-user-min", "above-user-top"],
)
def test_map_rejects_bad_range(start, length, message):
    """map rejects a misaligned, empty or non-user range with a message naming it, and maps nothing."""
    mem = AddressSpace()
    with pytest.raises(MemError) as exc:
        mem.map(start, length, RW, "x")
    assert str(exc.value) == message
    assert layout(mem) == []


def test_map_accepts_the_edges_of_user_space():
    """The first user page (USER_MIN) and the last one (ending at USER_TOP) can be mapped."""
    mem = AddressSpace()
    mem.map(USER_MIN, PAGE_SIZE, RW, "low")
    mem.map(USER_TOP - PAGE_SIZE, PAGE_SIZE, RW, "high")
    assert layout(mem) == [(USER_MIN, USER_MIN + PAGE_SIZE, RW, "low"), (USER_TOP - PAGE_SIZE, USER_TOP, RW, "high")]


@pytest.mark.parametrize(
    ("start", "length"),
    [(BASE - 0x1000, 0x2000), (BASE + 0x1000, 0x2000), (BASE + 0x1000, 0x1000), (BASE - 0x1000, 0x4000)],
    ids=["head", "tail", "inside", "enclosing"],
)
def test_map_rejects_overlap(start, length):
    """map over any part of an existing VMR fails naming both ranges and the VMR, and changes nothing."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "a")
    with pytest.raises(MemError) as exc:
        mem.map(start, length, RX, "b")
    assert str(exc.value) == (
        f"map 'b': [{start:#x}, {start + length:#x}) overlaps VMR 'a' [{BASE:#x}, {BASE + 0x2000:#x})"
    )
    assert layout(mem) == [(BASE, BASE + 0x2000, RW, "a")]


def test_map_adjacent_vmrs_do_not_overlap():
    """VMRs that touch end-to-start on both sides are not an overlap."""
    mem = AddressSpace()
    mem.map(BASE + 0x1000, 0x1000, RW, "mid")
    mem.map(BASE, 0x1000, RW, "low")
    mem.map(BASE + 0x2000, 0x1000, RW, "high")
    assert [v.name for v in mem.vmrs] == ["low", "mid", "high"]


def test_map_with_backing_fills_the_start():
    """map with `backing` starts the VMR with those bytes and zeros after them."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "x", backing=b"hello")
    assert mem.read(BASE, 0x2000) == b"hello" + bytes(0x2000 - 5)


def test_map_rejects_backing_longer_than_vmr():
    """A backing longer than the VMR is rejected with both sizes in the message; one exactly as long is fine."""
    mem = AddressSpace()
    with pytest.raises(MemError) as exc:
        mem.map(BASE, 0x1000, RW, "x", backing=bytes(0x1001))
    assert str(exc.value) == "map 'x': backing of 4097 bytes is longer than the VMR (0x1000)"
    assert layout(mem) == []
    mem.map(BASE, 0x1000, RW, "x", backing=pattern(0x1000))
    assert mem.read(BASE, 0x1000) == pattern(0x1000)


# -- host read / write ---------------------------------------------------------------


def test_read_write_round_trip():
    """Bytes written by the host read back unchanged, the bytes around them stay zero."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, Prot.READ, "ro")  # host access ignores protections
    mem.write(BASE + 0x10, b"\x01\x02\x03")
    assert mem.read(BASE + 0xE, 7) == b"\x00\x00\x01\x02\x03\x00\x00"


def test_u64_u32_round_trip_little_endian():
    """write_u64/read_u64 and read_u32 use little-endian order; write_u64 truncates to 64 bits."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "x")
    mem.write_u64(BASE, 0x1122_3344_5566_7788)
    assert mem.read(BASE, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u64(BASE) == 0x1122_3344_5566_7788
    assert mem.read_u32(BASE) == 0x5566_7788
    assert mem.read_u32(BASE + 4) == 0x1122_3344
    mem.write_u64(BASE + 8, -1)
    assert mem.read_u64(BASE + 8) == 0xFFFF_FFFF_FFFF_FFFF
    mem.write_u32(BASE + 16, 0xDEAD_BEEF)
    assert mem.read(BASE + 16, 8) == bytes.fromhex("efbeadde00000000")


def test_read_cstr_stops_at_nul_or_limit():
    """read_cstr returns the bytes before the NUL, or `limit` bytes when there is none."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "x")
    mem.write(BASE, b"hello\0world")
    assert mem.read_cstr(BASE) == b"hello"
    assert mem.read_cstr(BASE + 6) == b"world"
    assert mem.read_cstr(BASE, limit=3) == b"hel"
    long = pattern(200)
    mem.write(BASE + 0x100, long + b"\0")
    assert mem.read_cstr(BASE + 0x100) == long


def test_host_access_across_adjacent_vmrs():
    """read/write/read_u64/read_cstr work across the boundary of two adjacent VMRs."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "a")
    mem.map(BASE + 0x1000, 0x1000, Prot.READ, "b")
    edge = BASE + 0x1000
    mem.write(edge - 8, pattern(16))
    assert mem.read(edge - 8, 16) == pattern(16)
    assert mem.read(edge, 8) == pattern(16)[8:]
    mem.write_u64(edge - 4, 0x0102_0304_0506_0708)
    assert mem.read_u64(edge - 4) == 0x0102_0304_0506_0708
    assert mem.read(edge - 4, 8) == bytes.fromhex("0807060504030201")
    mem.write(edge - 3, b"abcdef\0")
    assert mem.read_cstr(edge - 3) == b"abcdef"


def test_read_cstr_ending_at_vmr_end_does_not_touch_the_next_page():
    """A string whose NUL is the last byte of a VMR is read without touching the unmapped page after it."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "x")
    mem.write(BASE + 0x1000 - 3, b"hi\0")
    assert mem.read_cstr(BASE + 0x1000 - 3) == b"hi"


@pytest.mark.parametrize(
    ("op", "addr", "message"),
    [
        (lambda m, a: m.read(a, 16), BASE + 0x1FF8, "read: address 0x10002000 is not mapped"),
        (lambda m, a: m.read(a, 1), BASE + 0x3000, "read: address 0x10003000 is not mapped"),
        (lambda m, a: m.read_u64(a), BASE + 0x1FFC, "read: address 0x10002000 is not mapped"),
        (lambda m, a: m.read_u32(a), BASE - 2, "read: address 0xffffffe is not mapped"),
        (lambda m, a: m.read_cstr(a), BASE + 0x1FF0, "read: address 0x10002000 is not mapped"),
        (lambda m, a: m.write(a, bytes(16)), BASE + 0x3000, "write: address 0x10003000 is not mapped"),
        (lambda m, a: m.write_u64(a, 1), BASE - 4, "write: address 0xffffffc is not mapped"),
        (lambda m, a: m.read(a, 8), -1, "read: bad range addr=-0x1 size=8"),
    ],
    ids=[
        "read-runs-off", "read-hole", "u64-runs-off", "u32-before",
        "cstr-runs-off", "write-hole", "u64-before", "negative",
    ],  # fmt: skip
)
def test_host_access_to_unmapped_names_first_unmapped_address(op, addr, message):
    """Host access touching an unmapped byte raises MemError naming the first unmapped address."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "a")
    mem.map(BASE + 0x1000, 0x1000, RW, "b")
    mem.write(BASE + 0x1FF0, pattern(16))  # no NUL up to the end of "b"
    with pytest.raises(MemError) as exc:
        op(mem, addr)
    assert str(exc.value) == message


def test_read_prefix_returns_the_contiguously_mapped_part():
    """read_prefix returns as many bytes as are mapped contiguously from addr (across VMRs), b"" if none."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "a")
    mem.map(BASE + 0x1000, 0x1000, Prot.READ, "b", backed=False, backing=b"lazy")
    mem.write(BASE + 0xFF0, pattern(16))
    assert mem.read_prefix(BASE + 0xFF0, 20) == pattern(16) + b"lazy"
    assert mem.read_prefix(BASE + 0x1FF8, 16) == bytes(8)
    assert mem.read_prefix(BASE + 0x2000, 16) == b""
    assert mem.read_prefix(BASE - 4, 16) == b""
    assert mem.lookup(BASE + 0x1000).is_backed(BASE + 0x1000) is False


def test_read_prefix_over_an_unbacked_middle_page_reads_its_backing():
    """read_prefix over backed, unbacked, backed pages of one VMR returns the same bytes as read."""
    mem = AddressSpace()
    backing = pattern(0x3000)
    mem.map(BASE, 0x3000, Prot.READ, "lazy", backed=False, backing=backing)
    assert mem.populate(BASE) == 1
    assert mem.populate(BASE + 0x2000) == 1
    assert mem.read(BASE + 0xFF0, 0x1020) == backing[0xFF0:0x2010]
    assert mem.read_prefix(BASE + 0xFF0, 0x1020) == backing[0xFF0:0x2010]


# -- unmap --------------------------------------------------------------------------


def test_unmap_whole_vmr():
    """unmap of exactly one VMR removes it, returns its length, and leaves its neighbours alone."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "a")
    mem.map(BASE + 0x1000, 0x2000, RW, "b")
    mem.map(BASE + 0x3000, 0x1000, RW, "c")
    assert mem.unmap(BASE + 0x1000, 0x2000) == 0x2000
    assert layout(mem) == [(BASE, BASE + 0x1000, RW, "a"), (BASE + 0x3000, BASE + 0x4000, RW, "c")]
    assert mem.lookup(BASE + 0x1000) is None


def test_unmap_middle_splits_and_keeps_data():
    """unmap of a middle part leaves two VMRs with the same name and prot, each keeping its bytes."""
    mem = AddressSpace()
    mem.map(BASE, 0x4000, RX, "x")
    data = pattern(0x4000)
    mem.write(BASE, data)
    assert mem.unmap(BASE + 0x1000, 0x2000) == 0x2000
    assert layout(mem) == [(BASE, BASE + 0x1000, RX, "x"), (BASE + 0x3000, BASE + 0x4000, RX, "x")]
    assert mem.read(BASE, 0x1000) == data[:0x1000]
    assert mem.read(BASE + 0x3000, 0x1000) == data[0x3000:]
    # The tail is a real, independent VMR: writes to it land at the right place.
    mem.write(BASE + 0x3FF8, b"tail-end")
    assert mem.read(BASE + 0x3000, 0x1000) == data[0x3000:0x3FF8] + b"tail-end"
    assert mem.read(BASE, 0x1000) == data[:0x1000]


def test_guest_and_host_share_bytes_after_splits(machine):
    """After unmap and protect split a VMR, guest writes to each piece are seen by the host and vice versa."""
    mem = machine.mem
    mem.map(LAZY, 0x4000, RW, "x")
    mem.unmap(LAZY + 0x1000, 0x1000)
    mem.protect(LAZY + 0x3000, 0x1000, Prot.READ | Prot.WRITE | Prot.EXEC)
    assert layout(mem)[2:5] == [
        (LAZY, LAZY + 0x1000, RW, "x"),
        (LAZY + 0x2000, LAZY + 0x3000, RW, "x"),
        (LAZY + 0x3000, LAZY + 0x4000, RW | Prot.EXEC, "x"),
    ]
    for addr in (LAZY + 0x8, LAZY + 0x2010, LAZY + 0x3FF8):
        ctx = machine.load(STORE, rbx=addr, rcx=addr)
        assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
        assert mem.read_u64(addr) == addr
        mem.write_u64(addr, addr ^ 0xFFFF)
        ctx = machine.load(LOAD, at=CODE + 0x100, rbx=addr)
        assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
        assert ctx.rax == addr ^ 0xFFFF


def test_unmap_across_vmrs_and_holes_returns_bytes_unmapped():
    """unmap over several VMRs and holes trims the edge VMRs, drops the inner ones, counts only mapped bytes."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "a")  # hole at +0x2000
    mem.map(BASE + 0x3000, 0x1000, RX, "b")  # hole at +0x4000..+0x6000
    mem.map(BASE + 0x6000, 0x3000, Prot.READ, "c")
    mem.write(BASE, pattern(0x1000, 1))
    mem.write(BASE + 0x8000, pattern(0x1000, 2))
    assert mem.unmap(BASE + 0x1000, 0x7000) == 0x1000 + 0x1000 + 0x2000
    assert layout(mem) == [(BASE, BASE + 0x1000, RW, "a"), (BASE + 0x8000, BASE + 0x9000, Prot.READ, "c")]
    assert mem.read(BASE, 0x1000) == pattern(0x1000, 1)
    assert mem.read(BASE + 0x8000, 0x1000) == pattern(0x1000, 2)


def test_unmap_of_a_hole_is_a_no_op():
    """unmap of a range with no VMR in it returns 0 and leaves the map (and its generation) unchanged."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "a")
    generation = mem.generation
    assert mem.unmap(BASE + 0x1000, 0x4000) == 0
    assert layout(mem) == [(BASE, BASE + 0x1000, RW, "a")]
    assert mem.generation == generation


def test_unmap_then_map_again_gives_fresh_zeroed_memory():
    """A range can be mapped again after unmap, and the new VMR does not see the old bytes."""
    mem = AddressSpace()
    mem.map(BASE, 0x3000, RW, "old")
    mem.write(BASE, pattern(0x3000))
    mem.unmap(BASE + 0x1000, 0x1000)
    mem.map(BASE + 0x1000, 0x1000, Prot.READ, "new")
    assert layout(mem) == [
        (BASE, BASE + 0x1000, RW, "old"),
        (BASE + 0x1000, BASE + 0x2000, Prot.READ, "new"),
        (BASE + 0x2000, BASE + 0x3000, RW, "old"),
    ]
    assert mem.read(BASE, 0x3000) == pattern(0x3000)[:0x1000] + bytes(0x1000) + pattern(0x3000)[0x2000:]


def test_unmap_rejects_misaligned_range():
    """unmap rejects a misaligned range with the range in the message."""
    mem = AddressSpace()
    with pytest.raises(MemError) as exc:
        mem.unmap(BASE, 0x800)
    assert str(exc.value) == "unmap: expected page-aligned start and length, got start=0x10000000 length=0x800"


def test_guest_read_after_unmap_faults_not_present(machine):
    """After unmap, a guest read of that page is #PF with err U (not present) and aux the address."""
    ctx = machine.load(LOAD, rbx=DATA + 0x1000)
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)  # mapped: the load works (and fills the TLB)
    assert machine.mem.unmap(DATA + 0x1000, 0x1000) == 0x1000
    ctx = machine.load(LOAD, rbx=DATA + 0x1238)
    assert machine.cpu.run(ctx, 1) == pf(DATA + 0x1238, U)
    assert (ctx.rip, ctx.fault_pending, ctx.trap_nr, ctx.err, ctx.aux) == (CODE, True, TrapNr.PF, U, DATA + 0x1238)


def test_guest_access_straddling_into_unmapped_page_faults_at_the_page(machine):
    """An 8-byte guest read that runs from a mapped page into an unmapped one faults at the unmapped page."""
    machine.mem.unmap(DATA + 0x1000, 0x1000)
    ctx = machine.load(LOAD, rbx=DATA + 0xFFC)
    assert machine.cpu.run(ctx, 1) == pf(DATA + 0x1000, U)


def test_guest_fault_aux_is_the_exact_address(machine):
    """The aux (CR2) of a guest #PF is the exact faulting address, not its page."""
    machine.mem.unmap(DATA + 0x1000, 0x1000)
    ctx = machine.load(LOAD, rbx=DATA + 0x1238)
    assert machine.cpu.run(ctx, 1) == pf(DATA + 0x1238, U)


# -- protect -------------------------------------------------------------------------


def test_protect_splits_at_both_ends():
    """protect of a middle range splits the VMR in three; names and bytes are kept."""
    mem = AddressSpace()
    mem.map(BASE, 0x4000, RW, "x")
    mem.write(BASE, pattern(0x4000))
    mem.protect(BASE + 0x1000, 0x2000, Prot.READ)
    assert layout(mem) == [
        (BASE, BASE + 0x1000, RW, "x"),
        (BASE + 0x1000, BASE + 0x3000, Prot.READ, "x"),
        (BASE + 0x3000, BASE + 0x4000, RW, "x"),
    ]
    assert mem.read(BASE, 0x4000) == pattern(0x4000)


def test_protect_across_adjacent_vmrs():
    """protect over the boundary of two adjacent VMRs changes the covered part of each."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "a")
    mem.map(BASE + 0x2000, 0x2000, RX, "b")
    mem.protect(BASE + 0x1000, 0x2000, Prot.NONE)
    assert layout(mem) == [
        (BASE, BASE + 0x1000, RW, "a"),
        (BASE + 0x1000, BASE + 0x2000, Prot.NONE, "a"),
        (BASE + 0x2000, BASE + 0x3000, Prot.NONE, "b"),
        (BASE + 0x3000, BASE + 0x4000, RX, "b"),
    ]


def test_protect_over_a_hole_fails_naming_first_unmapped_address():
    """protect of a range with a hole raises MemError naming the hole and changes nothing (no split either)."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "a")
    mem.map(BASE + 0x3000, 0x1000, RW, "b")
    with pytest.raises(MemError) as exc:
        mem.protect(BASE + 0x1000, 0x3000, Prot.READ)
    assert str(exc.value) == "protect: address 0x10002000 in [0x10001000, 0x10004000) is not mapped"
    assert layout(mem) == [(BASE, BASE + 0x2000, RW, "a"), (BASE + 0x3000, BASE + 0x4000, RW, "b")]
    with pytest.raises(MemError) as exc:
        mem.protect(BASE + 0x5000, 0x1000, Prot.READ)
    assert str(exc.value) == "protect: address 0x10005000 in [0x10005000, 0x10006000) is not mapped"


def test_guest_write_after_protect_read_faults_then_succeeds_after_protect_rw(machine):
    """protect READ makes a guest write #PF P|W|U at the address; protect READ|WRITE lets the same write through."""
    target = DATA + 0x1010
    ctx = machine.load(STORE, rbx=target, rcx=0x1111)
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)  # writable: fills the TLB with a writable entry
    assert machine.mem.read_u64(target) == 0x1111

    machine.mem.protect(DATA + 0x1000, 0x1000, Prot.READ)
    ctx = machine.load(STORE, rbx=target, rcx=0x2222)
    assert machine.cpu.run(ctx, 1) == pf(target, P | W | U)
    assert ctx.rip == CODE
    assert machine.mem.read_u64(target) == 0x1111

    # A guest read now caches a read-only TLB entry for the page.
    probe = machine.load(LOAD, at=CODE + 0x100, rbx=target)
    assert machine.cpu.run(probe, 1) == BudgetSpent(1)
    assert probe.rax == 0x1111

    machine.mem.protect(DATA + 0x1000, 0x1000, RW)
    ctx.clear_trap()
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
    assert machine.mem.read_u64(target) == 0x2222


def test_guest_access_to_prot_none_faults_not_present(machine):
    """A PROT_NONE page is not present to the guest: a read is #PF err U, a write err W|U."""
    machine.mem.protect(DATA, 0x1000, Prot.NONE)
    ctx = machine.load(LOAD, rbx=DATA + 0x40)
    assert machine.cpu.run(ctx, 1) == pf(DATA + 0x40, U)
    ctx = machine.load(STORE, rbx=DATA + 0x48)
    assert machine.cpu.run(ctx, 1) == pf(DATA + 0x48, W | U)


def test_guest_fetch_after_protect_without_exec_faults(machine):
    """protect of a code page to READ makes fetching from it #PF P|I|U; protect back to R-X runs it again."""
    ctx = machine.load("mov eax, 1; hlt")  # hlt: #GP in ring 3, which ends the run
    assert machine.cpu.run(ctx, 5) == TrapStop(1, TrapNr.GP, 0, 0)
    machine.mem.protect(CODE, 0x1000, Prot.READ)
    ctx = machine.load("mov eax, 1; hlt")
    assert machine.cpu.run(ctx, 5) == pf(CODE, P | int(PfErr.I) | U)
    assert ctx.rax == 0
    machine.mem.protect(CODE, 0x1000, RX)
    ctx.clear_trap()
    assert machine.cpu.run(ctx, 5) == TrapStop(1, TrapNr.GP, 0, 0)
    assert ctx.rax == 1


# -- lazily backed VMRs ---------------------------------------------------------------


def test_unbacked_vmr_guest_read_faults_with_vmr_backed(machine):
    """A guest read of an unbacked page is #PF err U|VMR_BACKED with aux the address, and nothing gets backed."""
    vmr = machine.mem.map(LAZY, 0x2000, RW, "lazy", backed=False)
    ctx = machine.load(LOAD, rbx=LAZY + 0x1238)
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 0x1238, U | VMR_BACKED)
    assert [vmr.is_backed(LAZY), vmr.is_backed(LAZY + 0x1000)] == [False, False]


def test_unbacked_vmr_guest_write_faults_with_vmr_backed(machine):
    """A guest write to an unbacked page is #PF err W|U|VMR_BACKED (not P)."""
    machine.mem.map(LAZY, 0x1000, RW, "lazy", backed=False)
    ctx = machine.load(STORE, rbx=LAZY + 0x88)
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 0x88, W | U | VMR_BACKED)


def test_populate_then_rerun_reads_zeros(machine):
    """After populate of the faulting page, the same context re-run from the same rip reads zeros."""
    machine.mem.map(LAZY, 0x2000, RW, "lazy", backed=False)
    ctx = machine.load(LOAD, rbx=LAZY + 0x7F8, rax=0x5A5A)
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 0x7F8, U | VMR_BACKED)
    assert machine.mem.populate(ctx.aux) == 1
    ctx.clear_trap()
    assert ctx.rip == CODE
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
    assert ctx.rax == 0
    # Only that page was backed: the next one still faults.
    ctx = machine.load(LOAD, rbx=LAZY + 0x1000)
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 0x1000, U | VMR_BACKED)


def test_populate_fills_from_backing_and_zero_fills_past_it(machine):
    """populate copies the backing bytes into the page and zeros past the backing's end."""
    backing = b"ABCDEFGHIJ"
    machine.mem.map(LAZY, 0x1000, RW, "lazy", backed=False, backing=backing)
    ctx = machine.load(LOAD, rbx=LAZY + 8)  # the last two backing bytes, then zeros
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 8, U | VMR_BACKED)
    assert machine.mem.populate(ctx.aux) == 1
    ctx.clear_trap()
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
    assert ctx.rax.to_bytes(8, "little") == b"IJ\0\0\0\0\0\0"
    assert machine.mem.read(LAZY, 0x1000) == backing + bytes(0x1000 - len(backing))


def test_populate_two_pages_uses_each_pages_part_of_the_backing(machine):
    """populate(addr, 2) backs two pages, each with its own slice of the backing; the guest reads both."""
    backing = pattern(0x1800)  # one and a half pages
    machine.mem.map(LAZY, 0x3000, RW, "lazy", backed=False, backing=backing)
    assert machine.mem.populate(LAZY + 0x123, 2) == 2
    assert machine.mem.read(LAZY, 0x2000) == backing + bytes(0x800)
    for addr in (LAZY + 0xFF8, LAZY + 0x1000, LAZY + 0x17F8, LAZY + 0x1800):
        ctx = machine.load(LOAD, rbx=addr)
        assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
        assert ctx.rax.to_bytes(8, "little") == (backing + bytes(0x800))[addr - LAZY : addr - LAZY + 8]
    ctx = machine.load(LOAD, rbx=LAZY + 0x2000)
    assert machine.cpu.run(ctx, 1) == pf(LAZY + 0x2000, U | VMR_BACKED)


def test_unbacked_code_page_faults_on_fetch_then_runs_its_backing(machine):
    """Fetching from an unbacked R-X page is #PF I|U|VMR_BACKED at rip; after populate the backing code runs."""
    code = assemble_bytes("mov eax, 7; hlt", LAZY)
    machine.mem.map(LAZY, 0x1000, RX, "lazy-text", backed=False, backing=code)
    ctx = UserContext(rip=LAZY, rsp=STACK_TOP - 8)
    assert machine.cpu.run(ctx, 10) == pf(LAZY, int(PfErr.I) | U | VMR_BACKED)
    assert machine.mem.populate(ctx.aux) == 1
    ctx.clear_trap()
    assert machine.cpu.run(ctx, 10) == TrapStop(1, TrapNr.GP, 0, 0)
    assert ctx.rax == 7


def test_populate_counts_only_newly_backed_pages():
    """populate returns the pages it newly backed: 0 the second time, 0 outside VMRs, partial at a VMR's end."""
    mem = AddressSpace()
    mem.map(BASE, 0x2000, RW, "lazy", backed=False)
    generation = mem.generation
    assert mem.populate(BASE) == 1
    assert mem.generation == generation + 1
    assert mem.populate(BASE) == 0
    assert mem.populate(BASE + 0x5000) == 0
    assert mem.populate(BASE, 4) == 1  # BASE already backed; +0x2000, +0x3000 are outside
    assert mem.generation == generation + 2
    assert mem.populate(BASE, 2) == 0
    assert mem.populate(BASE + 0x3000, 1) == 0


def test_populate_of_a_backed_vmr_is_a_no_op():
    """populate of a normally mapped VMR backs nothing and keeps its contents."""
    mem = AddressSpace()
    mem.map(BASE, 0x1000, RW, "x")
    mem.write(BASE, b"keep")
    assert mem.populate(BASE) == 0
    assert mem.read(BASE, 4) == b"keep"


def test_host_read_of_unbacked_page_does_not_back_it(machine):
    """A host read of an unbacked page returns the backing bytes and leaves it unbacked (the guest still faults)."""
    backing = pattern(0x1000 + 16)
    vmr = machine.mem.map(LAZY, 0x2000, RW, "lazy", backed=False, backing=backing)
    assert machine.mem.read(LAZY + 0xFF8, 16) == backing[0xFF8:0x1008]
    assert machine.mem.read(LAZY + 0x1008, 16) == backing[0x1008:] + bytes(8)
    assert machine.mem.read_u64(LAZY + 0x1800) == 0
    assert [vmr.is_backed(LAZY), vmr.is_backed(LAZY + 0x1000)] == [False, False]
    ctx = machine.load(LOAD, rbx=LAZY)
    assert machine.cpu.run(ctx, 1) == pf(LAZY, U | VMR_BACKED)


def test_host_write_backs_the_page_from_its_backing(machine):
    """A host write to an unbacked page backs it first: the rest of the page holds the backing, the guest reads it."""
    backing = pattern(0x1000)
    vmr = machine.mem.map(LAZY, 0x2000, RW, "lazy", backed=False, backing=backing)
    machine.mem.write(LAZY + 8, b"override")
    assert [vmr.is_backed(LAZY), vmr.is_backed(LAZY + 0x1000)] == [True, False]
    assert machine.mem.read(LAZY, 0x1000) == backing[:8] + b"override" + backing[16:]
    ctx = machine.load(LOAD, rbx=LAZY + 8)
    assert machine.cpu.run(ctx, 1) == BudgetSpent(1)
    assert ctx.rax.to_bytes(8, "little") == b"override"
    assert machine.mem.populate(LAZY) == 0


def test_split_of_lazy_vmr_keeps_backing_offsets():
    """After unmapping the head of a lazily backed VMR, populating the tail uses the tail's part of the backing."""
    mem = AddressSpace()
    backing = pattern(0x3000)
    vmr = mem.map(BASE, 0x3000, RW, "lazy", backed=False, backing=backing)
    mem.populate(BASE)
    mem.unmap(BASE, 0x1000)
    tail = mem.lookup(BASE + 0x1000)
    assert tail is not vmr
    assert mem.read(BASE + 0x2000, 0x1000) == backing[0x2000:]  # host read of unbacked tail page
    assert mem.populate(BASE + 0x2000) == 1
    assert mem.read(BASE + 0x1000, 0x2000) == backing[0x1000:]
    assert [tail.is_backed(BASE + 0x1000), tail.is_backed(BASE + 0x2000)] == [False, True]


# -- code coherence -----------------------------------------------------------------


def test_host_write_to_code_after_it_ran_is_picked_up(machine):
    """Code overwritten by the host after it ran is re-translated: the new instruction runs."""
    ctx = machine.load("mov eax, 1; hlt")  # hlt is #GP in ring 3: a convenient end
    assert machine.cpu.run(ctx, 10) == TrapStop(1, TrapNr.GP, 0, 0)
    assert ctx.rax == 1
    ctx = machine.load("mov eax, 2; hlt")  # same length, same address
    assert machine.cpu.run(ctx, 10) == TrapStop(1, TrapNr.GP, 0, 0)
    assert ctx.rax == 2


# -- load ---------------------------------------------------------------------------


def test_load_maps_segments_with_their_prot_and_zeroed_bss(machine):
    """load maps each segment at its address with its prot, named program:segment, data then zeros to memsz."""
    text_at, data_at = 0x1000_0000, 0x1000_1000
    # Copy the first data qword to the last qword of the bss, then stop (hlt: #GP).
    text = assemble_bytes(
        f"mov rax, qword ptr [{data_at:#x}]; mov qword ptr [{data_at + 0x2FF8:#x}], rax; hlt", text_at
    )
    program = Program(
        "prog",
        [
            Segment(text_at, text, RX, "text"),
            Segment(data_at, b"datadata", RW, "data", memsz=0x2100),
        ],
    )
    machine.mem.load(program)
    assert layout(machine.mem) == [
        (CODE, CODE + 0x2000, RX, "code"),
        (DATA, DATA + 0x2000, RW, "data"),
        (STACK_TOP - 0x10000, STACK_TOP, RW, "stack"),
        (text_at, text_at + 0x1000, RX, "prog:text"),
        (data_at, data_at + 0x3000, RW, "prog:data"),
    ]
    assert machine.mem.read(text_at, 0x1000) == text + bytes(0x1000 - len(text))
    assert machine.mem.read(data_at, 0x3000) == b"datadata" + bytes(0x3000 - 8)

    ctx = UserContext(rip=text_at, rsp=STACK_TOP - 8)
    assert machine.cpu.run(ctx, 10) == TrapStop(2, TrapNr.GP, 0, 0)
    assert machine.mem.read(data_at + 0x2FF8, 8) == b"datadata"
    # text is not writable by the guest
    ctx = machine.load(STORE, rbx=text_at)
    assert machine.cpu.run(ctx, 1) == pf(text_at, P | W | U)


# -- isolation ----------------------------------------------------------------------


def test_two_address_spaces_do_not_share_memory():
    """Two AddressSpaces mapping the same range keep separate bytes, for the host and for their guests."""
    code = 0x2000_0000
    spaces = []
    for marker in (0xAAAA, 0xBBBB):
        mem = AddressSpace()
        mem.map(code, 0x1000, RX, "code")
        mem.map(BASE, 0x1000, RW, "data")
        mem.write(code, assemble_bytes(STORE, code))
        spaces.append((mem, Cpu(mem), marker))
    for _mem, cpu, marker in spaces:
        assert cpu.run(UserContext(rip=code, rbx=BASE, rcx=marker), 1) == BudgetSpent(1)
    assert [mem.read_u64(BASE) for mem, _, _ in spaces] == [0xAAAA, 0xBBBB]
    spaces[0][0].unmap(BASE, 0x1000)
    assert layout(spaces[1][0]) == [(BASE, BASE + 0x1000, RW, "data"), (code, code + 0x1000, RX, "code")]
    assert spaces[1][0].read_u64(BASE) == 0xBBBB


# -- generation ------------------------------------------------------------------------


def test_generation_counts_map_changes_only():
    """generation is bumped by map, unmap, protect and backing a page, not by plain reads and writes."""
    mem = AddressSpace()
    seen = [mem.generation]
    mem.map(BASE, 0x2000, RW, "x", backed=False)
    seen.append(mem.generation)
    mem.write(BASE, b"x")  # backs page 0
    seen.append(mem.generation)
    mem.write(BASE, b"y")
    mem.read(BASE, 0x2000)
    seen.append(mem.generation)
    mem.protect(BASE, 0x1000, Prot.READ)
    seen.append(mem.generation)
    mem.unmap(BASE, 0x1000)
    seen.append(mem.generation)
    assert [g - seen[0] for g in seen] == [0, 1, 2, 2, 3, 4]


# -- property: the VMR list against a per-page model -------------------------------------

PROP_BASE = 0x1000_0000
PROP_PAGES = 16
PROP_CODE = 0x2000_0000  # outside the range under test
PROTS = [Prot(p) for p in range(8)]


def _marker(page: int, step: int) -> bytes:
    """16 bytes identifying `page` and the step that mapped it."""
    return struct.pack("<QQ", page, step)


_ops = st.lists(
    st.tuples(
        st.sampled_from(["map", "unmap", "protect"]),
        st.integers(0, PROP_PAGES - 1),
        st.integers(0, PROP_PAGES - 1),
        st.sampled_from(PROTS),
    ),
    min_size=1,
    max_size=12,
)


@attrs.define
class _Page:
    """The model of one mapped page: its prot, the name of the map that made it, and two 16-byte markers."""

    prot: Prot
    name: str
    head: bytes  # at the page's start (the guest probe rewrites its first qword)
    tail: bytes  # at the page's end


def _check_against_model(mem: AddressSpace, model: dict[int, _Page]) -> None:
    """The VMR list is sorted and disjoint; lookup, Unicorn's map and the bytes agree with `model` per page."""
    vmrs = mem.vmrs
    assert all(v.start < v.end for v in vmrs)
    assert all(left.end <= right.start for left, right in zip(vmrs, vmrs[1:], strict=False))
    uc_pages = {
        page
        for begin, end, _ in mem.uc.mem_regions()
        for page in range(begin, end + 1, PAGE_SIZE)
        if PROP_BASE <= page < PROP_BASE + PROP_PAGES * PAGE_SIZE
    }
    assert uc_pages == set(model)
    for i in range(PROP_PAGES):
        page = PROP_BASE + i * PAGE_SIZE
        vmr = mem.lookup(page)
        if page not in model:
            assert vmr is None
            continue
        want = model[page]
        assert vmr is mem.lookup(page + PAGE_SIZE - 1)
        assert vmr.start <= page < vmr.end
        assert (vmr.prot, vmr.name) == (want.prot, want.name)
        assert mem.read(page, 16) == want.head
        assert mem.read(page + PAGE_SIZE - 16, 16) == want.tail


def _probe_as_guest(mem: AddressSpace, cpu: Cpu, model: dict[int, _Page], step: int) -> None:
    """Per page, a guest load sees the head marker or faults, and a guest store lands (host sees it) or faults."""
    reader, writer = UserContext(), UserContext()
    for i in range(PROP_PAGES):
        page = PROP_BASE + i * PAGE_SIZE
        want = model.get(page)
        prot = want.prot if want else Prot.NONE
        value = struct.unpack("<Q", want.head[:8])[0] if want else 0
        new = value ^ (step + 1) << 32
        reader.rip, reader.rbx = PROP_CODE, page
        writer.rip, writer.rbx, writer.rcx = PROP_CODE + 0x10, page, new
        if prot == Prot.NONE:  # unmapped or PROT_NONE: not present
            assert cpu.run(reader, 1) == pf(page, U)
            assert cpu.run(writer, 1) == pf(page, W | U)
            continue
        assert cpu.run(reader, 1) == BudgetSpent(1)
        assert reader.rax == value
        if prot & Prot.WRITE:
            assert cpu.run(writer, 1) == BudgetSpent(1)
            want.head = struct.pack("<Q", new) + want.head[8:]
        else:
            assert cpu.run(writer, 1) == pf(page, P | W | U)
        assert mem.read(page, 16) == want.head


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_vmr_list_matches_per_page_model(ops):
    """Random map/unmap/protect keep lookup, the VMR list, Unicorn's map, the bytes and guest faults per-page exact."""
    mem = AddressSpace()
    cpu = Cpu(mem)
    mem.map(PROP_CODE, 0x1000, RX, "probe")
    mem.write(PROP_CODE, assemble_bytes(LOAD, PROP_CODE))
    mem.write(PROP_CODE + 0x10, assemble_bytes(STORE, PROP_CODE + 0x10))
    model: dict[int, _Page] = {}

    for step, (op, a, b, prot) in enumerate(ops):
        first, last = min(a, b), max(a, b)
        pages = [PROP_BASE + i * PAGE_SIZE for i in range(first, last + 1)]
        start, length = pages[0], len(pages) * PAGE_SIZE
        if op == "map":
            name = f"m{step}"
            clash = [v for v in mem.vmrs if v.start < start + length and v.end > start]
            if clash:
                assert any(p in model for p in pages)
                with pytest.raises(MemError) as exc:
                    mem.map(start, length, prot, name)
                v = clash[0]
                assert str(exc.value) == (
                    f"map {name!r}: [{start:#x}, {start + length:#x}) "
                    f"overlaps VMR {v.name!r} [{v.start:#x}, {v.end:#x})"
                )
            else:
                assert not any(p in model for p in pages)
                mem.map(start, length, prot, name)
                for page in pages:
                    model[page] = _Page(prot, name, _marker(page, step), _marker(page, ~step & 0xFFFF))
                    mem.write(page, model[page].head)
                    mem.write(page + PAGE_SIZE - 16, model[page].tail)
        elif op == "unmap":
            mapped = [p for p in pages if p in model]
            assert mem.unmap(start, length) == len(mapped) * PAGE_SIZE
            for page in mapped:
                del model[page]
        else:
            hole = next((p for p in pages if p not in model), None)
            if hole is not None:
                with pytest.raises(MemError) as exc:
                    mem.protect(start, length, prot)
                assert str(exc.value) == (
                    f"protect: address {hole:#x} in [{start:#x}, {start + length:#x}) is not mapped"
                )
            else:
                mem.protect(start, length, prot)
                for page in pages:
                    model[page].prot = prot
        _check_against_model(mem, model)
        _probe_as_guest(mem, cpu, model, step)


def test_failed_write_changes_nothing():
    """A host write running off the end of a VMR raises and writes (or backs) nothing."""
    mem = AddressSpace()
    mem.map(0x10000000, 0x1000, Prot.READ | Prot.WRITE, "rw", backed=False)
    with pytest.raises(MemError, match="write: address 0x10001000 is not mapped"):
        mem.write(0x10000FF8, bytes(range(16)))
    assert mem.read(0x10000FF8, 8) == bytes(8)
    assert mem.lookup(0x10000000).is_backed(0x10000000) is False
