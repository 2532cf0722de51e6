"""The kernel's sleeping syscalls (Akaros's kern/src/syscall.c: sys_block, sys_nanosleep).

Both end in `kthread_usleep(usec)`: the kernel sleeps in whole microseconds.

* `SYS_block(usec)`: `sys_block(p, usec)`, microseconds as glibc's `usleep`
  and parlib's `uthread_usleep` pass them.
* `SYS_nanosleep(req, rem)`: glibc's `nanosleep` passes a pointer to a
  `struct timespec` (`tv_sec`, `tv_nsec`: two 64-bit words) and one for the
  remaining time.  `sys_nanosleep` copies `req` in (-EFAULT if it cannot),
  writes zeros to a non-NULL `rem` first, rejects a negative `tv_sec` or a
  `tv_nsec` outside [0, 999999999] (-EINVAL) and sleeps
  `tv_sec * 1000000 + DIV_ROUND_UP(tv_nsec, 1000)` microseconds.  Nothing
  aborts a sleep here, so `rem` stays zero.
"""

from __future__ import annotations

import errno
import struct

from akaros_sim.guestmem import write_for_guest
from akaros_sim.memory import MemError

_TIMESPEC = struct.Struct("<qq")
_NSEC_MAX = 999_999_999


def nanosleep_usec(proc, req: int, rem: int) -> int:
    """sys_nanosleep's checks: the microseconds to sleep, or -errno (a negative int)."""
    try:
        sec, nsec = _TIMESPEC.unpack(proc.mem.read(req, _TIMESPEC.size))
    except (MemError, ValueError):
        return -errno.EFAULT
    if rem and not write_for_guest(proc, rem, _TIMESPEC.pack(0, 0), "nanosleep's *rem", efault=True):
        return -errno.EFAULT  # memcpy_to_user failed
    if sec < 0 or not 0 <= nsec <= _NSEC_MAX:
        return -errno.EINVAL
    return sec * 1_000_000 + -(-nsec // 1000)


def timespec(ns: int) -> bytes:
    """The struct timespec for ns nanoseconds (what a caller writes before SYS_nanosleep)."""
    return _TIMESPEC.pack(ns // 1_000_000_000, ns % 1_000_000_000)
