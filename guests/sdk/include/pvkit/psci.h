/* PSCI wrappers (DEN0022). Each answers NOT_SUPPORTED without trapping unless PSCI was discovered. */
#ifndef PVKIT_PSCI_H
#define PVKIT_PSCI_H
#include <pvkit/discovery.h>
#include <pvkit/gen/psci.h> /* the function IDs, generated from pvkit's definition */

enum psci_ret {
    PSCI_SUCCESS = 0,
    PSCI_NOT_SUPPORTED = -1,
    PSCI_INVALID_PARAMETERS = -2,
    PSCI_DENIED = -3,
    PSCI_ALREADY_ON = -4,
    PSCI_ON_PENDING = -5,
    PSCI_INTERNAL_FAILURE = -6,
    PSCI_NOT_PRESENT = -7,
    PSCI_DISABLED = -8,
    PSCI_INVALID_ADDRESS = -9,
};
enum psci_affinity { AFFINITY_ON = 0, AFFINITY_OFF = 1, AFFINITY_ON_PENDING = 2 };

int64_t psci_call(const struct pv_env *env, uint32_t fid, uint64_t a1, uint64_t a2, uint64_t a3);
int64_t psci_cpu_on(const struct pv_env *env, uint64_t mpidr, void (*entry)(void), uint64_t ctx);
int64_t psci_affinity_info(const struct pv_env *env, uint64_t mpidr, uint32_t level);
int64_t psci_cpu_off(const struct pv_env *env);
int64_t psci_system_off(const struct pv_env *env);
int64_t psci_system_reset(const struct pv_env *env);
#endif
