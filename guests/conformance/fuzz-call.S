/* fz_call_*(struct fz_regs *r): load x0..x30 from r->in, issue one HVC/SMC, store x0..x30 and
 * sp after the call in r->out / r->sp_after, and return with the caller's state restored.
 * While every general register holds a canary, r is kept in TPIDR_EL0 and x30's value after
 * the call in TPIDRRO_EL0 (both free in these guests; each CPU has its own). */
        .macro  FZ_CALL name, insn
        .globl  \name
        .balign 8
\name:
        stp     x29, x30, [sp, #-96]!
        stp     x19, x20, [sp, #16]
        stp     x21, x22, [sp, #32]
        stp     x23, x24, [sp, #48]
        stp     x25, x26, [sp, #64]
        stp     x27, x28, [sp, #80]
        msr     tpidr_el0, x0
        mov     x1, sp
        str     x1, [x0, #496]
        ldp     x2, x3, [x0, #16]
        ldp     x4, x5, [x0, #32]
        ldp     x6, x7, [x0, #48]
        ldp     x8, x9, [x0, #64]
        ldp     x10, x11, [x0, #80]
        ldp     x12, x13, [x0, #96]
        ldp     x14, x15, [x0, #112]
        ldp     x16, x17, [x0, #128]
        ldp     x18, x19, [x0, #144]
        ldp     x20, x21, [x0, #160]
        ldp     x22, x23, [x0, #176]
        ldp     x24, x25, [x0, #192]
        ldp     x26, x27, [x0, #208]
        ldp     x28, x29, [x0, #224]
        ldr     x30, [x0, #240]
        ldr     x1, [x0, #8]
        ldr     x0, [x0, #0]
        \insn
        msr     tpidrro_el0, x30
        mrs     x30, tpidr_el0
        stp     x0, x1, [x30, #248]
        stp     x2, x3, [x30, #264]
        stp     x4, x5, [x30, #280]
        stp     x6, x7, [x30, #296]
        stp     x8, x9, [x30, #312]
        stp     x10, x11, [x30, #328]
        stp     x12, x13, [x30, #344]
        stp     x14, x15, [x30, #360]
        stp     x16, x17, [x30, #376]
        stp     x18, x19, [x30, #392]
        stp     x20, x21, [x30, #408]
        stp     x22, x23, [x30, #424]
        stp     x24, x25, [x30, #440]
        stp     x26, x27, [x30, #456]
        stp     x28, x29, [x30, #472]
        mrs     x0, tpidrro_el0
        str     x0, [x30, #488]
        mov     x0, sp
        str     x0, [x30, #504]
        ldr     x0, [x30, #496]
        mov     sp, x0
        ldp     x19, x20, [sp, #16]
        ldp     x21, x22, [sp, #32]
        ldp     x23, x24, [sp, #48]
        ldp     x25, x26, [sp, #64]
        ldp     x27, x28, [sp, #80]
        ldp     x29, x30, [sp], #96
        ret
        .endm

        .text
        FZ_CALL fz_hvc0, "hvc #0"
        FZ_CALL fz_hvc1, "hvc #1"
        FZ_CALL fz_hvc4b56, "hvc #0x4b56"
        FZ_CALL fz_hvcffff, "hvc #0xffff"
        FZ_CALL fz_smc0, "smc #0"
        FZ_CALL fz_smc1, "smc #1"
