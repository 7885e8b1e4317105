/* GICv2 (IHI 0048) and GICv3 (IHI 0069) driver, found from the device tree.
 *
 * gic_init() on the boot CPU (distributor: every SPI in Group 1, priority 0xa0, routed to the
 * boot CPU, disabled), then gic_init_cpu() on every CPU that takes interrupts (redistributor or
 * banked distributor registers, CPU interface: SGIs enabled, PPIs disabled, priority mask open).
 * SGIs and PPIs are per CPU: gic_enable_irq() of one affects the calling CPU only.
 * gic_init() installs gic_handle_irq() as the IRQ handler: it acknowledges one interrupt, calls
 * the handler registered for its INTID and EOIs it. */
#ifndef PVKIT_GIC_H
#define PVKIT_GIC_H
#include <pvkit/exception.h>

#define GIC_MAX_INTID 1020 /* SGIs 0-15, PPIs 16-31, SPIs 32-1019 */
#define GIC_SPURIOUS 1023

typedef void (*irq_handler_t)(uint32_t intid, void *arg);

/* 2 or 3 when a GIC was found and its distributor set up, else -1 (and nothing was touched). */
int gic_init(const void *fdt);
int gic_version(void);
/* Per-CPU set-up; records how gic_send_sgi() addresses this CPU (by its cpu_index()). */
int gic_init_cpu(void);
void irq_register(uint32_t intid, irq_handler_t handler, void *arg);
void gic_enable_irq(uint32_t intid);
void gic_disable_irq(uint32_t intid);
void gic_set_priority(uint32_t intid, uint8_t priority);
/* 1 when `intid` is pending (for SGIs/PPIs: on the calling CPU). */
int gic_is_pending(uint32_t intid);
/* SGI `intid` (0-15) to the CPU whose cpu_index() is `cpu`, after it ran gic_init_cpu(). */
void gic_send_sgi(uint64_t cpu, uint32_t intid);
/* Acknowledge (the raw IAR value; INTID in gic_intid()) and end an interrupt. */
uint32_t gic_ack(void);
uint32_t gic_intid(uint32_t iar);
void gic_eoi(uint32_t iar);
void gic_handle_irq(struct exc_frame *frame);
#endif
