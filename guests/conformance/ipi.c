/* ipi: SGI ping-pong between CPU 0 and every other CPU.
 *
 * CPU 0 starts the others with PSCI CPU_ON; each sets up its GIC CPU interface and sleeps in
 * WFI. For R rounds (bootargs `rounds=R`, default 100) and every other CPU k in turn, CPU 0
 * sends SGI 1 ("ping") to k and waits; k's handler answers with SGI 2 ("pong") to CPU 0.
 * Each pong must come from the CPU that was pinged, and every CPU must see exactly R pings.
 * A last SGI 3 tells the others to stop; they turn themselves off with CPU_OFF.
 * CPU 0 waits for each pong in WFI too (IRQs masked around the check, so no wake-up is lost),
 * with its virtual timer armed 10 s ahead as a watchdog in case a pong never comes.
 * Output: `ipi: N round trips ok` (N = R * (cpus - 1)) or what went wrong; then SYSTEM_OFF. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define SGI_PING 1
#define SGI_PONG 2
#define SGI_STOP 3
#define WAIT_MS 10000

static struct pv_env env;
static volatile uint64_t pings[PVKIT_MAX_CPUS], ready[PVKIT_MAX_CPUS], done[PVKIT_MAX_CPUS];
static volatile uint64_t pongs, wrong_sender, responder, stop, watchdog_fired;
static struct timer_irqs irqs;

static void on_ping(uint32_t intid, void *arg)
{
    (void)intid, (void)arg;
    uint64_t me = cpu_index();
    pings[me]++;
    responder = me;
    gic_send_sgi(0, SGI_PONG); /* gic_send_sgi orders the store above before the SGI */
}

static void on_pong(uint32_t intid, void *arg)
{
    (void)intid;
    if (responder != *(volatile uint64_t *)arg)
        wrong_sender++;
    pongs++;
}

static void on_stop(uint32_t intid, void *arg) { (void)intid, (void)arg; }

static void on_watchdog(uint32_t intid, void *arg)
{
    (void)intid, (void)arg;
    cntv_ctl_set(0);
    watchdog_fired = 1;
}

/* With IRQs masked: sleep until `pongs` reaches `want`, or the watchdog fires. */
static int wait_pong(uint64_t want)
{
    cntv_cval_set(cntvct() + cnt_freq() / 1000 * WAIT_MS);
    while (pongs != want && !watchdog_fired)
        irq_wait();
    return pongs == want ? 0 : -1;
}

static int wait_for(volatile uint64_t *v, uint64_t want)
{
    uint64_t deadline = deadline_after_ms(WAIT_MS);
    while (*v != want)
        if (deadline_passed(deadline))
            return -1;
    return 0;
}

static volatile uint64_t target;

static void run(const void *fdt)
{
    uint64_t rounds = bootarg_uint(fdt_bootargs(fdt), "rounds", 100);
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    if (env.ncpus < 2 || env.mpidr[0] != self) {
        kprintf("ipi: needs two or more CPUs, booting on the first one\n");
        return;
    }
    if (gic_init(fdt) < 0 || gic_init_cpu() < 0) {
        kprintf("ipi: no usable GIC in the device tree\n");
        return;
    }
    irq_register(SGI_PING, on_ping, 0);
    irq_register(SGI_PONG, on_pong, (void *)&target);
    irq_register(SGI_STOP, on_stop, 0);
    for (int k = 1; k < env.ncpus; k++) {
        int64_t r = psci_cpu_on(&env, env.mpidr[k], secondary_entry, (uint64_t)k);
        if (r != PSCI_SUCCESS || wait_for(&ready[k], 1)) {
            kprintf("ipi: cpu %d did not come up (CPU_ON %ld)\n", k, r);
            return;
        }
    }
    timer_irqs_from_fdt(fdt, &irqs);
    irq_register(irqs.virt, on_watchdog, 0);
    gic_enable_irq(irqs.virt);
    cntv_cval_set(cntvct() + cnt_freq() / 1000 * WAIT_MS);
    cntv_ctl_set(CNT_CTL_ENABLE);
    for (uint64_t round = 0; round < rounds; round++) {
        for (int k = 1; k < env.ncpus; k++) {
            target = (uint64_t)k;
            gic_send_sgi((uint64_t)k, SGI_PING);
            if (wait_pong(pongs + 1)) {
                kprintf("ipi: no pong from cpu %d in round %lu\n", k, round);
                return;
            }
        }
    }
    cntv_ctl_set(0);
    gic_disable_irq(irqs.virt);
    stop = 1;
    for (int k = 1; k < env.ncpus; k++)
        gic_send_sgi((uint64_t)k, SGI_STOP);
    int bad = 0;
    for (int k = 1; k < env.ncpus; k++) {
        if (wait_for(&done[k], 1)) {
            kprintf("ipi: cpu %d did not stop\n", k);
            return;
        }
        while (psci_affinity_info(&env, env.mpidr[k], 0) != AFFINITY_OFF)
            ;
        if (pings[k] != rounds) {
            kprintf("ipi: cpu %d saw %lu pings, expected %lu\n", k, pings[k], rounds);
            bad = 1;
        }
    }
    if (wrong_sender) {
        kprintf("ipi: %lu pongs came from a CPU that was not pinged\n", wrong_sender);
        bad = 1;
    }
    if (!bad)
        kprintf("ipi: %lu round trips ok\n", rounds * (uint64_t)(env.ncpus - 1));
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    run(fdt);
    psci_system_off(&env);
}

void guest_secondary(uint64_t index)
{
    if (gic_init_cpu() == 0) {
        __asm__ volatile("dmb ish" ::: "memory");
        ready[index] = 1;
        irq_disable();
        while (!stop)
            irq_wait();
    }
    done[index] = 1;
    psci_cpu_off(&env);
}
