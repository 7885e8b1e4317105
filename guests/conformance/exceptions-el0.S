/* The EL0 task of the exceptions guest, and two EL1 probes.
 *
 * Each faulting instruction has a global label: exceptions.c expects ELR (and FAR) at exactly
 * these addresses. The task runs from its own pages (EL0-executable, read-only), gets the
 * addresses to touch from a parameter block (x0 at entry), checks what every handler did,
 * and reports a wrong value with `svc #SVC_FAIL` (x0 = check id, x1 = got, x2 = expected). */
#include "exceptions.h"

.macro  fail id, got, exp
        mov     x1, \got
        mov     x2, \exp
        mov     x0, #\id
        svc     #SVC_FAIL
        b       .
.endm

/* x<n> = 0xa5a5_0000_5a5a_00<n>: 64-bit values, so a frame that kept 32 bits shows. */
.macro  pattern n
        movz    x\n, #\n
        movk    x\n, #0x5a5a, lsl #16
        movk    x\n, #0xa5a5, lsl #48
.endm

        .section .text.el0, "ax"
        .balign 4096
        .globl  el0_text_start
el0_text_start:
        .globl  el0_task
el0_task:
        mov     x28, x0

        /* Demand paging: a load from an unmapped page; the handler maps a page and retries. */
        ldr     x2, [x28, #P_UNMAPPED_READ]
        .globl  el0_fault_read
el0_fault_read:
        ldr     x4, [x2]
        ldr     x5, [x28, #P_EXPECT_READ]
        cmp     x4, x5
        b.ne    fail_read

        /* The same for a store. */
        ldr     x2, [x28, #P_UNMAPPED_WRITE]
        movz    x5, #0xbeef
        movk    x5, #0xdead, lsl #16
        movk    x5, #0x1234, lsl #48
        .globl  el0_fault_write
el0_fault_write:
        str     x5, [x2]
        ldr     x4, [x2]
        cmp     x4, x5
        b.ne    fail_write

        /* A store to a read-only page: the handler makes it writable and retries. */
        ldr     x2, [x28, #P_READONLY]
        .globl  el0_fault_perm
el0_fault_perm:
        str     x5, [x2]
        ldr     x4, [x2]
        cmp     x4, x5
        b.ne    fail_perm

        /* Translation faults at levels 2 and 1: the handler skips the access (and sets x4). */
        ldr     x2, [x28, #P_L2_HOLE]
        mov     x4, #0
        .globl  el0_fault_l2
el0_fault_l2:
        ldr     x4, [x2]
        mov     x5, #SKIP_MARK
        cmp     x4, x5
        b.ne    fail_l2
        ldr     x2, [x28, #P_L1_HOLE]
        .globl  el0_fault_l1
el0_fault_l1:
        str     x5, [x2]

        /* SVCs: the handler answers x0 + imm + 1; ELR is the next instruction. */
        mov     x0, #7
        .globl  el0_svc_0
el0_svc_0:
        svc     #0
        mov     x5, #8
        cmp     x0, x5
        b.ne    fail_svc
        mov     x0, #7
        .globl  el0_svc_1
el0_svc_1:
        svc     #1
        mov     x5, #9
        cmp     x0, x5
        b.ne    fail_svc
        mov     x0, #7
        .globl  el0_svc_1234
el0_svc_1234:
        svc     #0x1234
        mov     x5, #(7 + 0x1234 + 1)
        cmp     x0, x5
        b.ne    fail_svc
        mov     x0, #7
        .globl  el0_svc_ffff
el0_svc_ffff:
        svc     #0xffff
        movz    x5, #7
        movk    x5, #1, lsl #16         /* 7 + 0xffff + 1 */
        cmp     x0, x5
        b.ne    fail_svc

        bl      regs_survive_svc

        /* BRK and UDF: ELR is the instruction itself; the handler steps over it. */
        .globl  el0_brk
el0_brk:
        brk     #0x42
        .globl  el0_udf
el0_udf:
        udf     #0x99

        /* An exclusive load at an odd address: an alignment fault even with SCTLR.A clear. */
        ldr     x2, [x28, #P_MISALIGNED]
        .globl  el0_fault_align
el0_fault_align:
        ldxr    x4, [x2]

        /* A call into an unmapped page: an instruction abort; the handler returns to x30. */
        ldr     x2, [x28, #P_UNMAPPED_CODE]
        .globl  el0_call_unmapped
el0_call_unmapped:
        blr     x2

        mov     x0, #0
        .globl  el0_exit
el0_exit:
        svc     #SVC_EXIT
        b       .

/* Every general-purpose register, SP_EL0 and NZCV must come back from an SVC unchanged. */
regs_survive_svc:
        sub     sp, sp, #REGS_FRAME
        str     x28, [sp, #REGS_PARAMS]
        str     x30, [sp, #REGS_LR]
        mov     x0, sp
        str     x0, [sp, #REGS_SP]
        mov     x0, #NZCV_PATTERN
        msr     nzcv, x0
        .irp    n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
        pattern \n
        .endr
        .globl  el0_svc_regs
el0_svc_regs:
        svc     #SVC_REGS
        b.pl    bad_flags               /* N was 1 */
        b.eq    bad_flags               /* Z was 0 */
        b.cc    bad_flags               /* C was 1 */
        b.vs    bad_flags               /* V was 0 */
        stp     x0, x1, [sp]
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
        str     x30, [sp, #240]
        mov     x4, sp
        ldr     x5, [sp, #REGS_SP]
        cmp     x4, x5
        b.ne    bad_sp
        mov     x3, #0
1:      ldr     x4, [sp, x3, lsl #3]
        movz    x5, #0x5a5a, lsl #16
        movk    x5, #0xa5a5, lsl #48
        orr     x5, x5, x3
        cmp     x4, x5
        b.ne    bad_reg
        add     x3, x3, #1
        cmp     x3, #31
        b.lo    1b
        ldr     x28, [sp, #REGS_PARAMS]
        ldr     x30, [sp, #REGS_LR]
        add     sp, sp, #REGS_FRAME
        ret

bad_flags:
        mrs     x4, nzcv
        mov     x5, #NZCV_PATTERN
        fail    CHECK_FLAGS, x4, x5
bad_sp:
        fail    CHECK_SP, x4, x5
bad_reg:
        add     x0, x3, #CHECK_REG0
        mov     x1, x4
        mov     x2, x5
        svc     #SVC_FAIL
        b       .
fail_read:
        fail    CHECK_READ, x4, x5
fail_write:
        fail    CHECK_WRITE, x4, x5
fail_perm:
        fail    CHECK_PERM, x4, x5
fail_l2:
        fail    CHECK_L2, x4, x5
fail_svc:
        fail    CHECK_SVC, x0, x5
        .balign 4096
        .globl  el0_text_end
el0_text_end:

/* EL1 probes: a load that faults (the handler skips it and sets x0) and an SVC at EL1. */
        .text
        .globl  el1_probe_load
el1_probe_load:
        ldr     x0, [x0]
        ret
        .globl  el1_probe_svc
el1_probe_svc:
        svc     #EL1_SVC_IMM
        ret
