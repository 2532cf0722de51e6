"""The kernel side of one process (an MCP): vcore grants, preemption, events, syscalls.

Everything here runs in kernel context: either inside a syscall made by the
running uthread, or as an engine event at its virtual time.  Kernel code never
switches greenlets; it changes vcore state, posts event messages to vcore
mailboxes and sets `notif_pending`, and the engine and parlib act on that.

Syscalls are asynchronous as in Akaros: a blocking one returns a pending
`Syscall`; the caller blocks on it (parlib's ros_syscall_blockon) and its
completion, after the configured latency, posts EV_SYSCALL to the event queue
the 2LS registered on it.

Numbers are Akaros's (kern/include/ros/bits/syscall.h).  Calls at 0x1000 and
above are parlib's, not the kernel's: guest code has no parlib to link
against, so it reaches uthread_exit, yield, sigaction and friends through
`syscall` with these numbers, and parlib serves them before the kernel would.
"""

from __future__ import annotations

import enum
import errno

import attrs

from akaros_sim.context import U64, neg_errno
from akaros_sim.engine import Entry, Interrupt, VcoreState
from akaros_sim.ktime import nanosleep_usec
from akaros_sim.memory import MemError
from akaros_sim.mm import MAP_ANONYMOUS, MAP_FIXED, MAP_POPULATE, MMAP_BASE, Mm  # noqa: F401 - re-exported
from akaros_sim.timeline import BLOCKED, RUNNABLE

# Kernel syscalls (Akaros numbering)
SYS_null = 1
SYS_block = 2
SYS_getvcoreid = 8
SYS_proc_destroy = 12
SYS_proc_yield = 13
SYS_mmap = 18
SYS_munmap = 19
SYS_mprotect = 20
SYS_populate_va = 32
SYS_nanosleep = 36
SYS_write = 101
SYS_gettime = 0x200  # not in Akaros (it reads the TSC); virtual ns here
# parlib calls reached through `syscall` from guest code
SYS_uthread_exit = 0x1000
SYS_uthread_yield = 0x1001
SYS_sigaction = 0x1002
SYS_sigreturn = 0x1003
SYS_guest_return = 0x1004  # end of a call_guest
SYS_sigprocmask = 0x1005  # (how, sigset value) -> the old mask
SYS_exit = SYS_proc_destroy

SYSCALL_NAMES = {
    SYS_null: "null", SYS_block: "block", SYS_getvcoreid: "getvcoreid", SYS_proc_destroy: "exit",
    SYS_proc_yield: "proc_yield", SYS_mmap: "mmap", SYS_munmap: "munmap", SYS_mprotect: "mprotect",
    SYS_populate_va: "populate_va", SYS_nanosleep: "nanosleep", SYS_write: "write", SYS_gettime: "gettime",
    SYS_uthread_exit: "uthread_exit", SYS_uthread_yield: "uthread_yield", SYS_sigaction: "sigaction",
    SYS_sigreturn: "sigreturn", SYS_guest_return: "guest_return", SYS_sigprocmask: "sigprocmask",
}  # fmt: skip

# Event types (kern/include/ros/event.h)
EV_PREEMPT_PENDING = 1
EV_VCORE_PREEMPT = 3
EV_USER_IPI = 5
EV_ALARM = 7
EV_SYSCALL = 10
EV_CHECK_MSGS = 11
EV_POSIX_SIGNAL = 12


class SyscState(enum.Enum):
    PENDING = "pending"
    DONE = "done"


@attrs.define(eq=False)
class Syscall:
    """One syscall in flight (Akaros's struct syscall)."""

    id: int
    nr: int
    args: tuple
    state: SyscState = SyscState.PENDING
    retval: int = 0
    ev_q: EventQueue | None = None  # registered by the 2LS (register_evq)
    u_data: object = None  # the uthread blocked on it

    @property
    def name(self) -> str:
        return SYSCALL_NAMES.get(self.nr, str(self.nr))

    def register_evq(self, evq: EventQueue) -> bool:
        """Ask for an event when this completes; False if it already has (the caller restarts the thread)."""
        if self.state is SyscState.DONE:
            return False
        self.ev_q = evq
        return True


@attrs.define(eq=False)
class EventQueue:
    """Where a kernel event goes: a vcore's mailbox, redirected if that vcore is offline."""

    vcore: int = 0
    spam: bool = True  # EVENT_SPAM_INDIR: redirect to an online vcore
    wakeup: bool = True  # EVENT_WAKEUP: bring the process back if it is waiting


@attrs.frozen
class EventMsg:
    """An event message (ev_type plus its arguments)."""

    ev_type: int
    arg2: int = 0
    arg3: object = None


class ProcState(enum.Enum):
    RUNNING_M = "running_m"
    WAITING = "waiting"
    DYING = "dying"


class Kernel:
    """One process's kernel state.  Lifecycle: RUNNING_M -> (WAITING <-> RUNNING_M)* -> DYING."""

    def __init__(self, proc, max_vcores: int) -> None:
        self.proc = proc
        self.engine = proc.engine
        self.costs = proc.costs
        self.max_vcores = max_vcores
        self.amt_wanted = 1
        self.state = ProcState.RUNNING_M
        self.exit_status: int | None = None
        self.exit_time: int | None = None
        self.report: str | None = None  # why the process died, when it did not simply exit
        self.console: list[str] = []
        self._grant_pending = 0
        self._online = 0  # vcores ONLINE (num_vcores), kept by set_vcore_state
        self._inactive_seq = 0  # how many times a vcore has gone off its pcore (inactive_vcs order)
        self._sysc_ids = 0
        self.latency_override: dict[int, int] = {}
        self.completion_delay: dict[int, int] = {}  # nr -> extra ns for its next completion (explore)
        self.mm = Mm(proc)  # mmap, munmap, mprotect, kernel-handled page faults (mm.py)

    # -- vcores ---------------------------------------------------------------------------

    def num_vcores(self) -> int:
        return self._online

    def set_vcore_state(self, vc, new: VcoreState) -> None:
        """Change a vcore's state, keeping the count of online vcores."""
        was = vc.online
        vc.set_state(new)
        self._online += vc.online - was
        if was and not vc.online:  # to the head of Akaros's inactive_vcs (TAILQ_INSERT_HEAD)
            self._inactive_seq += 1
            vc.inactive_at = self._inactive_seq
        if not vc.online and vc.tick_event is not None:  # off its pcore: no more ticks
            vc.tick_event.cancelled, vc.tick_event = True, None

    def request_total(self, total: int) -> None:
        """vcore_request_total: raise amt_wanted (capped at max) and poke the ksched."""
        total = min(total, self.max_vcores)
        if total > self.amt_wanted:
            self.amt_wanted = total
        if self._online + self._grant_pending < self.amt_wanted:
            self.poke_ksched()

    def poke_ksched(self) -> None:
        """Grant vcores, after the grant latency, until amt_wanted are online or coming."""
        while self.num_vcores() + self._grant_pending < self.amt_wanted:
            if self._free_vcore() is None:
                # Nothing grantable now.  If a pcore is away (preempted), retry when the
                # first comes back; pending grants poke the ksched again themselves.
                now = self._kernel_now()
                away = [vc.unavailable_until for vc in self.engine.vcores if not vc.online and vc.unavailable_until > now]
                if away:
                    self.engine.schedule(min(away), "ksched", self.poke_ksched)
                return
            self._grant_pending += 1
            self.engine.schedule(self._kernel_now() + self.costs.vcore_grant_ns, "grant", self._grant)

    def _restore_preempted(self, vc) -> None:
        """The preempted vcore's pcore is back: restart it if it still holds something nobody
        else can run (its own vcore context, or a uthread that was not stolen), as Akaros
        restarts such a vcore, whatever amt_wanted says."""
        if vc.state is not VcoreState.PREEMPTED or self.state is ProcState.DYING:
            return
        if vc.in_vcore_ctx or vc.current_uthread is not None:
            self.bring_online(vc, self.engine.now)

    def _free_vcores(self) -> list:
        """Vcores the ksched can grant now, in grant order: those with mail waiting first, then
        Akaros's inactive_vcs order (kern/src/process.c: __proc_give_cores_* take its head; it
        starts in id order and a vcore that yields or is preempted goes to its head)."""
        now = self._kernel_now()
        free = [vc for vc in self.engine.vcores if not vc.online and vc.unavailable_until <= now]
        return sorted(free, key=lambda vc: (not vc.mailbox, -vc.inactive_at))

    def _free_vcore(self):
        free = self._free_vcores()
        return free[self._grant_pending] if len(free) > self._grant_pending else None

    def _kernel_now(self) -> int:
        return self.engine.time()

    def _grant(self) -> None:
        self._grant_pending -= 1
        if self.state is ProcState.DYING or self.num_vcores() >= self.amt_wanted:
            return
        free = self._free_vcores()
        vc = free[0] if free else None
        if vc is None:
            self.poke_ksched()
            return
        self.bring_online(vc, self.engine.now)

    def bring_online(self, vc, t: int) -> None:
        """The kernel starts `vc` at time t: fresh at vcore_entry, or back in its saved vcore context."""
        was_preempted = vc.state is VcoreState.PREEMPTED
        self.set_vcore_state(vc, VcoreState.ONLINE)
        vc.changed_away = False
        vc.clock = max(vc.clock, t)
        self.state = ProcState.RUNNING_M
        if was_preempted and vc.gl is not None and vc.in_vcore_ctx:
            reason = "resume_vcore_ctx"  # preempted in vcore context: resume it in place
        else:
            self.engine.start_vcore(vc, Entry.RESTART if was_preempted else Entry.GRANTED)
            reason = "start"
        self.proc.timeline.vcore(self.engine.time(), vc.id, "online")
        self.proc.trace_event(vc, "vcore_online", how=reason, amt_wanted=self.amt_wanted)
        if vc.tick_period:
            self.arm_tick(vc)

    def sys_yield(self, vc, being_nice: bool) -> bool:  # noqa: C901 - Akaros's checks, in its order
        """SYS_proc_yield from vcore context.  True: the vcore is now offline."""
        if vc.notif_pending:
            return False
        # proc_yield (kern/src/process.c): a nice yield needs a pending preemption; with one pending,
        # any yield goes ahead (the pcore is wanted) even if amt_wanted >= num_vcores
        if being_nice and not vc.preempt_pending:
            return False
        if not vc.preempt_pending and self.amt_wanted >= self.num_vcores():
            return False
        vc.preempt_pending = 0
        self.set_vcore_state(vc, VcoreState.OFFLINE)
        self.proc.timeline.vcore(self.engine.time(), vc.id, "offline")
        self.proc.trace_event(vc, "vcore_offline", nice=being_nice, amt_wanted=self.amt_wanted)
        if being_nice:
            # The kernel wanted this pcore: it stays away as if preempted (for
            # the warning's duration), then the ksched gives the process what it still wants.
            duration = vc.pending_duration if vc.pending_duration is not None else self.costs.preempt_duration_ns
            vc.pending_duration = None
            vc.unavailable_until = self._kernel_now() + duration
            self.engine.schedule(vc.unavailable_until, "ksched", self.poke_ksched)
        if self.num_vcores() == 0:
            self.state = ProcState.WAITING
        return True

    # -- preemption -------------------------------------------------------------------------

    def preempt(self, vcoreid: int, warning_ns: int = 0, duration_ns: int | None = None) -> None:
        """Take vcore `vcoreid` away now (warning_ns == 0) or after a preempt_pending warning."""
        vc = self.engine.vcores[vcoreid]
        if not vc.online:
            self.proc.trace_event(vc, "preempt_skipped", why=vc.state.value)
            return
        if warning_ns:
            vc.preempt_pending = self.engine.now + warning_ns
            vc.pending_duration = duration_ns
            self.proc.trace_event(vc, "preempt_warn", deadline=vc.preempt_pending)
            if EV_PREEMPT_PENDING in self.proc.ev_handlers:
                # __proc_preempt_warn sends the event only where the process asked for it, and
                # parlib registers no handler: without one the vcore sees the warning when it next
                # polls (__check_preempt_pending in vcore context); a busy uthread runs on to the deadline
                self.post(vc, EventMsg(EV_PREEMPT_PENDING), notify=True)
            self.engine.schedule(vc.preempt_pending, "preempt", self._preempt_deadline, vc, duration_ns)
        else:
            self._preempt_now(vc, duration_ns)

    def _preempt_deadline(self, vc, duration_ns) -> None:
        if vc.online and vc.preempt_pending:
            self._preempt_now(vc, duration_ns)

    def _preempt_now(self, vc, duration_ns) -> None:
        self.engine.cut_short(vc)
        vc.preempt_pending = 0
        vc.nr_preempts += 1
        self.set_vcore_state(vc, VcoreState.PREEMPTED)
        duration = self.costs.preempt_duration_ns if duration_ns is None else duration_ns
        vc.unavailable_until = self.engine.now + duration
        uth = vc.current_uthread
        if uth is not None and not vc.in_vcore_ctx:
            uth.interrupted = Interrupt.PREEMPTED
            self.proc.set_uth_state(uth, BLOCKED, "preempted", vc, self.engine.time())
        self.proc.timeline.vcore(self.engine.time(), vc.id, "preempted")
        self.proc.trace_event(vc, "preempt", in_vcore_ctx=vc.in_vcore_ctx, uthread=uth.name if uth else None,
                              until=vc.unavailable_until)  # fmt: skip
        # preempt_ev_q (SPAM_PUBLIC | WAKEUP): an online vcore recovers the uthread; else the one granted next
        if self.num_vcores() == 0:
            self.state = ProcState.WAITING
            self.amt_wanted = max(self.amt_wanted, 1)
        self.send_event(EventQueue(vc.id), EventMsg(EV_VCORE_PREEMPT, arg2=vc.id))
        # A peer that handles the event steals its uthread or change_to_vcore's to it; if nobody
        # did by the time its pcore is back, the kernel restarts it (Akaros's bulk-preempted list).
        restart = vc.unavailable_until + self.costs.vcore_grant_ns
        self.engine.schedule(restart, "restore", self._restore_preempted, vc)
        self.engine.schedule(vc.unavailable_until, "ksched", self.poke_ksched)
        self.poke_ksched()

    def change_vcore(self, vc, victim) -> bool:
        """proc_change_to_vcore (sys_change_vcore, enable_my_notif): vc, in vcore context, gives its pcore
        to the preempted `victim`, which resumes at once; vc goes offline, VC_PREEMPTED for its mail."""
        if victim.online or self.state is not ProcState.RUNNING_M or not vc.in_vcore_ctx:
            return False  # -EBUSY (already running) or a state that cannot change
        self.proc.trace_event(vc, "change_to_vcore", **{"from": vc.id, "to": victim.id})
        self.set_vcore_state(vc, VcoreState.OFFLINE)
        vc.changed_away, vc.preempt_pending = True, 0
        vc.unavailable_until, victim.unavailable_until = victim.unavailable_until, 0  # the pcore changes hands
        self.proc.timeline.vcore(self.engine.time(), vc.id, "offline")
        self.bring_online(victim, vc.clock)
        self.send_event(EventQueue(victim.id), EventMsg(EV_CHECK_MSGS, arg2=vc.id))
        return True

    # -- the end of the process ------------------------------------------------------------

    def exit(self, status: int, why: str, report: str | None = None) -> None:
        """The process ends (exit syscall, fatal fault, the last thread exiting): proc_destroy.

        Called from a vcore, the caller never runs again (its greenlet is parked
        and ended when the run is torn down); from kernel context it returns.
        """
        self.engine.stop_soon = True
        if self.state is not ProcState.DYING:
            self.state = ProcState.DYING
            self.exit_status = status
            self.exit_time = self._kernel_now()
            if report is not None:
                self.report = report
            self.proc.trace_event(None, "process_exit", status=status, why=why)
        self.engine.park()

    # -- notifications and vcore ticks ----------------------------------------------------

    def notify(self, vc) -> None:
        """Set vc's notif_pending (the IPI); a uthread computing there is interrupted now."""
        vc.notif_pending = True
        self.engine.cut_short(vc)

    def arm_tick(self, vc, base: int | None = None) -> None:
        """Schedule vc's next tick one period after base (default: its clock)."""
        if vc.tick_event is not None:
            vc.tick_event.cancelled = True
        start = vc.clock if base is None else base
        vc.tick_event = self.engine.schedule(start + vc.tick_period, "tick", self._tick, vc)

    def _tick(self, vc) -> None:
        vc.tick_event = None
        if not vc.online or not vc.tick_period:
            return
        self.raise_tick(vc)
        self.arm_tick(vc, base=self.engine.now)  # periodic in time, no drift

    def raise_tick(self, vc, storm: bool = False) -> None:
        """A tick on vc: count it for vcore_tick_poll and interrupt the running uthread."""
        vc.tick_expired += 1
        if storm:
            self.proc.trace_event(vc, "tick", expired=vc.tick_expired, storm=True)
        else:
            self.proc.trace_event(vc, "tick", expired=vc.tick_expired)
        self.notify(vc)

    # -- events -------------------------------------------------------------------------------

    def post(self, vc, msg: EventMsg, notify: bool = True) -> None:
        """Put msg in vc's mailbox and, with notify, set notif_pending (the IPI)."""
        vc.mailbox.append(msg)
        if notify:
            self.notify(vc)
        self.proc.trace_event(vc, "event_post", ev_type=msg.ev_type, arg2=msg.arg2)

    def send_event(self, evq: EventQueue, msg: EventMsg) -> None:
        """Deliver to evq's vcore; if offline, spam to the first online one; wake a waiting process."""
        vcores = self.engine.vcores
        target = vcores[evq.vcore] if 0 <= evq.vcore < len(vcores) else vcores[0]
        if not target.online and evq.spam:
            online = [vc for vc in vcores if vc.online]
            if online:
                target = online[0]
            else:
                # Nobody is online: post where the next grant will land (with every pcore away,
                # on the vcore whose pcore comes back first).
                free = self._free_vcores() or [min(vcores, key=lambda vc: vc.unavailable_until)]
                if free and not target.mailbox and target not in free[:1]:
                    target = free[0]
        self.post(target, msg, notify=True)
        if self.num_vcores() == 0 and evq.wakeup and self.state is not ProcState.DYING:
            self.state = ProcState.RUNNING_M
            if self.amt_wanted == 0:
                self.amt_wanted = 1
            self.poke_ksched()

    # -- syscalls ---------------------------------------------------------------------------------

    def new_syscall(self, nr: int, args: tuple) -> Syscall:
        self._sysc_ids += 1
        return Syscall(self._sysc_ids, nr, tuple(args))

    def latency(self, nr: int) -> int:
        if nr in self.latency_override:
            return self.latency_override[nr]
        if nr == SYS_populate_va:
            return self.costs.populate_latency_ns
        return self.costs.syscall_latency_ns

    def submit(self, sysc: Syscall, vc) -> None:
        """Start a syscall.  Non-blocking ones are DONE on return; blocking ones complete later."""
        nr, a = sysc.nr, sysc.args + (0,) * (6 - len(sysc.args))
        if nr == SYS_null:
            self._done(sysc, 0)
        elif nr == SYS_getvcoreid:
            self._done(sysc, vc.id if vc is not None else 0)
        elif nr == SYS_gettime:
            self._done(sysc, self._kernel_now())
        elif nr == SYS_write:
            self._done(sysc, self._write(a[0], a[1], a[2], vc))
        elif nr == SYS_proc_destroy:
            self._done(sysc, 0)
            status = a[0] & 0xFFFF_FFFF  # an int, as proc_destroy takes it: exit(-1) is -1
            self.exit(status - (1 << 32) if status >> 31 else status, "exit syscall")
        elif nr == SYS_mmap:
            self._done(sysc, self.mm.mmap(*a[:6]))
        elif nr == SYS_munmap:
            self._done(sysc, self.mm.munmap(a[0], a[1]))
        elif nr == SYS_mprotect:
            self._done(sysc, self.mm.mprotect(a[0], a[1], a[2]))
        elif nr == SYS_block:
            self._complete_later(sysc, a[0] * 1000, 0)  # sys_block(p, usec): kthread_usleep(usec)
        elif nr == SYS_nanosleep:
            usec = nanosleep_usec(self.proc, a[0], a[1])  # (req, rem): struct timespec pointers
            if usec < 0:
                self._done(sysc, neg_errno(-usec))
            else:
                self._complete_later(sysc, usec * 1000, 0)
        elif nr == SYS_populate_va:
            self._complete_later(sysc, self.latency(nr), None)
        elif nr == SYS_proc_yield:
            self._done(sysc, 0)  # from a uthread this just returns (an MCP yields from vcore context)
        else:
            self._done(sysc, neg_errno(errno.ENOSYS))

    def _done(self, sysc: Syscall, retval: int) -> None:
        sysc.retval = retval & U64
        sysc.state = SyscState.DONE

    def _complete_later(self, sysc: Syscall, delay: int, retval: int | None) -> None:
        delay += self.completion_delay.pop(sysc.nr, 0)
        self.engine.schedule(self._kernel_now() + delay, "syscall_done", self._complete, sysc, retval)

    def _complete(self, sysc: Syscall, retval: int | None) -> None:
        if retval is None:  # populate_va: back the pages now
            addr, npages = sysc.args[0], max(sysc.args[1], 1) if len(sysc.args) > 1 else 1
            done = self.proc.mem.populate(addr, npages)
            retval = 0 if done or self.proc.mem.lookup(addr) is not None else neg_errno(errno.EINVAL)
        self._done(sysc, retval)
        uth = sysc.u_data
        if uth is not None and uth.sysc is sysc:
            uth.waits_for = None  # done: the 2LS's to run once its event is handled (the 2LS contract)
            uth.runnable_at = self._kernel_now()
            self.proc.set_uth_state(uth, RUNNABLE, "", None, uth.runnable_at)
        self.proc.trace_event(None, "syscall_done", sysc=sysc.id, name=sysc.name, ret=sysc.retval)
        if sysc.ev_q is not None:
            self.send_event(sysc.ev_q, EventMsg(EV_SYSCALL, arg3=sysc))

    def _write(self, fd: int, buf: int, length: int, vc) -> int:
        if fd not in (1, 2):
            return neg_errno(errno.EBADF)
        try:
            text = self.proc.mem.read(buf, length).decode("utf-8", "replace")
        except MemError:
            return neg_errno(errno.EFAULT)
        self.console.append(text)
        self.proc.trace_event(vc, "console", fd=fd, text=text)
        return length
