/* fuzz: random hypercalls against the whole SMCCC surface, for `pvkit fuzz` (docs/fuzzing.md).
 *
 * Bootargs `seed=S calls=N`. The boot CPU makes N calls: function IDs weighted toward the
 * real ones (PSCI, SMCCC arch, TRNG, PV time, vendor hypervisor incl. async-pf 0x8600007E),
 * IDs in random owner ranges and fully random ones; random arguments, wild addresses where a
 * call takes one; HVC with immediates 0, 1, 0x4b56, 0xffff (and SMC 0/1 when the DT's conduit
 * is SMC); CPU_ON storms whose secondaries make a few calls and power off again. Only calls
 * that end the run are avoided (CPU_OFF of the caller, SYSTEM_OFF, SYSTEM_RESET/RESET2,
 * SYSTEM_SUSPEND, CPU_FREEZE, CPU_DEFAULT_SUSPEND), and CPU_ON of a real CPU at an entry in
 * RAM other than secondary_entry (the CPU would run garbage). After a CPU_ON that started a
 * CPU the boot CPU waits (WFE) until it is off again, so no call sees the host-timed
 * ON_PENDING -> ON step and the same seed gives the same results.
 *
 * Preserved registers (DEN0028 SMCCC, "Register use in AArch64 SMC and HVC calls"): results
 * come back in x0..x3; x18..x30 and SP are preserved, and from SMCCC 1.1 on x4..x17 too
 * (pvkit returns no call's results above x3). Every call runs with canaries in x4..x30; a call
 * that changes any of them or SP counts one violation.
 *
 * Prints one line, `fuzz: arch=arm64 seed=S calls=N secondary_calls=M cpu_on=K violations=V
 * hash=0x...` (hash: FNV-1a of x0..x3 after every boot-CPU call; of x0 only for TRNG_RND,
 * whose entropy is never replayable), then SYSTEM_OFF. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

struct fz_regs {
    uint64_t in[31];
    uint64_t out[31];
    uint64_t sp_before, sp_after;
};
_Static_assert(sizeof(struct fz_regs) == 512, "offsets used by fuzz-call.S");

void fz_hvc0(struct fz_regs *r);
void fz_hvc1(struct fz_regs *r);
void fz_hvc4b56(struct fz_regs *r);
void fz_hvcffff(struct fz_regs *r);
void fz_smc0(struct fz_regs *r);
void fz_smc1(struct fz_regs *r);

#define MAX_FUZZ_CPUS 16
#define SECONDARY_CALLS 4
#define STORM_RARITY 32 /* a storm in 1 of 32 * 16 calls: each starts a host engine */
#define STORM_32 0x184000003UL /* pick_fid's "start a CPU" marks: CPU_ON with bit 32 set */
#define STORM_64 0x1c4000003UL

static struct pv_env env;
static uint64_t ram_base = 0x40000000UL, ram_end = 0x50000000UL;
static uint64_t seed;
static int check_low; /* SMCCC >= 1.1: x4..x17 preserved too */
static uint8_t scratch[4096] __attribute__((aligned(4096)));

struct cpu_state {
    struct fz_regs regs;
    uint64_t rng;
    uint64_t calls, violations, hash;
    uint64_t starts;
    volatile uint64_t accepted, finished; /* CPU_ONs of this CPU that succeeded; its CPU_OFFs */
} __attribute__((aligned(64)));
static struct cpu_state cpus[MAX_FUZZ_CPUS];

static uint64_t next(uint64_t *s) /* xorshift64 */
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t mix(uint64_t z) /* splitmix64's finaliser: seeds from small numbers */
{
    z += 0x9e3779b97f4a7c15UL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
    z ^= z >> 31;
    return z ? z : 1;
}

static const uint32_t real_ids[] = {
    /* PSCI (DEN0022), 32- and 64-bit, served or not */
    0x84000000, 0x84000001, 0xc4000001, 0x84000003, 0xc4000003, 0x84000004, 0xc4000004,
    0x84000005, 0xc4000005, 0x84000006, 0x84000007, 0xc4000007, 0x8400000a, 0x8400000d,
    0xc400000d, 0x8400000f, 0x84000010, 0xc4000010, 0x84000011, 0xc4000011, 0x84000013,
    0x84000014, 0xc4000014, 0x8400001f,
    /* SMCCC arch (DEN0028) */
    0x80000000, 0x80000001, 0x80000002, 0x80008000, 0x80007fff, 0x80003fff, 0x8000ff00,
    0x8000ff01, 0x8000ff03,
    /* TRNG (DEN0098) */
    0x84000050, 0x84000051, 0x84000052, 0x84000053, 0xc4000053, 0x84000054,
    /* PV time (DEN0057) */
    0xc5000020, 0xc5000021, 0xc5000022, 0x85000020,
    /* vendor-specific hypervisor range: bitmap, PTP, async-pf, general queries */
    0x86000000, 0xc6000000, 0x86000001, 0x8600007e, 0x8600007e, 0x8600007e, 0x8600ff00,
    0x8600ff01, 0x8600ff03, 0x86000002, 0x8600007f,
};
#define NREAL (sizeof(real_ids) / sizeof(real_ids[0]))

static int ends_run(uint32_t fid)
{
    uint32_t base = fid & ~0x40000000u;
    switch (base) {
    case 0x84000002: /* CPU_OFF: ends the caller's run (secondaries end with their own) */
    case 0x84000008: /* SYSTEM_OFF */
    case 0x84000009: /* SYSTEM_RESET */
    case 0x84000012: /* SYSTEM_RESET2 */
    case 0x8400000e: /* SYSTEM_SUSPEND */
    case 0x8400000b: /* CPU_FREEZE */
    case 0x8400000c: /* CPU_DEFAULT_SUSPEND */
        return 1;
    }
    return 0;
}

static uint64_t wild_address(uint64_t *s)
{
    uint64_t r = next(s);
    switch (r % 12) {
    case 0: return 0;
    case 1: return ~0UL;
    case 2: return ram_end - (r >> 8) % 72;  /* straddles the end of RAM */
    case 3: return ram_end + (r >> 8) % 0x2000;
    case 4: return ram_base - 8 + (r >> 8) % 16;
    case 5: return 0x09000000; /* the UART */
    case 6: return (uint64_t)scratch + (r >> 8) % 4096;
    case 7: return (uint64_t)scratch + ((r >> 8) % 64) * 64;
    case 8: return 1UL << (32 + (r >> 8) % 32);
    case 9: return r | 0xffff000000000000UL;
    case 10: return ram_base + (ram_end - ram_base) * 2 + ((r >> 8) & ~0xfffUL) % 0x100000;
    default: return next(s);
    }
}

static uint64_t random_arg(uint64_t *s)
{
    uint64_t r = next(s);
    switch (r % 8) {
    case 0: return (r >> 8) % 8;
    case 1: return ~0UL;
    case 2: return env.mpidr[(r >> 8) % (uint64_t)env.ncpus];
    case 3: return (uint32_t)(r >> 8);
    case 4: case 5: return wild_address(s);
    default: return next(s);
    }
}

static int cpu_of_mpidr(uint64_t target)
{
    for (int i = 0; i < env.ncpus && i < MAX_FUZZ_CPUS; i++)
        if (env.mpidr[i] == target)
            return i;
    return -1;
}

/* CPU_ON's arguments. A storm starts a real secondary at secondary_entry with its own index;
 * any other CPU_ON gets random arguments, and if they name a real CPU an entry the host must
 * refuse (unaligned, outside RAM, a device), so only storms start CPUs. */
static void cpu_on_args(uint64_t *s, uint32_t fid, uint64_t *in, int storm)
{
    uint64_t r = next(s);
    uint64_t target = storm && env.ncpus > 1 ? env.mpidr[1 + (r >> 8) % (uint64_t)(env.ncpus - 1)]
                                             : random_arg(s);
    uint64_t narrowed = fid & 0x40000000u ? target : (uint32_t)target;
    int cpu = cpu_of_mpidr(narrowed);
    uint64_t entry = (uint64_t)secondary_entry;
    if (!storm) {
        switch ((r >> 16) % 6) {
        case 0: entry += 2; break;                   /* unaligned */
        case 1: entry = ram_end + ((r >> 24) & ~3UL) % 0x10000; break;
        case 2: entry = 0x09000000; break;           /* device */
        case 3: entry = 0; break;                    /* below RAM */
        case 4: entry = (r | 0xff00000000000000UL) & ~3UL; break;
        default: entry = wild_address(s); break;
        }
    }
    uint64_t seen = fid & 0x40000000u ? entry : (uint32_t)entry; /* SMC32 narrows it */
    if (cpu >= 0 && seen != (uint64_t)secondary_entry && seen % 4 == 0 && seen >= ram_base &&
        seen < ram_end)
        entry = (uint64_t)secondary_entry + 2; /* would run garbage: make it unaligned */
    in[1] = target;
    in[2] = entry;
    in[3] = cpu >= 0 ? (uint64_t)cpu : next(s);
}

static uint64_t pick_fid(uint64_t *s, int boot_cpu)
{
    for (;;) {
        uint64_t r = next(s);
        uint32_t fid;
        unsigned w = r % 256;
        if (w < 144)
            fid = real_ids[(r >> 8) % NREAL];
        else if (w < 160 && boot_cpu && (r >> 40) % STORM_RARITY == 0)
            return (r >> 8) & 1 ? STORM_64 : STORM_32; /* CPU_ON storm (flagged) */
        else if (w < 160)
            fid = (r >> 8) & 1 ? 0xc4000003u : 0x84000003u; /* CPU_ON, refused */
        else if (w < 208) /* a random number in a random owner range, every call type */
            fid = (uint32_t)((r >> 8) & 0xc0000000u) | (uint32_t)((r >> 16) % 64) << 24 |
                  (uint32_t)((r >> 24) & 0xffff);
        else if (w < 224) /* PSCI's range, numbers just past the defined ones */
            fid = 0x84000000u | (uint32_t)((r >> 8) & 0x400000ffu);
        else
            fid = (uint32_t)(r >> 16);
        if (!boot_cpu && (fid & ~0x40000000u) == 0x84000003u)
            continue; /* secondaries do not start others: storms stay bounded */
        if (!ends_run(fid))
            return fid;
    }
}

static void wait_off(uint64_t mpidr)
{
    while (psci_affinity_info(&env, mpidr, 0) != AFFINITY_OFF)
        __asm__ volatile("wfe");
}

/* WFE lets the scheduler run the secondary (polling AFFINITY_INFO alone would spin for a
 * whole time slice); the secondary's SEV before CPU_OFF ends the wait. */
static void wait_finished(int cpu)
{
    while (cpus[cpu].finished != cpus[cpu].accepted)
        __asm__ volatile("wfe" ::: "memory");
    wait_off(env.mpidr[cpu]);
}

static void one_call(struct cpu_state *c, int boot_cpu)
{
    uint64_t *s = &c->rng;
    struct fz_regs *regs = &c->regs;
    uint64_t picked = pick_fid(s, boot_cpu);
    uint32_t fid = (uint32_t)picked;
    int storm = picked >> 32 != 0;
    uint64_t r = next(s);
    regs->in[0] = r % 8 == 0 ? (r & 0xffffffff00000000UL) | fid : fid; /* W0 only counts */
    for (int i = 1; i < 31; i++)
        regs->in[i] = i <= 7 ? random_arg(s) : mix(r + (uint64_t)i);
    if ((fid & ~0x40000000u) == 0x84000003u)
        cpu_on_args(s, fid, regs->in, storm);
    else if (fid == 0x8600007eu && (r >> 8) % 2)
        regs->in[1] = (r >> 9) % 8; /* async-pf sub-functions, ENABLE with a wild address */
    regs->sp_before = regs->sp_after = 0;

    unsigned v = (r >> 12) % 16;
    if (env.conduit == CONDUIT_SMC)
        v < 13 ? fz_smc0(regs) : fz_smc1(regs);
    else if (v < 13)
        fz_hvc0(regs);
    else if (v == 13)
        fz_hvc1(regs);
    else if (v == 14)
        fz_hvc4b56(regs);
    else
        fz_hvcffff(regs);

    int bad = regs->sp_after != regs->sp_before;
    for (int i = check_low ? 4 : 18; i < 31; i++)
        bad |= regs->out[i] != regs->in[i];
    if (bad) {
        c->violations++;
        if (c->violations <= 5)
            kprintf("fuzz: violation: call 0x%08x changed a preserved register\n", fid);
    }
    /* TRNG entropy is the host's true randomness, never replayable (services/trng.py):
     * only its status counts */
    int hashed = (fid == 0x84000053u || fid == 0xc4000053u) && regs->out[0] == 0 ? 1 : 4;
    for (int i = 0; i < hashed; i++) {
        uint64_t x = regs->out[i];
        for (int b = 0; b < 8; b++) {
            c->hash ^= (x >> (8 * b)) & 0xff;
            c->hash *= 0x100000001b3UL;
        }
    }
    c->calls++;
    if (boot_cpu && (fid & ~0x40000000u) == 0x84000003u && regs->out[0] == 0) {
        uint64_t target = fid & 0x40000000u ? regs->in[1] : (uint32_t)regs->in[1];
        int cpu = cpu_of_mpidr(target);
        if (cpu > 0) { /* let it finish: whether a CPU that was just started is still
                        * ON_PENDING depends on the host's threads, not on the seed */
            cpus[cpu].accepted++;
            wait_finished(cpu);
        }
    }
}

void guest_main(const void *fdt)
{
    const char *args = fdt_bootargs(fdt);
    seed = bootarg_uint(args, "seed", 1);
    uint64_t calls = bootarg_uint(args, "calls", 1000);
    int mem = fdt_path(fdt, "/memory@40000000");
    uint64_t base, size;
    if (mem >= 0 && fdt_reg(fdt, 0, mem, 0, &base, &size) == 0) {
        ram_base = base;
        ram_end = base + size;
    }
    pv_discover(fdt, &env);
    if (env.conduit == CONDUIT_NONE || env.hypervisor == HYP_UNKNOWN) {
        kprintf("fuzz: needs PSCI and a known hypervisor (unknown IDs may trap elsewhere)\n");
        return;
    }
    check_low = env.smccc_version >= SMCCC_VERSION_1_1;
    struct cpu_state *c = &cpus[0];
    c->rng = mix(seed);
    c->hash = 0xcbf29ce484222325UL;
    for (uint64_t i = 0; i < calls; i++)
        one_call(c, 1);
    for (int i = 1; i < env.ncpus && i < MAX_FUZZ_CPUS; i++)
        wait_finished(i);
    uint64_t secondary_calls = 0, violations = c->violations, starts = 0;
    for (int i = 1; i < MAX_FUZZ_CPUS; i++) {
        secondary_calls += cpus[i].calls;
        violations += cpus[i].violations;
        starts += cpus[i].starts;
    }
    kprintf("fuzz: arch=arm64 seed=%lu calls=%lu secondary_calls=%lu cpu_on=%lu violations=%lu "
            "hash=0x%016lx\n",
            seed, c->calls, secondary_calls, starts, violations, c->hash);
    psci_system_off(&env);
}

void guest_secondary(uint64_t context)
{
    if (context >= MAX_FUZZ_CPUS)
        psci_cpu_off(&env);
    struct cpu_state *c = &cpus[context];
    c->starts++;
    c->rng = mix(seed ^ (context << 48) ^ c->starts);
    c->hash = 0;
    uint64_t n = 1 + next(&c->rng) % SECONDARY_CALLS;
    for (uint64_t i = 0; i < n; i++)
        one_call(c, 0);
    __asm__ volatile("dmb ish" ::: "memory");
    c->finished++;
    __asm__ volatile("dsb ish; sev" ::: "memory");
    psci_cpu_off(&env);
}
