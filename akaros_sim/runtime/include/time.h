/* time.h: clock_gettime and nanosleep on the simulator's virtual time (clock_gettime: ns since the run began). */
#ifndef AKAROS_TIME_H
#define AKAROS_TIME_H

#include <akaros/syscall.h>

typedef long time_t;
typedef int clockid_t;
struct timespec {
	time_t tv_sec;
	long tv_nsec;
};

#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1

static inline int clock_gettime(clockid_t clk, struct timespec *ts)
{
	unsigned long ns = sys_gettime();

	(void)clk;
	ts->tv_sec = (time_t)(ns / 1000000000UL);
	ts->tv_nsec = (long)(ns % 1000000000UL);
	return 0;
}

/* As glibc's: the timespec pointers go to SYS_nanosleep, which sleeps the time rounded up to whole
 * microseconds and zeroes *rem (no sleep is ever interrupted). */
static inline int nanosleep(const struct timespec *req, struct timespec *rem)
{
	return sys_nanosleep(req, rem) ? -1 : 0;
}

#endif
