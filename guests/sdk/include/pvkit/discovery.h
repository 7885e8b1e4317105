/* Safe discovery: learn what the hypervisor offers before issuing any call that needs it.
 *
 * Order (the one Linux uses): the device tree names the PSCI conduit; PSCI_VERSION;
 * PSCI_FEATURES(SMCCC_VERSION) before SMCCC_VERSION; SMCCC >= 1.1 before the vendor Call
 * UID; a known UID before the vendor features bitmap; a set bit before a vendor call. */
#ifndef PVKIT_DISCOVERY_H
#define PVKIT_DISCOVERY_H
#include <pvkit/smccc.h>

enum pv_hypervisor { HYP_UNKNOWN = 0, HYP_KVM, HYP_PVKIT };

struct pv_env {
    enum pv_conduit conduit;
    uint32_t psci_version;  /* 0: no PSCI 0.2+ in the device tree */
    uint32_t smccc_version; /* 0x10000 when only SMCCC 1.0 could be inferred */
    enum pv_hypervisor hypervisor;
    uint32_t uid[4];
    uint32_t vendor_features[4];
    int has_hypervisor_node;
    int ncpus;
    uint64_t mpidr[PVKIT_MAX_CPUS];
};

/* Fills `env` from the DTB at `fdt` and the calls it proves safe; never traps otherwise. */
void pv_discover(const void *fdt, struct pv_env *env);
const char *pv_hypervisor_name(enum pv_hypervisor h);
/* 1 when vendor function number `n` (0..127) was advertised. */
int pv_vendor_has(const struct pv_env *env, unsigned n);
/* A vendor-range call, issued only if discovered; else NOT_SUPPORTED without trapping. */
struct smccc_res pv_vendor_call(const struct pv_env *env, uint32_t fid, uint64_t a1, uint64_t a2,
                                uint64_t a3);
#endif
