/* Device register access: single-copy-atomic loads and stores the compiler may not merge. */
#ifndef PVKIT_MMIO_H
#define PVKIT_MMIO_H
#include <pvkit/types.h>
static inline uint32_t mmio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline uint64_t mmio_read64(uintptr_t addr) { return *(volatile uint64_t *)addr; }
#endif
