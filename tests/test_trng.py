"""The Arm TRNG firmware interface (Arm DEN0098) v1.0, as a guest reaches it through HVC/SMC.

Every call goes in as registers x0..x7 through the SMCCC ABI of a real `virt` VM and comes
back as the x0..x3 the guest would read, so decode, namespace, policy, handler and
write-back are all on the path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi
from pvkit.hypercall.answer_table import build_answer_table
from pvkit.hypercall.call import Conduit
from pvkit.hypercall.namespace import Abi, IdRange
from pvkit.hypercall.policy import Action, Rule
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.profiles import KVM, NONE, PVKIT
from pvkit.services.psci import function_id as psci_id
from pvkit.services.ptp_kvm import KVM_FUNC_PTP
from pvkit.services.registry import services_for
from pvkit.services.smccc_arch import SMCCC_ARCH_FEATURES
from pvkit.services.stolen_time import PV_TIME_FEATURES
from pvkit.services.trng import (
    IMPLEMENTATION_UUID,
    TRNG_FEATURES,
    TRNG_GET_UUID,
    TRNG_IDS,
    TRNG_RND32,
    TRNG_RND64,
    TRNG_VERSION,
)

from .conftest import SMP_HELLO

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
NOT_SUPPORTED = M64  # -1 in the whole of x0
INVALID_PARAMETER = -2 & M64  # TRNG's own code: N too large

Hvc = Callable[..., list[int]]


def vm(**config: object) -> VirtArm64:
    return VirtArm64(VirtConfig(console=lambda b: None, **config), Path(SMP_HELLO))  # type: ignore[arg-type]


def caller(machine: VirtArm64, conduit: Conduit = Conduit.HVC) -> Hvc:
    abi = SmcccAbi(machine.dispatcher)

    def call(fid: int, *args: int) -> list[int]:
        regs = [fid, *args] + [0] * (7 - len(args))
        return [r & M64 for r in abi.on_hypercall(regs, conduit, 0, 0).results]

    return call


@pytest.fixture(scope="module")
def hvc() -> Hvc:
    return caller(vm())


def entropy(regs: list[int], width: int) -> int:
    """x1..x3 as one number, least significant bits in x3 (DEN0098's order)."""
    return regs[1] << 2 * width | regs[2] << width | regs[3]


# -- TRNG_VERSION, TRNG_FEATURES, TRNG_GET_UUID ------------------------------------------
def test_version_is_1_0(hvc: Hvc) -> None:
    assert hvc(TRNG_VERSION) == [0x1_0000, 0, 0, 0]


@pytest.mark.parametrize("fid", sorted(TRNG_IDS), ids=hex)
def test_features_answers_0_for_each_of_the_five_trng_functions(hvc: Hvc, fid: int) -> None:
    assert hvc(TRNG_FEATURES, fid) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "fid",
    [KVM_FUNC_PTP, psci_id("PSCI_VERSION"), 0x8400_0054, 0x8400_004F, 0xC400_0050,
     0xC400_0052, PV_TIME_FEATURES, SMCCC_ARCH_FEATURES, 0x8700_0000],
    ids=hex,
)  # fmt: skip
def test_features_answers_not_supported_for_any_other_function(hvc: Hvc, fid: int) -> None:
    assert hvc(TRNG_FEATURES, fid) == [NOT_SUPPORTED, 0, 0, 0]


def test_features_reads_only_w1(hvc: Hvc) -> None:
    assert hvc(TRNG_FEATURES, 0xDEAD_0000_0000_0000 | TRNG_RND64)[0] == 0


def test_get_uuid_is_pvkits_own_fixed_implementation_uuid(hvc: Hvc) -> None:
    first, again = hvc(TRNG_GET_UUID), hvc(TRNG_GET_UUID)
    assert first == again and any(first) and first[0] != M32
    assert all(w <= M32 for w in first)
    raw = b"".join(w.to_bytes(4, "little") for w in first)  # SMCCC's UUID packing
    assert uuid.UUID(bytes=raw) == IMPLEMENTATION_UUID and IMPLEMENTATION_UUID.version == 4
    # not KVM's TRNG UUID: the UUID names the implementation, not the interface
    assert uuid.UUID("0d21e000-4384-11eb-8070-5244554e5a4c") != IMPLEMENTATION_UUID


# -- TRNG_RND32 / TRNG_RND64 -------------------------------------------------------------
RND = [(TRNG_RND32, 32), (TRNG_RND64, 64)]
BITS = (0, 1, 7, 31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 191, 192)


@pytest.mark.parametrize(
    ("fid", "width", "bits"),
    [(fid, width, n) for fid, width in RND for n in BITS if n <= 3 * width],
    ids=lambda v: hex(v) if v > 0x1000 else str(v),
)
def test_rnd_returns_n_bits_least_significant_in_the_last_register(
    hvc: Hvc, fid: int, width: int, bits: int
) -> None:
    regs = hvc(fid, bits)
    assert regs[0] == 0
    assert all(r < 1 << width for r in regs[1:])  # SMC32: 32-bit words; SMC64: 64-bit
    assert entropy(regs, width) < 1 << bits  # every bit above N is zero


@pytest.mark.parametrize(("fid", "width"), RND, ids=["32", "64"])
def test_rnd_fills_exactly_the_low_n_bits(hvc: Hvc, fid: int, width: int) -> None:
    # OR-ing 64 draws sets each requested bit (a miss has odds 2**-64) and no other one.
    for bits in (1, width, width + 5, 3 * width):
        seen = 0
        for _ in range(64):
            seen |= entropy(hvc(fid, bits), width)
        assert seen == (1 << bits) - 1, bits


def test_n_1_gives_at_most_bit_0_of_the_last_register(hvc: Hvc) -> None:
    for fid in (TRNG_RND32, TRNG_RND64):
        status, x1, x2, x3 = hvc(fid, 1)
        assert (status, x1, x2) == (0, 0, 0) and x3 in (0, 1)


def test_n_0_succeeds_with_no_bits(hvc: Hvc) -> None:
    assert hvc(TRNG_RND32, 0) == [0, 0, 0, 0]
    assert hvc(TRNG_RND64, 0) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("fid", "bits"),
    [(TRNG_RND32, 97), (TRNG_RND32, M32), (TRNG_RND64, 193), (TRNG_RND64, 1 << 32),
     (TRNG_RND64, M64)],
    ids=["32:97", "32:max", "64:193", "64:2^32", "64:max"],
)  # fmt: skip
def test_n_too_large_is_invalid_parameter(hvc: Hvc, fid: int, bits: int) -> None:
    assert hvc(fid, bits) == [INVALID_PARAMETER, 0, 0, 0]


def test_rnd32_sees_only_w1_as_an_smc32_call(hvc: Hvc) -> None:
    regs = hvc(TRNG_RND32, 1 << 32 | 8)  # W1 = 8
    assert regs[0] == 0 and regs[1] == regs[2] == 0 and regs[3] < 1 << 8


def test_every_call_draws_fresh_bits(hvc: Hvc) -> None:
    draws = {tuple(hvc(TRNG_RND64, 192)) for _ in range(8)}
    assert len(draws) == 8
    assert hvc(TRNG_RND32, 96) != hvc(TRNG_RND32, 96)


def test_entropy_is_the_hosts_even_with_deterministic_time() -> None:
    a, b = caller(vm(deterministic=True)), caller(vm(deterministic=True))
    assert a(TRNG_RND64, 192) != b(TRNG_RND64, 192)


def test_the_smc_conduit_serves_the_same_calls() -> None:
    smc = caller(vm(conduit="smc"), Conduit.SMC)
    assert smc(TRNG_VERSION)[0] == 0x1_0000 and smc(TRNG_RND64, 64)[0] == 0


# -- discovery beside the other families ----------------------------------------------------
@pytest.mark.parametrize("fid", sorted(TRNG_IDS), ids=hex)
def test_other_families_features_calls_do_not_report_trng(hvc: Hvc, fid: int) -> None:
    # TRNG is found through TRNG_VERSION; ARCH_FEATURES and PV_TIME_FEATURES say -1, as KVM.
    assert hvc(SMCCC_ARCH_FEATURES, fid)[0] == NOT_SUPPORTED
    assert hvc(PV_TIME_FEATURES, fid)[0] == NOT_SUPPORTED
    assert hvc(psci_id("PSCI_FEATURES"), fid)[0] == NOT_SUPPORTED


def test_linux_probe_finds_trng(hvc: Hvc) -> None:
    # smccc_probe_trng: TRNG_VERSION as a signed 32-bit value, at least 1.0; the seed calls
    # then read RND64 with N = 64 * longs, x3 first.
    version = hvc(TRNG_VERSION)[0]
    assert version & M32 < 1 << 31 and version >= 0x1_0000
    status, *_ = hvc(TRNG_RND64, 3 * 64)
    assert status == 0


def test_version_uuid_and_features_are_answered_in_the_trap_rnd_never() -> None:
    m = vm()
    table = build_answer_table(m.namespace, m.policy, NOT_SUPPORTED_ANSWER)
    hvc = caller(m)
    assert table.lookup(TRNG_VERSION, 0) == tuple(hvc(TRNG_VERSION))
    assert table.lookup(TRNG_GET_UUID, 0) == tuple(hvc(TRNG_GET_UUID))
    for fid in [*TRNG_IDS, KVM_FUNC_PTP, 0x8700_0001]:
        assert table.lookup(TRNG_FEATURES, fid) == tuple(hvc(TRNG_FEATURES, fid))
    assert table.lookup(TRNG_RND32, 96) is None and table.lookup(TRNG_RND64, 192) is None


def test_a_denied_function_is_not_reported_by_trng_features() -> None:
    hvc = caller(vm(rules=[Rule(IdRange(TRNG_RND64, TRNG_RND64), Action.DENY)]))
    assert hvc(TRNG_RND64, 64)[0] == NOT_SUPPORTED
    assert hvc(TRNG_FEATURES, TRNG_RND64)[0] == NOT_SUPPORTED
    assert hvc(TRNG_FEATURES, TRNG_RND32)[0] == 0


def test_disable_trng_leaves_every_trng_id_not_supported() -> None:
    m = vm(disabled=frozenset({"trng"}))
    hvc = caller(m)
    for fid in TRNG_IDS:
        assert hvc(fid, 64) == list(NOT_SUPPORTED_ANSWER)
        assert m.namespace.claim_for(fid) is None


def test_trng_is_an_arm64_service_of_every_profile_with_a_hypervisor() -> None:
    assert {s.name for s in services_for(KVM)} >= {"trng"}
    assert "trng" in {s.name for s in services_for(PVKIT)}
    assert "trng" not in {s.name for s in services_for(NONE)}
    assert "trng" not in {s.name for s in services_for(KVM, Abi.KVM_X86)}
