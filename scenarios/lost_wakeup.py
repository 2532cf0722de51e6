"""A 2LS with a planted race, for scenarios/lost_wakeup.toml.

`TrustingBlockon` is pthread with one bug: its thread_blockon_sysc ignores
register_evq's answer.  register_evq returns False when the syscall has
completed already, before the 2LS asked for its EV_SYSCALL event; pthread
then restarts the uthread itself (restart_thread).  This 2LS assumes a
syscall that blocked is still in flight when it registers, so a completion
that lands in between sends no event and finds no one to wake: the uthread
is lost.  Without a delay between the uthread's syscall and the op, the
window is a few nanoseconds and the race never shows.
"""

from __future__ import annotations

from akaros_sim.parlib import register_evq, vcore_id
from schedops.pthread import PthreadSched, PthState


class TrustingBlockon(PthreadSched):
    name = "trusting-blockon"

    def thread_blockon_sysc(self, uth, sysc) -> None:
        self._generic_yield(uth)
        uth.pth_state = PthState.BLK_SYSC
        register_evq(sysc, self.sysc_evqs[vcore_id()])  # the bug: False (completed already) is ignored
