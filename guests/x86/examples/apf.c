/* apf-x86: the guest side of KVM's asynchronous page faults (one vCPU).
 *
 * A tiny kernel at CPL 0 runs five cooperative tasks at CPL 3: four "walkers", each walking
 * its own 1 MiB slice of a 4 MiB work region, and one "compute" task that never touches the
 * region and counts rounds. With async page faults, a walker that touches a page the host
 * does not have is parked ("page not present", #PF with flags = 1 and CR2 = token) and the
 * other tasks run until the host says "page ready" (an interrupt carrying the token).
 * Without them (today's pvkit: KVM_FEATURE_ASYNC_PF clear) the same work runs and the host
 * simply stalls the vCPU on such a page.
 *
 * Work region: guest-physical 0x4000000..0x4400000 (64 MiB + 4 MiB), identity-mapped with
 * the SDK's user-accessible 2 MiB pages, inside the pc board's default 256 MiB of RAM; the
 * guest refuses to run with less RAM than that. Walker i owns 0x4000000 + i MiB; it touches
 * every 4 KiB page with a load and a store, twice: pass 1 writes a pattern, pass 2 checks it
 * and writes its complement, which the kernel checks once every task is done.
 *
 * Entries to CPL 0: tasks yield and exit with a far call through the SDK's DPL 3 call gate
 * (GDT 0x40, repointed here to gate_entry): today's pvkit cannot deliver INT n from CPL 3
 * (docs/x86.md, "Limitation"), and Unicorn's SYSCALL only calls hooks and moves on. #PF and
 * the "page ready" vector arrive as the CPU delivers them, on the TSS RSP0 stack.
 *
 * Command line: `no-kvmapf` runs without async page faults even when they are offered.
 * Ends with ACPI S5 (exit status 0) when every check held, isa-debug-exit otherwise.
 */
#include <pvkit/x86.h>

#define KVM_ASYNC_PF_ENABLED (1UL << 0)
#define KVM_ASYNC_PF_DELIVERY_AS_INT (1UL << 3) /* SEND_ALWAYS (bit 1) stays clear: CPL 3 only */
#define KVM_PV_REASON_PAGE_NOT_PRESENT 1
#define APF_WAKE_ALL 0xFFFFFFFFu
#define APF_VECTOR 0x41 /* "page ready"; next to the SDK's IPI vector 0x40 */

#define REGION 0x4000000UL
#define SLICE (1UL << 20)
#define PAGE 4096UL
#define PAGES_PER_SLICE (SLICE / PAGE)
#define PASSES 2
#define WALKERS 4
#define TASKS (WALKERS + 1) /* the compute task is the last */
#define YIELD_EVERY 8       /* pages a walker touches between yields */

#define APIC_EOI ((volatile u32 *)0xFEE000B0UL)
#define PM1A_CNT 0x604
#define SLP_EN_S5 0x2000
#define USER_CS 0x2B
#define USER_SS 0x23
#define RFLAGS_IF 0x202 /* IF plus the always-one bit 1 */

/* Trap numbers run_task() returns; 256 is not an IDT vector: it is the call gate. */
#define TRAP_PF 14
#define TRAP_GATE 256
enum { SYS_YIELD, SYS_EXIT }; /* RDI at the call gate */

/* The per-vCPU area of MSR_KVM_ASYNC_PF_EN: 64 bytes, 64-byte aligned, zeroed. */
struct kvm_vcpu_pv_apf_data {
	u32 flags; /* KVM_PV_REASON_PAGE_NOT_PRESENT while a not-present #PF is being taken */
	u32 token; /* the "page ready" token */
	u8 pad[56];
} __attribute__((aligned(64)));

enum state { RUNNABLE, PARKED, DONE };
struct task {
	struct frame frame; /* its CPL 3 registers while it is not running */
	enum state state;
	u32 token; /* while PARKED */
};

struct walk {
	u64 touched; /* pages, over all passes */
	int passes;
	u64 bad, bad_address, bad_read, bad_want; /* pattern mismatches, the first one */
};

static struct kvm_vcpu_pv_apf_data apf_area;
static struct pvclock_vcpu_time_info clock;
static struct task tasks[TASKS];
static u8 task_stacks[TASKS][4096] __attribute__((aligned(16)));

/* Written by the tasks at CPL 3 (the SDK maps all memory user-accessible), read by the kernel. */
static struct walk walks[WALKERS];
static volatile u64 compute_rounds, compute_sink;
static volatile int walkers_left = WALKERS;

static int apf_on, have_kvmclock;
static struct {
	u64 not_present, ready, wake_all, unknown;
} stats;
/* Tokens whose "page ready" came before any task was parked on them (not expected with one
 * vCPU, since the #PF handler runs with IF clear; kept so a late park cannot sleep forever). */
static u32 early[8];

/* Used by the assembly below. */
struct frame *current_frame;
u64 kernel_rsp;
u64 run_task(struct frame *f);
void gate_entry(void), pf_entry(void), apf_irq_entry(void);
extern u64 call_gate[];

_Static_assert(__builtin_offsetof(struct frame, vector) == 120, "frame layout (asm below)");
_Static_assert(__builtin_offsetof(struct frame, cs) == 144, "frame layout (asm below)");
_Static_assert(sizeof(struct frame) == 22 * 8, "frame layout (asm below)");

/* Switching tasks. run_task() saves the kernel's callee-saved registers and stack, loads a
 * task's frame and IRETs to CPL 3. When the task comes back to CPL 0 (call gate, or #PF),
 * task_trap copies the frame the CPU and the stub built on the RSP0 stack into the task and
 * returns from run_task() with the trap number, on the kernel stack: the scheduler loop
 * decides what runs next. "Page ready" is handled where it lands and returns to what it
 * interrupted (a task, or the idle HLT), so it needs no switch. */
__asm__(".pushsection .text\n"
	".globl run_task, gate_entry, pf_entry, apf_irq_entry\n"
	"run_task:\n"
	"	pushq %rbx\n pushq %rbp\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
	"	movq %rsp, kernel_rsp(%rip)\n"
	"	movq %rdi, current_frame(%rip)\n"
	"	movq %rdi, %rsp\n"
	"	popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %r11\n popq %r10\n"
	"	popq %r9\n popq %r8\n popq %rbp\n popq %rdi\n popq %rsi\n popq %rdx\n"
	"	popq %rcx\n popq %rbx\n popq %rax\n"
	"	addq $16, %rsp\n" /* vector, error */
	"	iretq\n"
	/* A far call through a call gate pushes SS, RSP, CS, RIP (no RFLAGS) and leaves IF
	 * alone: add the task's RFLAGS to make the frame an interrupt's, then mask. */
	"gate_entry:\n"
	"	pushfq\n"
	"	cli\n"
	"	pushq %rax\n"
	"	movq 8(%rsp), %rax\n"  /* RFLAGS */
	"	xchgq 24(%rsp), %rax\n" /* CS out, RFLAGS in */
	"	xchgq 16(%rsp), %rax\n" /* RIP out, CS in */
	"	movq %rax, 8(%rsp)\n"
	"	popq %rax\n"
	"	pushq $0\n"
	"	pushq $256\n" /* TRAP_GATE */
	"	jmp task_trap\n"
	"pf_entry:\n" /* the CPU pushed an error code */
	"	pushq $14\n"
	"task_trap:\n"
	"	pushq %rax\n pushq %rbx\n pushq %rcx\n pushq %rdx\n pushq %rsi\n pushq %rdi\n"
	"	pushq %rbp\n pushq %r8\n pushq %r9\n pushq %r10\n pushq %r11\n pushq %r12\n"
	"	pushq %r13\n pushq %r14\n pushq %r15\n"
	"	cld\n"
	"	testb $3, 144(%rsp)\n" /* from CPL 0: the kernel itself faulted */
	"	jz 1f\n"
	"	movq %rsp, %rsi\n"
	"	movq current_frame(%rip), %rdi\n"
	"	movl $22, %ecx\n"
	"	rep movsq\n"
	"	movq 120(%rsp), %rax\n" /* the trap number is run_task's result */
	"	movl $0x10, %ecx\n"
	"	movw %cx, %ss\n" /* entry from CPL 3 left SS null: back to kernel data */
	"	movq kernel_rsp(%rip), %rsp\n"
	"	popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbp\n popq %rbx\n"
	"	ret\n"
	"1:	movq %rsp, %rdi\n"
	"	call kernel_fault\n" /* does not return */
	"apf_irq_entry:\n"
	"	pushq $0\n"
	"	pushq $0x41\n" /* APF_VECTOR */
	"	pushq %rax\n pushq %rbx\n pushq %rcx\n pushq %rdx\n pushq %rsi\n pushq %rdi\n"
	"	pushq %rbp\n pushq %r8\n pushq %r9\n pushq %r10\n pushq %r11\n pushq %r12\n"
	"	pushq %r13\n pushq %r14\n pushq %r15\n"
	"	cld\n"
	"	movq %rsp, %rdi\n"
	"	call page_ready\n"
	"	popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %r11\n popq %r10\n"
	"	popq %r9\n popq %r8\n popq %rbp\n popq %rdi\n popq %rsi\n popq %rdx\n"
	"	popq %rcx\n popq %rbx\n popq %rax\n"
	"	addq $16, %rsp\n"
	"	iretq\n"
	".popsection\n");

static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline u64 read_cr2(void)
{
	u64 v;
	__asm__ volatile("mov %%cr2, %0" : "=r"(v));
	return v;
}

/* -- CPL 3 side ------------------------------------------------------------------------- */
static void sys_call(u64 nr)
{
	/* m16:32 far pointer: the offset is ignored for a call gate; selector 0x43 = GDT 0x40,
	 * RPL 3. The kernel saves and restores every register, so only memory is clobbered. */
	static const struct __attribute__((packed)) { u32 offset; u16 selector; } gate = { 0, 0x43 };
	__asm__ volatile("lcall *%0" ::"m"(gate), "D"(nr) : "memory");
}

static u64 pattern(u64 address, int task) { return address * 0x9E3779B97F4A7C15UL ^ (u64)task; }

static void walker(int i)
{
	struct walk *w = &walks[i];
	for (int pass = 0; pass < PASSES; pass++) {
		for (u64 page = 0; page < PAGES_PER_SLICE; page++) {
			volatile u64 *p = (volatile u64 *)(REGION + i * SLICE + page * PAGE);
			u64 want = pattern((u64)p, i);
			u64 got = *p; /* the load: a not-present #PF re-executes it */
			if (pass == 0) {
				*p = want;
			} else {
				if (got != want && !w->bad++) {
					w->bad_address = (u64)p;
					w->bad_read = got;
					w->bad_want = want;
				}
				*p = ~want;
			}
			w->touched++;
			if ((page + 1) % YIELD_EVERY == 0)
				sys_call(SYS_YIELD);
		}
		w->passes++;
	}
	walkers_left--; /* one vCPU, cooperative: no other writer runs meanwhile */
	sys_call(SYS_EXIT);
}

static void compute(void)
{
	u64 x = 1;
	while (walkers_left) {
		for (int i = 0; i < 256; i++)
			x = x * 6364136223846793005UL + 1442695040888963407UL;
		compute_rounds++;
		sys_call(SYS_YIELD);
	}
	compute_sink = x;
	sys_call(SYS_EXIT);
}

static void task_main(int i)
{
	if (i < WALKERS)
		walker(i);
	else
		compute();
	for (;;) /* not reached: the kernel never resumes a task that exited */
		;
}

/* -- CPL 0 side ------------------------------------------------------------------------- */
static void set_gate(int vector, void (*handler)(void))
{
	/* The SDK's IDT, found where the CPU finds it; DPL 0: INT n from CPL 3 may not use it. */
	struct __attribute__((packed)) { u16 limit; u64 base; } idtr;
	__asm__ volatile("sidt %0" : "=m"(idtr));
	u64 *gate = (u64 *)idtr.base + vector * 2, a = (u64)handler;
	gate[0] = (a & 0xFFFF) | 0x08UL << 16 | 0x8EUL << 40 | (a >> 16 & 0xFFFF) << 48;
	gate[1] = a >> 32;
}

static void install_entries(void)
{
	/* This guest never uses enter_user/leave_user, so the SDK's call gate can be ours. */
	u64 a = (u64)gate_entry;
	call_gate[0] = (a & 0xFFFF) | 0x08UL << 16 | 0xECUL << 40 | (a >> 16 & 0xFFFF) << 48;
	call_gate[1] = a >> 32;
	set_gate(TRAP_PF, pf_entry);
	set_gate(APF_VECTOR, apf_irq_entry);
}

static void wake(u32 token)
{
	if (token == APF_WAKE_ALL) {
		stats.wake_all++;
		for (int i = 0; i < TASKS; i++)
			if (tasks[i].state == PARKED)
				tasks[i].state = RUNNABLE;
		for (unsigned i = 0; i < sizeof(early) / sizeof(early[0]); i++)
			early[i] = 0;
		return;
	}
	for (int i = 0; i < TASKS; i++)
		if (tasks[i].state == PARKED && tasks[i].token == token) {
			tasks[i].state = RUNNABLE;
			stats.ready++;
			return;
		}
	stats.unknown++;
	for (unsigned i = 0; token && i < sizeof(early) / sizeof(early[0]); i++)
		if (!early[i]) {
			early[i] = token;
			break;
		}
}

/* The "page ready" interrupt, in the order the ABI gives: token, clear, ACK, EOI, wake. */
void page_ready(struct frame *f)
{
	(void)f;
	u32 token = READ_ONCE(apf_area.token);
	WRITE_ONCE(apf_area.token, 0);
	wrmsr(MSR_KVM_ASYNC_PF_ACK, 1);
	*APIC_EOI = 0;
	wake(token);
}

static void park(int i, u32 token)
{
	for (unsigned k = 0; k < sizeof(early) / sizeof(early[0]); k++)
		if (early[k] == token) { /* already ready: run it again at once */
			early[k] = 0;
			return;
		}
	tasks[i].state = PARKED;
	tasks[i].token = token;
}

static void fail(const char *what, const struct frame *f, int task)
{
	puts("apf: ");
	puts(what);
	if (f->vector != TRAP_PF) {
		puts(" ");
		put_dec((s64)f->vector);
	}
	puts(" at rip ");
	put_hex(f->rip);
	if (f->vector == TRAP_PF) {
		puts(" address ");
		put_hex(read_cr2());
	}
	if (task >= 0) {
		puts(" in task ");
		put_dec(task);
	}
	putc('\n');
	guest_exit(0x7E);
}

void kernel_fault(struct frame *f) { fail(f->vector == TRAP_PF ? "kernel page fault" : "kernel exception", f, -1); }

static void page_fault(int i)
{
	u64 token = read_cr2(); /* before anything else could fault */
	u32 flags = apf_on ? READ_ONCE(apf_area.flags) : 0;
	if (flags == KVM_PV_REASON_PAGE_NOT_PRESENT) {
		WRITE_ONCE(apf_area.flags, 0); /* the next #PF may be another not-present one */
		stats.not_present++;
		park(i, (u32)token);
		return;
	}
	if (flags) {
		puts("apf: #PF with unknown async PF flags ");
		put_hex(flags);
		putc('\n');
	}
	fail("page fault (not an async one)", &tasks[i].frame, i);
}

static int pick(int after)
{
	for (int n = 1; n <= TASKS; n++) {
		int i = (after + n) % TASKS;
		if (tasks[i].state == RUNNABLE)
			return i;
	}
	return -1;
}

static void schedule(void)
{
	int live = TASKS, cur = TASKS - 1;
	while (live) {
		int next = pick(cur);
		if (next < 0) {
			if (!apf_on) {
				puts("apf: every task is parked but nothing can wake them\n");
				guest_exit(0x7D);
			}
			/* IF opens only here and at CPL 3; a wake queued meanwhile ends HLT at once. */
			__asm__ volatile("sti; hlt; cli" ::: "memory");
			continue;
		}
		cur = next;
		struct task *t = &tasks[cur];
		u64 trap = run_task(&t->frame);
		if (trap == TRAP_PF) {
			page_fault(cur);
		} else if (t->frame.rdi == SYS_EXIT) {
			t->state = DONE;
			live--;
		} /* SYS_YIELD: stays runnable; the next one in turn runs */
	}
}

static void start_task(int i)
{
	struct frame *f = &tasks[i].frame;
	f->rip = (u64)task_main;
	f->rdi = (u64)i;
	f->cs = USER_CS;
	f->ss = USER_SS;
	f->rflags = RFLAGS_IF;
	f->rsp = (u64)(task_stacks[i] + sizeof(task_stacks[i])) - 8; /* as if called */
	tasks[i].state = RUNNABLE;
}

static u64 now_ns(void)
{
	/* pvkit's TSC counts nanoseconds (docs/x86.md); kvmclock says so itself when offered. */
	return have_kvmclock ? pvclock_ns(&clock) : rdtsc();
}

static int has_word(const char *s, const char *word)
{
	for (; *s; s++) {
		int i = 0;
		while (word[i] && s[i] == word[i])
			i++;
		if (!word[i] && (s[i] == 0 || s[i] == ' '))
			return 1;
		while (*s && *s != ' ')
			s++;
		if (!*s)
			break;
	}
	return 0;
}

/* Discovery as Linux does it; the reason async PF stays off, or 0 when it may go on. */
static const char *discover(const char *cmdline)
{
	u32 r[4];
	cpuid(1, r);
	int hypervisor = r[2] >> 31 & 1;
	pv_discover(); /* checks the same bit first, then scans for the signature */
	have_kvmclock = pv_has(KVM_FEATURE_CLOCKSOURCE2);
	if (!hypervisor)
		return "no hypervisor";
	if (!pv.base)
		return "no KVM signature";
	if (!pv_has(KVM_FEATURE_ASYNC_PF))
		return "no KVM_FEATURE_ASYNC_PF";
	if (!pv_has(KVM_FEATURE_ASYNC_PF_INT))
		return "no KVM_FEATURE_ASYNC_PF_INT";
	if (has_word(cmdline, "no-kvmapf"))
		return "no-kvmapf on the command line";
	return 0;
}

static int final_check(void)
{
	int bad = 0;
	for (int i = 0; i < WALKERS; i++) {
		struct walk *w = &walks[i];
		for (u64 page = 0; page < PAGES_PER_SLICE && !w->bad; page++) {
			u64 address = REGION + i * SLICE + page * PAGE;
			u64 got = *(volatile u64 *)address, want = ~pattern(address, i);
			if (got != want) {
				w->bad = 1;
				w->bad_address = address;
				w->bad_read = got;
				w->bad_want = want;
			}
		}
		if (w->bad) {
			puts("apf: data check FAILED in task ");
			put_dec(i);
			puts(": ");
			put_dec((s64)w->bad);
			puts(" page(s), first at ");
			put_hex(w->bad_address);
			puts(" read ");
			put_hex(w->bad_read);
			puts(" expected ");
			put_hex(w->bad_want);
			putc('\n');
			bad++;
		}
	}
	return bad;
}

void guest_main(const struct boot *boot)
{
	__asm__ volatile("cli");
	puts("apf: ");
	put_dec(WALKERS);
	puts(" walkers over ");
	put_hex(REGION);
	puts("..");
	put_hex(REGION + WALKERS * SLICE);
	puts(" (1 MiB each, ");
	put_dec(PASSES);
	puts(" passes), 1 compute task\n");
	if (boot->ram_bytes < REGION + WALKERS * SLICE) { /* the sum of RAM is below its top */
		puts("apf: not enough RAM for the work region (try --mem 128M)\n");
		guest_exit(0x7C);
	}

	const char *off = discover(boot->cmdline);
	install_entries();
	if (have_kvmclock)
		wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&clock | 1);
	if (!off) {
		/* The area is zero (.bss); the vector must be known before the host may use it. */
		wrmsr(MSR_KVM_ASYNC_PF_INT, APF_VECTOR);
		wrmsr(MSR_KVM_ASYNC_PF_EN, (u64)&apf_area | KVM_ASYNC_PF_DELIVERY_AS_INT |
						   KVM_ASYNC_PF_ENABLED);
		apf_on = 1;
		puts("apf: async page faults on (vector ");
		put_hex(APF_VECTOR);
		puts(")\n");
	} else {
		puts("apf: async page faults off (");
		puts(off);
		puts(")\n");
	}

	for (int i = 0; i < TASKS; i++)
		start_task(i);
	u64 t0 = now_ns();
	schedule();
	u64 t1 = now_ns();
	if (apf_on)
		wrmsr(MSR_KVM_ASYNC_PF_EN, 0); /* nothing is parked any more */

	for (int i = 0; i < WALKERS; i++) {
		puts("apf: task ");
		put_dec(i);
		puts(" walked ");
		put_dec(walks[i].passes ? (s64)(walks[i].touched / (u64)walks[i].passes) : 0);
		puts(" pages x ");
		put_dec(walks[i].passes);
		puts(" passes\n");
	}
	puts("apf: compute task ran ");
	put_dec((s64)compute_rounds);
	puts(" rounds\n");
	puts("apf: notifications: not-present=");
	put_dec((s64)stats.not_present);
	puts(" ready=");
	put_dec((s64)stats.ready);
	puts(" wake-all=");
	put_dec((s64)stats.wake_all);
	puts(" unknown=");
	put_dec((s64)stats.unknown);
	putc('\n');
	puts("apf: done in ");
	put_dec((s64)((t1 - t0) / 1000));
	puts(have_kvmclock ? " us (kvmclock)\n" : " us (TSC, 1 tick = 1 ns as on pvkit)\n");

	if (final_check())
		guest_exit(1);
	outw(PM1A_CNT, SLP_EN_S5); /* ACPI S5: power off, exit status 0 */
	/* pvkit stops at once; a board that powers off asynchronously gets a moment first. */
	for (u64 t = rdtsc(); rdtsc() - t < 100000000UL;)
		cpu_relax();
	guest_exit(0x7B);
}
