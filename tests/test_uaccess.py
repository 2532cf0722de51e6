"""The guest uaccess library: every routine against every kind of user pointer, under the pthread 2LS."""

from __future__ import annotations

import struct

import pytest

from akaros_sim import parlib
from akaros_sim.memory import PAGE_SIZE, Prot
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.uaccess import ROUTINES, uaccess_program
from schedops.pthread import PthreadSched

RW = Prot.READ | Prot.WRITE
EFAULT = -14

# The layout every test maps: a "kernel" buffer the routines copy to and from,
# and one page per kind of user pointer.
KBUF = 0x1000_0000
USER = 0x2000_0000  # RW, populated
RO = 0x2100_0000  # read-only
NONE = 0x2200_0000  # PROT_NONE
EDGE = 0x2300_0000  # RW, and the page after it unmapped
LAZY = 0x2400_0000  # RW, valid but not populated until the 2LS asks (PF_VMR_BACKED)
UNMAPPED = 0x5000_0000
NONCANONICAL = 0x8000_0000_0000_0000  # #GP, not #PF

KDATA = b"KERNEL-DATA-0123" + b"\xee" * 16  # what KBUF holds before each call
UDATA = b"hello, akaros!\x00" + b"ABCDEFGHIJKLMNOPQ"  # what each user page holds (32 bytes)
EDGE_TAIL = b"abcd"  # the last 4 bytes of EDGE's page: no NUL before the boundary
EDGE_END = EDGE + PAGE_SIZE
VALUE = 0x1122_3344_5566_7788  # what put_user stores

POINTERS = {
    "good": USER,
    "null": 0,
    "unmapped": UNMAPPED,
    "readonly": RO,
    "prot_none": NONE,
    "across_boundary": EDGE_END - 4,  # 4 valid bytes, then the unmapped page
    "noncanonical": NONCANONICAL,
    "not_yet_backed": LAZY,
}

# How each routine is called with user pointer p, and whether it writes through p.
CALLS = {
    "copy_from_user": (lambda p: (KBUF, p, 16), False),
    "copy_to_user": (lambda p: (p, KBUF, 16), True),
    "get_user": (lambda p: (KBUF, p), False),
    "put_user": (lambda p: (p, VALUE), True),
    "strncpy_from_user": (lambda p: (KBUF, p, 32), False),
    "clear_user": (lambda p: (p, 16), True),
}


def signed(value: int) -> int:
    """A guest's u64 rax as the C long it is."""
    return value - (1 << 64) if value >> 63 else value


def make_sim(seed: int = 1) -> tuple[Simulation, object]:
    """A pthread simulation with the uaccess library and the pages above."""
    sim = Simulation(vcores=1, seed=seed)
    lib = uaccess_program()
    sim.load(lib)
    sim.set_sched(PthreadSched())
    sim.mem.map(KBUF, PAGE_SIZE, RW, "kbuf", backing=KDATA)
    sim.mem.map(USER, PAGE_SIZE, RW, "user", backing=UDATA)
    sim.mem.map(RO, PAGE_SIZE, Prot.READ, "readonly", backing=UDATA)
    sim.mem.map(NONE, PAGE_SIZE, Prot.NONE, "prot_none", backing=UDATA)
    sim.mem.map(EDGE, PAGE_SIZE, RW, "edge", backing=bytes(PAGE_SIZE - 4) + EDGE_TAIL)
    sim.mem.map(LAZY, PAGE_SIZE, RW, "lazy", backed=False, backing=UDATA)
    return sim, lib


def run_calls(calls, sim=None, lib=None, between=None) -> tuple[list[int], Simulation]:
    """Run [(routine, args)] in order from one Python uthread; their signed returns, and the simulation."""
    if sim is None:
        sim, lib = make_sim()
    got = []

    def main():
        for i, (routine, args) in enumerate(calls):
            if i and between is not None:
                between()
            got.append(signed(parlib.call_guest(lib.symbol(routine), *args)))

    sim.spawn_python("main", main)
    res = sim.run()
    assert (res.end, res.report) == (RunEnd.ALL_EXITED, None)
    return got, sim


def user_page(sim: Simulation, kind: str) -> bytes:
    """The 32 bytes of interest in the page behind `kind` (host view: ignores protections)."""
    if kind == "across_boundary":
        return sim.mem.read(EDGE_END - 32, 32)
    return sim.mem.read(POINTERS[kind], 32)


def faults(sim: Simulation) -> list[tuple[int, int, int]]:
    return [(r.get("trap"), r.get("err"), r.get("aux")) for r in sim.trace.of_kind("fault")]


def expected_faults(kind: str, write: bool) -> list[tuple[int, int, int]]:
    """The faults the user-side access takes: (trap, error code, CR2)."""
    w = 2 if write else 0
    return {
        "good": [],
        "null": [(14, 4 | w, 0)],
        "unmapped": [(14, 4 | w, UNMAPPED)],
        "readonly": [(14, 1 | 4 | w, RO)] if write else [],  # present page: P set
        "prot_none": [(14, 4 | w, NONE)],  # PROT_NONE is not present, as in Linux
        "across_boundary": [(14, 4 | w, EDGE_END)],  # CR2 is the first byte that faulted
        "noncanonical": [(13, 0, 0)],
        "not_yet_backed": [(14, 0x8000_0000 | 4 | w, LAZY)],
    }[kind]


def test_the_library_exports_every_routine():
    """ROUTINES names the six routines and each is a symbol of the program."""
    lib = uaccess_program()
    assert ROUTINES == ("copy_from_user", "copy_to_user", "get_user", "put_user", "strncpy_from_user", "clear_user")
    assert all(lib.symbol(name) for name in ROUTINES)
    assert len(lib.extable) == 7


# -- expected results per pointer kind --------------------------------------------------------

NO_PAGE = ("null", "unmapped", "noncanonical")  # no page to look at afterwards
_READ_OK = ("good", "readonly", "not_yet_backed")


def _expect_copy_from_user(kind):
    """(return, KBUF's 32 bytes after)."""
    if kind in _READ_OK:
        return 0, UDATA[:16] + KDATA[16:]
    if kind == "across_boundary":
        return EFAULT, EDGE_TAIL + KDATA[4:]  # the 4 bytes before the boundary were copied
    return EFAULT, KDATA


def _expect_get_user(kind):
    """(return, KBUF's 32 bytes after)."""
    if kind in _READ_OK:
        return 0, UDATA[:8] + KDATA[8:]
    return EFAULT, KDATA  # one 8-byte load: nothing stored, even across the boundary


def _expect_strncpy_from_user(kind):
    """(return, KBUF's 32 bytes after)."""
    if kind in _READ_OK:
        return 14, UDATA[:15] + KDATA[15:]  # "hello, akaros!" and its NUL
    if kind == "across_boundary":
        return EFAULT, EDGE_TAIL + KDATA[4:]
    return EFAULT, KDATA


def _expect_user_write(routine, kind):
    """(return, the user page's 32 bytes after) for a routine writing WRITES[routine] through the pointer."""
    written = WRITES[routine]
    if kind in ("good", "not_yet_backed"):
        return 0, written + UDATA[len(written) :]
    if kind == "across_boundary":
        if routine == "put_user":
            return EFAULT, bytes(28) + EDGE_TAIL  # one 8-byte store: all or nothing, as on x86
        return EFAULT, bytes(28) + written[:4]  # the 4 bytes before the boundary were written
    return EFAULT, UDATA  # read-only, PROT_NONE: unchanged


READS = {
    "copy_from_user": _expect_copy_from_user,
    "get_user": _expect_get_user,
    "strncpy_from_user": _expect_strncpy_from_user,
}
WRITES = {
    "copy_to_user": KDATA[:16],
    "put_user": struct.pack("<Q", VALUE),
    "clear_user": bytes(16),
}


@pytest.mark.parametrize("kind", POINTERS)
@pytest.mark.parametrize("routine", READS)
def test_reading_routines_against_every_pointer(routine, kind):
    """copy_from_user, get_user and strncpy_from_user: exact return, KBUF after, user page untouched, faults."""
    args, _ = CALLS[routine]
    got, sim = run_calls([(routine, args(POINTERS[kind]))])
    ret, kbuf = READS[routine](kind)
    assert (got, sim.mem.read(KBUF, 32)) == ([ret], kbuf)
    if kind not in NO_PAGE:
        before = bytes(28) + EDGE_TAIL if kind == "across_boundary" else UDATA
        assert user_page(sim, kind) == before
    assert faults(sim) == expected_faults(kind, write=False)


@pytest.mark.parametrize("kind", POINTERS)
@pytest.mark.parametrize("routine", WRITES)
def test_writing_routines_against_every_pointer(routine, kind):
    """copy_to_user, put_user and clear_user: exact return, user page after, KBUF untouched, faults."""
    args, _ = CALLS[routine]
    got, sim = run_calls([(routine, args(POINTERS[kind]))])
    ret, user = _expect_user_write(routine, kind)
    assert got == [ret]
    if kind not in NO_PAGE:
        assert user_page(sim, kind) == user
    assert sim.mem.read(KBUF, 32) == KDATA
    assert faults(sim) == expected_faults(kind, write=True)


@pytest.mark.parametrize("routine", ROUTINES)
def test_every_bad_pointer_is_fixed_by_the_extable_and_never_reaches_the_2ls(routine):
    """Each -EFAULT comes from one extable fixup of type uaccess; pthread's refl-fault op never runs."""
    args, _ = CALLS[routine]
    bad = ("null", "unmapped", "prot_none", "across_boundary", "noncanonical")
    got, sim = run_calls([(routine, args(POINTERS[kind])) for kind in bad])
    assert got == [EFAULT] * len(bad)
    assert [r.get("type") for r in sim.trace.of_kind("extable_fixup")] == ["uaccess"] * len(bad)
    assert [r.get("how") for r in sim.trace.of_kind("run")] == ["run_uthread"] + ["fault_fixed"] * len(bad)
    assert sim.trace.of_kind("chain_previous") == []


@pytest.mark.parametrize("routine", ROUTINES)
def test_not_yet_backed_pointer_is_populated_by_the_2ls_then_succeeds(routine):
    """A PF_VMR_BACKED fault is declined by the extable, pthread issues populate_va, the retry succeeds."""
    args, write = CALLS[routine]
    got, sim = run_calls([(routine, args(LAZY))])
    assert got == [14 if routine == "strncpy_from_user" else 0]
    assert [(r.get("handler"), r.get("status")) for r in sim.trace.of_kind("handler")] == [
        ("extable", "CONTINUE_NEXT_HANDLER")
    ]
    assert len(sim.trace.of_kind("chain_previous")) == 1
    assert [(r.get("name"), r.get("args")) for r in sim.trace.of_kind("syscall")] == [("populate_va", (LAZY, 1))]
    assert [(r.get("name"), r.get("ret")) for r in sim.trace.of_kind("syscall_done")] == [("populate_va", 0)]
    assert sim.trace.of_kind("extable_fixup") == []
    assert sim.mem.lookup(LAZY).is_backed(LAZY)
    assert faults(sim) == expected_faults("not_yet_backed", write)


def test_copy_across_two_unbacked_pages_populates_each():
    """A copy spanning two lazy pages faults (and populates) once per page, then returns 0 with all the data."""
    sim, lib = make_sim()
    backing = bytes(range(256)) * 32
    sim.mem.map(0x2600_0000, 2 * PAGE_SIZE, RW, "lazy2", backed=False, backing=backing)
    src = 0x2600_0000 + PAGE_SIZE - 8
    got, sim = run_calls([("copy_from_user", (KBUF, src, 16))], sim, lib)
    assert got == [0]
    assert sim.mem.read(KBUF, 16) == backing[PAGE_SIZE - 8 : PAGE_SIZE + 8]
    # pthread passes the faulting address itself (CR2), as Akaros's handle_page_fault does.
    assert [r.get("args") for r in sim.trace.of_kind("syscall")] == [(src, 1), (0x2600_0000 + PAGE_SIZE, 1)]


@pytest.mark.parametrize("routine", ROUTINES)
def test_a_region_unmapped_during_the_run_then_gives_minus_efault(routine):
    """The same call succeeds, an injection unmaps the user page while the uthread sleeps, then it returns -EFAULT."""
    args, write = CALLS[routine]
    sim, lib = make_sim()
    sim.at(50_000, "unmap user", sim.mem.unmap, USER, PAGE_SIZE)
    call = (routine, args(USER))
    got, sim = run_calls([call, call], sim, lib, between=lambda: parlib.uthread_sleep(100_000))
    assert got == [14 if routine == "strncpy_from_user" else 0, EFAULT]
    kinds = [r.kind for r in sim.trace if r.kind in ("inject", "fault", "extable_fixup")]
    assert kinds == ["inject", "fault", "extable_fixup"]
    assert faults(sim) == [(14, 4 | (2 if write else 0), USER)]
    assert sim.mem.lookup(USER) is None


@pytest.mark.parametrize(
    "count,ret,copied",
    [
        (32, 6, b"akaros\x00"),  # NUL found: its length, NUL copied
        (7, 6, b"akaros\x00"),  # the NUL is the last byte allowed
        (6, 6, b"akaros"),  # no NUL within count: count, nothing more copied
        (4, 4, b"akar"),
        (1, 1, b"a"),
        (0, 0, b""),
    ],
)
def test_strncpy_from_user_returns_the_length_or_count(count, ret, copied):
    """The length without the NUL if one is within count, else count; only those bytes are written."""
    sim, lib = make_sim()
    sim.mem.write(USER, b"akaros\x00zzzz")
    got, sim = run_calls([("strncpy_from_user", (KBUF, USER, count))], sim, lib)
    assert got == [ret]
    assert sim.mem.read(KBUF, 32) == copied + KDATA[len(copied) :]


def test_strncpy_from_user_of_an_empty_string_is_zero():
    """A NUL first: 0, and the NUL copied."""
    got, sim = run_calls([("strncpy_from_user", (KBUF, USER + 14, 32))])
    assert got == [0]
    assert sim.mem.read(KBUF, 2) == b"\x00" + KDATA[1:2]


@pytest.mark.parametrize("routine", ["copy_from_user", "copy_to_user", "clear_user"])
def test_zero_length_with_a_bad_pointer_touches_nothing(routine):
    """n = 0 never dereferences the pointer: 0, no fault."""
    args = {"copy_from_user": (KBUF, 0, 0), "copy_to_user": (0, KBUF, 0), "clear_user": (0, 0)}[routine]
    got, sim = run_calls([(routine, args)])
    assert (got, faults(sim)) == ([0], [])


def test_repeated_runs_give_identical_trace_digests():
    """Good, bad, lazy and unmapped-during-the-run calls: two runs, the same trace bytes."""
    digests = []
    for _ in range(2):
        sim, lib = make_sim(seed=7)
        sim.at(50_000, "unmap user", sim.mem.unmap, USER, PAGE_SIZE)
        calls = [
            ("copy_from_user", (KBUF, USER, 16)),
            ("get_user", (KBUF, UNMAPPED)),
            ("strncpy_from_user", (KBUF, LAZY, 32)),
            ("put_user", (NONCANONICAL, 1)),
            ("clear_user", (USER, 16)),
        ]
        got, sim = run_calls(calls, sim, lib, between=lambda: parlib.uthread_sleep(20_000))
        assert got == [0, EFAULT, 14, EFAULT, EFAULT]
        digests.append(sim.trace.digest())
    assert digests[0] == digests[1]


def test_a_lazy_page_unmapped_while_its_populate_is_in_flight_gives_minus_efault():
    """The populate finds no VMR (-EINVAL), the retried load faults without PF_VMR_BACKED, the extable fixes it."""
    sim, lib = make_sim()
    sim.at(10_000, "unmap lazy", sim.mem.unmap, LAZY, PAGE_SIZE)  # populate_va takes 20 us
    got, sim = run_calls([("get_user", (KBUF, LAZY))], sim, lib)
    assert got == [EFAULT]
    assert faults(sim) == [(14, 0x8000_0000 | 4, LAZY), (14, 4, LAZY)]
    assert [(r.get("name"), signed(r.get("ret"))) for r in sim.trace.of_kind("syscall_done")] == [("populate_va", -22)]
    assert sim.mem.read(KBUF, 32) == KDATA


def test_a_write_to_a_lazy_read_only_page_is_populated_then_gives_minus_efault():
    """Not backed comes first (populate), then the write to the now-present read-only page is -EFAULT."""
    sim, lib = make_sim()
    lazy_ro = 0x2700_0000
    sim.mem.map(lazy_ro, PAGE_SIZE, Prot.READ, "lazy_ro", backed=False, backing=UDATA)
    got, sim = run_calls([("put_user", (lazy_ro, VALUE)), ("get_user", (KBUF, lazy_ro))], sim, lib)
    assert got == [EFAULT, 0]
    assert faults(sim) == [(14, 0x8000_0000 | 4 | 2, lazy_ro), (14, 1 | 4 | 2, lazy_ro)]
    assert (sim.mem.read(lazy_ro, 32), sim.mem.read(KBUF, 32)) == (UDATA, UDATA[:8] + KDATA[8:])


def test_a_page_made_read_only_during_the_run_refuses_writes_but_not_reads():
    """put_user succeeds, an injection mprotects the page read-only, put_user is -EFAULT, get_user still 0."""
    sim, lib = make_sim()
    sim.at(50_000, "protect user", sim.mem.protect, USER, PAGE_SIZE, Prot.READ)
    calls = [("put_user", (USER, 5)), ("put_user", (USER, 6)), ("get_user", (KBUF, USER))]
    got, sim = run_calls(calls, sim, lib, between=lambda: parlib.uthread_sleep(100_000))
    assert got == [0, EFAULT, 0]
    assert faults(sim) == [(14, 1 | 4 | 2, USER)]
    assert sim.mem.read(KBUF, 8) == struct.pack("<Q", 5)


def test_uthreads_on_two_vcores_each_resume_on_the_vcore_that_faulted():
    """Four uthreads on two vcores: every -EFAULT and every populate is right, each fixed fault resumes in place."""
    sim = Simulation(vcores=2, seed=3)
    lib = uaccess_program()
    sim.load(lib)
    sim.set_sched(PthreadSched())
    sim.mem.map(KBUF, PAGE_SIZE, RW, "kbuf", backing=KDATA)
    sim.mem.map(LAZY, 4 * PAGE_SIZE, RW, "lazy", backed=False, backing=UDATA * 512)
    results = {}

    def worker(i):
        got = []
        for _ in range(3):
            got.append(signed(parlib.call_guest(lib.symbol("get_user"), KBUF + 8 * i, UNMAPPED)))
            got.append(signed(parlib.call_guest(lib.symbol("get_user"), KBUF + 8 * i, LAZY + i * PAGE_SIZE + 8)))
            parlib.uthread_sched_yield()
        results[i] = got

    for i in range(4):
        sim.spawn_python(f"w{i}", worker, i)
    res = sim.run()
    assert res.end is RunEnd.ALL_EXITED
    assert results == {i: [EFAULT, 0] * 3 for i in range(4)}
    assert sim.mem.read(KBUF, 32) == UDATA[8:16] * 4
    assert {vc.vcore: vc.switches > 0 for vc in res.vcores} == {0: True, 1: True}
    last_fault_vc = {}
    for rec in sim.trace:
        if rec.kind == "fault":
            last_fault_vc[rec.uth] = rec.vc
        elif rec.kind == "fault_fixed":
            assert rec.vc == last_fault_vc[rec.uth]
    assert sim.extable.sites() == [(lib.symbol("get_user"), 12)]
    assert len(sim.trace.of_kind("fault_fixed")) == 12
