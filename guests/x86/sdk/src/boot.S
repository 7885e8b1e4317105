/* x86-64 boot for pvkit guests.
 *
 * Two ways in, both in 32-bit protected mode with paging off: PVH (entry named by the
 * Xen ELF note, EBX = hvm_start_info) and multiboot v1 (the ELF entry, EAX = 0x2BADB002,
 * EBX = multiboot_info). Both build identity page tables for the low 4 GiB, enter long
 * mode and call x86_entry(cpu) on a per-CPU stack. Application processors arrive at
 * ap_trampoline in real mode (INIT-SIPI), copied below 1 MiB by smp_start().
 */
	.file "boot.S"  /* not the temporary .s name: keeps the ELF byte-identical across builds */
#define CODE64 0x08
#define DATA 0x10
#define CODE32 0x18
#define STACK_SIZE 16384
#define MAX_CPUS 16

	.section .multiboot, "a"
	.balign 4
	.long 0x1BADB002		/* magic */
	.long 0x00000002		/* flags: memory information wanted */
	.long -(0x1BADB002 + 0x00000002)

	.section .note.Xen, "a", @note
	.balign 4
	.long 4				/* name size ("Xen\0") */
	.long 4				/* descriptor size */
	.long 18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start

	.section .text.boot, "ax"
	.code32
	.globl pvh_start, mb_start
pvh_start:
	movl $1, %eax			/* boot_protocol 1 = PVH */
	jmp 1f
mb_start:
	cmpl $0x2BADB002, %eax
	jne 2f
	movl $2, %eax			/* boot_protocol 2 = multiboot */
1:	movl %eax, boot_protocol
	movl %ebx, boot_info
	movl $stacks + STACK_SIZE, %esp
	call build_page_tables
	jmp enter_long_mode
2:	hlt				/* not started by a multiboot loader */
	jmp 2b

/* PML4[0] -> PDPT; PDPT[0..3] -> four PDs; 2048 2-MiB pages, user-accessible. */
build_page_tables:
	movl $pdpt + 7, pml4
	xorl %ecx, %ecx
1:	movl %ecx, %eax
	shll $12, %eax
	addl $pd + 7, %eax
	movl %eax, pdpt(,%ecx,8)
	incl %ecx
	cmpl $4, %ecx
	jne 1b
	xorl %ecx, %ecx
2:	movl %ecx, %eax
	shll $21, %eax
	orl $0x87, %eax			/* present, writable, user, 2 MiB */
	movl %eax, pd(,%ecx,8)
	movl %ecx, %eax
	shrl $11, %eax
	movl %eax, pd+4(,%ecx,8)	/* bits 32+ of the address: 1 per 4 GiB (0 here) */
	incl %ecx
	cmpl $2048, %ecx
	jne 2b
	ret

enter_long_mode:
	lgdt gdt64_pointer
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xC0000080, %ecx		/* EFER */
	rdmsr
	orl $0x100, %eax		/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* PG | PE */
	movl %eax, %cr0
	ljmp $CODE64, $long_entry

	.code64
long_entry:
	movw $DATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movl starting_cpu(%rip), %edi
	movl %edi, %eax
	incl %eax
	imull $STACK_SIZE, %eax
	leaq stacks(%rip), %rsp
	addq %rax, %rsp
	call x86_entry
3:	hlt
	jmp 3b

/* Real mode at CS = 0x0800 (SIPI vector 8), copied to 0x8000. */
	.code16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	movw %cs, %ax
	movw %ax, %ds
	lgdtl ap_gdt_pointer - ap_trampoline
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $CODE32, $ap_protected
	.balign 4
ap_gdt_pointer:
	.word gdt64_end - gdt64 - 1
	.long gdt64
ap_trampoline_end:

	.code32
ap_protected:
	movw $DATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	jmp enter_long_mode

/* Hypercall sites: SysV (nr, a0, a1, a2, a3) -> KVM (RAX; RBX, RCX, RDX, RSI). */
	.code64
	.macro HYPERCALL_SITE name, insn
	.globl \name, \name\()_insn
\name:
	pushq %rbx
	movq %rdi, %rax
	movq %rsi, %rbx
	movq %rdx, %r9
	movq %rcx, %rdx
	movq %r9, %rcx
	movq %r8, %rsi
\name\()_insn:
	\insn
	popq %rbx
	ret
	.endm
	HYPERCALL_SITE hc_vmcall, vmcall
	HYPERCALL_SITE hc_vmmcall, vmmcall

/* void enter_user(void (*fn)(void), void *stack): run fn at CPL 3 until it calls
 * leave_user(), which far-calls through the DPL 3 call gate back to user_returned at CPL 0
 * (a call gate, not INT n: see docs/x86.md on privilege changes). */
	.globl enter_user, user_returned
enter_user:
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, user_saved_rsp(%rip)
	pushq $0x23			/* SS: user data, RPL 3 */
	pushq %rsi
	pushfq
	pushq $0x2B			/* CS: user code, RPL 3 */
	pushq %rdi
	iretq
user_returned:
	movq user_saved_rsp(%rip), %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	ret

/* u64 gp_probe(void): a load from a non-canonical address, which raises #GP(0). */
	.globl gp_probe, gp_probe_fault, gp_probe_resume
gp_probe:
	movabs $0x8000000000000000, %rax
gp_probe_fault:
	movq (%rax), %rax
gp_probe_resume:
	ret

	.globl leave_user
leave_user:
	lcall *gate_pointer(%rip)

/* Exception and interrupt entry: push a uniform frame, call trap_dispatch(frame). */
	.macro ISR vector, has_error
	.globl isr\vector
isr\vector:
	.if \has_error == 0
	pushq $0
	.endif
	pushq $\vector
	jmp isr_common
	.endm
	ISR 6, 0
	ISR 13, 1
	ISR 14, 1
	ISR 64, 0
isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	call trap_dispatch
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq

	.section .data
	.balign 16
	.globl gdt64, tss_descriptor
gdt64:
	.quad 0
	.quad 0x00AF9A000000FFFF	/* 0x08 kernel code, 64-bit */
	.quad 0x00CF92000000FFFF	/* 0x10 kernel data */
	.quad 0x00CF9A000000FFFF	/* 0x18 kernel code, 32-bit (AP start) */
	.quad 0x00CFF2000000FFFF	/* 0x20 user data */
	.quad 0x00AFFA000000FFFF	/* 0x28 user code, 64-bit */
tss_descriptor:
	.quad 0, 0			/* 0x30 TSS, filled in by tables_init() */
	.globl call_gate
call_gate:
	.quad 0, 0			/* 0x40 call gate to user_returned, DPL 3 */
gdt64_end:
gdt64_pointer:
	.word gdt64_end - gdt64 - 1
	.quad gdt64
	.globl boot_protocol, boot_info, starting_cpu, user_saved_rsp
boot_protocol: .long 0
boot_info: .long 0
starting_cpu: .long 0
	.balign 8
user_saved_rsp: .quad 0
gate_pointer: .long 0
	.word 0x43			/* the call gate, RPL 3 */

	.section .bss
	.balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd: .skip 4 * 4096
	.globl stacks
stacks: .skip (MAX_CPUS + 1) * STACK_SIZE
