/* fz_vmcall / fz_vmmcall: load every general register from fz.in, issue one hypercall, store
 * every register and RSP after it in fz.out / fz.sp_after, restore the caller's state. Only
 * RIP-relative memory operands are used around the call, so no register is needed to find
 * fz (one CPU at a time: the boot CPU, at CPL 0 or CPL 3). */
	.code64
	.macro FZ_CALL name, insn
	.globl \name, \name\()_insn
\name:
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, fz+256(%rip)
	movq fz+8(%rip), %rbx
	movq fz+16(%rip), %rcx
	movq fz+24(%rip), %rdx
	movq fz+32(%rip), %rsi
	movq fz+40(%rip), %rdi
	movq fz+48(%rip), %rbp
	movq fz+56(%rip), %r8
	movq fz+64(%rip), %r9
	movq fz+72(%rip), %r10
	movq fz+80(%rip), %r11
	movq fz+88(%rip), %r12
	movq fz+96(%rip), %r13
	movq fz+104(%rip), %r14
	movq fz+112(%rip), %r15
	movq fz+0(%rip), %rax
\name\()_insn:
	\insn
	movq %rax, fz+128(%rip)
	movq %rbx, fz+136(%rip)
	movq %rcx, fz+144(%rip)
	movq %rdx, fz+152(%rip)
	movq %rsi, fz+160(%rip)
	movq %rdi, fz+168(%rip)
	movq %rbp, fz+176(%rip)
	movq %r8, fz+184(%rip)
	movq %r9, fz+192(%rip)
	movq %r10, fz+200(%rip)
	movq %r11, fz+208(%rip)
	movq %r12, fz+216(%rip)
	movq %r13, fz+224(%rip)
	movq %r14, fz+232(%rip)
	movq %r15, fz+240(%rip)
	movq %rsp, fz+264(%rip)
	movq fz+256(%rip), %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	ret
	.endm
	FZ_CALL fz_vmcall, vmcall
	FZ_CALL fz_vmmcall, vmmcall
