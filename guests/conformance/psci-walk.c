/* psci-walk: issue tables of calls and print `<section> <label> = <x0>` lines for the host to check.
 *
 * Section "spec" holds calls whose answer the PSCI spec fixes and that any PSCI 1.x
 * hypervisor serves (QEMU included), so the host can compare implementations line by line.
 * Section "hostile" (only once a known hypervisor UID was discovered, because elsewhere an
 * unknown ID may trap) throws garbage at every entry point. */
#include <pvkit/console.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

#define ONES 0xffffffffffffffffUL
#define NO_SUCH_CPU 0xfeUL

struct row {
    const char *label;
    uint32_t fid;
    uint64_t a1, a2, a3;
};

static struct pv_env env;
static volatile uint64_t secondary_seen;

static void walk(const char *section, const struct row *rows, int n)
{
    for (int i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        int64_t ret = (int64_t)smccc_call(env.conduit, r->fid, r->a1, r->a2, r->a3).a0;
        kprintf("%s %s = %ld\n", section, r->label, ret);
    }
}

static void wait_off(uint64_t mpidr)
{
    while (psci_affinity_info(&env, mpidr, 0) != AFFINITY_OFF)
        ;
}

static void hostile_section(uint64_t self, uint64_t other)
{
    const uint64_t entry = (uint64_t)secondary_entry;
    const struct row rows[] = {
        {"cpu_on_all_ones", PSCI_CPU_ON_64, ONES, ONES, ONES},
        {"cpu_on_entry_zero", PSCI_CPU_ON_64, other, 0, 0},
        {"cpu_on_entry_unaligned", PSCI_CPU_ON_64, other, entry + 2, 0},
        {"cpu_on_entry_above_ram", PSCI_CPU_ON_64, other, 0xfffffffffffff000UL, 0},
        {"cpu_on_entry_device", PSCI_CPU_ON_64, other, 0x09000000, 0},
        {"cpu_on32_high_bits_target", 0x84000003u, 0xffffffff00000000UL | NO_SUCH_CPU, entry, 0},
        {"cpu_on_stray_mpidr_bits", PSCI_CPU_ON_64, other | (1UL << 31), entry, 0},
        {"affinity_all_ones", PSCI_AFFINITY_INFO_64, ONES, ONES, 0},
        {"affinity_level4", PSCI_AFFINITY_INFO_64, self, 4, 0},
        {"affinity_level1_cluster", PSCI_AFFINITY_INFO_64, self, 1, 0},
        {"cpu_suspend_garbage", PSCI_CPU_SUSPEND_64, ONES, ONES, ONES},
        {"reset2_reserved_type", 0x84000012u, 0x1234, ONES, 0},
        {"features_all_ones", PSCI_FEATURES, ONES, 0, 0},
        {"features_reset2", PSCI_FEATURES, 0x84000012u, 0, 0},
        {"migrate", 0xc4000005u, other, 0, 0},
        {"migrate_info_up_cpu", 0x84000007u, 0, 0, 0},
        {"arch_features_all_ones", SMCCC_ARCH_FEATURES, ONES, 0, 0},
        {"arch_features_psci_version", SMCCC_ARCH_FEATURES, PSCI_VERSION, 0, 0},
        {"arch_features_wa1", SMCCC_ARCH_FEATURES, 0x80008000u, 0, 0},
        {"arch_features_wa2", SMCCC_ARCH_FEATURES, 0x80007fffu, 0, 0},
        {"arch_features_wa3", SMCCC_ARCH_FEATURES, 0x80003fffu, 0, 0},
        {"arch_features_vendor_uid", SMCCC_ARCH_FEATURES, VENDOR_HYP_CALL_UID, 0, 0},
        {"arch_unknown", 0x8000feedu, ONES, ONES, ONES},
        {"psci_unknown_number", 0x8400001fu, ONES, 0, 0},
        {"yielding_psci_version", 0x04000000u, 0, 0, 0},
        {"mbz_bits_psci_version", 0x84010000u, 0, 0, 0},
        {"vendor_unknown", 0x8600feedu, ONES, ONES, ONES},
        {"vendor_features_64", 0xc6000000u, 0, 0, 0},
    };
    walk("hostile", rows, sizeof(rows) / sizeof(rows[0]));

    /* An unknown ID in every owner range, fast and yielding, 32- and 64-bit. */
    int bad = 0;
    for (uint32_t owner = 0; owner < 64; owner++) {
        for (uint32_t kind = 0; kind < 4; kind++) {
            uint32_t fid = (kind & 1 ? 0x80000000u : 0) | (kind & 2 ? 0x40000000u : 0) |
                           owner << 24 | 0xbeef;
            int64_t ret = (int64_t)smccc_call(env.conduit, fid, ONES, ONES, ONES).a0;
            if (ret != SMCCC_RET_NOT_SUPPORTED) {
                kprintf("hostile unknown 0x%08x = %ld\n", fid, ret);
                bad++;
            }
        }
    }
    kprintf("hostile unknown_ids_not_supported = %d\n", 256 - bad);

    /* A non-zero HVC immediate is not an SMCCC call (demultiplexing is on w0 only). */
    register uint64_t x0 __asm__("x0") = PSCI_VERSION;
    if (env.conduit == CONDUIT_HVC)
        __asm__ volatile("hvc #1" : "+r"(x0) : : "x1", "x2", "x3", "memory");
    else
        __asm__ volatile("smc #1" : "+r"(x0) : : "x1", "x2", "x3", "memory");
    kprintf("hostile nonzero_immediate = %ld\n", (int64_t)x0);
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    if (env.conduit == CONDUIT_NONE || env.ncpus < 2) {
        kprintf("psci-walk needs PSCI and two CPUs\n");
        return;
    }
    uint64_t self = read_mpidr() & 0xff00ffffffUL;
    uint64_t other = env.mpidr[0] == self ? env.mpidr[1] : env.mpidr[0];
    kprintf("info psci_version = 0x%x\n", env.psci_version);
    kprintf("info hypervisor = %s\n", pv_hypervisor_name(env.hypervisor));

    const struct row spec[] = {
        {"features_psci_version", PSCI_FEATURES, PSCI_VERSION, 0, 0},
        {"features_cpu_suspend", PSCI_FEATURES, 0x84000001u, 0, 0},
        {"features_cpu_suspend64", PSCI_FEATURES, PSCI_CPU_SUSPEND_64, 0, 0},
        {"features_cpu_off", PSCI_FEATURES, PSCI_CPU_OFF, 0, 0},
        {"features_cpu_on", PSCI_FEATURES, 0x84000003u, 0, 0},
        {"features_cpu_on64", PSCI_FEATURES, PSCI_CPU_ON_64, 0, 0},
        {"features_affinity_info", PSCI_FEATURES, 0x84000004u, 0, 0},
        {"features_affinity_info64", PSCI_FEATURES, PSCI_AFFINITY_INFO_64, 0, 0},
        {"features_system_off", PSCI_FEATURES, PSCI_SYSTEM_OFF, 0, 0},
        {"features_system_reset", PSCI_FEATURES, PSCI_SYSTEM_RESET, 0, 0},
        {"features_features", PSCI_FEATURES, PSCI_FEATURES, 0, 0},
        {"features_not_psci", PSCI_FEATURES, 0xc2000000u, 0, 0},
        {"migrate_info_type", PSCI_MIGRATE_INFO_TYPE, 0, 0, 0},
        {"affinity_self", PSCI_AFFINITY_INFO_64, self, 0, 0},
        {"affinity_other_before_on", PSCI_AFFINITY_INFO_64, other, 0, 0},
        {"affinity_no_such_cpu", PSCI_AFFINITY_INFO_64, NO_SUCH_CPU, 0, 0},
        {"cpu_on_self", PSCI_CPU_ON_64, self, (uint64_t)secondary_entry, 0},
        {"cpu_on_no_such_cpu", PSCI_CPU_ON_64, NO_SUCH_CPU, (uint64_t)secondary_entry, 0},
        {"cpu_on_other", PSCI_CPU_ON_64, other, (uint64_t)secondary_entry, 1},
    };
    walk("spec", spec, sizeof(spec) / sizeof(spec[0]));
    while (secondary_seen != 1) /* QEMU 7.2 may say OFF until the CPU really starts */
        ;
    wait_off(other);
    kprintf("spec secondary_ran = %lu\n", secondary_seen);
    kprintf("spec affinity_other_after_off = %ld\n", psci_affinity_info(&env, other, 0));

    if (env.hypervisor != HYP_UNKNOWN)
        hostile_section(self, other);
    kprintf("done\n");
    psci_system_off(&env);
}

void guest_secondary(uint64_t context)
{
    secondary_seen = context;
    psci_cpu_off(&env);
}
