#ifndef PVKIT_ASM_H
#define PVKIT_ASM_H
#define PVKIT_MAX_CPUS 256
#define PVKIT_STACK_SIZE 16384
/* PC-relative address of a symbol: the image runs wherever the loader puts it. */
.macro adr_l reg, sym
        adrp    \reg, \sym
        add     \reg, \reg, :lo12:\sym
.endm
#endif
