/* Safe discovery (see discovery.h for the order and why each step guards the next). */
#include <pvkit/discovery.h>
#include <pvkit/fdt.h>
#include <pvkit/psci.h>

/* Call UIDs as the four words SMCCC returns them (KVM's, include/linux/arm-smccc.h; pvkit's own). */
static const uint32_t kvm_uid[4] = {VENDOR_HYP_UID_KVM_W0, VENDOR_HYP_UID_KVM_W1,
                                    VENDOR_HYP_UID_KVM_W2, VENDOR_HYP_UID_KVM_W3};
static const uint32_t pvkit_uid[4] = {VENDOR_HYP_UID_PVKIT_W0, VENDOR_HYP_UID_PVKIT_W1,
                                      VENDOR_HYP_UID_PVKIT_W2, VENDOR_HYP_UID_PVKIT_W3};

static int uid_is(const uint32_t *a, const uint32_t *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The 32-bit words W0..W3 of a result, as UIDs and bitmaps are returned. */
static void result_words(struct smccc_res r, uint32_t out[4])
{
    out[0] = (uint32_t)r.a0;
    out[1] = (uint32_t)r.a1;
    out[2] = (uint32_t)r.a2;
    out[3] = (uint32_t)r.a3;
}

static void read_cpus(const void *fdt, struct pv_env *env)
{
    int cpus = fdt_path(fdt, "/cpus");
    uint32_t len;
    const void *cells = fdt_prop(fdt, cpus, "#address-cells", &len);
    uint32_t ac = cells && len == 4 ? fdt_be32(cells) : 1;
    int child = -1;
    while ((child = fdt_next_child(fdt, cpus, child)) >= 0 && env->ncpus < PVKIT_MAX_CPUS) {
        if (!fdt_prop_has_string(fdt, child, "device_type", "cpu"))
            continue;
        const uint8_t *reg = fdt_prop(fdt, child, "reg", &len);
        if (!reg || len != 4 * ac || (ac != 1 && ac != 2))
            continue;
        uint64_t mpidr = fdt_be32(reg);
        if (ac == 2)
            mpidr = mpidr << 32 | fdt_be32(reg + 4);
        env->mpidr[env->ncpus++] = mpidr;
    }
}

static enum pv_conduit psci_conduit(const void *fdt)
{
    int psci = fdt_path(fdt, "/psci");
    if (psci < 0)
        return CONDUIT_NONE;
    /* PSCI_VERSION exists from 0.2 on; a 0.1-only node gives no safe first call. */
    if (!fdt_prop_has_string(fdt, psci, "compatible", "arm,psci-0.2") &&
        !fdt_prop_has_string(fdt, psci, "compatible", "arm,psci-1.0"))
        return CONDUIT_NONE;
    if (fdt_prop_has_string(fdt, psci, "method", "hvc"))
        return CONDUIT_HVC;
    if (fdt_prop_has_string(fdt, psci, "method", "smc"))
        return CONDUIT_SMC;
    return CONDUIT_NONE;
}

void pv_discover(const void *fdt, struct pv_env *env)
{
    *env = (struct pv_env){0};
    if (fdt_check(fdt) != 0)
        return;
    read_cpus(fdt, env);
    env->has_hypervisor_node = fdt_path(fdt, "/hypervisor") >= 0;
    env->conduit = psci_conduit(fdt);
    if (env->conduit == CONDUIT_NONE)
        return;

    int64_t v = (int64_t)smccc_call(env->conduit, PSCI_VERSION, 0, 0, 0).a0;
    if (v < 0)
        return;
    env->psci_version = (uint32_t)v;
    env->smccc_version = 0x10000;
    if (env->psci_version >= 0x10000 &&
        (int32_t)smccc_call(env->conduit, PSCI_FEATURES, SMCCC_VERSION, 0, 0).a0 == 0) {
        int32_t s = (int32_t)smccc_call(env->conduit, SMCCC_VERSION, 0, 0, 0).a0;
        if (s > 0)
            env->smccc_version = (uint32_t)s;
    }
    if (env->smccc_version < SMCCC_VERSION_1_1)
        return;

    result_words(smccc_call(env->conduit, VENDOR_HYP_CALL_UID, 0, 0, 0), env->uid);
    if (uid_is(env->uid, kvm_uid))
        env->hypervisor = HYP_KVM;
    else if (uid_is(env->uid, pvkit_uid))
        env->hypervisor = HYP_PVKIT;
    if (env->hypervisor == HYP_UNKNOWN)
        return;

    result_words(smccc_call(env->conduit, VENDOR_HYP_FEATURES, 0, 0, 0), env->vendor_features);
}

const char *pv_hypervisor_name(enum pv_hypervisor h)
{
    return h == HYP_KVM ? "KVM" : h == HYP_PVKIT ? "pvkit" : "unknown";
}

int pv_vendor_has(const struct pv_env *env, unsigned n)
{
    return env->hypervisor != HYP_UNKNOWN && n < 128 &&
           (env->vendor_features[n / 32] >> (n % 32)) & 1;
}

struct smccc_res pv_vendor_call(const struct pv_env *env, uint32_t fid, uint64_t a1, uint64_t a2,
                                uint64_t a3)
{
    struct smccc_res none = {(uint64_t)SMCCC_RET_NOT_SUPPORTED, 0, 0, 0};
    if (((fid >> 24) & 0x3f) != 6 || !pv_vendor_has(env, fid & 0xffff))
        return none;
    return smccc_call(env->conduit, fid, a1, a2, a3);
}
