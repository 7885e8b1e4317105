/* bench: the guest half of `pvkit bench`. /chosen/bootargs picks one tight loop:
 *
 *   call FID N [ARG1]   N round trips of `hvc #0` with w0 = FID, x1 = ARG1 (and x2, x3)
 *   alu N               N iterations of a 5-instruction register-only loop
 *   mem N               N iterations of a 7-instruction load/store loop
 *
 * The host times the loop between the console lines "bench: begin" and "bench: end", so
 * boot and power-off cost nothing. The same Image runs under pvkit, on a bare Unicorn
 * engine and under qemu-system-aarch64 -M virt (-append "call 0x84000000 1000000"). */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

static struct pv_env env;
static uint64_t scratch[8];

static const char *skip_spaces(const char *s)
{
    while (*s == ' ')
        s++;
    return s;
}

/* Parses a decimal or 0x-prefixed hexadecimal number; returns the text after it. */
static const char *parse_number(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    s = skip_spaces(s);
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (s += 2;; s++) {
            char c = *s;
            if (c >= '0' && c <= '9')
                v = v * 16 + (uint64_t)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v = v * 16 + (uint64_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                v = v * 16 + (uint64_t)(c - 'A' + 10);
            else
                break;
        }
    } else {
        for (; *s >= '0' && *s <= '9'; s++)
            v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return s;
}

static int starts_with(const char *s, const char *word)
{
    while (*word)
        if (*s++ != *word++)
            return 0;
    return *s == ' ' || *s == 0;
}

/* Issuing HVC is safe only when the device tree says a PSCI implementation listens there. */
static int hvc_is_safe(const void *fdt)
{
    int psci = fdt_path(fdt, "/psci");
    return psci >= 0 && fdt_prop_has_string(fdt, psci, "method", "hvc");
}

static void call_loop(uint64_t fid, uint64_t arg1, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        register uint64_t x0 __asm__("x0") = fid;
        register uint64_t x1 __asm__("x1") = arg1;
        register uint64_t x2 __asm__("x2") = i;
        register uint64_t x3 __asm__("x3") = 3;
        __asm__ volatile("hvc #0"
                         : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
                         :
                         : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13",
                           "x14", "x15", "x16", "x17", "memory");
    }
}

static void alu_loop(uint64_t n)
{
    if (!n)
        return;
    __asm__ volatile("mov x1, #1\n"
                     "mov x2, #2\n"
                     "1: add x1, x1, x2\n"
                     "eor x2, x2, x1\n"
                     "add x3, x3, #1\n"
                     "subs %0, %0, #1\n"
                     "b.ne 1b\n"
                     : "+r"(n)
                     :
                     : "x1", "x2", "x3", "cc");
}

static void mem_loop(uint64_t n)
{
    if (!n)
        return;
    uint64_t *p = scratch;
    __asm__ volatile("1: ldr x1, [%1]\n"
                     "add x1, x1, #1\n"
                     "str x1, [%1, #8]\n"
                     "ldr x2, [%1, #16]\n"
                     "str x2, [%1, #24]\n"
                     "subs %0, %0, #1\n"
                     "b.ne 1b\n"
                     : "+r"(n)
                     : "r"(p)
                     : "x1", "x2", "cc", "memory");
}

void guest_main(const void *fdt)
{
    const char *args = fdt_bootargs(fdt);
    if (!args) {
        kprintf("bench: no bootargs; expected 'call FID N [ARG1]', 'alu N' or 'mem N'\n");
        return;
    }
    args = skip_spaces(args);
    uint64_t a = 0, b = 0, c = 0;
    if (starts_with(args, "call")) {
        const char *rest = parse_number(parse_number(args + 4, &a), &b);
        parse_number(rest, &c);
        if (!hvc_is_safe(fdt)) {
            kprintf("bench: the device tree offers no HVC conduit; not calling\n");
            return;
        }
        kprintf("bench: begin call 0x%lx x %lu\n", a, b);
        call_loop(a, c, b);
    } else if (starts_with(args, "alu")) {
        parse_number(args + 3, &b);
        kprintf("bench: begin alu x %lu\n", b);
        alu_loop(b);
    } else if (starts_with(args, "mem")) {
        parse_number(args + 3, &b);
        kprintf("bench: begin mem x %lu\n", b);
        mem_loop(b);
    } else {
        kprintf("bench: unknown mode '%s'\n", args);
        return;
    }
    kprintf("bench: end\n");
    pv_discover(fdt, &env);
    psci_system_off(&env); /* returns only without PSCI: then halt */
}

void guest_secondary(uint64_t context)
{
    (void)context;
}
