"""Firmware registers behave as KVM's pseudo-registers (Linux Documentation/virt/kvm/arm/
fw-pseudo-registers.rst and the KVM selftest aarch64/hypercalls.c): all-supported defaults,
EINVAL for what the host cannot serve, ENOENT for a register the VM lacks, EBUSY for a
change once a vCPU has run; and the guest's answers follow them."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pvkit.platform.virt_arm64 import RAM_BASE, VirtArm64, VirtConfig
from pvkit.services.firmware import FirmwareError, Refusal
from tests.conftest import PSCI_WALK, SMP_HELLO, Recorder, pvkit

Asm = Callable[..., Path]

# A guest that issues the calls of the KVM selftest's "bitmaps cleared" stage, writes each
# X0 to RESULTS (one u64 per call) and powers off.
RESULTS = RAM_BASE + 0x20_0000
PROBES: tuple[tuple[str, int, int], ...] = (
    ("TRNG_VERSION", 0x8400_0050, 0),
    ("TRNG_FEATURES(TRNG_RND64)", 0x8400_0051, 0xC400_0053),
    ("ARCH_FEATURES(PV_TIME_FEATURES)", 0x8000_0001, 0xC500_0020),
    ("PV_TIME_FEATURES(PV_TIME_ST)", 0xC500_0020, 0xC500_0021),
    ("PV_TIME_ST", 0xC500_0021, 0),
    ("KVM_FUNC_FEATURES", 0x8600_0000, 0),
    ("CALL_UID", 0x8600_FF01, 0),
    ("KVM_FUNC_PTP", 0x8600_0001, 0),
)
NOT_SUPPORTED = (1 << 64) - 1


def probe_guest(asm: Asm) -> Path:
    lines = [f"ldr x9, ={RESULTS:#x}"]
    for _name, fid, arg in PROBES:
        lines += [f"ldr x0, ={fid:#x}", f"ldr x1, ={arg:#x}", "hvc #0", "str x0, [x9], #8"]
    lines += ["ldr x0, =0x84000008", "hvc #0", "b ."]  # SYSTEM_OFF
    return asm("\n".join(lines), "probes")


def probe(image: Path, **fw: int) -> dict[str, int]:
    m = VirtArm64(VirtConfig(console=lambda b: None), image)
    for name, value in fw.items():
        m.firmware.set(name.replace("_", "-"), value)
    m.run(30)
    raw = m.memory.read(RESULTS, 8 * len(PROBES))
    return {p[0]: v for p, v in zip(PROBES, struct.unpack(f"<{len(PROBES)}Q", raw), strict=True)}


def fresh(**config: object) -> VirtArm64:
    return VirtArm64(VirtConfig(console=lambda b: None, **config), PSCI_WALK)  # type: ignore[arg-type]


def refusal(action: Callable[[], None]) -> FirmwareError:
    with pytest.raises(FirmwareError) as info:
        action()
    return info.value


# -- the registers as the VMM sees them ---------------------------------------------------
def test_a_fresh_vm_reads_every_bitmap_as_all_supported_and_the_newest_psci() -> None:
    fw = fresh().firmware
    assert fw.get("std-bmap") == 0x1
    assert fw.get("std-hyp-bmap") == 0x1
    assert fw.get("vendor-hyp-bmap") == 0x3
    assert fw.get("psci-version") == 0x1_0001
    assert fw.get("pv-time-revision") == 0  # DEN0057's record, as Linux reads it


def test_kvm_names_reach_the_same_registers() -> None:
    fw = fresh().firmware
    fw.set("KVM_REG_ARM_PSCI_VERSION", 0x1_0000)
    assert fw.get("psci-version") == 0x1_0000
    assert fw.register("KVM_REG_ARM_VENDOR_HYP_BMAP").kvm_id == 0x6030_0000_0016_0002


def test_zero_is_accepted_and_reads_back_but_an_unknown_bit_is_einval() -> None:
    fw = fresh().firmware
    for name in ("std-bmap", "std-hyp-bmap", "vendor-hyp-bmap"):
        fw.set(name, 0)
        assert fw.get(name) == 0
    for name, max_bit in (("std-bmap", 0), ("std-hyp-bmap", 0), ("vendor-hyp-bmap", 1)):
        err = refusal(lambda n=name, b=max_bit: fw.set(n, 1 << (b + 1)))
        assert err.refusal is Refusal.INVALID and "(EINVAL)" in str(err)
        assert fw.get(name) == 0  # a refused write changes nothing


def test_a_bit_whose_service_the_vm_lacks_is_einval() -> None:
    fw = fresh(disabled=frozenset({"trng"})).firmware
    assert fw.get("std-bmap") == 0  # the default is what this VM supports
    err = refusal(lambda: fw.set("std-bmap", 1))
    assert "bit 0 (TRNG_V1_0) gates a service this VM does not serve (EINVAL)" in str(err)


def test_a_register_the_vm_lacks_is_enoent() -> None:
    fw = fresh(disabled=frozenset({"stolen-time"})).firmware
    for name in ("no-such-register", "pv-time-revision"):
        assert refusal(lambda n=name: fw.set(n, 0)).refusal is Refusal.NO_SUCH_REGISTER


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("psci-version", 0x1, "pvkit serves PSCI 0.2, 1.0, 1.1, not 0.1"),
        ("psci-version", 0x1_0003, "not 1.3"),
        ("smccc-arch-workaround-1", 3, "level 3 is better than this host's best, 2"),
        ("smccc-arch-workaround-2", 0x11, "ENABLED bit (0x10) goes only with level 2"),
        ("smccc-arch-workaround-2", 0x23, "bits 0x20 are not part of the level"),
        ("pv-time-revision", 2, "stolen-time serves record revisions 0, 1, not 2"),
    ],
)
def test_a_value_pvkit_cannot_serve_is_einval(name: str, value: int, why: str) -> None:
    err = refusal(lambda: fresh().firmware.set(name, value))
    assert err.refusal is Refusal.INVALID and why in str(err)


def test_workaround_2_takes_enabled_with_level_avail() -> None:
    fw = fresh().firmware
    fw.set("smccc-arch-workaround-2", 0x12)
    assert fw.get("smccc-arch-workaround-2") == 0x12


def test_after_the_first_run_a_change_is_ebusy_and_the_same_value_is_accepted() -> None:
    m = VirtArm64(VirtConfig(console=lambda b: None, smp=2), SMP_HELLO)
    m.firmware.set("vendor-hyp-bmap", 0x1)
    m.run(30)
    m.firmware.set("vendor-hyp-bmap", 0x1)  # unchanged: accepted
    for name, value in (("vendor-hyp-bmap", 0x3), ("psci-version", 0x2)):
        err = refusal(lambda n=name, v=value: m.firmware.set(n, v))
        assert err.refusal is Refusal.BUSY and "a vCPU of the VM has run" in str(err)
    assert m.firmware.get("vendor-hyp-bmap") == 0x1


# -- what the guest sees ------------------------------------------------------------------
def test_with_the_bitmaps_cleared_every_gated_call_is_not_supported(asm: Asm) -> None:
    image = probe_guest(asm)
    cleared = probe(image, std_bmap=0, std_hyp_bmap=0, vendor_hyp_bmap=0)
    assert cleared == {name: NOT_SUPPORTED for name, _, _ in PROBES}
    defaults = probe(image)
    assert all(v != NOT_SUPPORTED for v in defaults.values()), defaults


def test_the_vendor_features_bitmap_reports_only_the_bits_left_set(asm: Asm) -> None:
    image = probe_guest(asm)
    assert probe(image)["KVM_FUNC_FEATURES"] & 0b11 == 0b11
    ptp_hidden = probe(image, vendor_hyp_bmap=0x1)
    assert ptp_hidden["KVM_FUNC_FEATURES"] & 0b11 == 0b01
    assert ptp_hidden["KVM_FUNC_PTP"] == NOT_SUPPORTED
    assert ptp_hidden["CALL_UID"] != NOT_SUPPORTED


def test_a_hidden_call_is_traced_as_hidden(asm: Asm) -> None:
    hub_rec = Recorder()
    m = VirtArm64(VirtConfig(console=lambda b: None), probe_guest(asm))
    m.trace.attach(hub_rec)
    m.firmware.set("std-hyp-bmap", 0)
    m.run(30)
    actions = {c.name: c.action for c in hub_rec.calls}
    assert actions["PV_TIME_ST"] == "hidden"
    assert actions["TRNG_VERSION"] == "handle"


def test_psci_version_is_what_psci_version_answers_and_newer_calls_hide() -> None:
    newest = boot_with(PSCI_WALK, {}, smp=2)
    assert newest["info"]["psci_version"] == 0x1_0001
    assert newest["hostile"]["features_reset2"] == 0
    assert newest["spec"]["features_features"] == 0

    one_oh = boot_with(PSCI_WALK, {"psci-version": 0x1_0000}, smp=2)
    assert one_oh["info"]["psci_version"] == 0x1_0000
    assert one_oh["hostile"]["features_reset2"] == -1  # SYSTEM_RESET2 is PSCI 1.1's
    assert one_oh["hostile"]["reset2_reserved_type"] == -1
    assert one_oh["spec"]["features_features"] == 0

    zero_two = boot_with(PSCI_WALK, {"psci-version": 0x2}, smp=2)
    assert zero_two["info"]["psci_version"] == 0x2
    assert set(zero_two["spec"][k] for k in zero_two["spec"] if k.startswith("features")) == {-1}


def test_the_psci_node_names_the_version_served() -> None:
    m = fresh()
    assert b"arm,psci-1.0" in m.dtb
    m.firmware.set("psci-version", 0x2)
    assert b"arm,psci-1.0" not in m.dtb and b"arm,psci-0.2" in m.dtb
    m.firmware.set("psci-version", 0x1_0000)
    assert b"arm,psci-1.0" in m.dtb


@pytest.mark.parametrize(
    ("levels", "answers"),
    [
        ((2, 3, 2), (1, -2, 1)),  # the default: unaffected, as newer KVM answers
        ((1, 2, 1), (0, 0, 0)),  # mitigated: call the workaround
        ((1, 0x12, 1), (0, 0, 0)),
        ((0, 1, 0), (-1, -1, -1)),  # no firmware help
    ],
)
def test_arch_features_of_each_workaround_follows_its_level(
    levels: tuple[int, int, int], answers: tuple[int, int, int]
) -> None:
    regs = {f"smccc-arch-workaround-{i}": v for i, v in enumerate(levels, start=1)}
    out = boot_with(PSCI_WALK, regs, smp=2)["hostile"]
    assert (out["arch_features_wa1"], out["arch_features_wa2"], out["arch_features_wa3"]) == answers


def boot_with(
    image: Path, registers: dict[str, int], **config: object
) -> dict[str, dict[str, int]]:
    """psci-walk's `<section> <label> = <value>` lines, with firmware registers set."""
    chunks: list[bytes] = []
    m = VirtArm64(VirtConfig(console=chunks.append, **config), image)  # type: ignore[arg-type]
    for name, value in registers.items():
        m.firmware.set(name, value)
    m.run(60)
    out: dict[str, dict[str, int]] = {}
    for line in b"".join(chunks).decode().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] == "=" and parts[3].lstrip("-")[:1].isdigit():
            out.setdefault(parts[0], {})[parts[1]] = int(parts[3], 0)
    return out


# -- the command line ---------------------------------------------------------------------
def test_run_fw_sets_registers_and_a_refusal_is_one_sentence() -> None:
    ok = pvkit("run", str(PSCI_WALK), "--smp", "2", "--fw", "psci-version=0x10000",
               "--fw", "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1=1")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "info psci_version = 0x10000" in ok.stdout
    assert "hostile arch_features_wa1 = 0" in ok.stdout
    bad = pvkit("run", str(PSCI_WALK), "--fw", "psci-version=0x10003")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "pvkit: --fw psci-version=0x10003: firmware register psci-version = 0x10003: pvkit "
        "serves PSCI 0.2, 1.0, 1.1, not 1.3 (EINVAL)"
    ]
    for args in (["--fw", "psci-version"], ["--fw", "psci-version=one"], ["--fw", "x=1"]):
        out = pvkit("run", str(PSCI_WALK), *args)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_fw_is_refused_for_an_x86_guest() -> None:
    out = pvkit("run", str(Path(PSCI_WALK).parent / "x86-hello.elf"), "--pv-time-revision", "1")
    assert out.returncode == 2 and "apply to arm64 guests" in out.stderr


def test_fw_list_shows_names_kvm_names_defaults_and_values() -> None:
    out = pvkit("fw", "--list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "psci-version  KVM_REG_ARM_PSCI_VERSION (0x6030000000140000)  default 0x10001" in lines
    assert "vendor-hyp-bmap  KVM_REG_ARM_VENDOR_HYP_BMAP (0x6030000000160002)  default 0x3" in lines
    assert "  values: any of: bit 0 FUNC_FEAT (vendor-hyp), bit 1 PTP (ptp-kvm)" in lines
    assert "pv-time-revision  pvkit's own register (KVM has none)  default 0" in lines
    trng_off = pvkit("fw", "std-bmap", "--disable", "trng")
    assert "std-bmap  KVM_REG_ARM_STD_BMAP (0x6030000000160000)  default 0x0" in trng_off.stdout
    assert pvkit("fw").returncode == 2


# -- through the monitor: KVM_SET_ONE_REG on a running pvkit -------------------------------
def test_the_monitor_sets_registers_of_a_vm_held_before_its_first_instruction(
    tmp_path: Path,
) -> None:
    """With -S the VM waits for `cont` before any vCPU runs: the registers are open until
    then, the guest sees what was set, and afterwards a change is EBUSY."""
    from tests.test_monitor import start

    vm = start(tmp_path, "run", str(SMP_HELLO), "--smp", "2", "-S")
    listed = vm.ok("query-fw")
    assert listed["frozen"] is False
    assert {"name": "psci-version", "value": 0x10001, "shown": "0x10001"} in listed["registers"]
    cli = pvkit("monitor", str(vm.socket), "fw-set", "psci-version=0x10000")  # the client
    assert cli.returncode == 0 and cli.stdout.strip() == '{"return": {}}', cli.stderr
    assert vm.ok("fw-get", name="psci-version")["value"] == 0x10000
    wrong = pvkit("monitor", str(vm.socket), "fw-set", "psci-version")
    assert wrong.returncode == 2 and "give NAME=VALUE" in wrong.stderr
    no_such = vm.ask("fw-set", name="psci-versions", value=1)["error"]["desc"]
    assert no_such.startswith("firmware register 'psci-versions': this VM has none")
    assert no_such.endswith("(ENOENT)")
    invalid = vm.ask("fw-set", name="psci-version", value=0x30000)["error"]["desc"]
    assert invalid.endswith("not 3.0 (EINVAL)")
    for bad, says in (("ten", "not a number"), ([1], "not a number"), (True, "needs its")):
        assert says in vm.ask("fw-set", name="psci-version", value=bad)["error"]["desc"]
    assert "needs its 'value'" in vm.ask("fw-set", name="psci-version")["error"]["desc"]
    assert vm.ok("cont") == {}
    status, out, err = vm.finish()
    assert status == 0, err
    assert "PSCI version 1.0\n" in out  # the value set through the monitor


def test_once_a_vcpu_has_run_the_monitor_gets_ebusy_for_a_change(tmp_path: Path) -> None:
    from tests.test_monitor import STEAL, start

    vm = start(tmp_path, "run", str(STEAL), "--smp", "2", "--host-cpus", "1",
               "--append", "work_ms=2000")  # fmt: skip
    assert vm.ok("stop") == {} and vm.ok("cont") == {}  # it stood: a vCPU has run
    assert vm.ok("query-fw")["frozen"] is True
    busy = vm.ask("fw-set", name="std-hyp-bmap", value=0)["error"]["desc"]
    assert busy.startswith("firmware register std-hyp-bmap cannot change from 0x1 to 0x0")
    assert busy.endswith("(EBUSY)")
    assert vm.ok("fw-set", name="std-hyp-bmap", value=1) == {}  # the same value: accepted
    assert vm.ok("quit") == {}
    assert vm.finish()[0] == 0


def test_an_x86_vm_has_no_firmware_registers_to_ask_for(tmp_path: Path) -> None:
    from tests.conftest import X86_HELLO
    from tests.test_monitor import start

    vm = start(tmp_path, "run", str(X86_HELLO), "-S")
    for command, args in (("query-fw", {}), ("fw-get", {"name": "psci-version"})):
        desc = vm.ask(command, **args)["error"]["desc"]
        assert desc.startswith("this VM has no firmware registers")
    assert vm.ok("quit") == {}
    assert vm.finish()[0] == 0
