/*
 * akaros/uthread.h: uthreads of the simulator's parlib, for C guests.
 *
 * A new uthread is created through the 2LS's thread_create and scheduled
 * like any other; it runs entry(arg) and exits with its return value (or
 * uthread_exit's).  A handle is the uthread's id.
 */
#ifndef AKAROS_UTHREAD_H
#define AKAROS_UTHREAD_H

#include <akaros/syscall.h>

typedef long uthread_t;

static inline uthread_t uthread_create(void *(*entry)(void *), void *arg)
{
	return __syscall2(SYS_uthread_create, entry, arg);
}

/* 0 and *retval = the exit value, or -ESRCH / -EINVAL (joined or detached already). */
static inline long uthread_join(uthread_t uth, void **retval)
{
	return __syscall2(SYS_uthread_join, uth, retval);
}

static inline long uthread_detach(uthread_t uth)
{
	return __syscall1(SYS_uthread_detach, uth);
}

static inline uthread_t uthread_self(void)
{
	return __syscall0(SYS_uthread_self);
}

static inline void uthread_yield(void)
{
	__syscall0(SYS_uthread_yield);
}

static inline __attribute__((noreturn)) void uthread_exit(void *retval)
{
	__syscall1(SYS_uthread_exit, retval);
	__builtin_unreachable();
}

#endif
