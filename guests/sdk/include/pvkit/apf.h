/* Asynchronous page faults on arm64 (docs/services/async-pf.md): one vendor-specific
 * hypervisor call, function number 126, whose sub-function is in W1.
 *
 * Discovery (apf_probe) is the SDK's safe order: SMCCC >= 1.1, a known vendor Call UID (KVM's
 * or pvkit's), bit 126 of the vendor features bitmap; only then VERSION, SLOTS and IRQ. After
 * that the guest zeroes its per-vCPU block, enables the PPI, and calls apf_enable(). For each
 * notification it reads and clears the block (apf_take), calls apf_irq_ack(), then EOIs. */
#ifndef PVKIT_APF_H
#define PVKIT_APF_H
#include <pvkit/discovery.h>
#include <pvkit/gen/async-pf.h> /* ASYNC_PF and its bitmap bit, from pvkit's definition */

#define APF_FUNC ASYNC_PF                    /* fast SMC32/HVC32 call, vendor-specific range */
#define APF_FUNC_NUMBER ASYNC_PF_FEATURE_BIT /* its bit in the vendor features bitmap */

/* Sub-functions (W1). */
#define APF_VERSION 0
#define APF_SLOTS 1
#define APF_SDEI 2 /* NOT_SUPPORTED: both notifications come on the PPI */
#define APF_IRQ 3
#define APF_ENABLE 4
#define APF_IRQ_ACK 5

/* VERSION's X1: bits 23:16 major, 15:8 minor, 7:0 revision; bits 63:24 zero. */
#define APF_VERSION_MAJOR(v) (((v) >> 16) & 0xff)
#define APF_VERSION_MINOR(v) (((v) >> 8) & 0xff)
#define APF_VERSION_REVISION(v) ((v) & 0xff)

/* ENABLE's control word: the block's guest-physical address (bits 63:6) | these flags. */
#define APF_ENABLED (1u << 0)
#define APF_SEND_ALWAYS (1u << 1) /* also tell about pages touched at EL1 */

/* SMCCC status codes the call returns besides 0 and NOT_SUPPORTED (-1). */
#define APF_RET_NOT_REQUIRED (-2)
#define APF_RET_INVALID_PARAMETERS (-3)

/* The block's reason, and the token of "page ready" that means every waiter. */
#define APF_REASON_NOT_PRESENT 1
#define APF_REASON_READY 2
#define APF_TOKEN_WAKE_ALL 0xffffffffu

/* One per vCPU, zeroed before ENABLE; pvkit writes it, the guest reads and clears it. */
struct apf_block {
    uint32_t reason;
    uint32_t token;
    uint32_t reserved[14];
} __attribute__((aligned(64)));
_Static_assert(sizeof(struct apf_block) == 64, "the block is 64 bytes");

struct apf_info {
    uint64_t version; /* VERSION's X1 */
    uint32_t slots;   /* "page not present" tokens a vCPU may have outstanding */
    uint32_t irq;     /* the PPI (INTID 16..31) signalling both notifications */
};

/* 0 (NULL) with `info` filled when async page faults may be enabled, else a short reason why
 * not. Issues only calls that discovery (`env`, from pv_discover) proved safe: never traps. */
const char *apf_probe(const struct pv_env *env, struct apf_info *info);
/* ENABLE for the calling vCPU with `block` (64-byte aligned, zeroed; MMU off or identity
 * mapped: its address is taken as guest-physical) and APF_* flags: the SMCCC status. */
int64_t apf_enable(const struct pv_env *env, volatile struct apf_block *block, uint32_t flags);
/* ENABLE with bit 0 clear: never with tasks parked (their tokens would never complete). */
int64_t apf_disable(const struct pv_env *env);
/* IRQ_ACK: the block was read; pvkit lowers the PPI and may send the next notification. */
int64_t apf_irq_ack(const struct pv_env *env);

/* Read the notification in `block` and clear it: its reason (0 if none), token in *token. */
static inline uint32_t apf_take(volatile struct apf_block *block, uint32_t *token)
{
    uint32_t reason = block->reason;
    *token = block->token;
    block->reason = 0;
    block->token = 0;
    return reason;
}
#endif
