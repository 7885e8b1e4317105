/* bench: the guest half of `pvkit bench`. /chosen/bootargs picks one tight loop:
 *
 *   call FID N [ARG1]   N round trips of `hvc #0` with w0 = FID, x1 = ARG1 (and x2, x3)
 *   alu N               N iterations of a 5-instruction register-only loop
 *   mem N               N iterations of a 7-instruction load/store loop
 *   svc N               N round trips of `svc #0` to an EL1 vector that is only `eret`
 *   irq N               N virtual-timer interrupts, each armed with CNTV_CVAL = now
 *   uart N              N bytes on the console: lines of 63 letters and a newline (which
 *                       the console sends as CR LF), the last line completed
 *
 * The host times the loop between the console lines "bench: begin" and "bench: end", so
 * boot and power-off cost nothing. The irq loop times itself: its handler's first
 * instruction reads CNTVCT, and the line "bench: irq n N ticks T hz F" (before "bench: end")
 * gives the sum T over N interrupts of that count minus the deadline, at F = CNTFRQ ticks a
 * second. The same Image runs under pvkit, on a bare Unicorn engine (call, alu, mem) and
 * under qemu-system-aarch64 -M virt (-append "call 0x84000000 1000000"). */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define FAR_AWAY (1ULL << 40) /* a deadline that never comes within a run, at any CNTFRQ */
#define SPIN_LIMIT (1ULL << 30)

extern const char vectors[], bench_vectors[]; /* the SDK's; bench/vectors.S */
void bench_irq(uint64_t now);                  /* called by bench/vectors.S */

static struct pv_env env;
static uint64_t scratch[8];
static uint32_t timer_intid;
static volatile uint64_t irq_deadline, irq_ticks, irq_taken;

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

static void set_vbar(const char *table)
{
    __asm__ volatile("msr vbar_el1, %0; isb" : : "r"(table) : "memory");
}

static void svc_loop(uint64_t n)
{
    if (!n)
        return;
    set_vbar(bench_vectors);
    __asm__ volatile("1: svc #0\n"
                     "subs %0, %0, #1\n"
                     "b.ne 1b\n"
                     : "+r"(n)
                     :
                     : "cc", "memory");
    set_vbar(vectors);
}

static void uart_loop(uint64_t n)
{
    for (uint64_t i = 1; i <= n; i++)
        console_putc(i % 64 ? (char)('a' + i % 26) : '\n');
    if (n % 64)
        console_putc('\n'); /* so that "bench: end" starts a line of its own */
}

/* `now` is CNTVCT as the first instruction of the IRQ vector read it. */
void bench_irq(uint64_t now)
{
    uint32_t iar = gic_ack();
    uint32_t intid = gic_intid(iar);
    if (intid >= 1020)
        return; /* spurious: nothing to end */
    if (intid == timer_intid) {
        irq_ticks += now - irq_deadline;
        irq_taken++;
        cntv_cval_set(now + FAR_AWAY); /* the line drops before the EOI */
    }
    gic_eoi(iar);
}

/* One interrupt: IRQs unmasked, then CVAL = the count just read (already due), then spin
 * until the vector's first instruction has written the count into x9. */
static int irq_once(void)
{
    uint64_t now, spins = SPIN_LIMIT;
    __asm__ volatile("mov x9, #0\n"
                     "msr daifclr, #2\n"
                     "isb\n"
                     "mrs %0, cntvct_el0\n"
                     "str %0, [%2]\n"
                     "msr cntv_cval_el0, %0\n"
                     "isb\n"
                     "1: cbnz x9, 2f\n"
                     "subs %1, %1, #1\n"
                     "b.ne 1b\n"
                     "2: msr daifset, #2\n"
                     : "=&r"(now), "+r"(spins)
                     : "r"(&irq_deadline)
                     : "x9", "cc", "memory");
    return spins != 0;
}

static int irq_loop(const void *fdt, uint64_t n)
{
    struct timer_irqs irqs;
    timer_irqs_from_fdt(fdt, &irqs);
    if (gic_init(fdt) < 0 || gic_init_cpu() < 0) {
        kprintf("bench: no usable GIC in the device tree\n");
        return -1;
    }
    timer_intid = irqs.virt;
    cntv_cval_set(cntvct() + FAR_AWAY);
    cntv_ctl_set(CNT_CTL_ENABLE);
    gic_enable_irq(irqs.virt);
    kprintf("bench: begin irq x %lu\n", n);
    set_vbar(bench_vectors);
    uint64_t i = 0;
    while (i < n && irq_once())
        i++;
    set_vbar(vectors);
    cntv_ctl_set(0);
    gic_disable_irq(irqs.virt);
    if (i < n || irq_taken != n) {
        kprintf("bench: %lu of %lu timer interrupts arrived\n", irq_taken, n);
        return -1;
    }
    kprintf("bench: irq n %lu ticks %lu hz %lu\n", irq_taken, irq_ticks, cnt_freq());
    return 0;
}

void guest_main(const void *fdt)
{
    const char *args = fdt_bootargs(fdt);
    if (!args) {
        kprintf("bench: no bootargs; expected 'call FID N [ARG1]', 'alu N', 'mem N', "
                "'svc N', 'irq N' or 'uart N'\n");
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
    } else if (starts_with(args, "svc")) {
        parse_number(args + 3, &b);
        kprintf("bench: begin svc x %lu\n", b);
        svc_loop(b);
    } else if (starts_with(args, "uart")) {
        parse_number(args + 4, &b);
        kprintf("bench: begin uart x %lu\n", b);
        uart_loop(b);
    } else if (starts_with(args, "irq")) {
        parse_number(args + 3, &b);
        if (irq_loop(fdt, b) < 0)
            return;
    } else {
        kprintf("bench: unknown mode '%s'\n", args);
        return;
    }
    kprintf("bench: end\n");
    pv_discover(fdt, &env);
    psci_system_off(&env); /* returns only without PSCI: then halt */
}
