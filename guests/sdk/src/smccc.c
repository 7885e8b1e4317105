/* SMCCC calls over HVC or SMC. x4..x17 are listed as clobbered: SMCCC 1.0 does not preserve them. */
#include <pvkit/smccc.h>

#define SMCCC_CLOBBERS                                                                           \
    "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17",  \
        "memory"

struct smccc_res smccc_call(enum pv_conduit conduit, uint32_t fid, uint64_t a1, uint64_t a2,
                            uint64_t a3)
{
    register uint64_t x0 __asm__("x0") = fid;
    register uint64_t x1 __asm__("x1") = a1;
    register uint64_t x2 __asm__("x2") = a2;
    register uint64_t x3 __asm__("x3") = a3;
    struct smccc_res res = {(uint64_t)SMCCC_RET_NOT_SUPPORTED, 0, 0, 0};
    if (conduit == CONDUIT_HVC)
        __asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : SMCCC_CLOBBERS);
    else if (conduit == CONDUIT_SMC)
        __asm__ volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : SMCCC_CLOBBERS);
    else
        return res;
    res.a0 = x0;
    res.a1 = x1;
    res.a2 = x2;
    res.a3 = x3;
    return res;
}
