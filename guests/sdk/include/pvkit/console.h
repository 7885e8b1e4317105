/* PL011 console and a small printf: %s %c %d %u %x %p with l/ll and zero-padded widths. */
#ifndef PVKIT_CONSOLE_H
#define PVKIT_CONSOLE_H
#include <pvkit/types.h>
void console_putc(char c);
void console_puts(const char *s);
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
