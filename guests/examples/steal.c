/* steal: every CPU works and watches its own stolen time (DEN0057); CPU 0 reports.
 *
 * Each CPU registers its record with PV_TIME_ST, then spins until it has really run for
 * WORK ns (counter time minus stolen time), and turns itself off. CPU 0 works alongside
 * them, waits for them, reads its record a last time (nothing can steal from it once it
 * is alone) and prints each CPU's stolen time and its share of that CPU's elapsed time.
 * Bootargs: `work_ms=N` (default 200); `force` calls PV_TIME_ST even when discovery says
 * it is absent, to show the hypervisor's answer. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>
#include <pvkit/pvtime.h>
#include <pvkit/runtime.h>

struct sample {
    uint64_t t0, t1;       /* counter ns when the work began and at the last sample */
    uint64_t s0, s1;       /* stolen ns from the record at those two moments */
    uint64_t record;       /* the record's value when the CPU was done for good */
    volatile int done;
};

static struct pv_env env;
static struct sample samples[PVKIT_MAX_CPUS];
static uint64_t work_ns = 200000000u;
static int have_pvtime;
static volatile uint64_t sink;

static uint64_t stolen(volatile struct pvtime_record *r) { return r ? pvtime_stolen(r) : 0; }

/* Counter and stolen time from the same stretch of running: if the record changed while
 * the counter was read, the vCPU was descheduled in between; read both again. */
static void snapshot(volatile struct pvtime_record *r, uint64_t *t, uint64_t *st)
{
    do {
        *st = stolen(r);
        *t = counter_ns();
    } while (stolen(r) != *st);
}

static volatile struct pvtime_record *run(int cpu)
{
    int64_t err = 0;
    volatile struct pvtime_record *rec = have_pvtime ? pvtime_register(&env, &err) : 0;
    struct sample *s = &samples[cpu];
    snapshot(rec, &s->t0, &s->s0);
    uint64_t x = (uint64_t)cpu + 1, t, st;
    do {
        for (int i = 0; i < 2000; i++)
            x = x * 6364136223846793005u + 1442695040888963407u;
        snapshot(rec, &t, &st);
    } while ((int64_t)((t - s->t0) - (st - s->s0)) < (int64_t)work_ns);
    sink = x;
    s->t1 = t;
    s->s1 = st;
    s->record = st;
    return rec;
}

static uint64_t parse_work_ms(const char *args)
{
    for (const char *p = args; p && *p; p++) {
        const char *k = "work_ms=";
        int i = 0;
        while (k[i] && p[i] == k[i])
            i++;
        if (!k[i]) {
            uint64_t v = 0;
            for (p += i; *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (uint64_t)(*p - '0');
            return v;
        }
    }
    return 200;
}

static int has_word(const char *args, const char *w)
{
    for (const char *p = args; p && *p; p++) {
        int i = 0;
        while (w[i] && p[i] == w[i])
            i++;
        if (!w[i] && (p[i] == 0 || p[i] == ' ') && (p == args || p[-1] == ' '))
            return 1;
    }
    return 0;
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    const char *args = fdt_bootargs(fdt);
    work_ns = parse_work_ms(args) * 1000000u;
    have_pvtime = pvtime_available(&env);
    kprintf("steal: %d cpus, %lu ms of work each, PV time %s\n", env.ncpus, work_ns / 1000000u,
            have_pvtime ? "offered" : "not offered");
    if (!have_pvtime && has_word(args, "force")) {
        int64_t err;
        if (!pvtime_register(&env, &err))
            kprintf("steal: PV_TIME_ST -> %ld: falling back without steal\n", err);
    }
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    for (int i = 0; i < env.ncpus; i++)
        if (env.mpidr[i] != self)
            psci_cpu_on(&env, env.mpidr[i], secondary_entry, (uint64_t)i);
    int me = 0;
    for (int i = 0; i < env.ncpus; i++)
        if (env.mpidr[i] == self)
            me = i;
    volatile struct pvtime_record *rec = run(me);
    for (int i = 0; i < env.ncpus; i++) {
        if (i == me)
            continue;
        while (!samples[i].done)
            ;
        while (psci_affinity_info(&env, env.mpidr[i], 0) != AFFINITY_OFF)
            ;
    }
    samples[me].record = stolen(rec); /* alone now: nothing can steal from CPU 0 any more */
    for (int i = 0; i < env.ncpus; i++) {
        struct sample *s = &samples[i];
        uint64_t elapsed = s->t1 - s->t0, st = s->s1 - s->s0;
        uint64_t tenths = elapsed ? st * 1000u / elapsed : 0;
        if (have_pvtime)
            kprintf("steal: cpu %d stolen %lu ns of %lu ns elapsed: %lu.%lu%% (record %lu)\n", i,
                    st, elapsed, tenths / 10, tenths % 10, s->record);
        else
            kprintf("steal: cpu %d ran %lu ns elapsed, stolen time unknown\n", i, elapsed);
    }
    psci_system_off(&env);
}

void guest_secondary(uint64_t index)
{
    run((int)index);
    __asm__ volatile("dmb ish" ::: "memory");
    samples[index].done = 1;
    psci_cpu_off(&env);
}
