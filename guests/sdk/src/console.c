/* Polled PL011 output at the virt board's address, and a small printf on top. */
#include <pvkit/console.h>
#include <pvkit/runtime.h>

#define PL011_BASE 0x09000000UL
#define UARTDR 0x000
#define UARTFR 0x018
#define FR_TXFF (1u << 5)

static inline void mmio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint32_t mmio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }

void console_putc(char c)
{
    if (c == '\n')
        console_putc('\r');
    while (mmio_read32(PL011_BASE + UARTFR) & FR_TXFF)
        ;
    mmio_write32(PL011_BASE + UARTDR, (uint8_t)c);
}

void console_puts(const char *s)
{
    while (*s)
        console_putc(*s++);
}

static void put_number(uint64_t v, unsigned base, int width, char pad, int negative)
{
    char buf[24];
    int n = 0;
    do {
        unsigned d = v % base;
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    if (negative)
        buf[n++] = '-';
    while (n < width--)
        console_putc(pad);
    while (n)
        console_putc(buf[--n]);
}

int kprintf(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            console_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            console_puts(s ? s : "(null)");
            break;
        }
        case 'c':
            console_putc((char)__builtin_va_arg(ap, int));
            break;
        case 'd': {
            int64_t v = longs ? __builtin_va_arg(ap, int64_t) : __builtin_va_arg(ap, int);
            put_number(v < 0 ? -(uint64_t)v : (uint64_t)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
        case 'x': {
            uint64_t v = longs ? __builtin_va_arg(ap, uint64_t) : __builtin_va_arg(ap, unsigned);
            put_number(v, *fmt == 'x' ? 16 : 10, width, pad, 0);
            break;
        }
        case 'p':
            console_puts("0x");
            put_number((uint64_t)__builtin_va_arg(ap, void *), 16, 0, ' ', 0);
            break;
        case '%':
            console_putc('%');
            break;
        default:
            console_putc('?');
            break;
        }
    }
    __builtin_va_end(ap);
    return 0;
}

static const char *const vector_names[4] = {"current EL SP0", "current EL SPx", "lower EL A64",
                                            "lower EL A32"};
static const char *const vector_kinds[4] = {"synchronous", "IRQ", "FIQ", "SError"};

void exception_report(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far)
{
    kprintf("guest exception: %s %s, ESR 0x%lx (EC 0x%lx), ELR 0x%lx, FAR 0x%lx\n",
            vector_kinds[vector % 4], vector_names[(vector / 4) % 4], esr, (esr >> 26) & 0x3f,
            elr, far);
}
