"""Test helpers for the runtime tests: a scripted fake 2LS and a tiny guest program.

`Fifo2LS` is the smallest 2LS that has all ten required sched_ops: one FIFO
ready queue, optional pinning of uthreads to vcores (to force an
interleaving), faults end the process.  Its ops reach the trace as "op"
records through `Simulation.call_op`, so tests read its decisions there.

`SPIN` is a guest loop whose result depends on every iteration, so two runs
that end with equal registers executed the same instructions.
"""

from __future__ import annotations

from collections import deque

from akaros_sim import parlib
from akaros_sim.asm import assemble
from akaros_sim.simulation import Simulation
from akaros_sim.uthread import Uthread

# rdi = iterations, rsi = seed; returns a hash of the whole run in rax.
# 6 instructions per iteration, plus 2 before the loop and 2 after it.
SPIN_SRC = """
_start:
    mov rax, rsi
    movabs rbx, 0x9E3779B97F4A7C15
loop:
    imul rax, rbx            # mix the state
    add rax, rdi             # ... with the iteration count
    rol rax, 13
    xor rdx, rax             # accumulate
    dec rdi
    jnz loop
    mov rax, rdx
    ret                      # to the vdso: uthread_exit(rax)
"""
SPIN = assemble(SPIN_SRC, name="spin")


def spin_insns(iterations: int) -> int:
    """Guest instructions one SPIN run retires, the exit trampoline's 3 included."""
    return 2 + 6 * iterations + 2 + 3


class Fifo2LS:
    """A fake 2LS: FIFO ready queue; `pin` maps a uthread name to the only vcore that may run it."""

    name = "fifo"

    def __init__(self, pin: dict[str, int] | None = None) -> None:
        self.ready: deque[Uthread] = deque()
        self.pin = dict(pin or {})

    def _pick(self) -> Uthread | None:
        me = parlib.vcore_id()
        for uth in self.ready:
            if self.pin.get(uth.name, me) == me:
                self.ready.remove(uth)
                return uth
        return None

    def _sysc_done(self, sysc) -> None:
        self.thread_runnable(sysc.u_data)

    # -- the ten required ops ---------------------------------------------------------

    def sched_init(self) -> None:
        parlib.uthread_2ls_init(self._sysc_done)

    def sched_entry(self) -> None:
        if parlib.current_uthread() is not None:
            parlib.run_current_uthread()
        while True:
            parlib.handle_events()
            uth = self._pick()
            if uth is not None:
                parlib.run_uthread(uth)
            if self.ready:
                # work pinned to another vcore: keep that vcore wanted while this one yields
                parlib.vcore_request_more(len(self.ready))
            parlib.vcore_yield(False)

    def thread_runnable(self, uth: Uthread) -> None:
        self.ready.append(uth)
        parlib.vcore_request_more(len(self.ready))

    def thread_paused(self, uth: Uthread) -> None:
        self.thread_runnable(uth)

    def thread_blockon_sysc(self, uth: Uthread, sysc) -> None:
        if not parlib.register_evq(sysc, parlib.get_eventq(parlib.vcore_id())):
            self.thread_runnable(uth)

    def thread_has_blocked(self, uth: Uthread, flags: int) -> None:
        pass  # whoever blocked it makes it runnable again

    def thread_refl_fault(self, uth: Uthread, ctx) -> None:
        parlib.exit(-1, parlib.fault_report(uth, "fifo 2LS: unhandled fault"))

    def thread_exited(self, uth: Uthread) -> None:
        parlib.uthread_cleanup(uth)

    def thread_create(self, entry) -> Uthread:
        uth = Uthread(entry)
        parlib.uthread_init(uth)
        self.thread_runnable(uth)
        return uth

    def got_posix_signal(self, signo: int, info) -> None:
        pass


def spin_sim(sched, vcores: int = 1, *, seed: int = 0, costs=None, check: bool = True,
             **threads: tuple[int, int]) -> Simulation:
    """A Simulation with SPIN loaded, `sched` installed and one SPIN uthread per name=(iterations, seed)."""
    sim = Simulation(vcores, seed=seed, costs=costs, check=check)
    sim.load(SPIN)
    sim.set_sched(sched)
    for name, (iterations, value) in threads.items():
        sim.spawn_guest(name, SPIN.symbol("_start"), iterations, value)
    return sim

