/*
 * uaccess.h: copy to and from untrusted pointers, -EFAULT instead of a crash.
 *
 * As in Linux, each instruction that touches the untrusted pointer is named
 * in the exception table with _ASM_EXTABLE(insn, fixup): the entry goes to
 * the `__ex_table` section (Linux's 12-byte relative format: insn - ., fixup -
 * ., type), which akaros_sim/elf.py loads.  When the instruction faults on a
 * bad address, the simulator's extable handler sends it to the fixup:
 * EX_TYPE_DEFAULT (_ASM_EXTABLE) just jumps there and the fixup sets the
 * error itself; EX_TYPE_UACCESS (_ASM_EXTABLE_UA) also sets rax = -EFAULT.  A
 * page that is valid but not yet backed is not an error: the 2LS populates it
 * and the access is retried.
 *
 * copy_from_user(dst, src_user, n), copy_to_user(dst_user, src, n) -> 0 | -EFAULT
 * get_user(x, ptr), put_user(x, ptr)                          -> 0 | -EFAULT
 * (a fault part-way through a copy leaves the bytes before it copied;
 * get_user sets x to 0 on a fault).
 */
#ifndef AKAROS_UACCESS_H
#define AKAROS_UACCESS_H

#include <akaros/syscall.h>

#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)

#define EX_TYPE_DEFAULT 1
#define EX_TYPE_UACCESS 3

#define _ASM_EXTABLE_TYPE(from, to, type)			\
	".pushsection __ex_table, \"a\"\n\t"			\
	".balign 4\n\t"						\
	".long (" #from ") - .\n\t"				\
	".long (" #to ") - .\n\t"				\
	".long " __stringify(type) "\n\t"			\
	".popsection\n\t"
#define _ASM_EXTABLE(from, to) _ASM_EXTABLE_TYPE(from, to, EX_TYPE_DEFAULT)
#define _ASM_EXTABLE_UA(from, to) _ASM_EXTABLE_TYPE(from, to, EX_TYPE_UACCESS)

/* One `rep movsb`: either side may fault; EX_TYPE_UACCESS puts -EFAULT in rax. */
static inline long __copy_user(void *to, const void *from, unsigned long n)
{
	long ret;

	__asm__ volatile("1:	rep movsb\n\t"
			 "xorl %k0, %k0\n"
			 "2:\n\t"
			 _ASM_EXTABLE_UA(1b, 2b)
			 : "=a"(ret), "+D"(to), "+S"(from), "+c"(n)
			 :
			 : "memory");
	return ret;
}

static inline long copy_from_user(void *dst, const void *src_user, unsigned long n)
{
	return __copy_user(dst, src_user, n);
}

static inline long copy_to_user(void *dst_user, const void *src, unsigned long n)
{
	return __copy_user(dst_user, src, n);
}

/* A load from ptr into a register; on a fault the .fixup code sets err = -EFAULT (Linux's old style). */
#define __get_user_asm(err, val, ptr, insn)			\
	__asm__ volatile("1:	" insn " %2, %1\n\t"		\
			 "xorl %k0, %k0\n"			\
			 "2:\n\t"				\
			 ".pushsection .fixup, \"ax\"\n"	\
			 "3:	movq $-14, %q0\n\t"		\
			 "jmp 2b\n\t"				\
			 ".popsection\n\t"			\
			 _ASM_EXTABLE(1b, 3b)			\
			 : "=r"(err), "=r"(val)			\
			 : "m"(*(ptr)))

#define get_user(x, ptr)						\
	({								\
		long __gu_err;						\
		unsigned long __gu_val;					\
		switch (sizeof(*(ptr))) {				\
		case 1:							\
			__get_user_asm(__gu_err, __gu_val, (const unsigned char *)(ptr), "movzbq"); \
			break;						\
		case 2:							\
			__get_user_asm(__gu_err, __gu_val, (const unsigned short *)(ptr), "movzwq"); \
			break;						\
		case 4: {						\
			unsigned int __gu_v32;				\
			__get_user_asm(__gu_err, __gu_v32, (const unsigned int *)(ptr), "movl"); \
			__gu_val = __gu_v32;				\
			break;						\
		}							\
		default:						\
			__get_user_asm(__gu_err, __gu_val, (const unsigned long *)(ptr), "movq"); \
		}							\
		(x) = (__typeof__(*(ptr)))(__gu_err ? 0 : __gu_val);	\
		__gu_err;						\
	})

/* A store of x to ptr: EX_TYPE_UACCESS sets the error register (rax) to -EFAULT. */
#define put_user(x, ptr)						\
	({								\
		long __pu_err;						\
		__typeof__(*(ptr)) __pu_val = (x);			\
		__asm__ volatile("1:	mov %2, %1\n\t"		\
				 "xorl %k0, %k0\n"			\
				 "2:\n\t"				\
				 _ASM_EXTABLE_UA(1b, 2b)		\
				 : "=a"(__pu_err), "=m"(*(ptr))		\
				 : "r"(__pu_val));			\
		__pu_err;						\
	})

#endif
