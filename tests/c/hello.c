/*
 * hello.c: a C guest for tests/c/hello.toml, built by akaros-sim's toolchain.
 *
 * greet() writes a line to the console; sum_to(n) adds 1..n, yielding every
 * `every` steps so the 2LS interleaves it with the other uthreads, and leaves
 * its result in a slot of `totals` (.bss); `calls` (.data) counts the calls.
 */
#include "akaros.h"

static const char greeting[] = "hello from C\n";
long calls = 100;
long totals[4];

long greet(void)
{
	return sys_write(1, greeting, sizeof(greeting) - 1);
}

long sum_to(long n, long slot, long every)
{
	long sum = 0;

	for (long i = 1; i <= n; i++) {
		sum += i;
		if (every && i % every == 0)
			sys_yield();
	}
	totals[slot] = sum;
	__atomic_fetch_add(&calls, 1, __ATOMIC_SEQ_CST);
	return sum;
}
