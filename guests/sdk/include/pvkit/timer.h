/* Generic timer (Arm ARM D11): the EL1 virtual and physical timers and their PPIs. */
#ifndef PVKIT_TIMER_H
#define PVKIT_TIMER_H
#include <pvkit/types.h>

#define CNT_CTL_ENABLE (1u << 0)
#define CNT_CTL_IMASK (1u << 1)
#define CNT_CTL_ISTATUS (1u << 2)

/* INTIDs of the timers, from the "arm,armv8-timer" node (PPIs: DT number + 16). */
struct timer_irqs {
    uint32_t phys; /* EL1 physical timer: 30 on virt */
    uint32_t virt; /* virtual timer: 27 on virt */
};
/* 0 when the node was found; else -1 and the virt board's numbers. */
int timer_irqs_from_fdt(const void *fdt, struct timer_irqs *out);

#define TIMER_SYSREG_RW(name, reg)                                                               \
    static inline uint64_t name(void)                                                            \
    {                                                                                            \
        uint64_t v;                                                                              \
        __asm__ volatile("mrs %0, " #reg : "=r"(v));                                             \
        return v;                                                                                \
    }                                                                                            \
    static inline void name##_set(uint64_t v)                                                    \
    {                                                                                            \
        __asm__ volatile("msr " #reg ", %0; isb" : : "r"(v) : "memory");                         \
    }
TIMER_SYSREG_RW(cntv_ctl, cntv_ctl_el0)
TIMER_SYSREG_RW(cntv_cval, cntv_cval_el0)
TIMER_SYSREG_RW(cntv_tval_raw, cntv_tval_el0)
TIMER_SYSREG_RW(cntp_ctl, cntp_ctl_el0)
TIMER_SYSREG_RW(cntp_cval, cntp_cval_el0)
TIMER_SYSREG_RW(cntp_tval_raw, cntp_tval_el0)
#undef TIMER_SYSREG_RW

/* TVAL is a signed 32-bit view of CVAL - count; writing it sets CVAL = count + TVAL. */
static inline int32_t cntv_tval(void) { return (int32_t)cntv_tval_raw(); }
static inline int32_t cntp_tval(void) { return (int32_t)cntp_tval_raw(); }
static inline void cntv_tval_set(int32_t v) { cntv_tval_raw_set((uint64_t)(uint32_t)v); }
static inline void cntp_tval_set(int32_t v) { cntp_tval_raw_set((uint64_t)(uint32_t)v); }

static inline uint64_t cnt_freq(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(v));
    return v;
}

/* The counters; the isb keeps the read from being taken early. */
static inline uint64_t cntvct(void)
{
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
}

static inline uint64_t cntpct(void)
{
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntpct_el0" : "=r"(v) : : "memory");
    return v;
}

/* Bounded waits: a virtual-counter deadline `ms` milliseconds from now. */
static inline uint64_t deadline_after_ms(uint64_t ms) { return cntvct() + cnt_freq() / 1000 * ms; }
static inline int deadline_passed(uint64_t deadline) { return (int64_t)(cntvct() - deadline) >= 0; }
#endif
