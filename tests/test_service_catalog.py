"""`pvkit services` and `--disable` (issue 14, item 1): the services a VM can offer, listed from
their definitions; names a VM does not know are refused, never silently ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange, NamespaceClash
from pvkit.platform.board import ConfigError, select_services
from pvkit.platform.pc_x86 import PcConfig, PcX86
from pvkit.services.base import Service
from pvkit.services.catalog import builtin_names, cpuid_features, describe, vendor_bit
from pvkit.services.profiles import KVM, NONE, PROFILES
from pvkit.services.registry import services_for
from pvkit.services.vendor_hyp import VendorHypService

from .conftest import SMP_HELLO, X86_HELLO, pvkit

ARM = Abi.SMCCC
X86 = Abi.KVM_X86


# -- --disable -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "arch"), [(SMP_HELLO, "arm64"), (X86_HELLO, "x86_64")], ids=["arm64", "x86_64"]
)
def test_a_misspelled_disable_is_one_sentence_listing_the_valid_names(
    image: Path, arch: str
) -> None:
    r = pvkit("run", str(image), "--disable", "stolen-tme")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    abi = ARM if arch == "arm64" else X86
    assert lines[0] == (
        f"pvkit: --disable 'stolen-tme': no built-in {arch} service has that name; "
        f"choose from {', '.join(builtin_names(abi))}"
    )


def test_a_service_of_the_other_architecture_cannot_be_disabled() -> None:
    r = pvkit("run", str(SMP_HELLO), "--disable", "kvmclock")
    assert r.returncode == 2 and "no built-in arm64 service" in r.stderr


def test_a_known_name_still_disables_the_service() -> None:
    r = pvkit("run", str(SMP_HELLO), "--disable", "vendor-hyp")
    assert r.returncode == 0, r.stderr
    assert "hypervisor: unknown (no vendor call will be made)" in r.stdout


def test_names_of_every_profile_are_valid_under_every_profile() -> None:
    # psci exists only with a hypervisor, yet `--profile none --disable psci` is no mistake.
    assert select_services(NONE, ARM, [], ["psci"]) == []
    every = {s.name for p in PROFILES.values() for s in services_for(p, ARM)}
    assert set(builtin_names(ARM)) == every


class _MyVendor(VendorHypService):
    """A designer's vendor-hyp replacement that kept the name (issue 14's failing case)."""

    def __init__(self) -> None:
        super().__init__(b"0123456789abcdef", "MY_FEATURES")


class _MyRenamedVendor(_MyVendor):
    name = "my-vendor"


def test_disable_never_drops_a_service_the_user_added() -> None:
    mine = _MyVendor()
    chosen = select_services(KVM, ARM, [mine], ["vendor-hyp"])
    assert mine in chosen  # the built-in went; the replacement that kept its name stayed
    assert [s for s in chosen if s.name == "vendor-hyp"] == [mine]
    renamed = _MyRenamedVendor()
    chosen = select_services(KVM, ARM, [renamed], ["vendor-hyp"])
    assert renamed in chosen and all(s.name != "vendor-hyp" for s in chosen)


def test_two_services_of_one_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"two services are named 'vendor-hyp'.*--disable"):
        select_services(KVM, ARM, [_MyVendor()], [])


def test_a_service_added_to_a_board_whose_abi_it_does_not_speak_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'my-vendor' speaks smccc, not kvm-x86"):
        select_services(KVM, X86, [_MyRenamedVendor()], [])


# -- CPUID feature bits are a namespace too ------------------------------------------------
class _X86Call(Service):
    name = "my-x86-call"
    abis = frozenset({X86})
    cpuid_feature_bit = 20  # free: KVM names no bit 18..23

    def claims(self, abi: Abi = X86) -> list[IdRange]:
        return [IdRange(0x7FFF_0000, 0x7FFF_0000)]

    def functions(self, abi: Abi = X86) -> list[Function]:
        return [Function(0x7FFF_0000, "MY_X86_CALL", self._call)]

    def _call(self, call: Call) -> None:
        call.answer(42)


class _X86Clash(_X86Call):
    cpuid_feature_bit = 5  # stolen time's


def test_a_new_x86_service_gets_its_free_cpuid_bit() -> None:
    m = PcX86(PcConfig(console=lambda b: None, extra_services=[_X86Call()]), X86_HELLO)
    assert m.cpuid.leaf(0, 0x4000_0001)[0] >> 20 & 1


def test_a_cpuid_bit_two_services_claim_is_a_clash_naming_both() -> None:
    with pytest.raises(NamespaceClash, match=r"bit 5 \(KVM_FEATURE_STEAL_TIME\).*'stolen-time'"):
        PcX86(PcConfig(console=lambda b: None, extra_services=[_X86Clash()]), X86_HELLO)
    with pytest.raises(NamespaceClash, match="free bits: 8, 18"):
        cpuid_features([_X86Clash(), *services_for(KVM, X86)])


# -- pvkit services ------------------------------------------------------------------------
def test_services_lists_every_builtin_of_both_architectures() -> None:
    r = pvkit("services")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("arm64: SMCCC function IDs in W0")
    assert "\nx86_64: KVM hypercall numbers in RAX" in out
    for abi in (ARM, X86):
        for service in services_for(KVM, abi):
            info = describe(service, abi)
            assert re.search(rf"^{re.escape(service.name)}  \(ABIs: ", out, re.M), service.name
            for f in info.functions:
                assert re.search(rf"^  {f.function_id:#010x}  {re.escape(f.name)} ", out, re.M)
            for index, name in info.msrs:
                assert f"  MSR {index:#010x}  {name}" in out


def test_services_shows_discovery_bits_claims_and_revisions() -> None:
    out = pvkit("services", "--arch", "arm64").stdout
    assert "x86_64" not in out
    assert "claims: 0x86000000, 0x8600ff00..0x8600ffff, 0xc6000000, 0xc600ff00..0xc600ffff" in out
    assert re.search(r"0x86000001  KVM_FUNC_PTP .* features bitmap bit 1 \(W0 bit 1\)", out)
    assert re.search(r"0x8600007e  ASYNC_PF .* features bitmap bit 126 \(W3 bit 30\)", out)
    assert "psci  (ABIs: smccc; revision 1.1 (PSCI_VERSION))" in out
    assert "stolen-time  (ABIs: kvm-x86, smccc; revision 0" in out
    assert re.search(r"PV_TIME_ST .*SMCCC_ARCH_FEATURES\(ID\) answers 0", out)
    x86 = pvkit("services", "--arch", "x86_64").stdout
    assert "CPUID base+1 EAX bit 7  KVM_FEATURE_PV_UNHALT  (gates its calls and MSRs)" in x86
    assert "CPUID base+1 EAX bit 14  KVM_FEATURE_ASYNC_PF_INT  (also set)" in x86
    assert "MSR 0x00000012  MSR_KVM_SYSTEM_TIME" in x86


def test_services_follows_the_profile() -> None:
    pvkit_names = pvkit("services", "--arch", "arm64", "--profile", "pvkit").stdout
    assert "PVKIT_FEATURES" in pvkit_names and "KVM_FUNC_FEATURES" not in pvkit_names
    none = pvkit("services", "--profile", "none")
    assert none.returncode == 0 and none.stdout.count("no services") == 2


@pytest.mark.parametrize("args", [["--arch", "riscv"], ["--profile", "xen"]])
def test_services_refuses_bad_options_in_one_sentence(args: list[str]) -> None:
    r = pvkit("services", *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("pvkit: ")


def test_vendor_bits_are_those_of_fast_calls_numbered_below_128() -> None:
    assert vendor_bit(0xC600_0042) == 66 and vendor_bit(0x8600_0000) == 0
    assert vendor_bit(0x8600_0080) is None  # beyond the bitmap
    assert vendor_bit(0x0600_0001) is None  # a yielding call
    assert vendor_bit(0x8500_0001) is None  # another owner
