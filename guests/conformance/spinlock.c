/* spinlock: every CPU adds 1 to shared counters, M times each (bootargs `iterations=M`,
 * default 100000), first under an LDAXR/STXR spinlock, then with LSE LDADD.
 *
 * A barrier (built on LDAXR/STLXR, so it needs no LSE) lines all CPUs up before each phase.
 * LDADD runs only when ID_AA64ISAR0_EL1.Atomic says LSE is implemented.
 * Output: `spinlock: ldxr total=T expected=E`, then `spinlock: lse total=T expected=E` or
 * `spinlock: lse absent`; then SYSTEM_OFF. E = cpus * M.
 *
 * By default the MMU is off, so every data access is to Device-nGnRnE memory. QEMU's TCG (and
 * so pvkit) implement exclusives and atomics there; real CPUs need not (exclusives to Device
 * memory are IMPLEMENTATION DEFINED). Bootargs `mmu` turns on an identity map with Normal
 * write-back RAM on every CPU first, as hardware or KVM would want. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/mmu.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define WAIT_MS 10000

static struct pv_env env;
static uint64_t iterations, ncpus;
static int use_mmu, have_lse;
static volatile uint32_t lock;
static volatile uint64_t ldxr_counter, lse_counter;
static volatile uint32_t barrier_count, barrier_sense;
static volatile uint32_t started, finished;

static uint32_t atomic_inc32(volatile uint32_t *p)
{
    uint32_t v, fail;
    __asm__ volatile("1: ldaxr %w0, [%2]\n"
                     "   add %w0, %w0, #1\n"
                     "   stlxr %w1, %w0, [%2]\n"
                     "   cbnz %w1, 1b"
                     : "=&r"(v), "=&r"(fail)
                     : "r"(p)
                     : "memory");
    return v;
}

/* Sense-reversing barrier for all `ncpus` CPUs. */
static void barrier(uint32_t *sense)
{
    uint32_t s = !*sense;
    *sense = s;
    if (atomic_inc32(&barrier_count) == ncpus) {
        barrier_count = 0;
        __asm__ volatile("dmb ish" ::: "memory");
        barrier_sense = s;
    } else {
        while (barrier_sense != s)
            ;
    }
    __asm__ volatile("dmb ish" ::: "memory");
}

static void spin_lock(volatile uint32_t *l)
{
    uint32_t v, fail;
    __asm__ volatile("1: ldaxr %w0, [%2]\n"
                     "   cbnz %w0, 1b\n"
                     "   stxr %w1, %w3, [%2]\n"
                     "   cbnz %w1, 1b"
                     : "=&r"(v), "=&r"(fail)
                     : "r"(l), "r"(1)
                     : "memory");
}

static void spin_unlock(volatile uint32_t *l)
{
    __asm__ volatile("stlr wzr, [%0]" : : "r"(l) : "memory");
}

static void lse_add(volatile uint64_t *p, uint64_t v)
{
    uint64_t old;
    __asm__ volatile(".arch_extension lse\n"
                     "ldadd %x1, %x0, [%2]"
                     : "=r"(old)
                     : "r"(v), "r"(p)
                     : "memory");
}

static void work(void)
{
    uint32_t sense = 0;
    if (use_mmu)
        mmu_enable();
    barrier(&sense);
    for (uint64_t i = 0; i < iterations; i++) {
        spin_lock(&lock);
        ldxr_counter = ldxr_counter + 1;
        spin_unlock(&lock);
    }
    barrier(&sense);
    if (have_lse)
        for (uint64_t i = 0; i < iterations; i++)
            lse_add(&lse_counter, 1);
    barrier(&sense);
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    const char *args = fdt_bootargs(fdt);
    iterations = bootarg_uint(args, "iterations", 100000);
    use_mmu = bootarg_has(args, "mmu");
    uint64_t isar0;
    __asm__ volatile("mrs %0, id_aa64isar0_el1" : "=r"(isar0));
    have_lse = ((isar0 >> 20) & 0xf) >= 2;
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    ncpus = env.conduit == CONDUIT_NONE ? 1 : (uint64_t)env.ncpus;
    if (env.ncpus && env.mpidr[0] != self) {
        kprintf("spinlock: must boot on the first CPU of the device tree\n");
        psci_system_off(&env);
        return;
    }
    if (use_mmu && mmu_identity_default(fdt)) {
        kprintf("spinlock: cannot build the identity map\n");
        psci_system_off(&env);
        return;
    }
    for (uint64_t k = 1; k < ncpus; k++) {
        int64_t r = psci_cpu_on(&env, env.mpidr[k], secondary_entry, k);
        if (r != PSCI_SUCCESS) {
            kprintf("spinlock: CPU_ON(cpu %lu) failed: %ld\n", k, r);
            psci_system_off(&env);
            return;
        }
    }
    /* The barrier would wait forever for a CPU that never came: check first, bounded. */
    uint64_t deadline = deadline_after_ms(WAIT_MS);
    while (started != ncpus - 1 && !deadline_passed(deadline))
        ;
    if (started != ncpus - 1) {
        kprintf("spinlock: only %u of %lu secondary CPUs started\n", started, ncpus - 1);
        psci_system_off(&env);
        return;
    }
    work();
    while (finished != ncpus - 1)
        ;
    for (uint64_t k = 1; k < ncpus; k++)
        while (psci_affinity_info(&env, env.mpidr[k], 0) != AFFINITY_OFF)
            ;
    kprintf("spinlock: ldxr total=%lu expected=%lu\n", ldxr_counter, ncpus * iterations);
    if (have_lse)
        kprintf("spinlock: lse total=%lu expected=%lu\n", lse_counter, ncpus * iterations);
    else
        kprintf("spinlock: lse absent\n");
    psci_system_off(&env);
}

void guest_secondary(uint64_t index)
{
    (void)index;
    atomic_inc32(&started);
    work();
    atomic_inc32(&finished);
    psci_cpu_off(&env);
}
