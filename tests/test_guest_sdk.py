"""The guest SDKs from outside the tree (issue 14, item 6): a guest needs only guest_main,
a CPU it starts without giving it work is parked asleep, and `pvkit sdk` finds the SDK,
prints its flags and writes a template without ever overwriting a file."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pvkit import guest_sdk
from pvkit.machine.vm import StopKind

from .conftest import ROOT, boot, boot_x86, pvkit

ARM64_GUEST = r"""
#include <pvkit/console.h>
#include <pvkit/psci.h>
#include <pvkit/runtime.h>

static struct pv_env env;

/* No guest_secondary: CPU 1 enters the SDK's default. */
void guest_main(const void *fdt)
{
    pv_discover(fdt, &env);
    int64_t on = psci_cpu_on(&env, env.mpidr[1], secondary_entry, 1);
    int64_t state;
    do
        state = psci_affinity_info(&env, env.mpidr[1], 0);
    while (state == AFFINITY_ON_PENDING);
    kprintf("cpu 1: CPU_ON %ld, AFFINITY_INFO %ld\n", on, state);
    psci_cpu_off(&env);
}
"""

X86_GUEST = r"""
#include <pvkit/x86.h>

/* No guest_ap_main: the other CPU enters the SDK's default. */
void guest_main(const struct boot *boot)
{
    (void)boot;
    puts("cpus up ");
    put_dec(smp_start(2));
    putc('\n');
    for (;;)
        __asm__ volatile("cli; hlt");
}
"""


def build(tmp_path: Path, arch: str, source: str) -> Path:
    """Compile `source` with only what `pvkit sdk` reports: CC, CFLAGS, LDFLAGS, SOURCES."""
    flags = {k: shlex.split(v) for k, v in guest_sdk.sdk_variables(arch).items()}
    src = tmp_path / "guest.c"
    src.write_text(source)
    elf = tmp_path / "guest.elf"
    command = [*flags["CC"], *flags["CFLAGS"], *flags["LDFLAGS"], "-o", str(elf), str(src)]
    subprocess.run([*command, *flags["SOURCES"]], check=True, cwd=tmp_path)
    return elf


def test_an_arm64_guest_needs_no_guest_secondary_and_a_started_cpu_sleeps_in_wfi(
    tmp_path: Path,
) -> None:
    """CPU 1 is ON (AFFINITY_INFO 0) and in WFI: once CPU 0 calls CPU_OFF the VM stops
    because nothing can wake CPU 1, where a default that spun would run to the timeout."""
    b = boot(build(tmp_path, "arm64", ARM64_GUEST), timeout=60, smp=2)
    assert "cpu 1: CPU_ON 0, AFFINITY_INFO 0" in b.lines, b.console
    assert b.reason.kind is StopKind.IDLE, b.reason
    assert b.reason.message.startswith("1 vCPU(s) wait for an interrupt"), b.reason


def test_an_x86_guest_needs_no_guest_ap_main_and_the_started_cpu_counts_and_halts(
    tmp_path: Path,
) -> None:
    """The default guest_ap_main reports the CPU up (smp_start counts 2) and parks it in HLT,
    so with the boot CPU halted too the VM stops as idle."""
    b = boot_x86(build(tmp_path, "x86_64", X86_GUEST), timeout=60, smp=2)
    assert "cpus up 2" in b.lines, b.console
    assert b.reason.kind is StopKind.IDLE, b.reason
    assert b.reason.message.startswith("2 vCPU(s) wait for an interrupt"), b.reason


def test_sdk_path_is_the_tree_pvkit_was_installed_from_and_the_flags_name_it() -> None:
    for arch, folder in (("arm64", "guests/sdk"), ("x86_64", "guests/x86/sdk")):
        r = pvkit("sdk", "path", "--arch", arch)
        assert r.returncode == 0 and r.stdout == f"{ROOT / folder}\n", r.stderr
        cflags = pvkit("sdk", "--arch", arch, "cflags").stdout.split()
        assert f"-I{ROOT / folder}/include" in cflags and "-ffreestanding" in cflags
        ldflags = pvkit("sdk", "ldflags", "--arch", arch).stdout.split()
        assert f"-Wl,-T,{ROOT / folder}/link.ld" in ldflags
    assert pvkit("sdk", "cc").stdout == "aarch64-linux-gnu-gcc\n"
    sources = pvkit("sdk", "sources", "--arch", "x86_64").stdout.split()
    assert sources == [str(ROOT / "guests/x86/sdk/src" / s) for s in ("boot.S", "runtime.c")]


def test_sdk_new_writes_the_template_and_never_overwrites(tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    r = pvkit("sdk", "new", str(guest))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"created {guest / 'Makefile'}",
        f"created {guest}/vendor-call.c",
    ]
    template = ROOT / "guests" / "examples" / "vendor-call.c"
    assert (guest / "vendor-call.c").read_bytes() == template.read_bytes()
    (guest / "vendor-call.c").write_text("mine\n")
    (guest / "Makefile").unlink()
    again = pvkit("sdk", "new", str(guest))
    assert again.returncode == 2
    assert again.stderr == (
        f"pvkit: {guest}/vendor-call.c already exists: pvkit sdk new overwrites nothing\n"
    )
    assert (guest / "vendor-call.c").read_text() == "mine\n"
    assert not (guest / "Makefile").exists()  # all of the template or nothing


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["new"], "pvkit: sdk new needs a directory to write into: pvkit sdk new DIR"),
        (["cflags", "x"], "pvkit: sdk cflags takes no directory; only sdk new does"),
        (["path", "--arch", "ppc64"], "pvkit: --arch 'ppc64' is not arm64 or x86_64"),
        (["new", "d", "--arch", "x86_64"], "pvkit: the template guest is arm64 only"),
    ],
)
def test_sdk_mistakes_are_one_sentence(tmp_path: Path, args: list[str], sentence: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pvkit", "sdk", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and r.stderr.startswith(sentence), r.stderr
    assert len(r.stderr.splitlines()) == 1 and not list(tmp_path.iterdir())


def test_without_a_tree_beside_it_the_sdk_is_missing_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pvkit installed from a wheel (no checkout beside the package) answers."""
    monkeypatch.setattr(guest_sdk, "TREE", tmp_path)
    for ask in (lambda: guest_sdk.sdk_dir("arm64"), lambda: guest_sdk.sdk_variables("x86_64")):
        with pytest.raises(guest_sdk.SdkMissing, match="has no guest SDK beside it"):
            ask()
    with pytest.raises(guest_sdk.SdkMissing):
        guest_sdk.new_guest(tmp_path / "guest")
    assert not (tmp_path / "guest").exists()
