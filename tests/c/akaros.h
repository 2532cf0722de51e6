/*
 * akaros.h: the simulator's guest ABI for C guests, without a libc.
 *
 * A syscall is the raw `syscall` instruction: the number in rax, arguments in
 * rdi, rsi, rdx, r10, r8, r9, the result in rax (a negative errno on failure).
 * A guest uthread starts at a function named in the scenario, with the
 * thread's args as its first arguments, and exits by returning: the return
 * value is the uthread's exit value.
 */
#ifndef AKAROS_SIM_H
#define AKAROS_SIM_H

#define SYS_getvcoreid 8
#define SYS_proc_destroy 12	/* exit the process */
#define SYS_write 101
#define SYS_uthread_yield 0x1001

static inline long akaros_syscall3(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a), "S"(b), "d"(c)
		     : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_write(int fd, const void *buf, unsigned long len)
{
	return akaros_syscall3(SYS_write, fd, (long)buf, (long)len);
}

static inline void sys_yield(void)
{
	akaros_syscall3(SYS_uthread_yield, 0, 0, 0);
}

#endif
