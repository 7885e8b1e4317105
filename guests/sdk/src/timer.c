/* Generic-timer interrupt numbers from the device tree. */
#include <pvkit/fdt.h>
#include <pvkit/timer.h>

/* One <type number flags> specifier: type 1 is a PPI (INTID = number + 16), 0 an SPI (+ 32). */
static uint32_t intid_of(const uint8_t *spec)
{
    return fdt_be32(spec + 4) + (fdt_be32(spec) == 1 ? 16 : 32);
}

int timer_irqs_from_fdt(const void *fdt, struct timer_irqs *out)
{
    out->phys = 30;
    out->virt = 27;
    int node = fdt_find_compatible(fdt, "arm,armv8-timer", 0);
    uint32_t len;
    const uint8_t *irqs = node >= 0 ? fdt_prop(fdt, node, "interrupts", &len) : 0;
    /* Order: secure physical, non-secure physical, virtual, hypervisor (3 cells each). */
    if (!irqs || len < 36 || len % 12)
        return -1;
    out->phys = intid_of(irqs + 12);
    out->virt = intid_of(irqs + 24);
    return 0;
}
