/* The stage-1 MMU helper (see pvkit/mmu.h). */
#include <pvkit/fdt.h>
#include <pvkit/mmu.h>

#define POOL_TABLES 16
#define D_VALID (1UL << 0)
#define D_TABLE (1UL << 1) /* table at levels 1-2, page at level 3 */
#define D_ATTR(i) ((uint64_t)(i) << 2)
#define D_AP_EL0 (1UL << 6)
#define D_AP_RO (1UL << 7)
#define D_SH_INNER (3UL << 8)
#define D_AF (1UL << 10)
#define D_PXN (1UL << 53)
#define D_UXN (1UL << 54)
#define D_ADDR 0x0000fffffffff000UL
#define MAIR_VALUE 0xff00UL /* attr0 Device-nGnRnE, attr1 Normal inner/outer WB RW-allocate */
#define UART_BASE 0x09000000UL

static uint64_t pool[POOL_TABLES][512] __attribute__((aligned(4096)));
static int pool_used;

extern char _image_start[], _image_end[];

static uint64_t *new_table(void)
{
    if (pool_used == POOL_TABLES)
        return 0;
    uint64_t *t = pool[pool_used++];
    for (int i = 0; i < 512; i++)
        t[i] = 0;
    return t;
}

static uint64_t *root(void) { return pool_used ? pool[0] : new_table(); }

void mmu_reset(void) { pool_used = 0; }

static unsigned index_at(uint64_t va, int level) { return (va >> (39 - 9 * level)) & 511; }

/* The table below entry `e`, made if absent; 0 when `e` is a block or the pool is empty. */
static uint64_t *descend(uint64_t *e, int make)
{
    if (!(*e & D_VALID)) {
        uint64_t *t = make ? new_table() : 0;
        if (!t)
            return 0;
        *e = (uint64_t)t | D_TABLE | D_VALID;
    } else if (!(*e & D_TABLE)) {
        return 0;
    }
    return (uint64_t *)(*e & D_ADDR);
}

static uint64_t leaf_bits(unsigned flags)
{
    uint64_t d = D_AF;
    d |= flags & MMU_DEVICE ? D_ATTR(0) | D_PXN : D_ATTR(1) | D_SH_INNER;
    if (flags & MMU_READONLY)
        d |= D_AP_RO;
    if (flags & MMU_USER)
        d |= D_AP_EL0;
    if (!(flags & MMU_USER_EXEC) || (flags & MMU_DEVICE))
        d |= D_UXN;
    if (flags & MMU_NOEXEC)
        d |= D_PXN;
    return d;
}

int mmu_map(uint64_t va, uint64_t pa, uint64_t size, unsigned flags)
{
    uint64_t *l1 = root();
    uint64_t bits = leaf_bits(flags);
    if (!l1 || ((va | pa | size) & (MMU_PAGE_SIZE - 1)) || va + size > (1UL << MMU_VA_BITS))
        return -1;
    while (size) {
        uint64_t *l2 = descend(&l1[index_at(va, 1)], 1);
        if (!l2)
            return -1;
        uint64_t *e2 = &l2[index_at(va, 2)];
        if (!(flags & MMU_PAGES) && !((va | pa) & (MMU_BLOCK_SIZE - 1)) &&
            size >= MMU_BLOCK_SIZE && !(*e2 & D_TABLE)) {
            *e2 = pa | bits | D_VALID;
            va += MMU_BLOCK_SIZE, pa += MMU_BLOCK_SIZE, size -= MMU_BLOCK_SIZE;
            continue;
        }
        uint64_t *l3 = descend(e2, 1);
        if (!l3)
            return -1;
        l3[index_at(va, 3)] = pa | bits | D_TABLE | D_VALID;
        va += MMU_PAGE_SIZE, pa += MMU_PAGE_SIZE, size -= MMU_PAGE_SIZE;
    }
    return 0;
}

volatile uint64_t *mmu_leaf(uint64_t va, int *level)
{
    if (!pool_used || va >= (1UL << MMU_VA_BITS))
        return 0;
    uint64_t *t = pool[0];
    for (int lvl = 1; lvl <= 3; lvl++) {
        uint64_t *e = &t[index_at(va, lvl)];
        if (!(*e & D_VALID))
            return 0;
        if (lvl == 3 || !(*e & D_TABLE)) {
            if (level)
                *level = lvl;
            return e;
        }
        t = (uint64_t *)(*e & D_ADDR);
    }
    return 0;
}

int mmu_fault_level(uint64_t va)
{
    if (!pool_used || va >= (1UL << MMU_VA_BITS))
        return 1;
    uint64_t *t = pool[0];
    for (int lvl = 1; lvl <= 3; lvl++) {
        uint64_t e = t[index_at(va, lvl)];
        if (!(e & D_VALID))
            return lvl;
        if (lvl == 3 || !(e & D_TABLE))
            return 0;
        t = (uint64_t *)(e & D_ADDR);
    }
    return 0;
}

int mmu_unmap(uint64_t va, uint64_t size)
{
    for (uint64_t end = va + size; va < end; va += MMU_PAGE_SIZE) {
        int level;
        volatile uint64_t *e = mmu_leaf(va, &level);
        if (e && level != 3)
            return -1;
        if (e)
            *e = 0;
    }
    return 0;
}

int mmu_identity_default(const void *fdt)
{
    uint64_t ram, ram_size;
    int mem = fdt_path(fdt, "/memory");
    if (mem < 0 || fdt_reg(fdt, 0, mem, 0, &ram, &ram_size))
        return -1;
    uint64_t lo = (uint64_t)_image_start & ~(MMU_BLOCK_SIZE - 1);
    uint64_t hi = ((uint64_t)_image_end + MMU_BLOCK_SIZE - 1) & ~(MMU_BLOCK_SIZE - 1);
    uint64_t end = ram + ram_size;
    if (lo < ram || hi > end)
        return -1;
    if (mmu_map(ram, ram, lo - ram, 0) || mmu_map(lo, lo, hi - lo, MMU_PAGES) ||
        mmu_map(hi, hi, end - hi, 0) ||
        mmu_map(UART_BASE, UART_BASE, MMU_PAGE_SIZE, MMU_DEVICE))
        return -1;
    return 0;
}

static void invalidate_tables(void)
{
    uint64_t ctr;
    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    uint64_t line = 4UL << ((ctr >> 16) & 0xf);
    for (uint64_t a = (uint64_t)pool; a < (uint64_t)pool[pool_used]; a += line)
        __asm__ volatile("dc ivac, %0" : : "r"(a) : "memory");
    __asm__ volatile("dsb sy" ::: "memory");
}

void mmu_enable(void)
{
    uint64_t mmfr0, sctlr;
    __asm__ volatile("mrs %0, id_aa64mmfr0_el1" : "=r"(mmfr0));
    uint64_t ips = mmfr0 & 7;
    if (ips > 5)
        ips = 5;
    uint64_t tcr = (64 - MMU_VA_BITS) /* T0SZ */ | 1UL << 8 /* IRGN0 WB */ |
                   1UL << 10 /* ORGN0 WB */ | 3UL << 12 /* SH0 inner */ | 0UL << 14 /* 4K */ |
                   1UL << 23 /* EPD1: no TTBR1 walks */ | ips << 32;
    __asm__ volatile("mrs %0, sctlr_el1" : "=r"(sctlr));
    if (!(sctlr & 1))
        invalidate_tables(); /* tables were written uncached: drop stale lines */
    __asm__ volatile("msr mair_el1, %0\n"
                     "msr tcr_el1, %1\n"
                     "msr ttbr0_el1, %2\n"
                     "isb\n"
                     "tlbi vmalle1\n"
                     "dsb nsh\n"
                     "isb"
                     :
                     : "r"(MAIR_VALUE), "r"(tcr), "r"((uint64_t)pool[0])
                     : "memory");
    sctlr |= 1UL << 0 | 1UL << 2 | 1UL << 12 | 1UL << 23; /* M, C, I, SPAN (PAN left alone) */
    sctlr &= ~(1UL << 1 | 1UL << 19);                     /* no alignment checks, no WXN */
    __asm__ volatile("msr sctlr_el1, %0; isb" : : "r"(sctlr) : "memory");
}

void mmu_flush_va(uint64_t va)
{
    __asm__ volatile("dsb ishst\n"
                     "tlbi vaae1is, %0\n"
                     "dsb ish\n"
                     "isb"
                     :
                     : "r"(va >> 12)
                     : "memory");
}
