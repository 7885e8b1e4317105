/* Exception vectors: every entry saves a full frame (struct exc_frame in pvkit/exception.h) on
 * SP_EL1 and calls exception_dispatch(), which runs the handler a guest registered or, for a
 * guest that registered none, reports the exception and halts (the SDK's original behaviour).
 * Returning restores every register of the interrupted context, EL0 or EL1, and ERETs. */
#include "asm.h"

#define FRAME_SIZE 304                  /* x0..x30, sp_el0, elr, spsr, esr, far, vector, pad */
#define F_X30 240
#define F_ELR 256
#define F_ESR 272
#define F_VECTOR 288

.macro  ventry n
        .balign 128
        sub     sp, sp, #FRAME_SIZE
        stp     x0, x1, [sp]
        mov     x0, #\n
        b       exc_entry
.endm

        .text
        .balign 2048
        .globl  vectors
vectors:                                /* 0-3 EL1 SP0, 4-7 EL1 SPx, 8-11 EL0 A64, 12-15 EL0 A32 */
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
        ventry  \n
        .endr

exc_entry:
        stp     x2, x3, [sp, #16]
        stp     x4, x5, [sp, #32]
        stp     x6, x7, [sp, #48]
        stp     x8, x9, [sp, #64]
        stp     x10, x11, [sp, #80]
        stp     x12, x13, [sp, #96]
        stp     x14, x15, [sp, #112]
        stp     x16, x17, [sp, #128]
        stp     x18, x19, [sp, #144]
        stp     x20, x21, [sp, #160]
        stp     x22, x23, [sp, #176]
        stp     x24, x25, [sp, #192]
        stp     x26, x27, [sp, #208]
        stp     x28, x29, [sp, #224]
        mrs     x1, sp_el0
        stp     x30, x1, [sp, #F_X30]
        mrs     x1, elr_el1
        mrs     x2, spsr_el1
        stp     x1, x2, [sp, #F_ELR]
        mrs     x1, esr_el1
        mrs     x2, far_el1
        stp     x1, x2, [sp, #F_ESR]
        stp     x0, xzr, [sp, #F_VECTOR]
        mov     x0, sp
        bl      exception_dispatch
        /* fall through */

/* Restore the frame at sp and return from the exception: the handler may have changed it. */
exc_restore:
        ldp     x1, x2, [sp, #F_ELR]
        msr     elr_el1, x1
        msr     spsr_el1, x2
        ldp     x30, x1, [sp, #F_X30]
        msr     sp_el0, x1
        ldp     x0, x1, [sp]
        ldp     x2, x3, [sp, #16]
        ldp     x4, x5, [sp, #32]
        ldp     x6, x7, [sp, #48]
        ldp     x8, x9, [sp, #64]
        ldp     x10, x11, [sp, #80]
        ldp     x12, x13, [sp, #96]
        ldp     x14, x15, [sp, #112]
        ldp     x16, x17, [sp, #128]
        ldp     x18, x19, [sp, #144]
        ldp     x20, x21, [sp, #160]
        ldp     x22, x23, [sp, #176]
        ldp     x24, x25, [sp, #192]
        ldp     x26, x27, [sp, #208]
        ldp     x28, x29, [sp, #224]
        add     sp, sp, #FRAME_SIZE
        eret

/* uint64_t el0_run(entry, arg, sp): run entry(arg) at EL0t on stack sp until a handler calls
 * el0_return(value); returns that value. The EL1 callee-saved state waits on this CPU's stack. */
        .globl  el0_run
el0_run:
        sub     sp, sp, #112
        stp     x19, x20, [sp]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        mrs     x3, daif
        str     x3, [sp, #96]
        mrs     x4, tpidr_el1
        adr_l   x5, el0_saved_sp
        mov     x6, sp
        str     x6, [x5, x4, lsl #3]
        sub     sp, sp, #FRAME_SIZE     /* a frame that "returns" to EL0 */
        mov     x6, sp
        mov     x7, #(FRAME_SIZE / 8)
1:      str     xzr, [x6], #8
        subs    x7, x7, #1
        b.ne    1b
        str     x1, [sp]                /* x0 = arg */
        str     x2, [sp, #F_X30 + 8]    /* sp_el0 */
        stp     x0, xzr, [sp, #F_ELR]   /* elr = entry, spsr = EL0t, nothing masked */
        b       exc_restore

/* void el0_return(uint64_t value): from a handler of an EL0 exception, abandon the EL0 context
 * and return `value` from el0_run. */
        .globl  el0_return
el0_return:
        mrs     x4, tpidr_el1
        adr_l   x5, el0_saved_sp
        ldr     x6, [x5, x4, lsl #3]
        mov     sp, x6
        ldr     x3, [sp, #96]
        msr     daif, x3
        ldp     x19, x20, [sp]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        add     sp, sp, #112
        ret

        .bss
        .balign 8
el0_saved_sp:
        .skip   8 * PVKIT_MAX_CPUS
