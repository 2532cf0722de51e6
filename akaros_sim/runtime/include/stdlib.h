/* stdlib.h: a bump allocator (free is a no-op), exit and abort. */
#ifndef AKAROS_STDLIB_H
#define AKAROS_STDLIB_H

#include <stddef.h>

/* The heap: RT_HEAP_SIZE bytes of .bss (256 KiB), handed out 16-byte aligned; NULL when spent. */
void *malloc(size_t size);
void *calloc(size_t n, size_t size);
void free(void *p);
__attribute__((noreturn)) void exit(int status);
__attribute__((noreturn)) void abort(void);
int abs(int x);
long labs(long x);

#endif
