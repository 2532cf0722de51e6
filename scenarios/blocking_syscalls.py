"""Python uthread of scenarios/blocking_syscalls.toml: a nap through SYS_nanosleep."""

from __future__ import annotations

from akaros_sim.kernel import SYS_nanosleep, SYS_write
from akaros_sim.parlib import current_sim, syscall


def say(text: str) -> None:
    """write(1, text) through the guest's scratch buffer (the write copies it out at once)."""
    sim = current_sim()
    buf = sim.programs["main"].symbol("pybuf")
    data = text.encode()
    sim.mem.write(buf, data)
    syscall(SYS_write, 1, buf, len(data))


def napper() -> int:
    """Sleep 25 us with SYS_nanosleep(&nap_ts, NULL) (the timespec is in the guest's .data); return the time slept."""
    sim = current_sim()
    say("napper: zzz (nanosleep)\n")
    before = sim.now()
    syscall(SYS_nanosleep, sim.programs["main"].symbol("nap_ts"), 0)
    slept = sim.now() - before
    say("napper: awake\n")
    return slept // 1000  # whole microseconds
