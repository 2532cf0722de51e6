/* unistd.h: write, _exit and usleep (virtual time). */
#ifndef AKAROS_UNISTD_H
#define AKAROS_UNISTD_H

#include <akaros/syscall.h>
#include <stddef.h>

typedef long ssize_t;

static inline ssize_t write(int fd, const void *buf, size_t n)
{
	return sys_write(fd, buf, n);
}

static inline __attribute__((noreturn)) void _exit(int status)
{
	sys_exit(status);
}

static inline int usleep(unsigned long us)
{
	return sys_block(us) ? -1 : 0;	/* SYS_block takes microseconds, as glibc's usleep passes them */
}

#endif
