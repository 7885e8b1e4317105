/* exceptions: synchronous exceptions from EL0 and EL1, checked against the Arm ARM.
 *
 * The MMU goes on (identity map, 4 KiB pages over the image), then an EL0 task
 * (exceptions-el0.S) takes, in order: a translation fault on a load from an unmapped page and
 * one on a store (the handler maps a page; the task reads back), a permission fault on a
 * store to a read-only page (made writable), translation faults at levels 2 and 1 (skipped),
 * SVC #0, #1, #0x1234, #0xffff (answered in x0), an SVC with every register, SP_EL0 and NZCV
 * live, BRK #0x42, UDF #0x99, LDXR at an odd address (alignment fault), and a call into an
 * unmapped page (instruction abort). Then at EL1: a load from an unmapped page and SVC #0x42.
 *
 * For each exception the handler compares the vector taken, SPSR.M, ESR, ELR and (for aborts)
 * FAR with what the architecture says, prints `exceptions: <check> ok`, and finally
 * `exceptions: ok`. The first difference prints
 * `exceptions: MISMATCH <check> esr=... far=... elr=... vector=... spsr=... expected ...`
 * and powers off. ESR is compared whole (64 bits) except that for data aborts the
 * instruction syndrome (ISS[24:14]: ISV, SAS, SSE, SRT, SF, AR) is ignored, because
 * whether it is reported for a stage 1 abort is up to the implementation. */
#include <pvkit/console.h>
#include <pvkit/exception.h>
#include <pvkit/mmu.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

#include "exceptions.h"

#define PAGE 4096UL
#define GIB (1UL << 30)
#define NO_FAR 1UL /* FAR is UNKNOWN for this exception: not compared */
#define ISS_INSTRUCTION_SYNDROME 0x01ffc000UL

enum action {
    MAP_PAGE,      /* map the faulting page to a backing page and retry */
    MAKE_WRITABLE, /* make the faulting page writable and retry */
    SKIP,          /* step over the faulting instruction */
    SKIP_SET,      /* step over it and put SKIP_MARK in register `reg` */
    SVC_ANSWER,    /* x0 += imm + 1 */
    SVC_KEEP,      /* leave every register alone */
    RETURN_TO_LR,  /* resume at x30 */
    EXIT_EL0,      /* el0_run returns */
};

struct expect {
    const char *name;
    uint64_t vector, mode, esr, elr, far;
    enum action action;
    int reg;
};

struct params {
    uint64_t unmapped_read, unmapped_write, readonly, misaligned, l2_hole, l1_hole;
    uint64_t unmapped_code, expect_read;
};

extern char el0_text_start[], el0_text_end[], el0_task[], el0_fault_read[], el0_fault_write[],
    el0_fault_perm[], el0_fault_l2[], el0_fault_l1[], el0_svc_0[], el0_svc_1[], el0_svc_1234[],
    el0_svc_ffff[], el0_svc_regs[], el0_brk[], el0_udf[], el0_fault_align[],
    el0_call_unmapped[], el0_exit[];
uint64_t el1_probe_load(uint64_t addr);
uint64_t el1_probe_svc(uint64_t x0);

static struct pv_env env;
static uint8_t user_stack[4][PAGE] __attribute__((aligned(PAGE)));
/* 0: load, 1: store, 2: read-only, 3: misaligned, 4: code, 5: EL1 load */
static uint8_t user_pages[6][PAGE] __attribute__((aligned(PAGE)));
static uint64_t backing[2][PAGE / 8] __attribute__((aligned(PAGE)));
static int backing_used;
static struct expect table[24];
static int nexpect, step;

static void power_off(void)
{
    psci_system_off(&env);
    halt();
}

static uint64_t dabt(uint64_t ec, int write, uint64_t fsc)
{
    return ec << 26 | ESR_IL | (write ? ISS_WNR : 0) | fsc;
}

static void add(const char *name, uint64_t vector, uint64_t esr, const void *elr, uint64_t far,
                enum action action, int reg)
{
    uint64_t mode = vector == VEC_EL0_A64 ? SPSR_EL0T : SPSR_EL1H;
    table[nexpect++] = (struct expect){name, vector, mode, esr, (uint64_t)elr, far, action, reg};
}

static const char *check_name(uint64_t id)
{
    static const char *const names[] = {
        "?", "el0 read-back after demand-mapping a page", "el0 read-back after a store fault",
        "el0 read-back after the page became writable", "el0 register after a skipped load",
        "el0 SVC answer in x0", "el0 NZCV after SVC", "el0 SP after SVC"};
    if (id < sizeof(names) / sizeof(names[0]))
        return names[id];
    return id >= CHECK_REG0 && id <= CHECK_REG0 + 30 ? "el0 register after SVC" : "?";
}

static void mismatch(const struct expect *e, const struct exc_frame *f)
{
    kprintf("exceptions: MISMATCH %s esr=0x%lx far=0x%lx elr=0x%lx vector=%lu spsr=0x%lx "
            "expected esr=0x%lx ",
            e ? e->name : "unexpected exception", f->esr, f->far, f->elr, f->vector, f->spsr,
            e ? e->esr : 0);
    if (!e)
        kprintf("(none)\n");
    else if (e->far == NO_FAR)
        kprintf("far=any elr=0x%lx vector=%lu mode=0x%lx\n", e->elr, e->vector, e->mode);
    else
        kprintf("far=0x%lx elr=0x%lx vector=%lu mode=0x%lx\n", e->far, e->elr, e->vector,
                e->mode);
    power_off();
}

static int matches(const struct expect *e, const struct exc_frame *f)
{
    uint64_t esr = f->esr;
    uint64_t ec = ESR_EC(esr);
    if (ec == EC_DABT_LOWER || ec == EC_DABT_CURRENT)
        esr &= ~ISS_INSTRUCTION_SYNDROME;
    return f->vector == e->vector + EXC_SYNC && (f->spsr & 0x1f) == e->mode && esr == e->esr &&
           f->elr == e->elr && (e->far == NO_FAR || f->far == e->far);
}

static int on_sync(struct exc_frame *f)
{
    if (f->vector == VEC_EL0_A64 && ESR_EC(f->esr) == EC_SVC64 &&
        (f->esr & 0xffff) == SVC_FAIL) {
        kprintf("exceptions: MISMATCH %s", check_name(f->x[0]));
        if (f->x[0] >= CHECK_REG0)
            kprintf(" x%lu", f->x[0] - CHECK_REG0);
        kprintf(" got=0x%lx expected=0x%lx\n", f->x[1], f->x[2]);
        power_off();
    }
    const struct expect *e = step < nexpect ? &table[step] : 0;
    if (!e || !matches(e, f))
        mismatch(e, f);
    step++;
    kprintf("exceptions: %s ok\n", e->name);
    uint64_t page = f->far & ~(PAGE - 1);
    switch (e->action) {
    case MAP_PAGE:
        mmu_map(page, (uint64_t)backing[backing_used++], PAGE, MMU_USER);
        mmu_flush_va(page);
        break;
    case MAKE_WRITABLE:
        mmu_map(page, page, PAGE, MMU_USER);
        mmu_flush_va(page);
        break;
    case SKIP_SET:
        f->x[e->reg] = SKIP_MARK;
        /* fall through */
    case SKIP:
        f->elr += 4;
        break;
    case SVC_ANSWER:
        f->x[0] += (f->esr & 0xffff) + 1;
        break;
    case SVC_KEEP:
        /* Scramble the live caller-saved registers: only the frame may bring them back. */
        __asm__ volatile("mov x0, #-1\n mov x1, #-1\n mov x2, #-1\n mov x3, #-1\n"
                         "mov x4, #-1\n mov x5, #-1\n mov x6, #-1\n mov x7, #-1\n"
                         "mov x8, #-1\n mov x9, #-1\n mov x10, #-1\n mov x11, #-1\n"
                         "mov x12, #-1\n mov x13, #-1\n mov x14, #-1\n mov x15, #-1\n"
                         "mov x16, #-1\n mov x17, #-1\n msr nzcv, xzr\n msr sp_el0, xzr" ::
                             : "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9",
                               "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "cc",
                               "memory");
        break;
    case RETURN_TO_LR:
        f->elr = f->x[30];
        break;
    case EXIT_EL0:
        el0_return(f->x[0]);
    }
    return 1;
}

/* The first address, in steps of `step` from `from`, whose walk stops at `level`. */
static uint64_t hole_at(int level, uint64_t from, uint64_t step)
{
    for (uint64_t va = from; va < (1UL << MMU_VA_BITS); va += step)
        if (mmu_fault_level(va) == level)
            return va;
    return 0;
}

static int build_map(const void *fdt)
{
    if (mmu_identity_default(fdt))
        return -1;
    uint64_t text = (uint64_t)el0_text_start, text_size = (uint64_t)el0_text_end - text;
    if (mmu_map(text, text, text_size, MMU_READONLY | MMU_USER | MMU_USER_EXEC | MMU_PAGES) ||
        mmu_map((uint64_t)user_stack, (uint64_t)user_stack, sizeof(user_stack),
                MMU_USER | MMU_PAGES) ||
        mmu_map((uint64_t)user_pages[2], (uint64_t)user_pages[2], PAGE,
                MMU_USER | MMU_READONLY | MMU_PAGES) ||
        mmu_map((uint64_t)user_pages[3], (uint64_t)user_pages[3], PAGE, MMU_USER | MMU_PAGES) ||
        mmu_unmap((uint64_t)user_pages[0], 2 * PAGE) ||
        mmu_unmap((uint64_t)user_pages[4], 2 * PAGE))
        return -1;
    return 0;
}

static void fill_table(const struct params *p)
{
    const uint64_t el0 = VEC_EL0_A64, el1 = VEC_EL1_SPX;
    add("el0 load from an unmapped page", el0, dabt(EC_DABT_LOWER, 0, FSC_TRANSLATION(3)),
        el0_fault_read, p->unmapped_read, MAP_PAGE, 0);
    add("el0 store to an unmapped page", el0, dabt(EC_DABT_LOWER, 1, FSC_TRANSLATION(3)),
        el0_fault_write, p->unmapped_write, MAP_PAGE, 0);
    add("el0 store to a read-only page", el0, dabt(EC_DABT_LOWER, 1, FSC_PERMISSION(3)),
        el0_fault_perm, p->readonly, MAKE_WRITABLE, 0);
    add("el0 level 2 translation fault", el0, dabt(EC_DABT_LOWER, 0, FSC_TRANSLATION(2)),
        el0_fault_l2, p->l2_hole, SKIP_SET, 4);
    add("el0 level 1 translation fault", el0, dabt(EC_DABT_LOWER, 1, FSC_TRANSLATION(1)),
        el0_fault_l1, p->l1_hole, SKIP, 0);
    /* SVC: EC 0x15, ISS = imm16; the preferred return address is the next instruction. */
    add("el0 svc #0", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL, el0_svc_0 + 4, NO_FAR, SVC_ANSWER,
        0);
    add("el0 svc #1", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL | 1, el0_svc_1 + 4, NO_FAR,
        SVC_ANSWER, 0);
    add("el0 svc #0x1234", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL | 0x1234, el0_svc_1234 + 4,
        NO_FAR, SVC_ANSWER, 0);
    add("el0 svc #0xffff", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL | 0xffff, el0_svc_ffff + 4,
        NO_FAR, SVC_ANSWER, 0);
    add("el0 svc with every register live", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL | SVC_REGS,
        el0_svc_regs + 4, NO_FAR, SVC_KEEP, 0);
    /* BRK: EC 0x3c, ISS = imm16, ELR = the BRK. UDF: EC 0 (unknown), ISS 0, ELR = the UDF. */
    add("el0 brk #0x42", el0, (uint64_t)EC_BRK64 << 26 | ESR_IL | 0x42, el0_brk, NO_FAR, SKIP, 0);
    add("el0 udf #0x99", el0, (uint64_t)EC_UNKNOWN << 26 | ESR_IL, el0_udf, NO_FAR, SKIP, 0);
    add("el0 ldxr at an odd address", el0, dabt(EC_DABT_LOWER, 0, FSC_ALIGNMENT),
        el0_fault_align, p->misaligned, SKIP, 0);
    /* Instruction abort: EC 0x20, IFSC; ELR = FAR = the address of the instruction. */
    add("el0 call into an unmapped page", el0,
        (uint64_t)EC_IABT_LOWER << 26 | ESR_IL | FSC_TRANSLATION(3), (void *)p->unmapped_code,
        p->unmapped_code, RETURN_TO_LR, 0);
    add("el0 exit", el0, (uint64_t)EC_SVC64 << 26 | ESR_IL | SVC_EXIT, el0_exit + 4, NO_FAR,
        EXIT_EL0, 0);
    add("el1 load from an unmapped page", el1, dabt(EC_DABT_CURRENT, 0, FSC_TRANSLATION(3)),
        (void *)(uintptr_t)el1_probe_load, (uint64_t)user_pages[5] + 0x88, SKIP_SET, 0);
    add("el1 svc #0x42", el1, (uint64_t)EC_SVC64 << 26 | ESR_IL | EL1_SVC_IMM,
        (char *)(uintptr_t)el1_probe_svc + 4, NO_FAR, SVC_ANSWER, 0);
}

static int run(const void *fdt)
{
    if (build_map(fdt)) {
        kprintf("exceptions: cannot build the page tables\n");
        return -1;
    }
    struct params *p = (struct params *)user_stack[0];
    p->unmapped_read = (uint64_t)user_pages[0] + 0x18;
    p->unmapped_write = (uint64_t)user_pages[1] + 0x20;
    p->readonly = (uint64_t)user_pages[2] + 0x28;
    p->misaligned = (uint64_t)user_pages[3] + 0x11;
    p->l2_hole = hole_at(2, MMU_BLOCK_SIZE, MMU_BLOCK_SIZE) + 0x30;
    p->l1_hole = hole_at(1, GIB, GIB) + 0x38;
    p->unmapped_code = (uint64_t)user_pages[4] + 0x40;
    for (uint64_t i = 0; i < PAGE / 8; i++)
        backing[0][i] = 0xc0de000000000000UL | i * 8;
    p->expect_read = backing[0][(p->unmapped_read % PAGE) / 8];
    if (p->l2_hole == 0x30 || p->l1_hole == 0x38 || mmu_fault_level(p->unmapped_read) != 3 ||
        mmu_fault_level(p->unmapped_code) != 3 || mmu_fault_level((uint64_t)user_pages[5]) != 3) {
        kprintf("exceptions: no room for the holes the checks need\n");
        return -1;
    }
    fill_table(p);
    exc_set_sync_handler(on_sync);
    mmu_enable();

    uint64_t top = (uint64_t)user_stack + sizeof(user_stack);
    uint64_t r = el0_run((uint64_t)el0_task, (uint64_t)p, top);
    if (r != 0) {
        kprintf("exceptions: MISMATCH el0 task exit value got=0x%lx expected=0x0\n", r);
        return -1;
    }

    r = el1_probe_load((uint64_t)user_pages[5] + 0x88);
    if (r != SKIP_MARK) {
        kprintf("exceptions: MISMATCH el1 register after a skipped load got=0x%lx "
                "expected=0x%x\n", r, SKIP_MARK);
        return -1;
    }
    r = el1_probe_svc(5);
    if (r != 5 + EL1_SVC_IMM + 1) {
        kprintf("exceptions: MISMATCH el1 SVC answer in x0 got=0x%lx expected=0x%x\n", r,
                5 + EL1_SVC_IMM + 1);
        return -1;
    }
    if (step != nexpect) {
        kprintf("exceptions: MISMATCH only %d of %d exceptions were taken\n", step, nexpect);
        return -1;
    }
    kprintf("exceptions: ok\n");
    return 0;
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    run(fdt);
    power_off();
}
