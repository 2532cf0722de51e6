/* rt_stdlib.c: a bump allocator over a .bss heap (free is a no-op), exit and abort. */
#include <akaros/syscall.h>
#include <stdlib.h>
#include <string.h>

#define RT __attribute__((weak))
#define RT_HEAP_SIZE (256 * 1024)

static char rt_heap[RT_HEAP_SIZE] __attribute__((aligned(16)));
static unsigned long rt_heap_used;

RT void *malloc(size_t size)
{
	unsigned long need = (size + 15) & ~15UL, old = __atomic_load_n(&rt_heap_used, __ATOMIC_RELAXED);

	do {
		if (need > RT_HEAP_SIZE - old)
			return NULL;
	} while (!__atomic_compare_exchange_n(&rt_heap_used, &old, old + need, 0, __ATOMIC_SEQ_CST,
					      __ATOMIC_RELAXED));
	return rt_heap + old;
}

RT void *calloc(size_t n, size_t size)
{
	void *p;

	if (size && n > (size_t)-1 / size)
		return NULL;
	p = malloc(n * size);
	return p ? memset(p, 0, n * size) : p;
}

RT void free(void *p)
{
	(void)p;
}

RT void exit(int status)
{
	sys_exit(status);
}

RT void abort(void)
{
	sys_exit(134);	/* 128 + SIGABRT */
}

RT int abs(int x)
{
	return x < 0 ? -x : x;
}

RT long labs(long x)
{
	return x < 0 ? -x : x;
}
