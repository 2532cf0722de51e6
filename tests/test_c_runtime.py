"""The C guest runtime (akaros_sim/runtime, akaros_sim/guest_calls.py) and the seed's programs in C.

scenarios/c/pthread_stress.c, ras_counter.c and mmap_stress.c run as the shipped
scenarios scenarios/c_*.toml on 1, 2 and 4 vcores (the shipped-scenario checks of
tests/test_scenario.py run them once more, as shipped); the runtime's pieces (printf, malloc,
string.h, pthread joins and mutex errors, uaccess's extable entries, the RAS
macro) are checked on a small program.  Every test needs the ziglang package:
skipped where it is missing, failing under CI=true.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from akaros_sim import Simulation, guest_calls, kernel, toolchain
from akaros_sim.elf import load_elf
from akaros_sim.tools.scenario import load_scenario, load_scenario_text, run_scenario
from schedops.pthread import PthreadSched

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "akaros_sim" / "runtime"

pytestmark = pytest.mark.skipif(
    not toolchain.available() and os.environ.get("CI") != "true",
    reason="the ziglang package is not installed (pip install ziglang): no C toolchain",
)

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uaccess.h>
#include <ras.h>

long results[8];
pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
pthread_once_t once = PTHREAD_ONCE_INIT;
long once_calls;

static void init_once(void) { once_calls++; }

static void *child(void *arg)
{
    pthread_once(&once, init_once);
    return (void *)((long)arg * 10);
}

long check(void)
{
    pthread_t a, b;
    void *ra = 0;
    long word = 7;
    char buf[8], *p = malloc(24), *q = malloc(1);

    pthread_create(&a, NULL, child, (void *)4);
    pthread_create(&b, NULL, child, (void *)5);
    results[0] = pthread_join(a, &ra) == 0 ? (long)ra : -1;
    results[1] = pthread_detach(b);
    results[2] = pthread_join(a, &ra);                      /* reaped already: EINVAL */
    results[3] = pthread_mutex_unlock(&mu);                 /* not the owner: EPERM */
    results[4] = copy_from_user(buf, (void *)0x10, 8) + get_user(word, (long *)0x18) * 1000;
    results[5] = word;                                      /* get_user zeroes it on a fault */
    results[6] = put_user(1L, (long *)0x20) + copy_to_user((void *)0x28, buf, 1) * 1000;
    results[7] = q - p;
    strcpy(p, "str");
    printf("[%s|%5d|%-5x|%05u|%c|%p|%%|%ld]\n", p, -42, 0xbeef, 42u, 'z', (void *)0x1000, -9000000000L);
    pthread_yield();
    return once_calls;
}
"""


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def private_cache(module_cache, monkeypatch):
    """One cache for this module's builds, apart from the user's: each C program compiles once here."""
    monkeypatch.setenv("AKAROS_SIM_CACHE", str(module_cache))


def _u64(sim, addr):
    value = int.from_bytes(sim.proc.mem.read(addr, 8), "little")
    return value - (1 << 64) if value >> 63 else value


def test_the_runtime_serves_a_c_program(tmp_path):
    """pthreads, once, join/detach errors, mutex ownership, uaccess -EFAULTs, malloc, printf formats."""
    (tmp_path / "p.c").write_text(PROGRAM, encoding="utf-8")
    program = load_elf(toolchain.build([tmp_path / "p.c"], ["-Wall", "-Wextra", "-Werror"]))
    types = sorted(e.type.name for e in program.extable)
    assert types == ["FIXUP", "UACCESS", "UACCESS", "UACCESS"]  # get_user's .fixup; copy and put_user
    assert len(program.ras) == 0  # ras.h included, ras_percpu_add unused: no sequence
    sim = Simulation(vcores=2, seed=1)
    sim.load(program)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("main", program.symbol("check"))
    sim.run()
    assert sim.uthread("main").exit_value == 1
    results = [_u64(sim, program.symbol("results") + 8 * i) for i in range(8)]
    assert results == [40, 0, 22, 1, -14 - 14000, 0, -14 - 14000, 32]  # 24 bytes take 32
    assert "".join(sim.proc.kernel.console) == "[str|  -42|beef |00042|z|0x1000|%|-9000000000]\n"


def test_the_header_numbers_match_the_simulator():
    """akaros/syscall.h's SYS_* numbers are kernel.py's and guest_calls.py's."""
    text = (RUNTIME / "include" / "akaros" / "syscall.h").read_text(encoding="utf-8")
    defined = {name: int(value, 0) for name, value in re.findall(r"#define (SYS_\w+)\s+(0x[0-9a-fA-F]+|\d+)", text)}
    assert len(defined) >= 25
    for name, value in defined.items():
        assert getattr(guest_calls, name, None) == value or getattr(kernel, name, None) == value, name
    assert set(guest_calls.GUEST_CALL_NAMES) <= set(defined.values())


def test_the_runtime_is_in_the_cache_key(tmp_path, monkeypatch):
    """Changing a runtime header changes the build key (and so rebuilds)."""
    (tmp_path / "p.c").write_text("long f(void) { return 1; }\n", encoding="utf-8")
    before = toolchain.build_key([tmp_path / "p.c"])
    copy = tmp_path / "runtime"
    shutil.copytree(RUNTIME, copy)
    monkeypatch.setattr(toolchain, "RUNTIME_DIR", copy)
    assert toolchain.build_key([tmp_path / "p.c"]) == before
    with open(copy / "include" / "stdio.h", "a", encoding="utf-8") as f:
        f.write("/* changed */\n")
    assert toolchain.build_key([tmp_path / "p.c"]) != before


@pytest.mark.parametrize("vcores", [1, 2, 4])
def test_pthread_stress_in_c(vcores):
    """Eight pthreads: a mutex counter over three barrier phases, a condvar, joins; exact on 1, 2, 4 vcores."""
    run = run_scenario(load_scenario(ROOT / "scenarios" / "c_pthread_stress.toml", (("machine.vcores", vcores),)))
    assert run.ok, [c for c in run.checks if not c.ok]


@pytest.mark.parametrize("sched", ["roundrobin", "pthread"])
@pytest.mark.parametrize("vcores", [1, 2, 4])
def test_ras_counter_in_c(vcores, sched):
    """Per-vcore counters on ras_percpu_add stay exact under a tick storm, with restarts: under the scenario's
    roundrobin (which switches uthreads on every tick) and under pthread (which resumes the interrupted one)."""
    overrides = (("machine.vcores", vcores), ("scheduler.name", sched))
    run = run_scenario(load_scenario(ROOT / "scenarios" / "c_ras_counter.toml", overrides))
    assert run.ok and run.sim.trace.header["sched"] == sched, [c for c in run.checks if not c.ok]


def test_ras_counter_without_the_ras_loses_updates():
    """The same loop built with -DNO_RAS (no __ras entry) loses updates on one vcore."""
    path = ROOT / "scenarios" / "c_ras_counter.toml"
    text = path.read_text(encoding="utf-8").replace('cflags = ["-O2",', 'cflags = ["-DNO_RAS", "-O2",')
    run = run_scenario(load_scenario_text(text, path))
    failed = {c.name: c for c in run.checks if not c.ok}
    assert set(failed) == {"counts.ras_restart", "memory[0].main:total"}, failed
    assert failed["memory[0].main:total"].got < 10000


@pytest.mark.parametrize("vcores", [1, 2, 4])
def test_mmap_stress_in_c(vcores):
    """copy_from_user/copy_to_user under a racing mapper: only 0 or -EFAULT, the assembly version's
    expectations; on one vcore the mapper gets fewer turns, so pthread's schedule expectations are left out."""
    run = run_scenario(load_scenario(ROOT / "scenarios" / "c_mmap_stress.toml", (("machine.vcores", vcores),)))
    checks = [c for c in run.checks if vcores > 1 or not c.name.startswith("schedule.")]
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_the_c_mmap_stress_keeps_the_assembly_expectations():
    """scenarios/c_mmap_stress.toml's [expect] is scenarios/mmap_stress.toml's, word for word."""
    asm = (ROOT / "scenarios" / "mmap_stress.toml").read_text(encoding="utf-8")
    c = (ROOT / "scenarios" / "c_mmap_stress.toml").read_text(encoding="utf-8")
    assert asm[asm.index("[expect]"):] == c[c.index("[expect]"):]


SLEEPS = r"""
#include <time.h>
#include <unistd.h>

long out[6];

long sleeps(void)
{
    struct timespec req = {0, 2500}, bad = {0, 1000000000L}, rem = {7, 7};
    unsigned long t0 = sys_gettime();

    usleep(3);                              /* SYS_block(3): microseconds */
    out[0] = sys_gettime() - t0;
    t0 = sys_gettime();
    out[1] = nanosleep(&req, &rem);         /* a timespec pointer: 2.5 us, rounded up to 3 */
    out[2] = sys_gettime() - t0;
    out[3] = rem.tv_sec * 10 + rem.tv_nsec; /* zeroed */
    out[4] = nanosleep(&bad, 0);            /* tv_nsec out of range: -EINVAL, -1 */
    out[5] = sys_nanosleep((void *)0x10, 0);
    return 0;
}
"""


def test_usleep_and_nanosleep_pass_microseconds_and_a_timespec(tmp_path):
    """usleep passes SYS_block microseconds and nanosleep its timespec pointers (as glibc on Akaros)."""
    (tmp_path / "s.c").write_text(SLEEPS, encoding="utf-8")
    program = load_elf(toolchain.build([tmp_path / "s.c"], ["-Wall", "-Wextra", "-Werror"]))
    sim = Simulation(vcores=1, seed=1)
    sim.load(program)
    sim.set_sched(PthreadSched())
    sim.spawn_guest("main", program.symbol("sleeps"))
    sim.run()
    out = [_u64(sim, program.symbol("out") + 8 * i) for i in range(6)]
    assert out[0] >= 3_000 and out[1] == 0 and out[2] >= 3_000
    assert out[3:] == [0, -1, -14]  # rem zeroed; -EINVAL is -1 from nanosleep; a bad req is -EFAULT
    calls = {r.get("sysc"): r for r in sim.trace.records if r.kind == "syscall"}
    slept = [(calls[r.get("sysc")].get("name"), r.t - calls[r.get("sysc")].t)
             for r in sim.trace.records if r.kind == "syscall_done"]  # fmt: skip
    assert [r.get("args")[0] for r in calls.values() if r.get("name") == "block"] == [3]
    assert slept == [("block", 3_000), ("nanosleep", 3_000)]
