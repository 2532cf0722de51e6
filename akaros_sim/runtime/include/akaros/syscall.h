/*
 * akaros/syscall.h: the simulator's syscalls for C guests (akaros_sim/kernel.py).
 *
 * A syscall is the raw `syscall` instruction: the number in rax, arguments in
 * rdi, rsi, rdx, r10, r8, r9, the result in rax (a negative errno on
 * failure).  Kernel calls use Akaros's numbers; 0x1000 and up are parlib's
 * (akaros_sim/kernel.py) and 0x1010 and up the guest runtime's uthread and
 * sync calls (akaros_sim/guest_calls.py).
 */
#ifndef AKAROS_SYSCALL_H
#define AKAROS_SYSCALL_H

/* kernel syscalls (Akaros numbering) */
#define SYS_null		1
#define SYS_block		2	/* (usec): sleep usec microseconds (sys_block) */
#define SYS_getvcoreid		8
#define SYS_proc_destroy	12	/* (status): exit the process */
#define SYS_proc_yield		13
#define SYS_mmap		18
#define SYS_munmap		19
#define SYS_mprotect		20
#define SYS_populate_va		32
#define SYS_nanosleep		36	/* (const struct timespec *req, struct timespec *rem) */
#define SYS_write		101
#define SYS_gettime		0x200	/* virtual ns */
/* parlib */
#define SYS_uthread_exit	0x1000
#define SYS_uthread_yield	0x1001
#define SYS_sigaction		0x1002
#define SYS_sigreturn		0x1003
#define SYS_sigprocmask		0x1005
/* the guest runtime's uthreads and sync objects */
#define SYS_uthread_create	0x1010	/* (entry, arg) -> handle */
#define SYS_uthread_join	0x1011	/* (handle, long *retval) -> 0 */
#define SYS_uthread_detach	0x1012	/* (handle) -> 0 */
#define SYS_uthread_self	0x1013	/* () -> handle */
#define SYS_mutex_lock		0x1014	/* (addr) */
#define SYS_mutex_trylock	0x1015	/* (addr) -> 0 | -EBUSY */
#define SYS_mutex_unlock	0x1016	/* (addr) -> 0 | -EPERM */
#define SYS_cond_wait		0x1017	/* (cv, mutex) */
#define SYS_cond_signal		0x1018	/* (cv) */
#define SYS_cond_broadcast	0x1019	/* (cv) */

#define EPERM	1
#define ESRCH	3
#define EAGAIN	11
#define ENOMEM	12
#define EFAULT	14
#define EBUSY	16
#define EINVAL	22
#define ENOSYS	38

static inline long __syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

#define __syscall0(nr) __syscall6((nr), 0, 0, 0, 0, 0, 0)
#define __syscall1(nr, a) __syscall6((nr), (long)(a), 0, 0, 0, 0, 0)
#define __syscall2(nr, a, b) __syscall6((nr), (long)(a), (long)(b), 0, 0, 0, 0)
#define __syscall3(nr, a, b, c) __syscall6((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)

static inline long sys_write(int fd, const void *buf, unsigned long len)
{
	return __syscall3(SYS_write, fd, buf, len);
}

static inline __attribute__((noreturn)) void sys_exit(int status)
{
	__syscall1(SYS_proc_destroy, status);
	__builtin_unreachable();
}

/* Sleep usec microseconds of virtual time: Akaros's sys_block(p, usec), as glibc's usleep and
 * parlib's uthread_usleep call it. */
static inline long sys_block(unsigned long usec)
{
	return __syscall1(SYS_block, usec);
}

/* sys_nanosleep: req and rem point to struct timespec (time.h); 0 or a negative errno
 * (-EFAULT for a bad pointer, -EINVAL for a bad timespec). */
static inline long sys_nanosleep(const void *req, void *rem)
{
	return __syscall2(SYS_nanosleep, req, rem);
}

static inline unsigned long sys_gettime(void)
{
	return (unsigned long)__syscall0(SYS_gettime);
}

static inline long sys_populate_va(void *addr, unsigned long npages)
{
	return __syscall2(SYS_populate_va, addr, npages);
}

/* The vcore this uthread runs on, from its TLS block (fs:[0], kept current by the runtime). */
static inline long vcore_id(void)
{
	long id;

	__asm__ volatile("movq %%fs:0, %0" : "=r"(id));
	return id;
}

/* The same through the kernel (SYS_getvcoreid). */
static inline long sys_getvcoreid(void)
{
	return __syscall0(SYS_getvcoreid);
}

#endif
