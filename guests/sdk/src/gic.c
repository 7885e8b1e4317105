/* GICv2/GICv3 driver (see pvkit/gic.h). Only 32-bit MMIO accesses, which both architectures
 * allow for every register used here, so that a simple model needs nothing wider. */
#include <pvkit/console.h>
#include <pvkit/fdt.h>
#include <pvkit/gic.h>
#include <pvkit/mmio.h>
#include <pvkit/runtime.h>

/* Distributor (both versions). */
#define GICD_CTLR 0x000
#define GICD_TYPER 0x004
#define GICD_IGROUPR 0x080
#define GICD_ISENABLER 0x100
#define GICD_ICENABLER 0x180
#define GICD_ISPENDR 0x200
#define GICD_ICPENDR 0x280
#define GICD_ICACTIVER 0x380
#define GICD_IPRIORITYR 0x400
#define GICD_ITARGETSR 0x800 /* v2 */
#define GICD_SGIR 0xf00      /* v2 */
#define GICD_IROUTER 0x6000  /* v3, 8 bytes per INTID */
#define GICD_CTLR_RWP (1u << 31)
#define GICD_CTLR_ARE (1u << 4) /* ARE (DS=1) or ARE_NS (non-secure view) */
#define GICD_CTLR_EN0 (1u << 0) /* EnableGrp0 (DS=1) or EnableGrp1 (non-secure view) */
#define GICD_CTLR_EN1 (1u << 1) /* EnableGrp1 (DS=1) or EnableGrp1A (non-secure view) */
/* GICv2 CPU interface. */
#define GICC_CTLR 0x00
#define GICC_PMR 0x04
#define GICC_BPR 0x08
#define GICC_IAR 0x0c
#define GICC_EOIR 0x10
/* GICv3 redistributor: RD_base frame, then SGI_base frame 64 KiB above it. */
#define GICR_CTLR 0x0000
#define GICR_TYPER 0x0008
#define GICR_WAKER 0x0014
#define GICR_SGI 0x10000
#define GICR_CTLR_RWP (1u << 3)
#define GICR_TYPER_VLPIS (1u << 1)
#define GICR_TYPER_LAST (1u << 4)
#define GICR_WAKER_SLEEP (1u << 1)
#define GICR_WAKER_ASLEEP (1u << 2)

#define PRIO_DEFAULT 0xa0
#define MAX_RD_REGIONS 8

static int version = -1;
static uintptr_t gicd, gicc;
static uint32_t nr_irqs;
static uint64_t rd_region[MAX_RD_REGIONS], rd_region_size[MAX_RD_REGIONS];
static int nr_rd_regions;
static uint64_t rd_stride; /* 0: from GICR_TYPER.VLPIS */
static uintptr_t rd_base[PVKIT_MAX_CPUS];
static uint64_t sgi_route[PVKIT_MAX_CPUS]; /* v3: MPIDR affinity; v2: CPU interface mask */
static struct {
    irq_handler_t fn;
    void *arg;
} handlers[GIC_MAX_INTID];

#define sysreg_write(reg, v) __asm__ volatile("msr " #reg ", %0" : : "r"((uint64_t)(v)) : "memory")
#define sysreg_read(reg)                                                                         \
    ({                                                                                           \
        uint64_t _v;                                                                             \
        __asm__ volatile("mrs %0, " #reg : "=r"(_v) : : "memory");                               \
        _v;                                                                                      \
    })

int gic_version(void) { return version; }

static void wait_clear(uintptr_t reg, uint32_t bit)
{
    for (uint64_t spins = 0; spins < 100000000u; spins++)
        if (!(mmio_read32(reg) & bit))
            return;
    kprintf("gic: register at 0x%lx never cleared bit 0x%x\n", reg, bit);
}

/* The GIC node and its version (2 or 3), or -1. */
static int find(const void *fdt, int *parent, int *ver)
{
    static const char *const v2[] = {"arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic",
                                     "arm,cortex-a7-gic"};
    int node = fdt_find_compatible(fdt, "arm,gic-v3", parent);
    *ver = 3;
    for (unsigned i = 0; node < 0 && i < sizeof(v2) / sizeof(v2[0]); i++) {
        node = fdt_find_compatible(fdt, v2[i], parent);
        *ver = 2;
    }
    return node;
}

/* SPIs: disabled, idle, Group 1, default priority, routed to the boot CPU (`boot_route` is
 * its GICD_IROUTER value on v3, its CPU interface mask on v2). */
static void dist_init_spis(uint64_t boot_route)
{
    for (uint32_t n = 32; n < nr_irqs; n += 32) {
        mmio_write32(gicd + GICD_ICENABLER + n / 8, ~0u);
        mmio_write32(gicd + GICD_ICPENDR + n / 8, ~0u);
        mmio_write32(gicd + GICD_ICACTIVER + n / 8, ~0u);
        if (version == 3)
            mmio_write32(gicd + GICD_IGROUPR + n / 8, ~0u);
    }
    for (uint32_t n = 32; n < nr_irqs; n += 4) {
        mmio_write32(gicd + GICD_IPRIORITYR + n, PRIO_DEFAULT * 0x01010101u);
        if (version == 2)
            mmio_write32(gicd + GICD_ITARGETSR + n, (uint32_t)boot_route * 0x01010101u);
    }
    if (version == 3)
        for (uint32_t n = 32; n < nr_irqs; n++) {
            mmio_write32(gicd + GICD_IROUTER + 8 * n, (uint32_t)boot_route);
            mmio_write32(gicd + GICD_IROUTER + 8 * n + 4, (uint32_t)(boot_route >> 32));
        }
}

/* MPIDR affinity as GICR_TYPER and GICD_IROUTER hold it: Aff3.Aff2.Aff1.Aff0 in 32 bits. */
static uint32_t packed_affinity(uint64_t mpidr)
{
    return (uint32_t)((mpidr >> 8 & 0xff000000u) | (mpidr & 0xffffffu));
}

int gic_init(const void *fdt)
{
    int parent = -1, ver;
    int node = find(fdt, &parent, &ver);
    if (node < 0)
        return -1;
    uint64_t addr, size;
    if (fdt_reg(fdt, parent, node, 0, &addr, &size))
        return -1;
    gicd = addr;
    if (ver == 3) {
        uint32_t len;
        const void *p = fdt_prop(fdt, node, "#redistributor-regions", &len);
        int n = p && len == 4 ? (int)fdt_be32(p) : 1;
        for (int i = 0; i < n && i < MAX_RD_REGIONS; i++)
            if (fdt_reg(fdt, parent, node, 1 + i, &rd_region[i], &rd_region_size[i]) == 0)
                nr_rd_regions = i + 1;
        p = fdt_prop(fdt, node, "redistributor-stride", &len);
        if (p && len == 8)
            rd_stride = (uint64_t)fdt_be32(p) << 32 | fdt_be32((const uint8_t *)p + 4);
        else if (p && len == 4)
            rd_stride = fdt_be32(p);
        if (!nr_rd_regions)
            return -1;
    } else {
        if (fdt_reg(fdt, parent, node, 1, &addr, &size))
            return -1;
        gicc = addr;
    }
    version = ver;
    nr_irqs = 32 * ((mmio_read32(gicd + GICD_TYPER) & 0x1f) + 1);
    if (nr_irqs > GIC_MAX_INTID)
        nr_irqs = GIC_MAX_INTID;

    mmio_write32(gicd + GICD_CTLR, 0);
    if (version == 3) {
        wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP);
        dist_init_spis(read_mpidr() & 0xff00ffffffUL); /* IROUTER: MPIDR's affinity layout */
        /* Affinity routing first, with both groups disabled; then enable the groups. */
        mmio_write32(gicd + GICD_CTLR, GICD_CTLR_ARE);
        wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP);
        mmio_write32(gicd + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_EN1 | GICD_CTLR_EN0);
        wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP);
    } else {
        /* ITARGETSR0 is banked: its first byte names the reading CPU's interface. */
        dist_init_spis(mmio_read32(gicd + GICD_ITARGETSR) & 0xff);
        mmio_write32(gicd + GICD_CTLR, GICD_CTLR_EN0);
    }
    exc_set_irq_handler(gic_handle_irq);
    return version;
}

static uintptr_t find_redistributor(uint32_t affinity)
{
    for (int r = 0; r < nr_rd_regions; r++) {
        uint64_t off = 0;
        while (off + 0x20000 <= rd_region_size[r]) {
            uintptr_t rd = rd_region[r] + off;
            uint32_t lo = mmio_read32(rd + GICR_TYPER), hi = mmio_read32(rd + GICR_TYPER + 4);
            if (hi == affinity)
                return rd;
            if (lo & GICR_TYPER_LAST)
                break;
            off += rd_stride ? rd_stride : (lo & GICR_TYPER_VLPIS) ? 0x40000 : 0x20000;
        }
    }
    return 0;
}

int gic_init_cpu(void)
{
    uint64_t cpu = cpu_index();
    if (version < 0 || cpu >= PVKIT_MAX_CPUS)
        return -1;
    if (version == 3) {
        uint64_t mpidr = read_mpidr();
        uintptr_t rd = find_redistributor(packed_affinity(mpidr));
        if (!rd) {
            kprintf("gic: no redistributor for mpidr 0x%lx\n", mpidr & 0xff00ffffffUL);
            return -1;
        }
        rd_base[cpu] = rd;
        sgi_route[cpu] = mpidr;
        mmio_write32(rd + GICR_WAKER, mmio_read32(rd + GICR_WAKER) & ~GICR_WAKER_SLEEP);
        wait_clear(rd + GICR_WAKER, GICR_WAKER_ASLEEP);
        uintptr_t sgi = rd + GICR_SGI;
        mmio_write32(sgi + GICD_ICENABLER, ~0u);
        wait_clear(rd + GICR_CTLR, GICR_CTLR_RWP);
        mmio_write32(sgi + GICD_ICPENDR, ~0u);
        mmio_write32(sgi + GICD_ICACTIVER, ~0u);
        mmio_write32(sgi + GICD_IGROUPR, ~0u);
        for (uint32_t n = 0; n < 32; n += 4)
            mmio_write32(sgi + GICD_IPRIORITYR + n, PRIO_DEFAULT * 0x01010101u);
        mmio_write32(sgi + GICD_ISENABLER, 0xffffu);
        /* System-register CPU interface: open priority mask, one group-priority bit. */
        sysreg_write(icc_sre_el1, sysreg_read(icc_sre_el1) | 1);
        __asm__ volatile("isb");
        if (!(sysreg_read(icc_sre_el1) & 1)) {
            kprintf("gic: ICC_SRE_EL1.SRE stays 0: no system-register interface\n");
            return -1;
        }
        sysreg_write(icc_pmr_el1, 0xff);
        sysreg_write(icc_bpr1_el1, 0);
        sysreg_write(icc_ctlr_el1, 0); /* EOImode 0: EOI also deactivates */
        sysreg_write(icc_igrpen1_el1, 1);
        __asm__ volatile("isb");
    } else {
        sgi_route[cpu] = mmio_read32(gicd + GICD_ITARGETSR) & 0xff;
        if (!sgi_route[cpu])
            sgi_route[cpu] = 1u << (cpu & 7); /* uniprocessor GICs read 0 */
        mmio_write32(gicd + GICD_ICENABLER, 0xffff0000u);
        mmio_write32(gicd + GICD_ICPENDR, ~0u);
        mmio_write32(gicd + GICD_ICACTIVER, ~0u);
        for (uint32_t n = 0; n < 32; n += 4)
            mmio_write32(gicd + GICD_IPRIORITYR + n, PRIO_DEFAULT * 0x01010101u);
        mmio_write32(gicd + GICD_ISENABLER, 0xffffu);
        mmio_write32(gicc + GICC_PMR, 0xff);
        mmio_write32(gicc + GICC_BPR, 0);
        mmio_write32(gicc + GICC_CTLR, 1);
    }
    return 0;
}

void irq_register(uint32_t intid, irq_handler_t handler, void *arg)
{
    if (intid >= GIC_MAX_INTID)
        return;
    handlers[intid].arg = arg;
    handlers[intid].fn = handler;
    __asm__ volatile("dmb ish" ::: "memory");
}

/* The register frame holding `intid`'s bit or byte: this CPU's for SGIs and PPIs. */
static uintptr_t frame_for(uint32_t intid)
{
    if (version == 3 && intid < 32)
        return rd_base[cpu_index()] + GICR_SGI;
    return gicd;
}

static void set_bit_reg(uint32_t intid, uint32_t reg)
{
    if (version < 0 || intid >= GIC_MAX_INTID)
        return;
    mmio_write32(frame_for(intid) + reg + intid / 32 * 4, 1u << (intid % 32));
}

void gic_enable_irq(uint32_t intid) { set_bit_reg(intid, GICD_ISENABLER); }

void gic_disable_irq(uint32_t intid)
{
    set_bit_reg(intid, GICD_ICENABLER);
    if (version == 3 && intid < 32)
        wait_clear(rd_base[cpu_index()] + GICR_CTLR, GICR_CTLR_RWP);
    else if (version == 3)
        wait_clear(gicd + GICD_CTLR, GICD_CTLR_RWP);
}

int gic_is_pending(uint32_t intid)
{
    if (version < 0 || intid >= GIC_MAX_INTID)
        return 0;
    return mmio_read32(frame_for(intid) + GICD_ISPENDR + intid / 32 * 4) >> (intid % 32) & 1;
}

void gic_set_priority(uint32_t intid, uint8_t priority)
{
    if (version < 0 || intid >= GIC_MAX_INTID)
        return;
    uintptr_t reg = frame_for(intid) + GICD_IPRIORITYR + (intid & ~3u);
    unsigned shift = 8 * (intid % 4);
    mmio_write32(reg, (mmio_read32(reg) & ~(0xffu << shift)) | (uint32_t)priority << shift);
}

void gic_send_sgi(uint64_t cpu, uint32_t intid)
{
    if (version < 0 || cpu >= PVKIT_MAX_CPUS || intid > 15)
        return;
    uint64_t route = sgi_route[cpu];
    __asm__ volatile("dsb ish" ::: "memory"); /* stores before the SGI are seen by its handler */
    if (version == 3) {
        uint64_t aff0 = route & 0xff;
        uint64_t v = (route >> 32 & 0xff) << 48 | (route >> 16 & 0xff) << 32 |
                     (route >> 8 & 0xff) << 16 | (aff0 >> 4) << 44 | (uint64_t)intid << 24 |
                     1u << (aff0 & 15);
        sysreg_write(icc_sgi1r_el1, v);
        __asm__ volatile("isb");
    } else {
        mmio_write32(gicd + GICD_SGIR, (uint32_t)route << 16 | intid);
    }
}

uint32_t gic_ack(void)
{
    if (version == 3) {
        uint32_t iar = (uint32_t)sysreg_read(icc_iar1_el1);
        __asm__ volatile("dsb sy" ::: "memory"); /* the acknowledge completes before handling */
        return iar;
    }
    return version == 2 ? mmio_read32(gicc + GICC_IAR) : GIC_SPURIOUS;
}

uint32_t gic_intid(uint32_t iar) { return version == 3 ? iar & 0xffffff : iar & 0x3ff; }

void gic_eoi(uint32_t iar)
{
    if (version == 3) {
        sysreg_write(icc_eoir1_el1, iar);
        __asm__ volatile("isb");
    } else if (version == 2) {
        mmio_write32(gicc + GICC_EOIR, iar);
    }
}

void gic_handle_irq(struct exc_frame *frame)
{
    (void)frame;
    uint32_t iar = gic_ack();
    uint32_t intid = gic_intid(iar);
    if (intid >= 1020)
        return; /* spurious: nothing to end */
    if (intid < GIC_MAX_INTID && handlers[intid].fn) {
        handlers[intid].fn(intid, handlers[intid].arg);
    } else {
        kprintf("gic: unexpected interrupt %u on cpu %lu: disabled\n", intid, cpu_index());
        gic_disable_irq(intid);
    }
    gic_eoi(iar);
}
