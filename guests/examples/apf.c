/* apf: asynchronous page faults on arm64, with a tiny cooperative scheduler.
 *
 * Five tasks run at EL0 (MMU on): four walkers each walk their own 1 MiB slice of a 4 MiB
 * work region at guest-physical 0x48000000 (RAM + 128 MiB), a load and a store in every
 * 4 KiB page, for two passes (pass 1 checks what pass 0 stored); one compute task never
 * touches the region and counts rounds. A task yields with SVC; the scheduler runs at EL1 and
 * switches tasks by rewriting the exception frame it returns through.
 *
 * With async page faults (discovered safely, then ENABLE), a walker touching a page the host
 * does not hold gets its vCPU back at once: the PPI says "page not present" with a token, the
 * IRQ handler parks the walker under it and runs another task; "page ready" with that token
 * makes it runnable again, and it re-executes the access. Without them (no service, another
 * hypervisor, none at all) the same work runs and the vCPU simply waits for such pages.
 *
 * Output (parsed by tests): the "on"/"off" line, per walker `apf: task <i> walked <pages>
 * pages x <passes> passes`, `apf: compute task ran <n> rounds`, the notification counts,
 * `apf: done in <us> us` (generic counter), any `apf: data check FAILED ...`; SYSTEM_OFF. */
#include <pvkit/apf.h>
#include <pvkit/console.h>
#include <pvkit/exception.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/mmu.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>
#include <pvkit/timer.h>

#define PAGE 4096UL
#define WORK_BASE 0x48000000UL
#define WORK_SIZE (4UL << 20)
#define WALKERS 4
#define SLICE (WORK_SIZE / WALKERS)
#define PASSES 2
#define NTASKS (WALKERS + 1) /* the walkers, then the compute task */
#define COMPUTE WALKERS
#define YIELD_PAGES 16    /* a walker yields after this many pages (a power of two) */
#define ROUND_STEPS 1000  /* generator steps in one compute round */
#define MAX_FAIL_REPORTS 8

/* SVC immediates of the EL0 tasks. */
#define SVC_START 1 /* the launch stub: run the first task */
#define SVC_YIELD 2 /* x0 = progress (pages touched, or rounds) */
#define SVC_EXIT 3  /* x0 = pages per pass, x1 = passes */
#define SVC_FAIL 4  /* data check: x0 = address, x1 = got, x2 = expected */

#define STR(x) #x
#define XSTR(x) STR(x)

/* The EL0 code, on pages of its own (mapped EL0-executable, read-only). Assembler, so that
 * exactly two instructions per page touch the work region, and both may be interrupted by
 * "page not present" and re-executed later without harm: a load, and a store of a value that
 * depends only on the page and the pass. Pass p stores seed + (page << 16) + p into the
 * page's first word; from pass 1 on the load must find pass p - 1's value. */
__asm__(".pushsection .text.apf_el0, \"ax\"\n"
        "       .balign 4096\n"
        "apf_el0_start:\n"

        /* Launched by el0_run: ask the scheduler for the first task. */
        "apf_launch:\n"
        "       svc     #" XSTR(SVC_START) "\n"
        "       b       .\n"

        /* walker(x0 = base, x1 = pages per pass, x2 = passes, x3 = seed) */
        "apf_walker:\n"
        "       mov     x19, x0\n"
        "       mov     x20, x1\n"
        "       mov     x21, x2\n"
        "       mov     x22, x3\n"
        "       mov     x23, #0\n"                 /* pass */
        "       mov     x28, #0\n"                 /* pages touched in all */
        "1:     mov     x24, #0\n"                 /* page */
        "2:     add     x25, x19, x24, lsl #12\n"  /* its address */
        "       add     x26, x22, x24, lsl #16\n"  /* this pass's value */
        "       add     x26, x26, x23\n"
        "       ldr     x27, [x25]\n"              /* may be parked here, then re-executed */
        "       cbz     x23, 3f\n"
        "       sub     x2, x26, #1\n"             /* what the previous pass stored */
        "       cmp     x27, x2\n"
        "       b.eq    3f\n"
        "       mov     x0, x25\n"
        "       mov     x1, x27\n"
        "       svc     #" XSTR(SVC_FAIL) "\n"
        "3:     str     x26, [x25]\n"              /* and here */
        "       add     x24, x24, #1\n"
        "       add     x28, x28, #1\n"
        "       tst     x24, #(" XSTR(YIELD_PAGES) " - 1)\n"
        "       b.ne    4f\n"
        "       mov     x0, x28\n"
        "       svc     #" XSTR(SVC_YIELD) "\n"
        "4:     cmp     x24, x20\n"
        "       b.lo    2b\n"
        "       add     x23, x23, #1\n"
        "       cmp     x23, x21\n"
        "       b.lo    1b\n"
        "       mov     x0, x24\n"
        "       mov     x1, x23\n"
        "       svc     #" XSTR(SVC_EXIT) "\n"
        "       b       .\n"

        /* compute(x0 = steps per round): a 64-bit LCG in registers only, forever. */
        "apf_compute:\n"
        "       mov     x19, x0\n"
        "       mov     x20, #0\n"                 /* rounds */
        "       mov     x21, #1\n"                 /* generator state */
        "       movz    x22, #0x7f2d\n"            /* multiplier 0x5851f42d4c957f2d */
        "       movk    x22, #0x4c95, lsl #16\n"
        "       movk    x22, #0xf42d, lsl #32\n"
        "       movk    x22, #0x5851, lsl #48\n"
        "1:     mov     x23, x19\n"
        "2:     mul     x21, x21, x22\n"
        "       add     x21, x21, #1\n"
        "       subs    x23, x23, #1\n"
        "       b.ne    2b\n"
        "       add     x20, x20, #1\n"
        "       mov     x0, x20\n"
        "       svc     #" XSTR(SVC_YIELD) "\n"
        "       b       1b\n"

        "       .balign 4096\n"
        "apf_el0_end:\n"
        ".popsection\n");

extern char apf_el0_start[], apf_el0_end[], apf_launch[], apf_walker[], apf_compute[];

enum task_state { RUNNABLE, PARKED, DONE };

struct task {
    struct exc_frame ctx; /* its EL0 registers while it is off the CPU */
    enum task_state state;
    uint32_t token;       /* the "page not present" token it is parked under */
    uint64_t progress;    /* from its last SVC_YIELD */
    uint64_t pages, passes;
};

struct counts {
    uint64_t not_present, ready, wake_all, unknown;
    uint64_t failures;
};

static struct pv_env env;
static struct apf_block block; /* this vCPU's: zero (bss) until pvkit writes it */
static struct apf_info info;
static uint8_t stacks[NTASKS][PAGE] __attribute__((aligned(PAGE)));
static uint8_t launch_stack[PAGE] __attribute__((aligned(PAGE)));
static struct task tasks[NTASKS];
static int current = -1; /* the task on the CPU; -1 while the scheduler chooses or waits */
static int walkers_left = WALKERS;
static struct counts counts;

static void power_off(void)
{
    psci_system_off(&env);
    halt();
}

static void task_init(int i, uint64_t entry, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
    struct task *t = &tasks[i];
    t->ctx = (struct exc_frame){0};
    t->ctx.x[0] = a0, t->ctx.x[1] = a1, t->ctx.x[2] = a2, t->ctx.x[3] = a3;
    t->ctx.sp_el0 = (uint64_t)stacks[i] + PAGE;
    t->ctx.elr = entry;
    t->ctx.spsr = SPSR_EL0T; /* EL0, nothing masked: the PPI reaches it */
    t->state = RUNNABLE;
}

/* The next runnable task after `prev`, round robin, or -1. */
static int pick(int prev)
{
    for (int n = 1; n <= NTASKS; n++) {
        int i = (prev + n) % NTASKS;
        if (tasks[i].state == RUNNABLE)
            return i;
    }
    return -1;
}

/* Switch tasks through the exception frame `f` that the vectors restore on return: keep the
 * interrupted task's registers (unless it is done), then copy the next runnable task's into
 * `f`, so that the ERET enters that task at EL0 instead. With nothing runnable, sleep in WFI:
 * the IRQ handler (nested, from EL1) may make a task runnable. When every walker is done,
 * leave the EL0 world altogether: el0_run() returns in guest_main. */
static void schedule(struct exc_frame *f)
{
    int prev = current;
    if (prev >= 0 && tasks[prev].state != DONE)
        tasks[prev].ctx = *f;
    current = -1;
    for (;;) {
        if (walkers_left == 0)
            el0_return(0);
        int next = pick(prev < 0 ? NTASKS - 1 : prev);
        if (next >= 0) {
            current = next;
            *f = tasks[next].ctx;
            return;
        }
        irq_wait(); /* IRQs masked around the check: no "page ready" is missed */
    }
}

/* "Page not present" while task `current` ran at EL0: ELR is the access, not executed yet,
 * so the saved context re-executes it when the task runs again. */
static void park(struct exc_frame *f, uint32_t token)
{
    counts.not_present++;
    if (f->vector != VEC_EL0_A64 + EXC_IRQ || current < 0) {
        counts.unknown++; /* not from a task: only with SEND_ALWAYS, which this guest never sets */
        return;
    }
    tasks[current].state = PARKED;
    tasks[current].token = token;
    schedule(f);
}

/* "Page ready": the task parked under `token` (every one for the wake-all token) may run. */
static void wake(uint32_t token)
{
    int found = 0;
    for (int i = 0; i < NTASKS; i++) {
        struct task *t = &tasks[i];
        if (t->state == PARKED && (token == APF_TOKEN_WAKE_ALL || t->token == token)) {
            t->state = RUNNABLE;
            found = 1;
        }
    }
    if (token == APF_TOKEN_WAKE_ALL)
        counts.wake_all++;
    else if (found)
        counts.ready++;
    else
        counts.unknown++;
}

/* Every IRQ, from EL0 or (while the scheduler waits) EL1. The PPI is level-triggered and
 * IRQ_ACK lowers it, so the order is: read and clear the block, IRQ_ACK, EOI; only then
 * act on it, because acting may mean sleeping in WFI for the next notification. */
static void on_irq(struct exc_frame *f)
{
    uint32_t iar = gic_ack(), intid = gic_intid(iar);
    if (intid >= 1020)
        return; /* spurious: nothing to end */
    if (intid != info.irq) {
        kprintf("apf: unexpected interrupt %u: disabled\n", intid);
        gic_disable_irq(intid);
        gic_eoi(iar);
        return;
    }
    uint32_t token, reason = apf_take(&block, &token);
    apf_irq_ack(&env);
    gic_eoi(iar);
    if (reason == APF_REASON_NOT_PRESENT)
        park(f, token);
    else if (reason == APF_REASON_READY)
        wake(token);
    else
        counts.unknown++;
}

/* SVCs from the tasks; anything else is a bug: report and halt (return 0). */
static int on_sync(struct exc_frame *f)
{
    if (f->vector != VEC_EL0_A64 + EXC_SYNC || ESR_EC(f->esr) != EC_SVC64)
        return 0;
    struct task *t = current >= 0 ? &tasks[current] : 0;
    switch (f->esr & 0xffff) {
    case SVC_START:
        if (t)
            return 0;
        schedule(f);
        return 1;
    case SVC_YIELD:
        if (!t)
            return 0;
        t->progress = f->x[0];
        schedule(f);
        return 1;
    case SVC_EXIT:
        if (!t || current == COMPUTE)
            return 0;
        t->pages = f->x[0];
        t->passes = f->x[1];
        t->state = DONE;
        walkers_left--;
        schedule(f);
        return 1;
    case SVC_FAIL:
        if (!t)
            return 0;
        if (counts.failures++ < MAX_FAIL_REPORTS)
            kprintf("apf: data check FAILED task %d at 0x%lx: got 0x%lx, expected 0x%lx\n",
                    current, f->x[0], f->x[1], f->x[2]);
        return 1; /* the walker goes on with its store */
    }
    return 0;
}

/* Discovery, then the GIC and the PPI, then ENABLE: the reason if any step fails. */
static const char *enable_apf(const void *fdt)
{
    const char *why = apf_probe(&env, &info);
    if (why)
        return why;
    if (gic_init(fdt) < 0 || gic_init_cpu() != 0)
        return "no GIC";
    exc_set_irq_handler(on_irq);
    gic_enable_irq(info.irq);
    block = (struct apf_block){0};
    int64_t r = apf_enable(&env, &block, APF_ENABLED);
    if (r != 0 && r != APF_RET_NOT_REQUIRED) {
        gic_disable_irq(info.irq);
        return "ENABLE refused";
    }
    return 0;
}

/* The GIC's registers (every reg entry of its node) as device memory: the identity map has
 * RAM and the UART only, and with the MMU on the IRQ handler still reaches the distributor
 * (and GICv2's CPU interface, which is memory-mapped). No GIC: nothing to map. */
static int map_gic(const void *fdt)
{
    static const char *const compatible[] = {"arm,gic-v3", "arm,cortex-a15-gic", "arm,gic-400",
                                             "arm,cortex-a9-gic", "arm,cortex-a7-gic"};
    int node = -1, parent = -1;
    for (unsigned i = 0; node < 0 && i < sizeof(compatible) / sizeof(compatible[0]); i++)
        node = fdt_find_compatible(fdt, compatible[i], &parent);
    uint64_t addr, size;
    for (int i = 0; node >= 0 && i < 16 && fdt_reg(fdt, parent, node, i, &addr, &size) == 0; i++) {
        uint64_t lo = addr & ~(PAGE - 1), hi = (addr + size + PAGE - 1) & ~(PAGE - 1);
        if (mmu_map(lo, lo, hi - lo, MMU_DEVICE))
            return -1;
    }
    return 0;
}

/* Identity map with the EL0 code, the task stacks and the work region open to EL0. */
static const char *build_map(const void *fdt)
{
    uint64_t ram, ram_size;
    int mem = fdt_path(fdt, "/memory");
    if (mem < 0 || fdt_reg(fdt, 0, mem, 0, &ram, &ram_size))
        return "no /memory";
    if (WORK_BASE < ram || WORK_BASE + WORK_SIZE > ram + ram_size)
        return "the work region 0x48000000+4M is not RAM";
    uint64_t code = (uint64_t)apf_el0_start, code_size = (uint64_t)apf_el0_end - code;
    if (mmu_identity_default(fdt) ||
        mmu_map(code, code, code_size, MMU_READONLY | MMU_USER | MMU_USER_EXEC | MMU_PAGES) ||
        mmu_map((uint64_t)stacks, (uint64_t)stacks, sizeof(stacks), MMU_USER | MMU_PAGES) ||
        mmu_map((uint64_t)launch_stack, (uint64_t)launch_stack, PAGE, MMU_USER | MMU_PAGES) ||
        mmu_map(WORK_BASE, WORK_BASE, WORK_SIZE, MMU_USER) || map_gic(fdt))
        return "cannot build the page tables";
    return 0;
}

static uint64_t elapsed_us(uint64_t ticks)
{
    uint64_t frq = cnt_freq();
    return frq ? ticks / frq * 1000000u + ticks % frq * 1000000u / frq : 0;
}

void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    const char *why = build_map(fdt);
    if (why) {
        kprintf("apf: %s\n", why);
        power_off();
    }
    why = enable_apf(fdt);
    if (!why)
        kprintf("apf: async page faults on (version %lu.%lu.%lu, %u slots, PPI %u)\n",
                APF_VERSION_MAJOR(info.version), APF_VERSION_MINOR(info.version),
                APF_VERSION_REVISION(info.version), info.slots, info.irq);
    else
        kprintf("apf: async page faults off (%s)\n", why);

    for (int i = 0; i < WALKERS; i++)
        task_init(i, (uint64_t)apf_walker, WORK_BASE + i * SLICE, SLICE / PAGE, PASSES,
                  (uint64_t)(i + 1) << 40);
    task_init(COMPUTE, (uint64_t)apf_compute, ROUND_STEPS, 0, 0, 0);
    exc_set_sync_handler(on_sync);
    mmu_enable();

    uint64_t t0 = cntvct();
    el0_run((uint64_t)apf_launch, 0, (uint64_t)launch_stack + PAGE);
    uint64_t t1 = cntvct();

    for (int i = 0; i < WALKERS; i++)
        kprintf("apf: task %d walked %lu pages x %lu passes\n", i, tasks[i].pages,
                tasks[i].passes);
    kprintf("apf: compute task ran %lu rounds\n", tasks[COMPUTE].progress);
    kprintf("apf: notifications: not-present=%lu ready=%lu wake-all=%lu unknown=%lu\n",
            counts.not_present, counts.ready, counts.wake_all, counts.unknown);
    if (counts.failures)
        kprintf("apf: data check FAILED: %lu wrong values\n", counts.failures);
    kprintf("apf: done in %lu us\n", elapsed_us(t1 - t0));
    power_off();
}
