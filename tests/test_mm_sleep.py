"""Issue 11, items 7 and 8: anonymous memory, sleep units, timed waits on parlib's alarm.

Each test cites the Akaros function it follows (brho/akaros).
"""

from __future__ import annotations

import errno
import struct

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.kernel import EV_ALARM, SYS_block, SYS_nanosleep
from akaros_sim.ktime import timespec
from akaros_sim.memory import Prot
from akaros_sim.mm import MAP_ANONYMOUS, MAP_PRIVATE, MMAP_BASE
from akaros_sim.simulation import RunEnd, Simulation
from akaros_sim.sync import CondVar, Mutex
from schedops.pthread import PthreadSched

U64 = (1 << 64) - 1


def _sim(vcores: int = 1) -> Simulation:
    sim = Simulation(vcores)
    sim.set_sched(PthreadSched())
    return sim


def _guest(program, **threads) -> Simulation:
    sim = _sim()
    sim.load(program)
    for name, entry in threads.items():
        sim.spawn_guest(name, program.symbol(entry))
    return sim


# -- item 7: anonymous memory is demand-zeroed by the kernel -------------------------------------------

ANON = assemble(
    f"""
.data
results:
    .zero 16
.text
_start:
    mov eax, 18              # mmap(0, 8192, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    xor edi, edi
    mov esi, 8192
    mov edx, 3
    mov r10d, {MAP_PRIVATE | MAP_ANONYMOUS}
    mov r8, -1
    xor r9d, r9d
    syscall
    mov rbx, rax
    mov rcx, [rbx]           # first touch, a read: the kernel zero-fills the page; reads 0
    mov [rip + results], rcx
    mov qword ptr [rbx + 4096], 55   # first touch of the second page, a write
    mov rcx, [rbx + 4096]
    mov [rip + results + 8], rcx
    ret
""",
    name="anon",
)


def test_first_touch_of_an_anonymous_page_is_zero_filled_by_the_kernel():
    """kern/src/mm.c, __hpf: a VMR without a file gets upage_alloc(p, &page, TRUE), a zeroed page,
    and the uthread carries on; nothing is reflected (no fault record, no populate_va)."""
    sim = _guest(ANON, g="_start")
    assert sim.run().end is RunEnd.ALL_EXITED
    assert struct.unpack("<2Q", sim.mem.read(ANON.symbol("results"), 16)) == (0, 55)
    assert sim.trace.of_kind("fault") == []
    assert [r.get("name") for r in sim.trace.of_kind("syscall")] == ["mmap"]
    zeroed = sim.trace.of_kind("page_zero")
    assert [(r.uth, r.get("addr")) for r in zeroed] == [("g", MMAP_BASE), ("g", MMAP_BASE + 4096)]
    assert zeroed[1].t - zeroed[0].t >= sim.costs.page_zero_ns
    assert sim.mem.lookup(MMAP_BASE).anon


FILE = assemble(
    f"""
_start:
    mov eax, 18              # mmap(0, 4096, RW, MAP_PRIVATE, fd 3, 0): a file, not in the page cache
    xor edi, edi
    mov esi, 4096
    mov edx, 3
    mov r10d, {MAP_PRIVATE}
    mov r8d, 3
    xor r9d, r9d
    syscall
    mov qword ptr [rax], 66  # #PF with PF_VMR_BACKED -> populate_va -> the store again
    ret
""",
    name="file",
)


def test_a_file_page_not_in_the_page_cache_reflects_a_vmr_backed_fault_and_populates():
    """kern/src/mm.c, __hpf: pm_load_page_nowait gives -EAGAIN for a file page not cached, the trap is
    reflected with PF_VMR_BACKED (kern/arch/x86/trap.c) and pthread populates it (sys_populate_va)."""
    sim = _guest(FILE, g="_start")
    assert sim.run().end is RunEnd.ALL_EXITED
    assert [(r.get("trap"), r.get("err"), r.get("aux")) for r in sim.trace.of_kind("fault")] == [
        (14, 0x8000_0006, MMAP_BASE)
    ]
    assert [r.get("name") for r in sim.trace.of_kind("syscall")] == ["mmap", "populate_va"]
    assert sim.trace.of_kind("page_zero") == []
    assert sim.mem.read_u64(MMAP_BASE) == 66


ANON_READ_ONLY = assemble(
    f"""
_start:
    mov eax, 18              # mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    xor edi, edi
    mov esi, 4096
    mov edx, 1
    mov r10d, {MAP_PRIVATE | MAP_ANONYMOUS}
    mov r8, -1
    xor r9d, r9d
    syscall
    mov qword ptr [rax], 1   # a write the VMR does not allow: __hpf's -EPERM, reflected plainly
    ret
""",
    name="anon_ro",
)


def test_a_write_to_a_read_only_anonymous_page_is_a_plain_fault():
    """kern/src/mm.c, __hpf: `!(vmr->vm_prot & prot)` is -EPERM before any page is allocated; the trap is
    reflected without PF_VMR_BACKED (only -EAGAIN sets it) and pthread sends SIGSEGV."""
    sim = _guest(ANON_READ_ONLY, g="_start")
    result = sim.run()
    assert (result.end, result.exit_status) == (RunEnd.PROCESS_EXITED, 139)
    assert [r.get("err") for r in sim.trace.of_kind("fault")] == [0x6]
    assert sim.trace.of_kind("page_zero") == []


# -- item 8: SYS_block in microseconds, SYS_nanosleep honours its timespec -------------------------------


def test_sys_block_takes_microseconds():
    """kern/src/syscall.c, sys_block(p, usec): kthread_usleep(usec); parlib's uthread_sleep(ns) rounds up."""
    sim = _sim()
    sim.spawn_python("b", parlib.syscall, SYS_block, 7)
    sim.spawn_python("s", parlib.uthread_sleep, 1500)
    assert sim.run().end is RunEnd.ALL_EXITED
    calls = {r.uth: r for r in sim.trace.of_kind("syscall")}
    done = {r.get("sysc"): r.t for r in sim.trace.of_kind("syscall_done")}
    assert calls["b"].get("args") == (7,) and calls["s"].get("args") == (2,)
    assert done[calls["b"].get("sysc")] == calls["b"].t + 7_000
    assert done[calls["s"].get("sysc")] == calls["s"].t + 2_000


BUF = 0x4000_0000


def test_nanosleep_honours_its_timespec():
    """kern/src/syscall.c, sys_nanosleep(req, rem): tv_sec * 1000000 + DIV_ROUND_UP(tv_nsec, 1000)
    microseconds; rem is zeroed; a bad pointer is -EFAULT and a bad tv_nsec -EINVAL, at once."""
    sim = _sim()
    sim.mem.map(BUF, 4096, Prot.READ | Prot.WRITE, "buf")
    sim.mem.write(BUF, timespec(2_500))  # 2.5 us: rounds up to 3
    sim.mem.write(BUF + 16, timespec(1_000_000_000 + 4_000))  # 1 s + 4 us
    sim.mem.write(BUF + 32, struct.pack("<qq", 0, 1_000_000_000))  # tv_nsec out of range
    sim.mem.write(BUF + 48, struct.pack("<qq", 7, 7))  # rem, overwritten with zeros
    rets, times = [], []

    def sleeper():
        for req, rem in ((BUF, BUF + 48), (BUF + 16, 0), (BUF + 32, 0), (0, 0)):
            before = sim.now()
            rets.append(parlib.syscall(SYS_nanosleep, req, rem))
            times.append(sim.now() - before)

    sim.spawn_python("n", sleeper)
    assert sim.run().end is RunEnd.ALL_EXITED
    assert rets == [0, 0, -errno.EINVAL & U64, -errno.EFAULT & U64]
    assert sim.mem.read(BUF + 48, 16) == bytes(16)
    calls = [r for r in sim.trace.of_kind("syscall") if r.get("name") == "nanosleep"]
    done = {r.get("sysc"): r.t for r in sim.trace.of_kind("syscall_done")}
    assert [done[c.get("sysc")] - c.t for c in calls[:2]] == [3_000, 1_000_004_000]
    assert times[0] >= 3_000 and times[2] < 3_000 and times[3] < 3_000


# -- item 8: timed waits on parlib's alarm ------------------------------------------------------------------


def _mutex_run(timeout_ns: int, hold_ns: int, vcores: int = 1):
    sim = _sim(vcores)
    box, log = {}, []

    def holder():
        m = box["m"] = Mutex("m")  # h runs first: w sleeps before it looks
        m.lock()
        parlib.uthread_sleep(hold_ns)
        m.unlock()

    def waiter():
        parlib.uthread_sleep(1_000)
        m = box["m"]
        got = m.timed_lock(timeout_ns)
        log.append((got, sim.now(), m.owner.name if m.owner else None))
        if got:
            m.unlock()

    sim.spawn_python("h", holder)
    sim.spawn_python("w", waiter)
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim, box["m"], log


def _wakes(sim, name: str) -> int:
    return sum(1 for r in sim.trace.of_kind("op") if r.get("op") == "thread_runnable" and r.get("args")[0] == name)


def test_mutex_timed_lock_times_out():
    """user/parlib/mutex.c, uth_semaphore_timed_down: the alarm's timeout_handler takes the waiter off the
    sync (__uth_sync_get_uth) and makes it runnable; it returns FALSE and does not own the mutex."""
    sim, m, log = _mutex_run(timeout_ns=10_000, hold_ns=50_000)
    (got, t, owner) = log[0]
    assert (got, owner) == (False, "h")  # the holder still has it
    (timeout,) = sim.trace.of_kind("timeout")
    assert timeout.uth == "w" and timeout.t >= 1_000 + 10_000
    assert t < 50_000  # woken by the alarm, long before the holder lets go
    assert [r.get("ev_type") for r in sim.trace.of_kind("event_post")].count(EV_ALARM) == 1
    assert (m.count, m.owner) == (1, None)


def test_mutex_timed_lock_succeeds_and_unsets_its_alarm():
    """uth_mutex_timed_lock: the unlock hands the mutex over first; unset_alarm cancels the alarm
    (user/parlib/alarm.c), so no EV_ALARM is ever posted and the result is TRUE."""
    sim, m, log = _mutex_run(timeout_ns=100_000, hold_ns=20_000)
    assert [(got, owner) for got, _, owner in log] == [(True, "w")]
    assert sim.trace.of_kind("timeout") == []
    assert EV_ALARM not in [r.get("ev_type") for r in sim.trace.of_kind("event_post")]
    assert (m.count, m.owner) == (1, None)


def _cv_run(timeout_ns: int, signal_after_ns: int | None, vcores: int = 1):
    sim = _sim(vcores)
    box, log = {}, []

    def waiter():
        m, cv = box["m"], box["cv"] = Mutex("m"), CondVar("cv")  # w runs first
        with m:
            got = cv.timed_wait(m, timeout_ns)
            log.append((got, sim.now(), m.owner.name))

    def signaller():
        parlib.compute(signal_after_ns)
        with box["m"]:
            box["cv"].signal()

    sim.spawn_python("w", waiter)
    if signal_after_ns is not None:
        sim.spawn_python("s", signaller)
    assert sim.run().end is RunEnd.ALL_EXITED
    return sim, box["cv"], log


def test_cond_var_timed_wait_times_out_and_holds_the_mutex_again():
    """user/parlib/mutex.c, uth_cond_var_timed_wait: FALSE on a timeout, with the mutex locked again."""
    sim, cv, log = _cv_run(timeout_ns=5_000, signal_after_ns=None)
    assert [(got, owner) for got, _, owner in log] == [(False, "w")]
    assert log[0][1] >= 5_000
    assert [r.uth for r in sim.trace.of_kind("timeout")] == ["w"]
    assert cv._waiters == []


def test_cond_var_timed_wait_signalled_in_time():
    """uth_cond_var_timed_wait: a signal before the alarm returns TRUE; the alarm is unset."""
    sim, cv, log = _cv_run(timeout_ns=50_000, signal_after_ns=3_000, vcores=2)
    assert [(got, owner) for got, _, owner in log] == [(True, "w")]
    assert sim.trace.of_kind("timeout") == []


def test_signal_and_timeout_race_wake_the_waiter_exactly_once():
    """mutex.c's timeout_handler and uth_cond_var_signal both take the waiter off the sync under the CV's
    spinlock; whoever comes second finds it gone.  Signals swept across the timeout, on two vcores:
    the waiter is made runnable once, and the result says which side won."""
    outcomes = set()
    for after in range(8_000, 12_500, 250):
        sim, cv, log = _cv_run(timeout_ns=10_000, signal_after_ns=after, vcores=2)
        ((got, _, owner),) = log
        timed_out = bool(sim.trace.of_kind("timeout"))
        assert got is not timed_out and owner == "w", after
        assert _wakes(sim, "w") == 1, after
        assert cv._waiters == []
        outcomes.add(got)
    assert outcomes == {True, False}  # both sides won somewhere in the sweep


def test_timed_waits_are_deterministic():
    """Two runs of the same timed waits give the same trace, record for record."""

    def story():
        sim, _, _ = _cv_run(timeout_ns=10_000, signal_after_ns=9_750, vcores=2)
        return [(r.t, r.vc, r.uth, r.kind, repr(dict(r.details))) for r in sim.trace]

    assert story() == story()
