/* Stolen time (Arm DEN0057) and the generic-timer counter.
 *
 * Discovery is Linux's: SMCCC >= 1.1, ARCH_FEATURES(PV_TIME_FEATURES) == 0, then
 * PV_TIME_FEATURES(PV_TIME_ST) == 0, then PV_TIME_ST on each CPU for its own record. */
#ifndef PVKIT_PVTIME_H
#define PVKIT_PVTIME_H
#include <pvkit/discovery.h>
#include <pvkit/gen/stolen-time.h> /* PV_TIME_FEATURES, PV_TIME_ST */

struct pvtime_record {
    uint32_t revision;   /* 0 */
    uint32_t attributes; /* 0 */
    uint64_t stolen_ns;  /* written by the hypervisor, one 64-bit store at a time */
    uint8_t padding[48];
};

/* 1 when the hypervisor advertises PV_TIME_ST; issues only calls discovery proved safe. */
int pvtime_available(const struct pv_env *env);
/* PV_TIME_ST for the calling CPU: its record, or 0 with *err set to the SMCCC answer. */
volatile struct pvtime_record *pvtime_register(const struct pv_env *env, int64_t *err);

static inline uint64_t pvtime_stolen(volatile struct pvtime_record *r)
{
    return r->stolen_ns; /* one aligned 64-bit load: never a torn value */
}

/* The virtual counter in nanoseconds (CNTVCT_EL0 scaled by CNTFRQ_EL0). */
static inline uint64_t counter_ns(void)
{
    uint64_t cnt, frq;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(cnt));
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(frq));
    if (frq == 1000000000u)
        return cnt;
    return cnt / frq * 1000000000u + cnt % frq * 1000000000u / frq; /* no 128-bit divide */
}
#endif
