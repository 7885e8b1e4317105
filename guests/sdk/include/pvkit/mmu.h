/* A tiny stage-1 MMU for EL1&0: 4 KiB granule, 39-bit VA (three levels from level 1), TTBR0
 * only, tables from a fixed pool in the image's bss. Mappings are 2 MiB blocks where aligned
 * (unless MMU_PAGES) and 4 KiB pages elsewhere; MAIR index 0 is Device-nGnRnE, 1 Normal WB. */
#ifndef PVKIT_MMU_H
#define PVKIT_MMU_H
#include <pvkit/types.h>

#define MMU_DEVICE (1u << 0)    /* Device-nGnRnE, never executable; else Normal write-back */
#define MMU_READONLY (1u << 1)  /* AP[2]: read-only at every EL that has access */
#define MMU_USER (1u << 2)      /* AP[1]: EL0 has access too */
#define MMU_USER_EXEC (1u << 3) /* clear UXN (every other mapping is UXN) */
#define MMU_NOEXEC (1u << 4)    /* set PXN */
#define MMU_PAGES (1u << 5)     /* 4 KiB pages even where a block would do */

#define MMU_PAGE_SIZE 4096UL
#define MMU_BLOCK_SIZE 0x200000UL
#define MMU_VA_BITS 39

/* Forget every mapping (tables go back to the pool). Call with the MMU off. */
void mmu_reset(void);
/* Map [va, va+size) to pa; replaces existing pages or blocks of the same size. 0 or -1. */
int mmu_map(uint64_t va, uint64_t pa, uint64_t size, unsigned flags);
/* Remove pages (not blocks) in [va, va+size). 0 or -1. */
int mmu_unmap(uint64_t va, uint64_t size);
/* The leaf descriptor mapping `va` (block or page) and its level, or 0. */
volatile uint64_t *mmu_leaf(uint64_t va, int *level);
/* The level (1-3) of the invalid descriptor a walk for `va` stops at, or 0 when it is mapped. */
int mmu_fault_level(uint64_t va);
/* The identity map guests want: RAM from /memory in blocks, except the 2 MiB blocks the image
 * occupies, which get 4 KiB pages (so guests can change single pages), and the console UART. */
int mmu_identity_default(const void *fdt);
/* Program MAIR/TCR/TTBR0 and turn the MMU and caches on, on the calling CPU. */
void mmu_enable(void);
/* Make a changed descriptor for `va` visible to every CPU's table walks and TLBs. */
void mmu_flush_va(uint64_t va);
#endif
