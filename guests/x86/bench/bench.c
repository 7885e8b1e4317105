/* bench-x86: the x86-64 guest half of `pvkit bench`. The kernel command line picks one loop:
 *
 *   alu N          N iterations of a 5-instruction register-only loop
 *   vmcall NR N    N round trips of the native hypercall instruction with RAX = NR,
 *                  RBX = 1, RCX = the iteration, RDX = 3 (KVM's x86 hypercall ABI)
 *   rdmsr MSR N    N reads of model-specific register MSR
 *
 * The host times the loop between the console lines "bench: begin" and "bench: end", so
 * boot and power-off cost nothing; the guest then leaves through isa-debug-exit with 0. */
#include <pvkit/x86.h>

static const char *skip_spaces(const char *s)
{
	while (*s == ' ')
		s++;
	return s;
}

/* A decimal or 0x-prefixed hexadecimal number; returns the text after it. */
static const char *parse_number(const char *s, u64 *out)
{
	u64 v = 0;
	s = skip_spaces(s);
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		for (s += 2;; s++) {
			char c = *s;
			if (c >= '0' && c <= '9')
				v = v * 16 + (u64)(c - '0');
			else if (c >= 'a' && c <= 'f')
				v = v * 16 + (u64)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				v = v * 16 + (u64)(c - 'A' + 10);
			else
				break;
		}
	} else {
		for (; *s >= '0' && *s <= '9'; s++)
			v = v * 10 + (u64)(*s - '0');
	}
	*out = v;
	return s;
}

static int starts_with(const char *s, const char *word)
{
	while (*word)
		if (*s++ != *word++)
			return 0;
	return *s == ' ' || *s == 0;
}

static void alu_loop(u64 n)
{
	if (!n)
		return;
	__asm__ volatile("mov $1, %%rax\n"
			 "mov $2, %%rbx\n"
			 "1: add %%rbx, %%rax\n"
			 "xor %%rax, %%rbx\n"
			 "inc %%rsi\n"
			 "dec %0\n"
			 "jnz 1b\n"
			 : "+r"(n)
			 :
			 : "rax", "rbx", "rsi", "cc");
}

static s64 vmcall_loop(u64 nr, u64 n)
{
	s64 last = 0;
	for (u64 i = 0; i < n; i++)
		last = kvm_hypercall(nr, 1, i, 3, 0);
	return last;
}

static u64 rdmsr_loop(u32 index, u64 n)
{
	u64 sum = 0;
	for (u64 i = 0; i < n; i++)
		sum += rdmsr(index);
	return sum;
}

void guest_main(const struct boot *boot)
{
	const char *cmd = skip_spaces(boot->cmdline);
	u64 a = 0, b = 0;
	pv_discover(); /* which hypercall instruction is native */
	if (starts_with(cmd, "alu")) {
		parse_number(cmd + 3, &a);
		puts("bench: begin\n");
		alu_loop(a);
	} else if (starts_with(cmd, "vmcall")) {
		parse_number(parse_number(cmd + 6, &a), &b);
		puts("bench: begin\n");
		s64 last = vmcall_loop(a, b);
		puts("bench: last ");
		put_hex((u64)last);
		putc('\n');
	} else if (starts_with(cmd, "rdmsr")) {
		parse_number(parse_number(cmd + 5, &a), &b);
		puts("bench: begin\n");
		u64 sum = rdmsr_loop((u32)a, b);
		puts("bench: sum ");
		put_hex(sum);
		putc('\n');
	} else {
		puts("bench: unknown command '");
		puts(cmd);
		puts("'\n");
		guest_exit(1);
	}
	puts("bench: end\n");
	guest_exit(0);
}
