/* The bench guest's own exception vectors, installed only around the `svc` and `irq` loops.
 *
 * Synchronous from EL1 (the SVCs of the svc loop): `eret` at once, nothing saved, so a round
 * trip is the exception entry and return alone. IRQ from EL1: the first instruction reads the
 * virtual counter into x9 (the irq loop's asm declares x9 clobbered and spins until it is
 * non-zero), then bench_irq(x9) acknowledges, records and ends the interrupt. Every other
 * vector goes on to the SDK's own, which reports the exception and halts. */
.macro  sdk n
        .balign 128
        b       vectors + \n * 128
.endm

.macro  svc_return
        .balign 128
        eret
.endm

.macro  irq_counter
        .balign 128
        mrs     x9, cntvct_el0
        b       irq_entry
.endm

        .text
        .balign 2048
        .globl  bench_vectors
bench_vectors:
        svc_return                      /* 0: EL1 with SP_EL0 */
        irq_counter
        sdk     2
        sdk     3
        svc_return                      /* 4: EL1 with SP_EL1 */
        irq_counter
        .irp    n, 6,7,8,9,10,11,12,13,14,15
        sdk     \n
        .endr

/* Everything the AAPCS lets bench_irq clobber, but x9 (the counter, kept for the loop). */
irq_entry:
        sub     sp, sp, #160
        stp     x0, x1, [sp]
        stp     x2, x3, [sp, #16]
        stp     x4, x5, [sp, #32]
        stp     x6, x7, [sp, #48]
        stp     x8, x10, [sp, #64]
        stp     x11, x12, [sp, #80]
        stp     x13, x14, [sp, #96]
        stp     x15, x16, [sp, #112]
        stp     x17, x18, [sp, #128]
        str     x30, [sp, #144]
        mov     x0, x9
        bl      bench_irq
        ldp     x0, x1, [sp]
        ldp     x2, x3, [sp, #16]
        ldp     x4, x5, [sp, #32]
        ldp     x6, x7, [sp, #48]
        ldp     x8, x10, [sp, #64]
        ldp     x11, x12, [sp, #80]
        ldp     x13, x14, [sp, #96]
        ldp     x15, x16, [sp, #112]
        ldp     x17, x18, [sp, #128]
        ldr     x30, [sp, #144]
        add     sp, sp, #160
        eret
