/* pvkit x86-64 guest runtime: console, GDT/TSS/IDT, traps, SMP bring-up, discovery. */
#include <pvkit/x86.h>

#define COM1 0x3F8
#define LSR_THRE 0x20
#define APIC ((volatile u32 *)0xFEE00000UL)
#define APIC_ID (0x20 / 4)
#define APIC_EOI (0xB0 / 4)
#define APIC_ICR_LOW (0x300 / 4)
#define APIC_ICR_HIGH (0x310 / 4)
#define TRAMPOLINE 0x8000

extern u32 boot_protocol, boot_info, starting_cpu;
extern u64 gdt64[], tss_descriptor[], call_gate[], user_saved_rsp;
extern u8 ap_trampoline[], ap_trampoline_end[], stacks[];
extern void isr6(void), isr13(void), isr14(void), isr64(void), user_returned(void);
extern u8 gp_probe_fault[], gp_probe_resume[];

struct pv pv;
volatile int ud_count; /* CPU 0 only counts exactly; others may race */
volatile int gp_count;
volatile int ipi_count[MAX_CPUS];
static volatile int cpus_up;
static u64 idt[256 * 2];
static u8 tss[104] __attribute__((aligned(16)));
static u8 kernel_trap_stack[8192] __attribute__((aligned(16)));

/* -- console ------------------------------------------------------------------------ */
void putc(char c)
{
	if (c == '\n')
		putc('\r');
	while (!(inb(COM1 + 5) & LSR_THRE))
		;
	outb(COM1, (u8)c);
}
void puts(const char *s)
{
	while (*s)
		putc(*s++);
}
void put_hex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i--] = 0;
	do {
		buf[i--] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[i--] = 'x';
	buf[i] = '0';
	puts(&buf[i]);
}
void put_dec(s64 v)
{
	char buf[21];
	int i = 20;
	u64 u = v < 0 ? -(u64)v : (u64)v;
	buf[i--] = 0;
	do {
		buf[i--] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		buf[i--] = '-';
	puts(&buf[i + 1]);
}
void put_bytes(const u8 *p, int n)
{
	for (int i = 0; i < n; i++) {
		putc("0123456789abcdef"[p[i] >> 4]);
		putc("0123456789abcdef"[p[i] & 15]);
		if (i + 1 < n)
			putc(' ');
	}
}
void guest_exit(u8 value)
{
	outb(0xF4, value);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* -- descriptor tables ------------------------------------------------------------- */
static void set_gate(int vector, void (*handler)(void), int dpl)
{
	u64 a = (u64)handler;
	idt[vector * 2] = (a & 0xFFFF) | (0x08UL << 16) | ((u64)(0x8E | dpl << 5) << 40) |
			  ((a >> 16 & 0xFFFF) << 48);
	idt[vector * 2 + 1] = a >> 32;
}
static void load_idt(void)
{
	struct __attribute__((packed)) { u16 limit; u64 base; } p = { sizeof(idt) - 1, (u64)idt };
	__asm__ volatile("lidt %0" ::"m"(p));
}
static void tables_init(void)
{
	u64 base = (u64)tss;
	*(u64 *)(tss + 4) = (u64)(kernel_trap_stack + sizeof(kernel_trap_stack)); /* RSP0 */
	*(u16 *)(tss + 102) = sizeof(tss); /* no I/O bitmap */
	tss_descriptor[0] = (sizeof(tss) - 1) | (base & 0xFFFFFF) << 16 | 0x89UL << 40 |
			    (base >> 24 & 0xFF) << 56;
	tss_descriptor[1] = base >> 32;
	__asm__ volatile("ltr %w0" ::"r"(0x30));
	u64 target = (u64)user_returned;
	call_gate[0] = (target & 0xFFFF) | 0x08UL << 16 | 0xECUL << 40 | (target >> 16 & 0xFFFF) << 48;
	call_gate[1] = target >> 32;
	set_gate(6, isr6, 0);
	set_gate(13, isr13, 0);
	set_gate(14, isr14, 0);
	set_gate(IPI_VECTOR, isr64, 0);
	load_idt();
}

/* -- traps --------------------------------------------------------------------------- */
static int insn_length_for_ud(const u8 *p)
{
	if (p[0] == 0x0F && p[1] == 0x0B)
		return 2; /* ud2 */
	if (p[0] == 0x0F && p[1] == 0x01 && (p[2] == 0xC1 || p[2] == 0xD9))
		return 3; /* vmcall / vmmcall */
	return 0;
}
void trap_dispatch(struct frame *f)
{
	switch (f->vector) {
	case 6: {
		const u8 *p = (const u8 *)f->rip;
		int n = insn_length_for_ud(p);
		if (this_cpu() == 0) { /* one console line per event, whatever the CPU count */
			puts("  #UD at ");
			put_hex(f->rip);
			puts(" (");
			put_bytes(p, 3);
			puts(")\n");
		}
		ud_count++;
		if (!n)
			guest_exit(0x7F);
		f->rip += n;
		return;
	}
	case 13:
		if (f->rip == (u64)gp_probe_fault) {
			puts("  #GP at ");
			put_hex(f->rip);
			puts(" error ");
			put_hex(f->error);
			putc('\n');
			gp_count++;
			f->rip = (u64)gp_probe_resume;
			return;
		}
		goto unexpected;
	case IPI_VECTOR:
		ipi_count[this_cpu()]++;
		APIC[APIC_EOI] = 0;
		return;
	default:
	unexpected:
		puts("  unexpected exception ");
		put_dec((s64)f->vector);
		puts(" at ");
		put_hex(f->rip);
		puts(" error ");
		put_hex(f->error);
		putc('\n');
		guest_exit(0x7E);
	}
}

/* -- SMP --------------------------------------------------------------------------- */
int this_cpu(void) { return (int)(APIC[APIC_ID] >> 24); }
int cpu_count(void)
{
	u32 r[4];
	cpuid(1, r);
	int n = (r[3] >> 28 & 1) ? (int)(r[1] >> 16 & 0xFF) : 1;
	return n > MAX_CPUS ? MAX_CPUS : n;
}
static void send_ipi(int apic_id, u32 icr)
{
	APIC[APIC_ICR_HIGH] = (u32)apic_id << 24;
	APIC[APIC_ICR_LOW] = icr;
}
int smp_start(int cpus)
{
	u8 *dst = (u8 *)TRAMPOLINE;
	for (u8 *p = ap_trampoline; p < ap_trampoline_end; p++)
		*dst++ = *p;
	for (int cpu = 1; cpu < cpus; cpu++) {
		WRITE_ONCE(starting_cpu, (u32)cpu);
		send_ipi(cpu, 0x4500);                      /* INIT, assert */
		send_ipi(cpu, 0x4600 | (TRAMPOLINE >> 12)); /* STARTUP */
		send_ipi(cpu, 0x4600 | (TRAMPOLINE >> 12)); /* the second SIPI of the protocol */
		for (long spin = 0; READ_ONCE(cpus_up) < cpu && spin < 200000000L; spin++)
			cpu_relax();
		if (READ_ONCE(cpus_up) < cpu)
			break;
	}
	return READ_ONCE(cpus_up) + 1;
}

void ap_ready(int cpu) { WRITE_ONCE(cpus_up, cpu); }

/* -- discovery ---------------------------------------------------------------------- */
static int signature_is(const u32 r[4], const char *want)
{
	const char *got = (const char *)&r[1];
	for (int i = 0; i < 12; i++)
		if (got[i] != want[i])
			return 0;
	return 1;
}
int pv_discover(void)
{
	u32 r[4];
	cpuid(0, r);
	pv.amd = r[1] == 0x68747541; /* "Auth" */
	pv.base = 0;
	cpuid(1, r);
	if (!(r[2] >> 31 & 1))
		return 0; /* no hypervisor bit: bare metal, do not even look */
	for (u32 base = 0x40000000; base < 0x40010000; base += 0x100) {
		cpuid(base, r);
		if (signature_is(r, "KVMKVMKVM\0\0\0") || signature_is(r, "pvkitpvkitpv")) {
			pv.base = base;
			for (int i = 0; i < 12; i++)
				pv.signature[i] = ((const char *)&r[1])[i];
			cpuid(base + 1, r);
			pv.features = r[0];
			return 1;
		}
	}
	return 0;
}
s64 kvm_hypercall(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3)
{
	return pv.amd ? hc_vmmcall(nr, a0, a1, a2, a3) : hc_vmcall(nr, a0, a1, a2, a3);
}

/* -- entry ------------------------------------------------------------------------- */
static const char *cstr(u64 address) { return address ? (const char *)address : ""; }

/* The default for guests whose other CPUs have nothing to do: say the CPU is up (so smp_start
 * counts it), return, and x86_entry parks it in HLT with interrupts off. A guest's own
 * guest_ap_main replaces it. */
__attribute__((weak)) void guest_ap_main(int cpu) { ap_ready(cpu); }

void x86_entry(int cpu)
{
	if (cpu) {
		load_idt();
		guest_ap_main(cpu);
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	struct boot b = { (int)boot_protocol, "", 0, 0 };
	tables_init();
	if (boot_protocol == BOOT_PVH) {
		const u8 *info = (const u8 *)(u64)boot_info;
		const u8 *map = (const u8 *)*(const u64 *)(info + 40);
		b.cmdline = cstr(*(const u64 *)(info + 24));
		b.memmap_entries = (int)*(const u32 *)(info + 48);
		for (int i = 0; i < b.memmap_entries; i++)
			if (*(const u32 *)(map + 24 * i + 16) == 1)
				b.ram_bytes += *(const u64 *)(map + 24 * i + 8);
	} else {
		const u8 *info = (const u8 *)(u64)boot_info;
		const u8 *map = (const u8 *)(u64) * (const u32 *)(info + 48);
		u32 length = *(const u32 *)(info + 44);
		b.cmdline = cstr(*(const u32 *)(info + 16));
		for (u32 off = 0; off < length; off += *(const u32 *)(map + off) + 4) {
			b.memmap_entries++;
			if (*(const u32 *)(map + off + 20) == 1)
				b.ram_bytes += *(const u64 *)(map + off + 12);
		}
	}
	guest_main(&b);
	guest_exit(0);
}

/* -- kvmclock and steal time ------------------------------------------------------------- */
u64 pvclock_ns(volatile struct pvclock_vcpu_time_info *t)
{
	u32 v;
	u64 ns;
	do {
		v = t->version;
		__asm__ volatile("" ::: "memory");
		u64 delta = rdtsc() - t->tsc_timestamp;
		delta = t->tsc_shift >= 0 ? delta << t->tsc_shift : delta >> -t->tsc_shift;
		ns = t->system_time + (u64)(((unsigned __int128)delta * t->tsc_to_system_mul) >> 32);
		__asm__ volatile("" ::: "memory");
	} while ((v & 1) || v != t->version);
	return ns;
}

u64 steal_ns(volatile struct kvm_steal_time *st)
{
	u32 v;
	u64 steal;
	do {
		v = st->version;
		__asm__ volatile("" ::: "memory");
		steal = st->steal;
		__asm__ volatile("" ::: "memory");
	} while ((v & 1) || v != st->version);
	return steal;
}
