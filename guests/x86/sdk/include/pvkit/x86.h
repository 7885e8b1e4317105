/* pvkit x86-64 guest SDK: boot information, console, traps, SMP, safe KVM discovery. */
#ifndef PVKIT_X86_H
#define PVKIT_X86_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long s64;

/* KVM_ENOSYS, KVM_EPERM, the KVM_HC_* numbers, KVM_FEATURE_* bits and MSR_KVM_* indices of
 * the services pvkit serves: generated from its definitions (`make -C guests headers`). */
#include <pvkit/gen/kvm.h>

#define MAX_CPUS 16
#define IPI_VECTOR 0x40

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void cpuid(u32 leaf, u32 r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(0));
}
static inline u64 rdmsr(u32 index)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(index));
	return (u64)hi << 32 | lo;
}
static inline void wrmsr(u32 index, u64 v)
{
	__asm__ volatile("wrmsr" ::"c"(index), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (u64)hi << 32 | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* console (COM1 16550) */
void putc(char c);
void puts(const char *s);
void put_hex(u64 v);
void put_dec(s64 v);
void put_bytes(const u8 *p, int n);

/* boot: filled in before guest_main() runs */
enum boot_protocol { BOOT_PVH = 1, BOOT_MULTIBOOT = 2 };
struct boot {
	int protocol;
	const char *cmdline;
	int memmap_entries;
	u64 ram_bytes; /* sum of the RAM (type 1) entries */
};
/* The guest's entry points: guest_main on the boot CPU; guest_ap_main on each CPU it starts
 * (smp_start). A guest whose other CPUs have nothing to do need not define guest_ap_main:
 * the SDK's default calls ap_ready and parks the CPU in HLT. */
void guest_main(const struct boot *boot);
void guest_ap_main(int cpu);
void guest_exit(u8 value) __attribute__((noreturn)); /* isa-debug-exit, port 0xf4 */

/* traps: the frame isr_common builds, oldest push last */
struct frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error, rip, cs, rflags, rsp, ss;
};
extern volatile int ud_count;   /* #UD taken (the handler skips the instruction) */
extern volatile int gp_count;   /* #GP taken in gp_probe() */
u64 gp_probe(void);             /* loads from a non-canonical address: #GP(0) */
extern volatile int ipi_count[MAX_CPUS];
void enter_user(void (*fn)(void), void *stack);
void leave_user(void) __attribute__((noreturn)); /* from CPL 3, through the call gate */

/* SMP: INIT-SIPI-SIPI through the local APIC */
int cpu_count(void);
int smp_start(int cpus); /* returns how many CPUs came up, BSP included */
void ap_ready(int cpu);  /* an AP calls this from guest_ap_main when it is up */
int this_cpu(void);

/* discovery: signature first (scanning 0x40000000.. in 0x100 steps), then feature bits */
struct pv {
	u32 base;         /* 0 when no known hypervisor signature was found */
	char signature[13];
	u32 features;     /* KVM_CPUID_FEATURES EAX */
	int amd;          /* the CPU vendor: which hypercall instruction is native */
};
extern struct pv pv;
int pv_discover(void);
static inline int pv_has(int bit) { return pv.base && (pv.features >> bit & 1); }

/* hypercalls; the _insn labels are the instruction addresses (to inspect patching) */
s64 hc_vmcall(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3);
s64 hc_vmmcall(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3);
extern u8 hc_vmcall_insn[], hc_vmmcall_insn[];
s64 kvm_hypercall(u64 nr, u64 a0, u64 a1, u64 a2, u64 a3); /* the native instruction */

/* kvmclock and steal time (Linux Documentation/virt/kvm/x86/msr.rst): the records and version
 * protocol readers (retry while the version is odd or changed). */
struct pvclock_vcpu_time_info {
	u32 version, pad0;
	u64 tsc_timestamp, system_time;
	u32 tsc_to_system_mul;
	signed char tsc_shift;
	u8 flags, pad[2];
} __attribute__((packed, aligned(32)));
struct kvm_steal_time {
	u64 steal;
	u32 version, flags;
	u8 preempted, u8_pad[3];
	u32 pad[11];
} __attribute__((aligned(64)));
u64 pvclock_ns(volatile struct pvclock_vcpu_time_info *t);
u64 steal_ns(volatile struct kvm_steal_time *st);

#endif
