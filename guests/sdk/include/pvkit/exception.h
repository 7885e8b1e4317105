/* Exceptions: the frame the vectors save, handler registration, EL0 tasks, IRQ masking.
 *
 * A guest that registers nothing keeps the SDK's original behaviour: every exception is
 * reported on the console ("guest exception: ...") and the CPU halts. */
#ifndef PVKIT_EXCEPTION_H
#define PVKIT_EXCEPTION_H
#include <pvkit/types.h>

/* Saved by every vector entry (vectors.S); a handler may change any field before returning. */
struct exc_frame {
    uint64_t x[31];  /* x0..x30 of the interrupted context */
    uint64_t sp_el0; /* the EL0 stack pointer (the interrupted sp when it came from EL0) */
    uint64_t elr, spsr, esr, far;
    uint64_t vector; /* 0..15: VEC_* + EXC_* */
    uint64_t pad;
};

/* Vector groups (vector / 4) and kinds (vector % 4). */
enum { VEC_EL1_SP0 = 0, VEC_EL1_SPX = 4, VEC_EL0_A64 = 8, VEC_EL0_A32 = 12 };
enum { EXC_SYNC = 0, EXC_IRQ = 1, EXC_FIQ = 2, EXC_SERROR = 3 };

/* ESR_ELx fields and the exception classes the conformance guests use (Arm ARM D17.2.40). */
#define ESR_EC(esr) (((esr) >> 26) & 0x3f)
#define ESR_IL (1UL << 25)
#define ESR_ISS(esr) ((esr) & 0x1ffffff)
#define EC_UNKNOWN 0x00
#define EC_SVC64 0x15
#define EC_IABT_LOWER 0x20
#define EC_IABT_CURRENT 0x21
#define EC_DABT_LOWER 0x24
#define EC_DABT_CURRENT 0x25
#define EC_BRK64 0x3c
/* Data/instruction abort ISS: WnR and the fault status codes (DFSC/IFSC). */
#define ISS_WNR (1UL << 6)
#define FSC_TRANSLATION(level) (0x04 + (level))
#define FSC_ACCESS_FLAG(level) (0x08 + (level))
#define FSC_PERMISSION(level) (0x0c + (level))
#define FSC_ALIGNMENT 0x21
/* SPSR_EL1.M[3:0] */
#define SPSR_MODE(spsr) ((spsr) & 0xf)
#define SPSR_EL0T 0x0
#define SPSR_EL1H 0x5

/* A synchronous handler returns 1 when it handled the exception (the frame is restored and
 * the CPU returns to frame->elr), 0 to fall back to report-and-halt. */
typedef int (*exc_sync_handler_t)(struct exc_frame *frame);
typedef void (*exc_irq_handler_t)(struct exc_frame *frame);
/* Handlers are shared by every CPU; pass 0 to restore the default. */
void exc_set_sync_handler(exc_sync_handler_t handler);
void exc_set_irq_handler(exc_irq_handler_t handler);
/* Called by the vectors. */
void exception_dispatch(struct exc_frame *frame);
/* The default: "guest exception: <kind> <origin>, ESR ..., ELR ..., FAR ..." (console.c). */
void exception_report(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far);

/* Run entry(arg) at EL0 with stack pointer `sp` (16-byte aligned, EL0-accessible memory) until
 * a handler calls el0_return(value) for an exception from that task; returns the value. */
uint64_t el0_run(uint64_t entry, uint64_t arg, uint64_t sp);
void el0_return(uint64_t value) __attribute__((noreturn));

static inline void irq_enable(void) { __asm__ volatile("msr daifclr, #2" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("msr daifset, #2" ::: "memory"); }
static inline void wfi(void) { __asm__ volatile("dsb sy; wfi" ::: "memory"); }
/* Call with IRQs masked: sleep until an interrupt is pending (WFI wakes on a masked one too),
 * take it, and mask again. Checking a flag then calling this loses no wake-up. */
static inline void irq_wait(void)
{
    __asm__ volatile("dsb sy; wfi; msr daifclr, #2; isb; msr daifset, #2" ::: "memory");
}
#endif
