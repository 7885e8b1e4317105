/* steal (x86-64): the same experiment as the arm64 steal guest, over KVM's x86 ABI.
 *
 * Discovery as Linux does it: the hypervisor signature, then KVM_FEATURE_CLOCKSOURCE2 and
 * KVM_FEATURE_STEAL_TIME in CPUID; each CPU zeroes its kvm_steal_time, enables it with
 * MSR_KVM_STEAL_TIME and its kvmclock with MSR_KVM_SYSTEM_TIME_NEW, then spins until it
 * has really run for WORK ns. CPU 0 reports each CPU's stolen time and its share of
 * elapsed time, and exits through isa-debug-exit (0: exit status 1). Command line:
 * `work_ms=N` (default 200). */
#include <pvkit/x86.h>

struct sample {
	u64 t0, t1, s0, s1, record;
	volatile int done;
};

static struct pvclock_vcpu_time_info clocks[MAX_CPUS];
static struct kvm_steal_time steals[MAX_CPUS];
static struct sample samples[MAX_CPUS];
static u64 work_ns = 200000000UL;
static int have_steal;
static volatile u64 sink;

static void snapshot(int cpu, u64 *t, u64 *st)
{
	do {
		*st = have_steal ? steal_ns(&steals[cpu]) : 0;
		*t = pvclock_ns(&clocks[cpu]);
	} while (have_steal && steal_ns(&steals[cpu]) != *st);
}

static void run(int cpu)
{
	u8 *p = (u8 *)&steals[cpu];
	for (unsigned i = 0; i < sizeof(steals[cpu]); i++)
		p[i] = 0; /* the guest zeroes the record before enabling it */
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&clocks[cpu] | 1);
	if (have_steal)
		wrmsr(MSR_KVM_STEAL_TIME, (u64)&steals[cpu] | 1);
	struct sample *s = &samples[cpu];
	snapshot(cpu, &s->t0, &s->s0);
	u64 x = (u64)cpu + 1, t, st;
	do {
		for (int i = 0; i < 2000; i++)
			x = x * 6364136223846793005UL + 1442695040888963407UL;
		snapshot(cpu, &t, &st);
	} while ((s64)((t - s->t0) - (st - s->s0)) < (s64)work_ns);
	sink = x;
	s->t1 = t;
	s->s1 = st;
	s->record = st;
}

static u64 parse_work_ms(const char *args)
{
	for (const char *p = args; *p; p++) {
		const char *k = "work_ms=";
		int i = 0;
		while (k[i] && p[i] == k[i])
			i++;
		if (!k[i]) {
			u64 v = 0;
			for (p += i; *p >= '0' && *p <= '9'; p++)
				v = v * 10 + (u64)(*p - '0');
			return v;
		}
	}
	return 200;
}

void guest_ap_main(int cpu)
{
	ap_ready(cpu);
	run(cpu);
	WRITE_ONCE(samples[cpu].done, 1);
}

void guest_main(const struct boot *boot)
{
	work_ns = parse_work_ms(boot->cmdline) * 1000000UL;
	if (!pv_discover() || !pv_has(KVM_FEATURE_CLOCKSOURCE2)) {
		puts("steal: no kvmclock: nothing to measure with\n");
		guest_exit(1);
	}
	have_steal = pv_has(KVM_FEATURE_STEAL_TIME);
	int cpus = smp_start(cpu_count());
	puts("steal: ");
	put_dec(cpus);
	puts(" cpus, ");
	put_dec((s64)(work_ns / 1000000));
	puts(have_steal ? " ms of work each, steal time offered\n" : " ms of work each, steal time not offered\n");
	run(0);
	for (int cpu = 1; cpu < cpus; cpu++)
		while (!READ_ONCE(samples[cpu].done))
			cpu_relax();
	samples[0].record = have_steal ? steal_ns(&steals[0]) : 0; /* alone now */
	for (int cpu = 0; cpu < cpus; cpu++) {
		struct sample *s = &samples[cpu];
		u64 elapsed = s->t1 - s->t0, st = s->s1 - s->s0;
		u64 tenths = elapsed ? st * 1000 / elapsed : 0;
		puts("steal: cpu ");
		put_dec(cpu);
		puts(" stolen ");
		put_dec((s64)st);
		puts(" ns of ");
		put_dec((s64)elapsed);
		puts(" ns elapsed: ");
		put_dec((s64)(tenths / 10));
		putc('.');
		put_dec((s64)(tenths % 10));
		puts("% (record ");
		put_dec((s64)s->record);
		puts(")\n");
	}
	guest_exit(0);
}
