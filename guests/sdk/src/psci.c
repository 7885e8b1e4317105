/* PSCI wrappers: 64-bit IDs where both exist, so MPIDRs and addresses are not truncated. */
#include <pvkit/psci.h>

int64_t psci_call(const struct pv_env *env, uint32_t fid, uint64_t a1, uint64_t a2, uint64_t a3)
{
    if (!env->psci_version)
        return PSCI_NOT_SUPPORTED;
    return (int64_t)smccc_call(env->conduit, fid, a1, a2, a3).a0;
}

int64_t psci_cpu_on(const struct pv_env *env, uint64_t mpidr, void (*entry)(void), uint64_t ctx)
{
    return psci_call(env, PSCI_CPU_ON_64, mpidr, (uint64_t)entry, ctx);
}

int64_t psci_affinity_info(const struct pv_env *env, uint64_t mpidr, uint32_t level)
{
    return psci_call(env, PSCI_AFFINITY_INFO_64, mpidr, level, 0);
}

int64_t psci_cpu_off(const struct pv_env *env) { return psci_call(env, PSCI_CPU_OFF, 0, 0, 0); }

int64_t psci_system_off(const struct pv_env *env)
{
    return psci_call(env, PSCI_SYSTEM_OFF, 0, 0, 0);
}

int64_t psci_system_reset(const struct pv_env *env)
{
    return psci_call(env, PSCI_SYSTEM_RESET, 0, 0, 0);
}
