/* time.h: clock_gettime and nanosleep on the simulator's virtual time (ns since the run began). */
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

static inline int nanosleep(const struct timespec *req, struct timespec *rem)
{
	if (rem) {
		rem->tv_sec = 0;
		rem->tv_nsec = 0;
	}
	return sys_block((unsigned long)req->tv_sec * 1000000000UL + (unsigned long)req->tv_nsec) ? -1 : 0;
}

#endif
