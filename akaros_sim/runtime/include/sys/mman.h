/* sys/mman.h: mmap, munmap and mprotect on the simulator's kernel (akaros_sim/kernel.py). */
#ifndef AKAROS_SYS_MMAN_H
#define AKAROS_SYS_MMAN_H

#include <akaros/syscall.h>

#define PROT_NONE	0x0
#define PROT_READ	0x1
#define PROT_WRITE	0x2
#define PROT_EXEC	0x4

#define MAP_SHARED	0x01
#define MAP_PRIVATE	0x02
#define MAP_FIXED	0x10
#define MAP_ANONYMOUS	0x20
#define MAP_ANON	MAP_ANONYMOUS
#define MAP_POPULATE	0x8000	/* back the pages now; else each is backed on its first touch */
#define MAP_FAILED	((void *)-1)

#define PAGE_SIZE	4096

/* The mapping's address, or a negative errno cast to a pointer (test with mmap_failed()). */
static inline void *sys_mmap(void *addr, unsigned long len, int prot, int flags, int fd, long off)
{
	return (void *)__syscall6(SYS_mmap, (long)addr, (long)len, prot, flags, fd, off);
}

static inline int mmap_failed(void *p)
{
	return (unsigned long)p >= (unsigned long)-4095;
}

static inline void *mmap(void *addr, unsigned long len, int prot, int flags, int fd, long off)
{
	void *p = sys_mmap(addr, len, prot, flags, fd, off);

	return mmap_failed(p) ? MAP_FAILED : p;
}

static inline int munmap(void *addr, unsigned long len)
{
	return __syscall2(SYS_munmap, addr, len) ? -1 : 0;
}

static inline int mprotect(void *addr, unsigned long len, int prot)
{
	return __syscall3(SYS_mprotect, addr, len, prot) ? -1 : 0;
}

#endif
