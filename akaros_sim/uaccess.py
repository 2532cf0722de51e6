"""A guest uaccess library: copy to and from untrusted pointers, returning -EFAULT instead of crashing.

The Akaros discussion behind this project asks exactly for this: user code
that reads and writes possibly-invalid memory and gets an error code back,
the way Linux's copy_from_user does, built on exception tables.  Every access
to the untrusted pointer has an `.extable ..., uaccess` entry: when it faults
on a bad address, the extable handler sets rax = -EFAULT and jumps to a
`ret`.  A page that is valid but not yet populated (PF_VMR_BACKED) is not an
error: the handler declines, the 2LS populates it, and the access is retried
and succeeds.

Routines (System V calling convention; "user" = the untrusted pointer):

    copy_from_user(dst, src_user, n)         -> 0 | -EFAULT
    copy_to_user(dst_user, src, n)           -> 0 | -EFAULT
    get_user(dst, src_user)                  -> 0 | -EFAULT   (8 bytes)
    put_user(dst_user, value)                -> 0 | -EFAULT   (8 bytes)
    strncpy_from_user(dst, src_user, count)  -> length without the NUL (count if none) | -EFAULT
    clear_user(dst_user, n)                  -> 0 | -EFAULT

A fault part-way through a copy leaves the bytes before it copied.
"""

from __future__ import annotations

from akaros_sim.asm import assemble
from akaros_sim.program import Program

UACCESS_BASE = 0x7000_0000

UACCESS_SOURCE = """
# copy_from_user and copy_to_user share one body: either side may fault.
copy_from_user:
copy_to_user:
    mov rcx, rdx
uaccess_copy:
    rep movsb
    xor eax, eax
    ret

get_user:                       # (dst, src_user): *dst = *src_user
uaccess_get_load:
    mov rax, [rsi]
uaccess_get_store:
    mov [rdi], rax
    xor eax, eax
    ret

put_user:                       # (dst_user, value): *dst_user = value
uaccess_put_store:
    mov [rdi], rsi
    xor eax, eax
    ret

strncpy_from_user:              # (dst, src_user, count)
    xor ecx, ecx
uaccess_strncpy_loop:
    cmp rcx, rdx
    jae uaccess_strncpy_done
uaccess_strncpy_load:
    movzx eax, byte ptr [rsi + rcx]
uaccess_strncpy_store:
    mov byte ptr [rdi + rcx], al
    test al, al
    jz uaccess_strncpy_done
    inc rcx
    jmp uaccess_strncpy_loop
uaccess_strncpy_done:
    mov rax, rcx
    ret

clear_user:                     # (dst_user, n)
    mov rcx, rsi
    xor eax, eax
uaccess_clear:
    rep stosb
    xor eax, eax
    ret

uaccess_fault:                  # every fixup lands here with rax = -EFAULT
    ret

.extable uaccess_copy, uaccess_fault, uaccess
.extable uaccess_get_load, uaccess_fault, uaccess
.extable uaccess_get_store, uaccess_fault, uaccess
.extable uaccess_put_store, uaccess_fault, uaccess
.extable uaccess_strncpy_load, uaccess_fault, uaccess
.extable uaccess_strncpy_store, uaccess_fault, uaccess
.extable uaccess_clear, uaccess_fault, uaccess
"""

ROUTINES = ("copy_from_user", "copy_to_user", "get_user", "put_user", "strncpy_from_user", "clear_user")


def uaccess_program(base: int = UACCESS_BASE, name: str = "uaccess") -> Program:
    """The library assembled at `base` (load it with Simulation.load)."""
    return assemble(UACCESS_SOURCE, base, name=name)
