/*
 * ras_counter.c: per-vcore counters on a restartable sequence (ras.h).
 *
 * worker(n) adds 1 to counters[vcore] n times with ras_percpu_add: a plain
 * load / add / store indexed by the fs:[0] vcore id, declared a RAS, so a
 * uthread interrupted inside it (a tick, a preemption) restarts the sequence
 * and no update is lost.  The last worker to finish sums the counters into
 * `total`.  Built with -DNO_RAS the same loop has no RAS entry.
 */
#include <akaros/syscall.h>
#include <ras.h>

#define NWORKERS 5
#define MAX_VCORES 8

long counters[MAX_VCORES];
long total, finished;

#ifdef NO_RAS
static inline void add_unprotected(long *c)
{
	__asm__ volatile("movq %%fs:0, %%rax\n\t"
			 "movq (%0, %%rax, 8), %%rdx\n\t"
			 "addq $1, %%rdx\n\t"
			 "movq %%rdx, (%0, %%rax, 8)\n\t"
			 : : "r"(c) : "rax", "rdx", "memory");
}
#endif

long worker(long n)
{
	for (long i = 0; i < n; i++) {
#ifdef NO_RAS
		add_unprotected(counters);
#else
		ras_percpu_add(counters, 1);
#endif
	}
	if (__atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST) == NWORKERS) {
		long sum = 0;

		for (int v = 0; v < MAX_VCORES; v++)
			sum += counters[v];
		total = sum;
	}
	return n;
}
