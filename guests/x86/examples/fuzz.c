/* fuzz-x86: random KVM hypercalls for `pvkit fuzz --arch x86_64` (docs/fuzzing.md).
 *
 * Command line `seed=S calls=N`. N calls on the boot CPU: numbers weighted toward KVM's
 * (1..12: KICK_CPU, SEND_IPI, SCHED_YIELD, MAP_GPA_RANGE, CLOCK_PAIRING...) and random ones
 * (small, 32-bit, 64-bit); random arguments, wild addresses for the calls that take one;
 * VMCALL and VMMCALL (the foreign one is re-armed now and then so patching runs again), and
 * one call in eight from CPL 3. No KVM hypercall ends the run, so none is avoided. Interrupts
 * stay masked on every CPU (SEND_IPI's vectors stay pending).
 *
 * Preserved registers (Documentation/virt/kvm/x86/hypercalls.rst: "the return value will be
 * placed in rax ... No other registers will be clobbered"): every GPR but RAX holds a canary
 * (RBX, RCX, RDX, RSI are the arguments), and RSP; a call that changes any counts one
 * violation.
 *
 * Prints `fuzz: arch=x86_64 seed=S calls=N user_calls=U violations=V hash=0x...` (FNV-1a of
 * RAX after every call), then exits through isa-debug-exit with 0. */
#include <pvkit/x86.h>

struct fz_regs {
	u64 in[16]; /* rax rbx rcx rdx rsi rdi rbp r8..r15, unused */
	u64 out[16];
	u64 sp_before, sp_after;
};
struct fz_regs fz;
void fz_vmcall(void);
void fz_vmmcall(void);
extern u8 fz_vmcall_insn[], fz_vmmcall_insn[];

static u64 rng, hash = 0xcbf29ce484222325UL, calls, user_calls, violations;
static u64 ram_end;
static int ncpus;
static u8 scratch[4096] __attribute__((aligned(4096)));
static u8 user_stack[8192] __attribute__((aligned(16)));
static void (*user_fn)(void);

static u64 next(void)
{
	u64 x = rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng = x;
}

static u64 mix(u64 z)
{
	z += 0x9e3779b97f4a7c15UL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
	z ^= z >> 31;
	return z ? z : 1;
}

static u64 arg_uint(const char *args, const char *key, u64 dflt)
{
	int n = 0;
	while (key[n])
		n++;
	for (const char *p = args; p && *p; p++) {
		if (p != args && p[-1] != ' ')
			continue;
		int i = 0;
		while (i < n && p[i] == key[i])
			i++;
		if (i < n || p[n] != '=')
			continue;
		u64 v = 0;
		for (const char *q = p + n + 1; *q >= '0' && *q <= '9'; q++)
			v = v * 10 + (u64)(*q - '0');
		return v;
	}
	return dflt;
}

static u64 wild_address(void)
{
	u64 r = next();
	switch (r % 10) {
	case 0: return 0;
	case 1: return ~0UL;
	case 2: return ram_end - (r >> 8) % 72;
	case 3: return ram_end + (r >> 8) % 0x2000;
	case 4: return 0xFEE00000UL + (r >> 8) % 0x1000; /* the local APIC */
	case 5: return (u64)scratch + (r >> 8) % 4096;
	case 6: return 0x8000000000000000UL | r;          /* non-canonical */
	case 7: return 1UL << (32 + (r >> 8) % 32);
	default: return next();
	}
}

static u64 random_arg(void)
{
	u64 r = next();
	switch (r % 8) {
	case 0: return (r >> 8) % 8;
	case 1: return ~0UL;
	case 2: return (r >> 8) % (u64)(ncpus + 2); /* APIC IDs, real and not */
	case 3: return (u32)(r >> 8);
	case 4: case 5: return wild_address();
	default: return next();
	}
}

static u64 pick_nr(void)
{
	u64 r = next();
	unsigned w = r % 256;
	if (w < 160)
		return 1 + (r >> 8) % 12;
	if (w < 176)
		return 0;
	if (w < 208)
		return 13 + (r >> 8) % 52;
	if (w < 216)
		return 0x7FFF0000UL;
	if (w < 240)
		return (u32)(r >> 8);
	return next();
}

static void user_call(void)
{
	user_fn();
	leave_user();
}

static void one_call(void)
{
	u64 nr = pick_nr();
	u64 r = next();
	fz.in[0] = nr;
	for (int i = 1; i < 15; i++)
		fz.in[i] = i <= 4 ? random_arg() : mix(r + (u64)i);
	if (nr == KVM_HC_SEND_IPI && (r >> 8) % 4)
		fz.in[4] = 0x20 + (r >> 16) % 0xe0; /* mostly the fixed mode, so IPIs are sent */
	fz.sp_before = fz.sp_after = 0;

	int foreign = (r >> 24) % 4 == 0;
	int amd = pv.amd;
	void (*fn)(void) = (amd ^ foreign) ? fz_vmcall : fz_vmmcall;
	if (foreign && (r >> 26) % 8 == 0) { /* re-arm: back to the foreign instruction */
		u8 *site = amd ? fz_vmcall_insn : fz_vmmcall_insn;
		site[2] = amd ? 0xC1 : 0xD9;
	}
	int user = (r >> 32) % 8 == 0;
	if (user) {
		user_fn = fn;
		enter_user(user_call, user_stack + sizeof(user_stack));
		user_calls++;
	} else {
		fn();
	}
	int bad = fz.sp_after != (user ? fz.sp_before : fz.sp_before);
	for (int i = 1; i < 15; i++)
		bad |= fz.out[i] != fz.in[i];
	if (bad) {
		violations++;
		if (violations <= 5) {
			puts("fuzz: violation: hypercall ");
			put_hex(nr);
			puts(" changed a preserved register\n");
		}
	}
	for (int b = 0; b < 8; b++) {
		hash ^= (fz.out[0] >> (8 * b)) & 0xff;
		hash *= 0x100000001b3UL;
	}
	calls++;
}

void guest_ap_main(int cpu) { ap_ready(cpu); }

void guest_main(const struct boot *boot)
{
	u64 seed = arg_uint(boot->cmdline, "seed", 1);
	u64 n = arg_uint(boot->cmdline, "calls", 1000);
	ram_end = (boot->ram_bytes + 0xFFFFF) & ~0xFFFFFUL;
	if (!pv_discover()) {
		puts("fuzz: no known hypervisor signature: issuing no hypercall\n");
		guest_exit(1);
	}
	ncpus = smp_start(cpu_count());
	rng = mix(seed);
	for (u64 i = 0; i < n; i++)
		one_call();
	puts("fuzz: arch=x86_64 seed=");
	put_dec((s64)seed);
	puts(" calls=");
	put_dec((s64)calls);
	puts(" user_calls=");
	put_dec((s64)user_calls);
	puts(" violations=");
	put_dec((s64)violations);
	puts(" hash=");
	put_hex(hash);
	putc('\n');
	guest_exit(0);
}
