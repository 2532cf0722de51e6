/* stdio.h: printf and friends, formatted in the guest and written with SYS_write (one write per call). */
#ifndef AKAROS_STDIO_H
#define AKAROS_STDIO_H

#include <stdarg.h>
#include <stddef.h>

/* Conversions: %d %i %u %x %X %o %s %c %p %%, with flags '-' '0', a width, and the l / ll / z / h
 * length modifiers.  printf writes at most 1023 bytes per call. */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int puts(const char *s);
int putchar(int c);

#endif
