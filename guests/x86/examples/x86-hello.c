/* x86-hello: safe discovery, both hypercall instructions, patching, CPL 3, IPIs, kicks.
 *
 * Prints what it sees, so the host-side tests can compare. Ends through isa-debug-exit
 * with 0 when every step behaved as the interface promises (exit status 1), 1 otherwise.
 */
#include <pvkit/x86.h>

#define UNKNOWN_NR 0x7FFF0000UL

static volatile int go, foreign_done[MAX_CPUS], woke, release;
static volatile s64 foreign_result[MAX_CPUS];
static volatile s64 user_result;
static u8 user_stack[4096] __attribute__((aligned(16)));
static int failures;

static void check(int ok, const char *what)
{
	if (!ok) {
		puts("x86-hello: FAILED: ");
		puts(what);
		putc('\n');
		failures++;
	}
}

/* The other vendor's instruction, at one site shared by every CPU. */
static s64 foreign_hypercall(u64 nr) { return pv.amd ? hc_vmcall(nr, 0, 0, 0, 0) : hc_vmmcall(nr, 0, 0, 0, 0); }
static u8 *foreign_site(void) { return pv.amd ? hc_vmcall_insn : hc_vmmcall_insn; }
static u64 probe_nr(void) { return pv_has(KVM_FEATURE_PV_SCHED_YIELD) ? KVM_HC_SCHED_YIELD : UNKNOWN_NR; }

static void user_probe(void)
{
	user_result = kvm_hypercall(probe_nr(), 0, 0, 0, 0); /* at CPL 3 */
	leave_user();
}

void guest_ap_main(int cpu)
{
	puts("x86-hello: cpu ");
	put_dec(cpu);
	puts(" up\n");
	ap_ready(cpu);
	__asm__ volatile("sti");
	while (!READ_ONCE(go))
		cpu_relax();
	foreign_result[cpu] = foreign_hypercall(probe_nr());
	WRITE_ONCE(foreign_done[cpu], 1);
	while (!READ_ONCE(release))
		__asm__ volatile("hlt"); /* woken by IPIs and by KVM_HC_KICK_CPU */
	WRITE_ONCE(woke, 1);
}

void guest_main(const struct boot *boot)
{
	u32 r[4];
	char vendor[13] = { 0 };
	cpuid(0, r);
	*(u32 *)&vendor[0] = r[1];
	*(u32 *)&vendor[4] = r[3];
	*(u32 *)&vendor[8] = r[2];
	puts("x86-hello: booted by ");
	puts(boot->protocol == BOOT_PVH ? "PVH" : "multiboot");
	puts(" on ");
	puts(vendor);
	puts(", cmdline '");
	puts(boot->cmdline);
	puts("', ");
	put_dec(boot->memmap_entries);
	puts(" memory-map entries, ");
	put_dec((s64)(boot->ram_bytes >> 10));
	puts(" KiB RAM\n");

	if (!pv_discover()) {
		puts("x86-hello: no hypervisor signature found: issuing no hypercall\n");
		guest_exit(0);
	}
	puts("x86-hello: found '");
	puts(pv.signature[0] == 'K' ? "KVMKVMKVM" : pv.signature);
	puts("' at CPUID ");
	put_hex(pv.base);
	puts(", features ");
	put_hex(pv.features);
	puts(", native instruction ");
	puts(pv.amd ? "vmmcall" : "vmcall");
	putc('\n');

	int cpus = smp_start(cpu_count());
	puts("x86-hello: ");
	put_dec(cpus);
	puts(" CPU(s) up\n");

	s64 ret = kvm_hypercall(probe_nr(), 0, 0, 0, 0);
	puts("x86-hello: native call nr ");
	put_dec((s64)probe_nr());
	puts(" -> ");
	put_dec(ret);
	putc('\n');
	check(ret == (probe_nr() == UNKNOWN_NR ? -KVM_ENOSYS : 0), "native call");

	if (!pv_has(KVM_FEATURE_PV_SCHED_YIELD)) {
		/* Deliberately call what discovery said is absent: the host must refuse it. */
		ret = kvm_hypercall(KVM_HC_SCHED_YIELD, 0, 0, 0, 0);
		puts("x86-hello: SCHED_YIELD without its CPUID bit -> ");
		put_dec(ret);
		putc('\n');
		check(ret == -KVM_ENOSYS, "a call whose CPUID bit is clear answers -KVM_ENOSYS");
	}

	ret = kvm_hypercall(UNKNOWN_NR, 1, 2, 3, 4);
	puts("x86-hello: unknown nr -> ");
	put_dec(ret);
	putc('\n');
	check(ret == -KVM_ENOSYS, "unknown nr answers -KVM_ENOSYS");

	u8 before[3], *site = foreign_site();
	for (int i = 0; i < 3; i++)
		before[i] = site[i];
	int uds = ud_count;
	WRITE_ONCE(go, 1); /* the other CPUs hit the same foreign site now */
	foreign_result[0] = foreign_hypercall(probe_nr());
	for (int cpu = 1; cpu < cpus; cpu++)
		while (!READ_ONCE(foreign_done[cpu]))
			cpu_relax();
	puts("x86-hello: foreign site ");
	put_hex((u64)site);
	puts(" bytes ");
	put_bytes(before, 3);
	puts(" -> ");
	put_bytes(site, 3);
	int patched = site[2] != before[2];
	puts(patched ? " (patched)" : " (unchanged)");
	puts(", #UD taken ");
	put_dec(ud_count - uds);
	puts(", results");
	for (int cpu = 0; cpu < cpus; cpu++) {
		putc(' ');
		put_dec(foreign_result[cpu]);
	}
	putc('\n');

	if (cpus > 1 && pv_has(KVM_FEATURE_PV_SEND_IPI)) {
		u64 bitmap = ((1UL << cpus) - 1) & ~1UL;
		ret = kvm_hypercall(KVM_HC_SEND_IPI, bitmap, 0, 0, IPI_VECTOR);
		for (int cpu = 1; cpu < cpus; cpu++)
			while (!READ_ONCE(ipi_count[cpu]))
				cpu_relax();
		puts("x86-hello: SEND_IPI vector 0x40 -> delivered to ");
		put_dec(ret);
		puts(" CPU(s)\n");
		check(ret == cpus - 1, "SEND_IPI reaches every other CPU");
	}
	if (cpus > 1 && pv_has(KVM_FEATURE_PV_UNHALT)) {
		WRITE_ONCE(release, 1);
		ret = kvm_hypercall(KVM_HC_KICK_CPU, 0, 1, 0, 0);
		while (!READ_ONCE(woke))
			cpu_relax();
		puts("x86-hello: KICK_CPU -> ");
		put_dec(ret);
		puts(", cpu 1 left HLT\n");
	}

	enter_user(user_probe, user_stack + sizeof(user_stack));
	puts("x86-hello: call from CPL 3 -> ");
	put_dec(user_result);
	putc('\n');
	check(user_result == -KVM_EPERM, "CPL 3 answers -KVM_EPERM");

	uds = ud_count;
	__asm__ volatile("ud2");
	check(ud_count == uds + 1, "ud2 raises #UD");
	gp_probe();
	check(gp_count == 1, "a non-canonical load raises #GP");
	puts(failures ? "x86-hello: FAILED\n" : "x86-hello: done\n");
	guest_exit(failures ? 1 : 0);
}
