/* timer: generic-timer interrupts through the GIC, and the timer's status bits.
 *
 * 1. The virtual timer (CNTV_*, its PPI from the "arm,armv8-timer" node, INTID 27 on virt)
 *    fires every millisecond: the handler moves CVAL one period on, N times (bootargs
 *    `ticks=N`, default 10). Every interrupt must come no earlier than its deadline.
 * 2. ISTATUS: 1 once CVAL has been reached, even with IMASK set (IMASK only stops the
 *    interrupt), 0 again after CVAL moves into the future; TVAL reads CVAL - count, signed.
 * 3. The EL1 physical timer (CNTP_*, INTID 30) once, armed through TVAL.
 * Output: `timer: N ticks ok`, `timer: istatus ok`, `timer: physical ok`, or what went wrong;
 * then PSCI SYSTEM_OFF. Works with GICv2 and GICv3, whichever the device tree describes. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define WAIT_MS 10000 /* generous: a slow emulator may take long, a broken one forever */

static struct pv_env env;
static struct timer_irqs irqs;
static uint64_t period, nticks;
static volatile uint64_t ticks, early_ticks;
static volatile int phys_fired, phys_early;

static void virt_tick(uint32_t intid, void *arg)
{
    (void)intid, (void)arg;
    uint64_t cval = cntv_cval();
    if (cntvct() < cval || !(cntv_ctl() & CNT_CTL_ISTATUS))
        early_ticks++;
    if (++ticks >= nticks)
        cntv_ctl_set(0); /* done: the line drops before the EOI */
    else
        cntv_cval_set(cval + period);
}

static void phys_fire(uint32_t intid, void *arg)
{
    (void)intid, (void)arg;
    if (cntpct() < cntp_cval() || !(cntp_ctl() & CNT_CTL_ISTATUS))
        phys_early = 1;
    cntp_ctl_set(0);
    phys_fired = 1;
}

static void periodic(void)
{
    irq_register(irqs.virt, virt_tick, 0);
    gic_enable_irq(irqs.virt);
    cntv_cval_set(cntvct() + period);
    cntv_ctl_set(CNT_CTL_ENABLE);
    uint64_t deadline = deadline_after_ms(WAIT_MS + 2 * nticks);
    irq_enable();
    while (ticks < nticks && !deadline_passed(deadline))
        ;
    irq_disable();
    cntv_ctl_set(0);
    gic_disable_irq(irqs.virt);
    if (ticks == nticks && !early_ticks)
        kprintf("timer: %lu ticks ok\n", nticks);
    else if (ticks < nticks)
        kprintf("timer: only %lu of %lu ticks (INTID %u) arrived\n", ticks, nticks, irqs.virt);
    else
        kprintf("timer: %lu of %lu ticks came before their deadline\n", early_ticks, nticks);
}

static int istatus_mismatch(const char *when, uint64_t ctl, uint64_t want)
{
    if (!!(ctl & CNT_CTL_ISTATUS) == want)
        return 0;
    kprintf("timer: istatus MISMATCH %s: CNTV_CTL=0x%lx, ISTATUS expected %lu\n", when, ctl,
            want);
    return 1;
}

static void istatus(void)
{
    int bad = 0;
    /* IRQs stay masked in PSTATE; IMASK alone must keep the timer from asserting its line. */
    uint64_t now = cntvct();
    cntv_cval_set(now);
    cntv_ctl_set(CNT_CTL_ENABLE | CNT_CTL_IMASK);
    bad |= istatus_mismatch("with the deadline passed and IMASK set", cntv_ctl(), 1);
    int32_t tval = cntv_tval();
    if (tval > 0) {
        kprintf("timer: istatus MISMATCH TVAL=%d with the deadline passed, expected <= 0\n", tval);
        bad = 1;
    }
    if (!(cntv_ctl() & CNT_CTL_IMASK)) {
        kprintf("timer: istatus MISMATCH IMASK did not read back as set\n");
        bad = 1;
    }
    cntv_cval_set(cntvct() + 1000 * period);
    bad |= istatus_mismatch("after CVAL moved a second ahead", cntv_ctl(), 0);
    tval = cntv_tval();
    if (tval <= 0 || (uint64_t)tval > 1000 * period) {
        kprintf("timer: istatus MISMATCH TVAL=%d with the deadline 1 s ahead, expected 1..%lu\n",
                tval, 1000 * period);
        bad = 1;
    }
    cntv_cval_set(cntvct());
    bad |= istatus_mismatch("after CVAL moved back to now", cntv_ctl(), 1);
    cntv_ctl_set(0);
    if (!bad)
        kprintf("timer: istatus ok\n");
}

static void physical(void)
{
    irq_register(irqs.phys, phys_fire, 0);
    gic_enable_irq(irqs.phys);
    uint64_t before = cntpct();
    cntp_tval_set((int32_t)period); /* CVAL = count + TVAL */
    uint64_t after = cntpct(), cval = cntp_cval();
    cntp_ctl_set(CNT_CTL_ENABLE);
    uint64_t deadline = deadline_after_ms(WAIT_MS);
    irq_enable();
    while (!phys_fired && !deadline_passed(deadline))
        ;
    irq_disable();
    cntp_ctl_set(0);
    gic_disable_irq(irqs.phys);
    if (cval < before + period || cval > after + period)
        kprintf("timer: physical MISMATCH writing TVAL=%lu gave CVAL=count+%ld\n", period,
                (int64_t)(cval - before));
    else if (!phys_fired)
        kprintf("timer: physical timer interrupt (INTID %u) never arrived\n", irqs.phys);
    else if (phys_early)
        kprintf("timer: physical timer interrupt came before its deadline\n");
    else
        kprintf("timer: physical ok\n");
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    nticks = bootarg_uint(fdt_bootargs(fdt), "ticks", 10);
    int version = gic_init(fdt);
    if (version < 0 || gic_init_cpu() < 0) {
        kprintf("timer: no usable GIC in the device tree\n");
    } else if (!cnt_freq()) {
        kprintf("timer: CNTFRQ_EL0 is 0\n");
    } else {
        timer_irqs_from_fdt(fdt, &irqs);
        period = cnt_freq() / 1000;
        periodic();
        istatus();
        physical();
    }
    psci_system_off(&env);
}
