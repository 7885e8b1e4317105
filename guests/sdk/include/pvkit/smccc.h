/* SMCCC call helpers (DEN0028): the function ID in w0, arguments x1..x3, results x0..x3. */
#ifndef PVKIT_SMCCC_H
#define PVKIT_SMCCC_H
#include <pvkit/types.h>

enum pv_conduit { CONDUIT_NONE = 0, CONDUIT_HVC, CONDUIT_SMC };

struct smccc_res {
    uint64_t a0, a1, a2, a3;
};

#define SMCCC_VERSION 0x80000000u
#define SMCCC_ARCH_FEATURES 0x80000001u
#define SMCCC_RET_NOT_SUPPORTED (-1)
#define SMCCC_VERSION_1_1 0x10001u
#define VENDOR_HYP_CALL_UID 0x8600ff01u
#define VENDOR_HYP_FEATURES 0x86000000u

/* Issue one call over `conduit`; CONDUIT_NONE answers NOT_SUPPORTED without trapping. */
struct smccc_res smccc_call(enum pv_conduit conduit, uint32_t fid, uint64_t a1, uint64_t a2,
                            uint64_t a3);
#endif
