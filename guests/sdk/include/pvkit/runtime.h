/* The runtime: boot entry, per-CPU stacks, exception reports, the two entry points a guest writes. */
#ifndef PVKIT_RUNTIME_H
#define PVKIT_RUNTIME_H
#include <pvkit/types.h>
/* Implemented by the guest: the boot CPU enters guest_main with the DTB address. A CPU started
 * at secondary_entry enters guest_secondary with its CPU_ON context; a guest that starts no
 * other CPU need not define it (the SDK's default parks the CPU in WFI). */
void guest_main(const void *fdt);
void guest_secondary(uint64_t context);
/* Physical entry point to hand to CPU_ON; sets the stack from the context (a CPU index). */
void secondary_entry(void);
uint64_t read_mpidr(void);
/* This CPU's index: 0 on the boot CPU, the CPU_ON context on secondaries (kept in TPIDR_EL1). */
static inline uint64_t cpu_index(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, tpidr_el1" : "=r"(v));
    return v;
}
void halt(void) __attribute__((noreturn));
#endif
