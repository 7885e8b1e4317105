/* dirty: every CPU keeps rewriting its share of an 8 MiB buffer, then prints a checksum.
 *
 * Made for live migration's pre-copy: RAM changes all the time the guest runs, one page
 * at every pass (the first of each CPU's share), the others in turn, one more page a pass.
 * A pass computes for a while first (`spin=N` rounds of a generator, default 100000), so
 * a migration's rounds can catch up with the writes. What is written depends only on the
 * pass and the page, never on time, so the checksums are the same on every run however the
 * CPUs are scheduled; a page a migration failed to copy again after the guest wrote it
 * shows as a different checksum. Bootargs: `passes=N` (default 2000), `spin=N`. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

#define PAGE_WORDS 512
#define PAGES 2048 /* 8 MiB */

static struct pv_env env;
static uint64_t buffer[PAGES * PAGE_WORDS] __attribute__((aligned(4096)));
static volatile uint64_t sums[PVKIT_MAX_CPUS];
static volatile int done[PVKIT_MAX_CPUS];
static uint64_t passes = 2000;
static uint64_t spin = 100000;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdu;
    x ^= x >> 33;
    return x;
}

/* Pages [first, first + count) of the buffer: CPU `cpu`'s share. */
static uint64_t work(int cpu, uint64_t first, uint64_t count)
{
    uint64_t x = first;
    for (uint64_t p = 0; p < passes; p++) {
        for (uint64_t i = 0; i < spin; i++)
            x = x * 6364136223846793005u + 1442695040888963407u;
        buffer[first * PAGE_WORDS + p % PAGE_WORDS] += mix(p) ^ x; /* the hot page */
        uint64_t cold = first + p % count;
        buffer[cold * PAGE_WORDS + (p / count) % PAGE_WORDS] ^= mix(p * PAGES + cold);
    }
    uint64_t sum = (uint64_t)cpu;
    for (uint64_t w = first * PAGE_WORDS; w < (first + count) * PAGE_WORDS; w++)
        sum = mix(sum + buffer[w]);
    return sum;
}

static void share(int cpu, uint64_t *first, uint64_t *count)
{
    uint64_t each = PAGES / (uint64_t)env.ncpus;
    *first = (uint64_t)cpu * each;
    *count = each;
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    const char *args = fdt_bootargs(fdt);
    passes = bootarg_uint(args, "passes", passes);
    spin = bootarg_uint(args, "spin", spin);
    kprintf("dirty: %d cpus, %lu passes of %lu over %d pages\n", env.ncpus, passes, spin, PAGES);
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    int me = 0;
    for (int i = 0; i < env.ncpus; i++) {
        if (env.mpidr[i] == self)
            me = i;
        else
            psci_cpu_on(&env, env.mpidr[i], secondary_entry, (uint64_t)i);
    }
    uint64_t first, count;
    share(me, &first, &count);
    sums[me] = work(me, first, count);
    for (int i = 0; i < env.ncpus; i++)
        while (i != me && !done[i])
            ;
    for (int i = 0; i < env.ncpus; i++)
        kprintf("dirty: cpu %d checksum %016lx\n", i, sums[i]);
    psci_system_off(&env);
}

void guest_secondary(uint64_t index)
{
    uint64_t first, count;
    share((int)index, &first, &count);
    sums[index] = work((int)index, first, count);
    __asm__ volatile("dmb ish" ::: "memory");
    done[index] = 1;
    psci_cpu_off(&env);
}
