/*
 * ras.h: restartable atomic sequences (RAS), like rseq's critical sections.
 *
 * RAS_ENTRY(start, end, restart) declares in the `__ras` section (absolute
 * 64-bit triples, read by akaros_sim/elf.py) that the instructions in [start,
 * end) form a sequence: a uthread interrupted inside it (a tick, a
 * notification, a preemption) goes back to `restart` before it runs again, so
 * a plain load / modify / store that ends at `end` is atomic with respect to
 * the other uthreads of its vcore.  Use it inside inline asm, with local
 * labels: "1: ... 2:" RAS_ENTRY(1b, 2b, 1b).  Sequences may not overlap.
 *
 * ras_percpu_add(counters, v): counters[vcore_id()] += v, the vcore id read
 * inside the sequence (fs:[0]), so a restart after a migration picks the new
 * vcore's slot.
 */
#ifndef AKAROS_RAS_H
#define AKAROS_RAS_H

#define RAS_ENTRY(start, end, restart)				\
	".pushsection __ras, \"a\"\n\t"				\
	".balign 8\n\t"						\
	".quad " #start ", " #end ", " #restart "\n\t"		\
	".popsection\n\t"

static inline void ras_percpu_add(long *counters, long v)
{
	__asm__ volatile("1:	movq %%fs:0, %%rax\n\t"
			 "movq (%0, %%rax, 8), %%rdx\n\t"
			 "addq %1, %%rdx\n\t"
			 "movq %%rdx, (%0, %%rax, 8)\n"
			 "2:\n\t"
			 RAS_ENTRY(1b, 2b, 1b)
			 :
			 : "r"(counters), "r"(v)
			 : "rax", "rdx", "memory");
}

#endif
