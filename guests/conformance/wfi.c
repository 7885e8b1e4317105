/* wfi: every CPU sleeps in WFI until its own virtual timer interrupt wakes it.
 *
 * Each CPU (CPU 0, and the others started with CPU_ON) enables its timer PPI, arms the
 * virtual timer 5 ms ahead and executes WFI in a loop, with nothing masked, until the timer
 * interrupt has been taken. Wake-ups that were not the timer are allowed (WFI may complete
 * spuriously) and counted, never printed. The interrupt must not come before the deadline.
 * CPU 0 prints, in CPU order once all are done, `wfi: cpu N woke by timer`, then `wfi: ok`;
 * then SYSTEM_OFF.
 *
 * A wake-up is never lost: if the interrupt is taken between the flag check and the WFI, the
 * IRQ handler moves the return address back to the check (a restartable sequence). */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define AHEAD_MS 5
#define WAIT_MS 10000

static struct pv_env env;
static struct timer_irqs irqs;
static volatile uint32_t fired[PVKIT_MAX_CPUS];
static volatile uint64_t early[PVKIT_MAX_CPUS], other_wakes[PVKIT_MAX_CPUS];
static volatile uint64_t done[PVKIT_MAX_CPUS], failed[PVKIT_MAX_CPUS];

/* uint64_t wfi_until(volatile uint32_t *flag): WFI until *flag != 0; returns how many
 * wake-ups found the flag still clear. */
uint64_t wfi_until(volatile uint32_t *flag);
extern char wfi_check[], wfi_sleep[];
__asm__(".text\n"
        ".globl wfi_until, wfi_check, wfi_sleep\n"
        "wfi_until:\n"
        "       mov     x1, #0\n"
        "       b       wfi_check\n"
        "1:     add     x1, x1, #1\n"
        "wfi_check:\n"
        "       ldr     w2, [x0]\n"
        "       cbnz    w2, 2f\n"
        "wfi_sleep:\n"
        "       wfi\n"
        "       b       1b\n"
        "2:     mov     x0, x1\n"
        "       ret\n");

static void on_timer(uint32_t intid, void *arg)
{
    (void)intid, (void)arg;
    uint64_t me = cpu_index();
    if (cntvct() < cntv_cval() || !(cntv_ctl() & CNT_CTL_ISTATUS))
        early[me] = 1;
    cntv_ctl_set(0);
    fired[me] = 1;
}

static void on_irq(struct exc_frame *frame)
{
    gic_handle_irq(frame);
    /* Interrupted after the flag was read but before WFI ran: read the flag again. */
    if (frame->elr > (uint64_t)wfi_check && frame->elr <= (uint64_t)wfi_sleep)
        frame->elr = (uint64_t)wfi_check;
}

static void sleep_until_timer(void)
{
    uint64_t me = cpu_index();
    gic_enable_irq(irqs.virt);
    cntv_cval_set(cntvct() + cnt_freq() / 1000 * AHEAD_MS);
    cntv_ctl_set(CNT_CTL_ENABLE);
    irq_enable();
    other_wakes[me] = wfi_until(&fired[me]);
    irq_disable();
    gic_disable_irq(irqs.virt);
}

static int wait_done(int k)
{
    uint64_t deadline = deadline_after_ms(WAIT_MS);
    while (!done[k])
        if (deadline_passed(deadline))
            return -1;
    return 0;
}

static void run(const void *fdt)
{
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    if (env.ncpus < 1 || env.mpidr[0] != self) {
        kprintf("wfi: must boot on the first CPU of the device tree\n");
        return;
    }
    if (gic_init(fdt) < 0 || gic_init_cpu() < 0) {
        kprintf("wfi: no usable GIC in the device tree\n");
        return;
    }
    exc_set_irq_handler(on_irq);
    timer_irqs_from_fdt(fdt, &irqs);
    irq_register(irqs.virt, on_timer, 0);
    for (int k = 1; k < env.ncpus; k++) {
        int64_t r = psci_cpu_on(&env, env.mpidr[k], secondary_entry, (uint64_t)k);
        if (r != PSCI_SUCCESS)
            failed[k] = done[k] = 1;
    }
    sleep_until_timer();
    done[0] = 1;
    int bad = 0;
    for (int k = 0; k < env.ncpus; k++) {
        if (wait_done(k)) {
            kprintf("wfi: cpu %d never woke by its timer\n", k);
        } else if (failed[k]) {
            kprintf("wfi: cpu %d did not start or has no GIC CPU interface\n", k);
        } else if (early[k]) {
            kprintf("wfi: cpu %d took its timer interrupt before the deadline\n", k);
        } else {
            kprintf("wfi: cpu %d woke by timer\n", k);
            continue;
        }
        bad = 1;
    }
    for (int k = 1; k < env.ncpus; k++)
        while (done[k] && psci_affinity_info(&env, env.mpidr[k], 0) != AFFINITY_OFF)
            ;
    if (!bad)
        kprintf("wfi: ok\n");
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    run(fdt);
    psci_system_off(&env);
}

void guest_secondary(uint64_t index)
{
    if (gic_init_cpu() == 0)
        sleep_until_timer();
    else
        failed[index] = 1;
    __asm__ volatile("dmb ish" ::: "memory");
    done[index] = 1;
    psci_cpu_off(&env);
}
