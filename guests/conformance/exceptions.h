/* Constants shared by exceptions.c and exceptions-el0.S (C and assembler). */
#ifndef CONFORMANCE_EXCEPTIONS_H
#define CONFORMANCE_EXCEPTIONS_H

/* The parameter block EL0 gets in x0: addresses to touch, and what to read back. */
#define P_UNMAPPED_READ 0
#define P_UNMAPPED_WRITE 8
#define P_READONLY 16
#define P_MISALIGNED 24
#define P_L2_HOLE 32
#define P_L1_HOLE 40
#define P_UNMAPPED_CODE 48
#define P_EXPECT_READ 56

/* SVC immediates with a meaning of their own; any other one answers x0 + imm + 1. */
#define SVC_REGS 0x7e57 /* answers x0 unchanged: every register must survive */
#define SVC_FAIL 0xfa11 /* EL0 found a wrong value: x0 = check, x1 = got, x2 = expected */
#define SVC_EXIT 0xe417 /* the task is done */
#define EL1_SVC_IMM 0x42
#define SKIP_MARK 0x5c1b /* what a handler that skips a faulting load leaves in its target */
#define NZCV_PATTERN 0xa0000000 /* N and C set, Z and V clear */

/* regs_survive_svc's stack frame: x0..x30, then these. */
#define REGS_PARAMS 248
#define REGS_SP 256
#define REGS_LR 264
#define REGS_FRAME 272

/* Check ids of SVC_FAIL reports. */
#define CHECK_READ 1
#define CHECK_WRITE 2
#define CHECK_PERM 3
#define CHECK_L2 4
#define CHECK_SVC 5
#define CHECK_FLAGS 6
#define CHECK_SP 7
#define CHECK_REG0 10 /* + register number */
#endif
