/*
 * hello.c: a freestanding C fixture for akaros_sim.elf.
 *
 * No libc: _start writes a message with the runtime's write syscall (Akaros's numbers) and exits.
 * probe() is a get_user()-style load whose fault is fixed up through an
 * __ex_table entry emitted from inline asm, as Linux's _ASM_EXTABLE does.
 */

#define EX_TYPE_UACCESS 3
#define EFAULT 14

const char greeting[] = "hello from C\n";
long calls = 1;		/* .data */
long results[16];	/* .bss */

/* Read *p, or return -EFAULT if the load faults. */
__attribute__((noinline)) long probe(const long *p)
{
	long val;

	asm volatile(
		".globl probe_insn\n"
		"probe_insn:\n\t"
		"movq (%1), %0\n"
		".globl probe_done\n"
		"probe_done:\n"
		".pushsection __ex_table, \"a\"\n\t"
		".balign 4\n\t"
		".long probe_insn - .\n\t"
		".long probe_fixup - .\n\t"
		".long %c2\n"
		".popsection\n"
		".pushsection .text.fixup, \"ax\"\n"
		".globl probe_fixup\n"
		"probe_fixup:\n\t"
		"movq %3, %0\n\t"
		"jmp probe_done\n"
		".popsection\n"
		: "=r"(val)
		: "r"(p), "i"(EX_TYPE_UACCESS), "i"(-EFAULT));
	return val;
}

static long sys3(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a), "S"(b), "d"(c)
		     : "rcx", "r11", "memory");
	return ret;
}

void _start(void)
{
	results[0] = probe(&calls);
	sys3(101, 1, (long)greeting, sizeof(greeting) - 1);	/* write */
	sys3(12, 0, 0, 0);					/* exit (proc_destroy) */
	for (;;)
		asm volatile("hlt");
}
