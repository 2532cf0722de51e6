/*
 * extable8.S: the older 8-byte __ex_table format (insn_rel, fixup_rel, no
 * type word).  The "M" flag with entsize 8 is how GNU as records sh_entsize;
 * ld keeps it, and does not merge sections that carry relocations.
 */
	.text
	.globl _start
_start:
	xor	%eax, %eax
	.globl old_insn
old_insn:
	movq	(%rax), %rbx
	hlt
	.globl old_fixup
old_fixup:
	hlt

	.pushsection __ex_table, "aM", @progbits, 8
	.balign 4
	.long old_insn - .
	.long old_fixup - .
	.popsection
