"""Debian 12's arm64 kernel boots to a busybox shell on pvkit and finds pvkit's PV services
with its own drivers: PSCI for SMP, hotplug, power-off and reboot; the KVM vendor UID and
bitmap; PV stolen time; KVM PTP; the SMCCC TRNG behind /dev/hwrng.

scripts/fetch-linux.sh and fetch-linux-rootfs.sh fetch the pinned kernel and busybox once
into pvkit's cache (outside git) and build the initramfs with pvkit's /init
(guests/linux/init), which prints `pvkit-probe: KEY: VALUE` lines and then, by words on
the command line, opens a shell, powers off or reboots. Everything runs through the CLI
in a subprocess, as a user would: `pvkit run --kernel vmlinuz --initrd rootfs.cpio.gz`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from pvkit.bench.linux import LinuxFiles

from .console_session import ConsoleSession, fetched

APPEND = "console=ttyAMA0 panic=-1"
BOOT_S = 300.0  # to the shell: ~40 s with 4 vCPUs on 2 host cores, more on a busy machine
FETCH_S = 300.0  # ~35 MB kernel package and busybox from Debian's mirror, then unpacking
PROMPT = r"pvkit-sh# "

pytestmark = [pytest.mark.linux, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def files() -> LinuxFiles:
    return LinuxFiles(fetched("fetch-linux.sh", FETCH_S), fetched("fetch-linux-rootfs.sh", FETCH_S))


def start(files: LinuxFiles, *args: str, words: str) -> ConsoleSession:
    return ConsoleSession(
        ["--kernel", str(files.kernel), "--initrd", str(files.initrd), "-m", "512M",
         "--append", f"{APPEND} {words}", *args]
    )  # fmt: skip


def probes(console: str) -> dict[str, str]:
    return dict(re.findall(r"^pvkit-probe: ([^:]+): (.*)$", console, re.MULTILINE))


def steal_share(found: dict[str, str], cpus: int) -> list[float]:
    """Per CPU, steal ticks as a share of all its ticks (the 8th /proc/stat field)."""
    shares = []
    for n in range(cpus):
        ticks = [int(t) for t in found[f"stat.cpu{n}"].split()]
        shares.append(ticks[7] / sum(ticks))
    return shares


class Shell:
    """The busybox shell: a command's output is matched by a marker the echo lacks."""

    def __init__(self, session: ConsoleSession):
        self.session = session

    def run(self, command: str, timeout: float = 60.0) -> str:
        self.session.send(f"{command}; echo pvkit-done-$((40+2))")
        return self.session.expect(r"(?s)(.*?)pvkit-done-42", timeout).group(1)


@pytest.fixture(scope="module")
def smp4(files: LinuxFiles) -> Iterator[tuple[ConsoleSession, Shell]]:
    session = start(files, "-smp", "4", words="pvkit.shell=1")
    try:
        session.expect(r"pvkit-init: shell", BOOT_S)
        session.expect(PROMPT, 30)
        yield session, Shell(session)
    finally:
        session.kill()


def test_the_kernel_boots_on_four_cpus_brought_up_with_psci(
    smp4: tuple[ConsoleSession, Shell],
) -> None:
    console = smp4[0].text
    expected = [
        r"Booting Linux on physical CPU 0x0+ \[0x[0-9a-f]{8}\]",
        r"Linux version 6\.1\.0-50-arm64 .* SMP Debian 6\.1\.176-1",
        r"Machine model: pvkit virt",
        r"psci: PSCIv1\.1 detected in firmware\.",
        r"psci: SMC Calling Convention v1\.1",
        r"GICv3: CPU0: found redistributor 0 region",
        r"arch_timer: cp15 timer\(s\) running at 1000\.00MHz \(virt\)\.",
        r"smp: Brought up 1 node, 4 CPUs",
        r"Trying to unpack rootfs image as initramfs",
        r"printk: console \[ttyAMA0\] enabled",
    ]
    missing = [p for p in expected if not re.search(p, console)]
    assert not missing, f"missing {missing}"
    assert probes(console)["cpu.online"] == "0-3"


def test_linux_finds_the_kvm_services_stolen_time_ptp_and_trng(
    smp4: tuple[ConsoleSession, Shell],
) -> None:
    console = smp4[0].text
    found = probes(console)
    # kvm_init_hyp_services: KVM's UID, then the bitmap (words 3..0) with FEATURES (bit 0),
    # PTP (1) and pvkit's async page faults (126, which Linux does not know and ignores).
    assert re.search(
        r"smccc: KVM: hypervisor services detected \(0x40000000 0x0+ 0x0+ 0x0+3\)", console
    )
    assert "arm-pv: using stolen time PV" in console  # pv_time_init: DEN0057 found
    assert found["ptp.ptp0.clock_name"] == "KVM virtual PTP"  # ptp_kvm registered
    assert found["smccc_trng.device"] == "present"  # the SMCCC layer saw TRNG 1.0
    assert "pvkit-insmod: arm_smccc_trng: ok" in console
    assert found["hwrng.rng_current"] == "smccc_trng"
    assert re.fullmatch(r"[0-9a-f]{64}", found["hwrng.bytes"])


def test_the_shell_runs_what_is_typed_and_hwrng_gives_fresh_bytes(
    smp4: tuple[ConsoleSession, Shell],
) -> None:
    _, shell = smp4
    assert "pvkit-42" in shell.run("echo pvkit-$((6*7))")
    read = "dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'; echo"
    first = re.findall(r"^[0-9a-f]{64}$", shell.run(read), re.MULTILINE)
    second = re.findall(r"^[0-9a-f]{64}$", shell.run(read), re.MULTILINE)
    assert first and second and first != second  # host randomness, never a constant


def test_ptp0_reads_the_hosts_clock_through_kvm_ptp(smp4: tuple[ConsoleSession, Shell]) -> None:
    # phc-read does what phc_ctl's "get" does: clock_gettime on /dev/ptp0, which ptp_kvm
    # answers with a KVM PTP call, which pvkit answers with the host's real-time clock.
    _, shell = smp4
    before = time.time_ns()
    out = shell.run("phc-read; sleep 2; phc-read")
    after = time.time_ns()
    readings = re.findall(r"^phc-read: ptp0 (\d+) realtime (\d+)$", out, re.MULTILINE)
    assert len(readings) == 2, out
    (ptp1, real1), (ptp2, real2) = ((int(p), int(r)) for p, r in readings)
    assert before <= ptp1 < ptp2 <= after  # the host's clock, read while the guest ran
    assert ptp2 - ptp1 >= 1.9e9  # it moved on with the guest's 2 s sleep, as the host's did
    assert abs((ptp2 - ptp1) - (real2 - real1)) < 0.5e9  # and the guest's own clock agrees


def test_a_cpu_goes_offline_and_back_through_psci(smp4: tuple[ConsoleSession, Shell]) -> None:
    _, shell = smp4
    cpu3 = "/sys/devices/system/cpu/cpu3/online"
    assert "0-2" in shell.run(f"echo 0 > {cpu3}; cat /sys/devices/system/cpu/online")
    assert "psci: CPU3 killed" in smp4[0].text  # CPU_OFF, then AFFINITY_INFO said OFF
    assert "0-3" in shell.run(f"echo 1 > {cpu3}; cat /sys/devices/system/cpu/online")


def test_steal_stays_near_zero_with_a_host_cpu_per_vcpu(
    smp4: tuple[ConsoleSession, Shell],
) -> None:
    shares = steal_share(probes(smp4[0].text), 4)
    assert all(s < 0.05 for s in shares), shares


def test_poweroff_from_the_shell_ends_the_run_cleanly(smp4: tuple[ConsoleSession, Shell]) -> None:
    session, _ = smp4
    session.send("poweroff -f")
    assert session.wait(60) == 0
    assert re.search(r"pvkit: shutdown: PSCI SYSTEM_OFF", session.text)


def test_steal_grows_when_four_vcpus_share_one_host_cpu(files: LinuxFiles) -> None:
    session = start(files, "-smp", "4", "--host-cpus", "1", words="pvkit.poweroff=1")
    try:
        session.expect(r"pvkit-init: probes done", BOOT_S * 2)
        assert session.wait(120) == 0
    finally:
        session.kill()
    found = probes(session.text)
    assert "arm-pv: using stolen time PV" in session.text
    # Each vCPU waits for the one host CPU while the others run: a good part of every
    # vCPU's time is steal (idle time in WFI is not), and the guest sees it.
    shares = steal_share(found, 4)
    assert all(s > 0.15 for s in shares), shares


def test_one_cpu_a_kernel_panic_and_the_reboot_it_asks_for_end_the_run_with_no_reboot(
    files: LinuxFiles,
) -> None:
    session = start(files, "-smp", "1", "--no-reboot", words="pvkit.shell=1")
    try:
        session.expect(r"pvkit-init: shell", BOOT_S)
        session.expect(PROMPT, 30)
        assert probes(session.text)["cpu.online"] == "0"
        session.send("echo c > /proc/sysrq-trigger")
        # The kernel reports its own crash with a symbolised call trace, then reboots
        # (panic=-1) through PSCI SYSTEM_RESET, which --no-reboot turns into the end.
        session.expect(r"Kernel panic - not syncing: sysrq triggered crash", 60)
        session.expect(r"write_sysrq_trigger\+0x[0-9a-f]+/0x[0-9a-f]+", 30)
        assert session.wait(120) == 0
    finally:
        session.kill()
    assert re.search(r"pvkit: reset: PSCI SYSTEM_RESET", session.text)
    assert "Traceback" not in session.text
