"""x86 vCPUs share guest RAM across host threads: LOCK-prefixed instructions must be atomic.

The x86 engines translated LOCK XADD, LOCK CMPXCHG and XCHG as a plain load, operation and
store (TCG's non-parallel mode), so two vCPUs could read the same value and one update was
lost. A loop bounded by a shared atomic counter then ran more times than its bound: the
fuzzer saw 60001 iterations of 60000, most often while the boot CPU re-armed hypercall
patching, whose stop-the-world pauses release every AP at the same instant. Here the APs
share one such loop while the boot CPU re-arms the foreign instruction site again and again;
the iterations must add up to the bound exactly, on either vendor.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pvkit.guest_sdk import sdk_variables
from pvkit.machine.vm import StopKind

from .conftest import boot_x86

BOUND = 100_000
SOURCE = r"""
#include <pvkit/x86.h>

#define BOUND %(bound)d
static volatile int go, done[MAX_CPUS];
static volatile u64 iterations[MAX_CPUS];
static u64 shared;

static s64 foreign_hypercall(u64 nr)
{
	return pv.amd ? hc_vmcall(nr, 0, 0, 0, 0) : hc_vmmcall(nr, 0, 0, 0, 0);
}
static u8 *foreign_site(void) { return pv.amd ? hc_vmcall_insn : hc_vmmcall_insn; }

void guest_ap_main(int cpu)
{
	ap_ready(cpu);
	while (!READ_ONCE(go))
		cpu_relax();
	while (__atomic_fetch_add(&shared, 1, __ATOMIC_SEQ_CST) < BOUND)
		WRITE_ONCE(iterations[cpu], iterations[cpu] + 1);
	WRITE_ONCE(done[cpu], 1);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void guest_main(const struct boot *boot)
{
	(void)boot;
	if (!pv_discover())
		guest_exit(3);
	int cpus = smp_start(cpu_count());
	u8 foreign[3], *site = foreign_site();
	for (int i = 0; i < 3; i++)
		foreign[i] = site[i];
	WRITE_ONCE(go, 1);
	int rearms = 0, all = 0;
	while (!all) {
		for (int i = 0; i < 3; i++)
			site[i] = foreign[i]; /* re-arm: the foreign instruction again */
		foreign_hypercall(0x7FFF0000UL); /* patched back, under a stop-the-world pause */
		rearms++;
		all = 1;
		for (int c = 1; c < cpus; c++)
			all &= READ_ONCE(done[c]);
	}
	u64 total = 0;
	for (int c = 1; c < cpus; c++)
		total += iterations[c];
	puts("atomics: iterations ");
	put_dec((s64)total);
	puts(" rearms ");
	put_dec(rearms);
	putc('\n');
	guest_exit(total == BOUND ? 0 : 1);
}
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guest above, built with the x86 SDK's own flags (its sdk.mk, as `pvkit sdk` says)."""
    out = tmp_path_factory.mktemp("atomics")
    src = out / "atomics.c"
    src.write_text(SOURCE % {"bound": BOUND})
    elf = out / "atomics.elf"
    sdk = {k: shlex.split(v) for k, v in sdk_variables("x86_64").items()}
    command = [*sdk["CC"], *sdk["CFLAGS"], *sdk["LDFLAGS"], "-o", str(elf), str(src)]
    subprocess.run([*command, *sdk["SOURCES"]], check=True)
    return elf


@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_a_loop_bounded_by_a_shared_atomic_runs_exactly_its_bound_while_patching_rearms(
    guest: Path, vendor: str
) -> None:
    b = boot_x86(guest, timeout=120, smp=4, vendor=vendor)
    assert b.reason.kind is StopKind.SHUTDOWN, (b.reason, b.console)
    m = re.search(r"atomics: iterations (\d+) rearms (\d+)", b.console)
    assert m is not None, b.console
    assert int(m.group(1)) == BOUND
    assert int(m.group(2)) >= 1 and b.machine.patcher.patches  # patching really ran
    assert b.reason.status == 1, b.console  # isa-debug-exit 0: the guest agrees
