"""parlib: mutexes, condition variables, join/detach, call_guest, its context checks, and isolation."""

from __future__ import annotations

import pytest

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.parlib import CondVar, Mutex, ParlibError
from akaros_sim.simulation import RunEnd, Simulation
from schedops.pthread import PthreadSched


def make_sim(vcores: int = 1, seed: int = 1) -> Simulation:
    sim = Simulation(vcores=vcores, seed=seed)
    sim.set_sched(PthreadSched())
    return sim


def ops(sim, *names: str) -> list[tuple[str, tuple]]:
    """(op, args) of the op records, only the named ops if any."""
    return [(r.get("op"), r.get("args")) for r in sim.trace.of_kind("op") if not names or r.get("op") in names]


def yields(n: int) -> None:
    for _ in range(n):
        parlib.uthread_sched_yield()


# -- Mutex --------------------------------------------------------------------------------------------


def test_mutex_hands_off_fifo_without_barging():
    """Waiters get the mutex in the order they blocked (b, c, a), each handed it with count 0; no barging."""
    sim = make_sim()
    log = []
    m = {}

    def owner():
        mu = m["m"] = Mutex("m")
        mu.lock()
        yields(3)  # b, c and a block meanwhile, in that order
        log.append(("owner unlocks", mu.count))
        mu.unlock()  # b is handed the mutex: count stays 0 and the owner cannot take it back
        log.append(("owner trylock", mu.trylock(), mu.count))

    def locker(name, first_yields):
        yields(first_yields)
        mu = m["m"]
        mu.lock()
        log.append((name, "has it", mu.count, mu.owner.name))
        mu.unlock()

    sim.spawn_python("owner", owner)
    sim.spawn_python("a", locker, "a", 2)
    sim.spawn_python("b", locker, "b", 0)
    sim.spawn_python("c", locker, "c", 1)
    sim.run()
    assert log == [
        ("owner unlocks", 0),
        ("owner trylock", False, 0),
        ("b", "has it", 0, "b"),
        ("c", "has it", 0, "c"),
        ("a", "has it", 0, "a"),
    ]
    assert m["m"].count == 1 and m["m"].owner is None
    assert [r.uth for r in sim.trace.of_kind("mutex_block")] == ["b", "c", "a"]
    assert [r.get("to") for r in sim.trace.of_kind("mutex_handoff")] == ["b", "c", "a"]
    assert ops(sim, "thread_has_blocked", "sync_enqueue") == [
        ("thread_has_blocked", ("owner", 3)),
        ("thread_has_blocked", ("a", 3)),
        ("thread_has_blocked", ("b", parlib.UTH_EXT_BLK_MUTEX)),
        ("sync_enqueue", ("b", "UthSync")),
        ("thread_has_blocked", ("c", 3)),
        ("thread_has_blocked", ("owner", 3)),
        ("thread_has_blocked", ("a", 3)),
        ("thread_has_blocked", ("c", parlib.UTH_EXT_BLK_MUTEX)),
        ("sync_enqueue", ("c", "UthSync")),
        ("thread_has_blocked", ("owner", 3)),
        ("thread_has_blocked", ("a", parlib.UTH_EXT_BLK_MUTEX)),
        ("sync_enqueue", ("a", "UthSync")),
    ]


def test_trylock_never_blocks():
    """trylock takes a free mutex, fails on a held one (even its owner's), and never leaves the uthread."""
    sim = make_sim()
    log = []
    m = {}

    def a():
        mu = m["m"] = Mutex()
        log.append(("a", mu.trylock(), mu.trylock(), mu.count))
        parlib.uthread_sched_yield()
        mu.unlock()
        log.append(("a unlocked", mu.count))

    def b():
        log.append(("b", m["m"].trylock()))
        parlib.uthread_sched_yield()
        log.append(("b", m["m"].trylock(), m["m"].owner.name))

    sim.spawn_python("a", a)
    sim.spawn_python("b", b)
    sim.run()
    assert log == [("a", True, False, 0), ("b", False), ("a unlocked", 1), ("b", True, "b")]
    assert sim.trace.of_kind("mutex_block") == []
    assert [r.get("why") for r in sim.trace.of_kind("vcore_entry") if r.uth == "b"] == ["yield", "yield"]


# -- CondVar ------------------------------------------------------------------------------------------


def test_cv_wait_enqueues_before_releasing_the_mutex():
    """wait's callback enqueues the waiter, then unlocks (handing the mutex to s): s's signal is not lost."""
    sim = make_sim()
    log = []
    mu, cv = {}, {}

    def w():
        mu["m"], cv["cv"] = Mutex("m"), CondVar("cv")
        mu["m"].lock()
        parlib.uthread_sched_yield()  # s blocks on m
        log.append("w waits")
        cv["cv"].wait(mu["m"])
        log.append(("w woke holding m", mu["m"].owner.name))
        mu["m"].unlock()

    def s():
        mu["m"].lock()
        log.append("s has m, signals")
        cv["cv"].signal()
        mu["m"].unlock()

    sim.spawn_python("w", w)
    sim.spawn_python("s", s)
    sim.run()
    assert log == ["w waits", "s has m, signals", ("w woke holding m", "w")]
    recs = sim.trace.of_kind("cv_wait", "op", "mutex_handoff", "run")
    start = recs.index(sim.trace.of_kind("cv_wait")[0])
    assert [(r.kind, r.get("op") or r.get("to") or r.uth, r.get("args")) for r in recs[start:]] == [
        ("cv_wait", "w", None),
        ("op", "thread_has_blocked", ("w", parlib.UTH_EXT_BLK_MUTEX)),
        ("op", "sync_enqueue", ("w", "UthSync")),  # on the CV ...
        ("op", "sync_get_next", ("UthSync",)),  # ... before the mutex is released
        ("mutex_handoff", "s", None),
        ("op", "thread_runnable", ("s",)),
        ("op", "sched_entry", ()),
        ("run", "s", None),
        ("op", "sync_get_next", ("UthSync",)),  # signal finds w
        ("op", "thread_runnable", ("w",)),
        ("op", "sync_get_next", ("UthSync",)),  # s unlocks: no waiter
        ("op", "sched_entry", ()),
        ("run", "w", None),
        ("op", "sync_get_next", ("UthSync",)),
        ("op", "sched_entry", ()),
    ]


def _cv_waiters(sim, log, order_yields):
    """Spawn waiters named by order_yields {name: yields before waiting}; returns the shared (m, cv) box."""
    box = {}

    def waiter(name, first_yields):
        yields(first_yields)
        with box["m"]:
            box["cv"].wait(box["m"])
            log.append((name, box["m"].owner.name))

    for name, n in order_yields.items():
        sim.spawn_python(name, waiter, name, n)
    return box


def test_cv_signal_wakes_the_oldest_waiter():
    """Waiters wait in the order w2, w3, w1; each signal wakes exactly one, oldest first."""
    sim = make_sim()
    log = []

    def main():
        box["m"], box["cv"] = Mutex("m"), CondVar("cv")
        yields(2)  # everyone waits
        for i in (1, 2, 3):
            log.append(f"signal {i}")
            with box["m"]:
                box["cv"].signal()
            yields(1)

    sim.spawn_python("main", main)
    box = _cv_waiters(sim, log, {"w1": 1, "w2": 0, "w3": 0})
    sim.run()
    assert log == ["signal 1", ("w2", "w2"), "signal 2", ("w3", "w3"), "signal 3", ("w1", "w1")]
    assert [r.uth for r in sim.trace.of_kind("cv_wait")] == ["w2", "w3", "w1"]


def test_cv_broadcast_wakes_all_in_bulk_and_they_reacquire_the_mutex():
    """broadcast swaps the queue and calls pthread's thread_bulk_runnable once; each waiter re-locks in turn."""
    sim = make_sim()
    log = []

    def main():
        box["m"], box["cv"] = Mutex("m"), CondVar("cv")
        yields(2)
        box["m"].lock()
        box["cv"].broadcast()
        parlib.uthread_sched_yield()  # the woken waiters block on m
        log.append("main unlocks")
        box["m"].unlock()

    sim.spawn_python("main", main)
    box = _cv_waiters(sim, log, {"w1": 1, "w2": 0, "w3": 0})
    sim.run()
    assert log == ["main unlocks", ("w2", "w2"), ("w3", "w3"), ("w1", "w1")]
    seq = ops(sim, "sync_swap", "thread_bulk_runnable", "thread_runnable")
    start = seq.index(("sync_swap", ("UthSync", "UthSync")))
    assert seq[start : start + 3] == [
        ("sync_swap", ("UthSync", "UthSync")),
        ("thread_bulk_runnable", ("UthSync",)),
        ("thread_runnable", ("main",)),  # main's own yield: no per-waiter thread_runnable
    ]
    assert [r.uth for r in sim.trace.of_kind("mutex_block")] == ["w2", "w3", "w1"]
    assert [r.get("to") for r in sim.trace.of_kind("mutex_handoff")] == ["w2", "w3", "w1"]


# -- join and detach ------------------------------------------------------------------------------------


def test_join_of_an_exited_thread_reaps_it_then_blocks_through_the_2ls():
    """c exits joinable (thread_exited deferred); main's later join reaps c, then, as parlib's
    uthread_join_arr always does (user/parlib/uthread.c join_one, __uth_join_cb), blocks and is
    made runnable again through the 2LS before returning 42."""
    sim = make_sim()
    log = []

    def main():
        c = parlib.uthread_create(lambda: 42, name="c")
        parlib.uthread_sched_yield()  # c runs and exits
        log.append(("c exited", c.has_exited, c.join_state.name, c.state.name))
        log.append(("join", parlib.uthread_join(c), c.state.name))

    sim.spawn_python("main", main)
    sim.run()
    assert log == [("c exited", True, "JOINABLE", "EXITED"), ("join", 42, "REAPED")]
    recs = sim.trace.of_kind("op", "run", "uthread_exit", "uthread_cleanup", "vcore_entry")
    start = [r.kind for r in recs].index("uthread_exit")
    assert [(r.kind, r.get("op") or r.get("target") or r.uth, r.uth) for r in recs[start:]] == [
        ("uthread_exit", "c", "c"),  # JOINABLE: no thread_exited here
        ("op", "sched_entry", ""),
        ("run", "main", "main"),
        ("op", "thread_exited", "c"),  # called by the joiner (an op record names its subject uthread) ...
        ("uthread_cleanup", "c", "main"),  # ... in its own context
        ("vcore_entry", "main", "main"),  # the join still yields ...
        ("op", "thread_has_blocked", "main"),
        ("op", "thread_runnable", "main"),  # ... and its own kick makes it runnable
        ("op", "sched_entry", ""),
        ("run", "main", "main"),
        ("vcore_entry", "main", "main"),  # main's own exit
        ("uthread_exit", "main", "main"),
        ("op", "sched_entry", ""),
    ]
    assert sim.trace.of_kind("uthread_exit")[0].get("join") == "JOINABLE"


def test_join_of_a_running_thread_blocks_until_it_exits():
    """main joins c before c ran: has_blocked(MISC), c runs and exits, main woken with c's value, thread_exited(c)."""
    sim = make_sim()
    log = []

    def main():
        c = parlib.uthread_create(lambda: "c-result", name="c")
        log.append(("join", parlib.uthread_join(c)))

    sim.spawn_python("main", main)
    sim.run()
    assert log == [("join", "c-result")]
    assert ops(sim)[2:] == [
        ("sched_entry", ()),
        ("thread_create", ("c",)),
        ("thread_has_blocked", ("main", parlib.UTH_EXT_BLK_MISC)),
        ("sched_entry", ()),
        ("thread_runnable", ("main",)),  # c exits with a joiner: the joiner kicked (post and kick) ...
        ("thread_exited", ("c",)),  # ... then c reaped, in parlib's order
        ("sched_entry", ()),
        ("sched_entry", ()),
    ]
    assert sim.trace.of_kind("uthread_exit")[0].details == (
        ("target", "c"), ("join", "HAS_JOINER"), ("retval", "c-result"),
    )  # fmt: skip


def test_detach_reaps_at_exit_or_at_once():
    """A detached running thread is reaped when it exits; detaching an exited one reaps it on the spot."""
    sim = make_sim()

    def main():
        early = parlib.uthread_create(lambda: 1, name="early")
        late = parlib.uthread_create(lambda: 2, name="late")
        parlib.uthread_detach(late)  # still to run
        parlib.uthread_sched_yield()  # both run and exit
        parlib.trace("marker")
        parlib.uthread_detach(early)  # exited: thread_exited now

    sim.spawn_python("main", main)
    sim.run()
    recs = sim.trace.of_kind("uthread_exit", "op", "marker")
    assert [
        (r.kind, r.get("target") or r.get("op"), r.get("join") or r.get("args"))
        for r in recs
        if r.kind != "op" or r.get("op") == "thread_exited"
    ] == [
        ("uthread_exit", "early", "JOINABLE"),
        ("uthread_exit", "late", "DETACHED"),
        ("op", "thread_exited", ("late",)),
        ("marker", None, None),
        ("op", "thread_exited", ("early",)),
        ("uthread_exit", "main", "JOINABLE"),
    ]


def test_join_and_detach_errors():
    """A second joiner, a join after detach, a detach after join and a self-join raise ParlibError."""
    sim = make_sim()
    errors = []

    def attempt(what, fn, *args):
        try:
            fn(*args)
        except ParlibError as exc:
            errors.append((what, str(exc)))

    def main():
        c = parlib.uthread_create(parlib.uthread_sched_yield, name="c")
        d = parlib.uthread_create(parlib.uthread_sched_yield, name="d")
        parlib.uthread_create(lambda: attempt("second join", parlib.uthread_join, c), name="j2")
        parlib.uthread_create(lambda: attempt("detach joined", parlib.uthread_detach, c), name="j3")
        parlib.uthread_detach(d)
        attempt("join detached", parlib.uthread_join, d)
        attempt("self join", parlib.uthread_join, parlib.uthread_self())
        parlib.uthread_join(c)

    sim.spawn_python("main", main)
    res = sim.run()
    assert res.end is RunEnd.ALL_EXITED
    assert errors == [
        ("join detached", "uthread_join('d') from 'main': target is DETACHED"),
        ("self join", "uthread_join: 'main' cannot join itself"),
        ("second join", "uthread_join('c') from 'j2': target is HAS_JOINER"),
        ("detach joined", "uthread_detach('c'): target is HAS_JOINER"),
    ]


@pytest.mark.parametrize("first", ["join", "detach"])
def test_join_or_detach_of_a_reaped_thread_is_a_parlib_error(first):
    """Joining or detaching a thread already reaped by a join or detach raises ParlibError; thread_exited runs once."""
    sim = make_sim()
    errors = []

    def main():
        c = parlib.uthread_create(lambda: 1, name="c")
        parlib.uthread_sched_yield()
        (parlib.uthread_join if first == "join" else parlib.uthread_detach)(c)
        for again in (parlib.uthread_join, parlib.uthread_detach):
            try:
                again(c)
            except Exception as exc:  # noqa: BLE001 - the exception type is what is checked
                errors.append(type(exc).__name__)

    sim.spawn_python("main", main)
    sim.run()
    assert errors == ["ParlibError", "ParlibError"]
    assert ops(sim, "thread_exited") == [("thread_exited", ("c",))]


# -- call_guest -------------------------------------------------------------------------------------------

# Small guest functions a Python uthread calls.
GUEST_FUNCS = """
add:                            # rdi + rsi
    lea rax, [rdi + rsi]
    ret
vcoreid:                        # SYS_getvcoreid through the kernel
    mov eax, 8
    syscall
    ret
div100:                         # 100 / rdi: #DE when rdi == 0
    mov eax, 100
    xor edx, edx
    div rdi
    ret
install:                        # sigaction(SIGFPE, on_fpe)
    mov edi, 8
    lea rsi, [rip + on_fpe]
    mov eax, 0x1002
    syscall
    ret
on_fpe:                         # make the saved divisor 4 and retry
    mov qword ptr [rdx + 48], 4
    ret
bad:
    ud2
"""


def _guest_sim():
    sim = make_sim()
    prog = assemble(GUEST_FUNCS)
    sim.load(prog)
    return sim, prog


def test_call_guest_returns_rax():
    """call_guest runs guest code on the Python uthread's own context and returns rax, as often as called."""
    sim, prog = _guest_sim()
    log = []

    def p():
        log.append(parlib.call_guest(prog.symbol("add"), 2, 40))
        log.append(parlib.call_guest(prog.symbol("add"), 1 << 63, 1 << 62))
        log.append(parlib.call_guest(prog.symbol("vcoreid")))
        log.append(parlib.call_guest(prog.symbol("div100"), 7))

    sim.spawn_python("p", p)
    sim.run()
    assert log == [42, (1 << 63) + (1 << 62), 0, 14]
    assert [r.get("name") for r in sim.trace.of_kind("syscall")] == ["getvcoreid"]


def test_fault_in_call_guest_is_reflected_like_a_guest_threads():
    """#DE in call_guest: pthread signals SIGFPE, the guest handler fixes rdi, the call returns 100 / 4."""
    sim, prog = _guest_sim()
    log = []

    def p():
        parlib.call_guest(prog.symbol("install"))
        log.append(parlib.call_guest(prog.symbol("div100"), 0))

    sim.spawn_python("p", p)
    sim.run()
    assert log == [25]
    assert [(r.kind, r.uth) for r in sim.trace.of_kind("fault", "signal_prep", "signal", "sigreturn")] == [
        ("fault", "p"),
        ("signal_prep", ""),
        ("signal", "p"),
        ("sigreturn", "p"),
    ]
    assert sim.trace.of_kind("signal")[0].get("handler") == prog.symbol("on_fpe")


def test_unhandled_fault_in_call_guest_ends_the_process():
    """ud2 in call_guest is pthread's unhandled fault: exit(-1), the report names the Python uthread."""
    sim, prog = _guest_sim()
    after = []

    def p():
        parlib.call_guest(prog.symbol("bad"))
        after.append("returned")

    sim.spawn_python("p", p)
    res = sim.run()
    assert (res.end, res.exit_status, after) == (RunEnd.PROCESS_EXITED, -1, [])
    assert res.report.splitlines()[:2] == [
        "Pthread has unhandled fault: uthread 'p' trap 6 (#UD) err 0x0 aux 0x0",
        f"  at {prog.symbol('bad'):#x}: 0f 0b  ud2",
    ]


# -- context checks -----------------------------------------------------------------------------------------


def test_parlib_outside_a_simulation_is_an_error():
    """A parlib call from plain Python names the function and says it needs a running Simulation."""
    with pytest.raises(ParlibError, match=r"^uthread_self: not called from inside a running Simulation$"):
        parlib.uthread_self()
    with pytest.raises(ParlibError, match=r"^Mutex.lock: not called from inside a running Simulation$"):
        Mutex.lock(object.__new__(Mutex))


def test_context_checks_name_the_function():
    """From a uthread, vcore-context functions refuse; from vcore context, uthread functions refuse."""
    sim = make_sim()
    errors = []

    def attempt(fn, *args):
        try:
            fn(*args)
        except ParlibError as exc:
            errors.append(str(exc))

    def cb(uth, _arg):
        attempt(parlib.uthread_self)
        attempt(parlib.compute, 10)
        parlib.uthread_has_blocked(uth, parlib.UTH_EXT_BLK_YIELD)
        parlib.uthread_runnable(uth)

    def a():
        attempt(parlib.vcore_yield)
        attempt(parlib.handle_events)
        attempt(parlib.run_uthread, parlib.uthread_self())
        attempt(parlib.compute, -1)
        parlib.uthread_yield(True, cb)

    sim.spawn_python("a", a)
    sim.run()
    assert errors == [
        "vcore_yield: must be called from vcore context",
        "handle_events: must be called from vcore context",
        "run_uthread: must be called from vcore context",
        "compute: expected ns >= 0, got -1",
        "uthread_self: must be called from a running uthread",
        "compute: must be called from a running uthread",
    ]


def test_uthread_sleep_is_sys_block():
    """uthread_sleep(ns) is a blocking SYS_block(usec), ns rounded up (sys_block takes microseconds)."""
    sim = make_sim()
    times = []

    def s():
        times.append(sim.now())
        parlib.uthread_sleep(3000)
        times.append(sim.now())

    sim.spawn_python("s", s)
    sim.run()
    (call,) = sim.trace.of_kind("syscall")
    assert (call.get("name"), call.get("args")) == ("block", (3,))
    assert sim.trace.of_kind("syscall_done")[0].t == call.t + 3000
    assert times[1] >= call.t + 3000


# -- isolation and determinism ---------------------------------------------------------------------------------

MIXED_SRC = """
entry:                          # rdi = n: n rounds of getvcoreid + yield, then exit with n
    mov rbx, rdi
.Lloop:
    test rbx, rbx
    jz .Ldone
    mov eax, 8
    syscall
    mov eax, 0x1001             # parlib yield
    syscall
    dec rbx
    jmp .Lloop
.Ldone:
    mov rax, rdi
    ret
"""


def build_mixed(sim: Simulation, tag: str) -> None:
    """Guest and Python uthreads sharing a mutex, sleeping and computing: a run with many interleavings."""
    prog = assemble(MIXED_SRC)
    sim.load(prog)
    for i in range(2):
        sim.spawn_guest(f"{tag}-g{i}", prog.symbol("entry"), 3 + i)
    box = {}

    def worker(i):
        if "m" not in box:
            box["m"] = Mutex(f"{tag}-m")
        for _ in range(3):
            with box["m"]:
                parlib.compute(700 + 100 * i)
                parlib.uthread_sched_yield()
            parlib.uthread_sleep(1500 + 250 * i)
        assert parlib.current_sim() is sim
        return i

    for i in range(3):
        sim.spawn_python(f"{tag}-p{i}", worker, i)


def _run_mixed(tag: str, vcores: int = 2):
    sim = make_sim(vcores=vcores)
    build_mixed(sim, tag)
    return sim, sim.run()


def test_same_setup_gives_identical_traces():
    """Two runs of the same 2-vcore scenario produce byte-identical traces and equal results."""
    sim1, res1 = _run_mixed("x")
    sim2, res2 = _run_mixed("x")
    assert res1.end is RunEnd.ALL_EXITED
    assert len(sim1.trace) > 200
    assert sim1.trace.digest() == sim2.trace.digest()
    assert sim1.trace.to_jsonl() == sim2.trace.to_jsonl()
    assert res1 == res2


def test_two_simulations_in_one_process_share_nothing():
    """Sims built interleaved and run one after the other trace exactly as when each is built and run alone."""
    alone_a, _ = _run_mixed("a")
    alone_b, _ = _run_mixed("b", vcores=1)
    sim_a, sim_b = make_sim(vcores=2), make_sim(vcores=1)
    build_mixed(sim_b, "b")
    build_mixed(sim_a, "a")
    res_a = sim_a.run()
    res_b = sim_b.run()
    assert (res_a.end, res_b.end) == (RunEnd.ALL_EXITED, RunEnd.ALL_EXITED)
    assert sim_a.trace.digest() == alone_a.trace.digest()
    assert sim_b.trace.digest() == alone_b.trace.digest()
    assert sim_a.trace.digest() != sim_b.trace.digest()
    assert [u.exit_value for u in sim_b.uthreads] == [3, 4, 0, 1, 2]
