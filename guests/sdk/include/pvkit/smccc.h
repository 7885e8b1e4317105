/* SMCCC call helpers (DEN0028): the function ID in w0, arguments x1..x3, results x0..x3. */
#ifndef PVKIT_SMCCC_H
#define PVKIT_SMCCC_H
#include <pvkit/types.h>
/* SMCCC_VERSION, SMCCC_ARCH_FEATURES, VENDOR_HYP_CALL_UID, VENDOR_HYP_FEATURES, the return
 * codes and the vendor UIDs: generated from pvkit's definitions (`make -C guests headers`). */
#include <pvkit/gen/smccc-arch.h>
#include <pvkit/gen/vendor-hyp.h>

enum pv_conduit { CONDUIT_NONE = 0, CONDUIT_HVC, CONDUIT_SMC };

struct smccc_res {
    uint64_t a0, a1, a2, a3;
};

#define SMCCC_VERSION_1_1 0x10001u

/* Issue one call over `conduit`; CONDUIT_NONE answers NOT_SUPPORTED without trapping. */
struct smccc_res smccc_call(enum pv_conduit conduit, uint32_t fid, uint64_t a1, uint64_t a2,
                            uint64_t a3);
#endif
