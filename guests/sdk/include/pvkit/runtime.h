/* The runtime: boot entry, per-CPU stacks, exception reports, the two entry points a guest writes. */
#ifndef PVKIT_RUNTIME_H
#define PVKIT_RUNTIME_H
#include <pvkit/types.h>
/* Implemented by the guest: boot CPU with the DTB address, secondaries with their CPU_ON context. */
void guest_main(const void *fdt);
void guest_secondary(uint64_t context);
/* Physical entry point to hand to CPU_ON; sets the stack from the context (a CPU index). */
void secondary_entry(void);
uint64_t read_mpidr(void);
void halt(void) __attribute__((noreturn));
#endif
