/*
 * extable.S: the assembly fixture for akaros_sim.elf.
 *
 * Gives load_elf() one of everything it decodes:
 *   - .text (R-X) with _start and the instructions the tables point at;
 *   - .rodata, __ex_table and __ras (R), the tables in Linux's encodings;
 *   - .data + .bss (RW), so the last PT_LOAD has memsz > filesz and, with
 *     ld's default layout, a p_vaddr that is not page aligned.
 * Every address a test checks has a global name, so the tests compare
 * decoded entries against the symbol table instead of magic numbers.
 */

/* One 12-byte Linux __ex_table entry: each field is relative to itself. */
.macro EXTABLE insn, fixup, data
	.pushsection __ex_table, "a"
	.balign 4
	.long \insn - .		/* insn  = &field + insn_rel */
	.long \fixup - .	/* fixup = &field + fixup_rel */
	.long \data		/* low byte: EX_TYPE_* */
	.popsection
.endm

/* One __ras entry: absolute start, end, restart. */
.macro RAS start, end, restart
	.pushsection __ras, "a"
	.balign 8
	.quad \start, \end, \restart
	.popsection
.endm

	.text
	.globl _start
_start:
	lea	counter(%rip), %rdi
	call	ras_incr
	xor	%eax, %eax
	.globl ex_uaccess_insn
ex_uaccess_insn:			/* a get_user()-style load */
	movq	(%rax), %rbx
	.globl ex_skip_insn
ex_skip_insn:				/* skipped over on a fault */
	movq	%rbx, (%rax)
	.globl ex_fixup_insn
ex_fixup_insn:				/* a plain fixup, EX_TYPE_DEFAULT */
	movl	(%rax), %ecx
	.globl ex_default_insn
ex_default_insn:			/* type 0, read as EX_TYPE_DEFAULT */
	movw	(%rax), %dx
	hlt

	.globl ex_uaccess_fixup
ex_uaccess_fixup:
	nop
	.globl ex_fixup_fixup
ex_fixup_fixup:
	nop
	.globl ex_default_fixup
ex_default_fixup:
	hlt

	/* Increment *rdi; restarts from the load if interrupted. */
	.globl ras_incr
	.type ras_incr, @function
ras_incr:
	.globl ras_incr_start
ras_incr_start:
	movq	(%rdi), %rax
	addq	$1, %rax
	movq	%rax, (%rdi)
	.globl ras_incr_end
ras_incr_end:
	ret
	.size ras_incr, . - ras_incr

	/* Listed out of address order: the loader must sort by insn. */
	EXTABLE ex_fixup_insn, ex_fixup_fixup, 1
	EXTABLE ex_uaccess_insn, ex_uaccess_fixup, 3
	EXTABLE ex_default_insn, ex_default_fixup, 0
	/* SKIP ignores its fixup; 0x100 sets Linux's reg field, which is ignored. */
	EXTABLE ex_skip_insn, ex_skip_insn, 0x140
	RAS ras_incr_start, ras_incr_end, ras_incr_start

	.section .rodata
	.globl message
	.type message, @object
message:
	.asciz "akaros"
	.size message, . - message

	.data
	.globl magic
	.type magic, @object
	.balign 8
magic:
	.quad 0x1122334455667788
	.size magic, . - magic

	.bss
	.globl counter
	.type counter, @object
	.balign 8
counter:
	.skip 8
	.size counter, . - counter
	.globl scratch
	.type scratch, @object
scratch:
	.skip 256
	.size scratch, . - scratch
