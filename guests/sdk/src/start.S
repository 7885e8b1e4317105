/* arm64 Image header (Documentation/arm64/booting.rst) and entry points; vectors are in vectors.S. */
#include "asm.h"
        .section .text.head, "ax"
        .globl _head
_head:
        b       _start                  /* code0 */
        .long   0                       /* code1 */
        .quad   0                       /* text_offset */
        .quad   _image_size             /* image_size, bss and stacks included */
        .quad   0x2                     /* flags: little-endian, 4 KiB pages, 2 MiB-aligned base */
        .quad   0, 0, 0
        .ascii  "ARM\x64"               /* magic */
        .long   0

        .text
        .globl  _start
_start:                                 /* x0 = DTB, MMU off, EL1 */
        mov     x19, x0
        msr     tpidr_el1, xzr          /* cpu_index() of the boot CPU */
        adr_l   x1, vectors
        msr     vbar_el1, x1
        isb
        adr_l   x1, _bss_start
        adr_l   x2, _stacks             /* stacks need no zeroing */
1:      cmp     x1, x2
        b.hs    2f
        str     xzr, [x1], #8
        b       1b
2:      mov     x0, #0
        bl      stack_for
        mov     x0, x19
        bl      guest_main
        b       halt

        .globl  secondary_entry
        .balign 8
secondary_entry:                        /* x0 = context id = CPU index */
        mov     x19, x0
        msr     tpidr_el1, x0           /* cpu_index() */
        adr_l   x1, vectors
        msr     vbar_el1, x1
        isb
        bl      stack_for
        mov     x0, x19
        bl      guest_secondary
        b       halt

/* Set sp to the top of the stack of CPU index x0 (clamped to the last one). */
stack_for:
        mov     x2, #(PVKIT_MAX_CPUS - 1)
        cmp     x0, x2
        csel    x0, x0, x2, ls
        add     x0, x0, #1
        adr_l   x1, _stacks
        mov     x2, #PVKIT_STACK_SIZE
        madd    x1, x0, x2, x1
        mov     sp, x1
        ret

/* The default guest_secondary, for guests that start no other CPU or give it nothing to do:
 * park the CPU in WFI (it sleeps, it does not spin). A guest's own definition replaces it. */
        .weak   guest_secondary
guest_secondary:
        .globl  halt
halt:   wfi
        b       halt

        .globl  read_mpidr
read_mpidr:
        mrs     x0, mpidr_el1
        ret
