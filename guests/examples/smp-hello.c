/* smp-hello: discover the hypervisor, start every CPU with CPU_ON, let each say hello, power off.
 *
 * CPUs are started one after another: each secondary says hello, advances a shared counter
 * (plain loads and stores) and turns itself off while CPU 0 waits for the counter before the
 * next CPU_ON. The output is the same on every run, and hundreds of CPUs boot on a host with
 * two cores, because at most two of them run at any time. */
#include <pvkit/console.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

static struct pv_env env;
static volatile uint64_t turn;

static void print_version(const char *what, uint32_t v)
{
    kprintf("%s %u.%u\n", what, v >> 16, v & 0xffff);
}

void guest_main(const void *fdt)
{
    kprintf("smp-hello: pvkit guest SDK\n");
    pv_discover(fdt, &env);
    if (env.conduit == CONDUIT_NONE) {
        kprintf("no PSCI in the device tree: not issuing any hypervisor call\n");
        kprintf("hello from cpu 0 (mpidr 0x%lx)\n", read_mpidr() & 0xff00ffffffUL);
        return; /* halts */
    }
    kprintf("conduit: %s\n", env.conduit == CONDUIT_HVC ? "hvc" : "smc");
    print_version("PSCI version", env.psci_version);
    print_version("SMCCC version", env.smccc_version);
    if (env.hypervisor != HYP_UNKNOWN) {
        kprintf("hypervisor: %s, uid %08x-%08x-%08x-%08x\n", pv_hypervisor_name(env.hypervisor),
                env.uid[0], env.uid[1], env.uid[2], env.uid[3]);
        kprintf("vendor features: %08x %08x %08x %08x\n", env.vendor_features[0],
                env.vendor_features[1], env.vendor_features[2], env.vendor_features[3]);
    } else {
        kprintf("hypervisor: unknown (no vendor call will be made)\n");
    }
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    kprintf("hello from cpu 0 (mpidr 0x%lx)\n", self);

    int started = 0;
    for (int i = 0; i < env.ncpus; i++) {
        if (env.mpidr[i] == self)
            continue;
        turn = (uint64_t)i;
        int64_t r = psci_cpu_on(&env, env.mpidr[i], secondary_entry, (uint64_t)i);
        if (r != PSCI_SUCCESS) {
            kprintf("CPU_ON(0x%lx) failed: %ld\n", env.mpidr[i], r);
            continue;
        }
        started++;
        /* Wait for its hello before the next CPU_ON, and before asking AFFINITY_INFO: some
         * hypervisors (QEMU 7.2) report a CPU that was just started as OFF, not ON_PENDING. */
        while (turn != (uint64_t)i + 1)
            ;
    }
    for (int i = 0; i < env.ncpus; i++) {
        if (env.mpidr[i] == self)
            continue;
        while (psci_affinity_info(&env, env.mpidr[i], 0) != AFFINITY_OFF)
            ;
    }
    kprintf("all %d secondary cpus came and went; powering off\n", started);
    psci_system_off(&env);
    kprintf("SYSTEM_OFF returned!\n");
}

void guest_secondary(uint64_t index)
{
    while (turn != index)
        ;
    kprintf("hello from cpu %lu (mpidr 0x%lx)\n", index, read_mpidr() & 0xff00ffffffUL);
    __asm__ volatile("dmb ish" ::: "memory");
    turn = index + 1;
    psci_cpu_off(&env);
}
