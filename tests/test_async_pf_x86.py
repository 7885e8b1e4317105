"""x86 asynchronous page faults with KVM's MSRs (Linux Documentation/virt/kvm/x86/msr.rst).

The MSR rules through the pc board (a False write is the #GP the guest gets), then the
apf-x86 guest end to end: the host's ground truth (--stats) equals what the guest counted,
and with the service off the same guest finishes correctly, the waits all stolen time.
"""

from __future__ import annotations

import re

import pytest

from pvkit.platform.pc_x86 import PcConfig, PcX86
from pvkit.services.async_pf import WAKE_ALL
from pvkit.services.async_pf_x86 import (
    MSR_KVM_ASYNC_PF_ACK,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
)
from tests.conftest import PREBUILT, X86_HELLO, pvkit

APF_X86 = PREBUILT / "apf-x86.elf"
AREA = 0x20_0000
ENABLE = 1 | 1 << 3  # ENABLED | DELIVERY_AS_INT


def board(**config: object) -> PcX86:
    return PcX86(PcConfig(console=lambda b: None, **config), X86_HELLO)  # type: ignore[arg-type]


def test_cpuid_offers_bits_4_and_14_and_hides_them_with_the_service() -> None:
    on = board().cpuid.leaf(0, 0x4000_0001, 0)[0]
    off = board(disabled=frozenset({"async-pf"})).cpuid.leaf(0, 0x4000_0001, 0)[0]
    assert on >> 4 & 1 and on >> 14 & 1
    assert not off >> 4 & 1 and not off >> 14 & 1
    assert board(disabled=frozenset({"async-pf"})).write_msr(0, MSR_KVM_ASYNC_PF_EN, 0) is None


@pytest.mark.parametrize(
    "value",
    [AREA | ENABLE | 1 << 4, AREA | ENABLE | 1 << 5, AREA | ENABLE | 1 << 2, (1 << 40) | ENABLE],
    ids=["bit4", "bit5", "pf-vmexit", "outside-ram"],
)
def test_reserved_bits_vmexit_delivery_and_an_area_outside_ram_are_gp(value: int) -> None:
    m = board()
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_EN, value) is False
    assert m.read_msr(0, MSR_KVM_ASYNC_PF_EN) == 0


def test_enabled_only_with_delivery_as_interrupt() -> None:
    m = board()
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_EN, AREA | 1) is True  # accepted, read back...
    assert m.read_msr(0, MSR_KVM_ASYNC_PF_EN) == AREA | 1
    apf = next(s for s in m.services if s.name == "async-pf")
    assert not apf.state(0).enabled  # type: ignore[attr-defined]  # ...but off, as KVM


def test_int_takes_a_vector_and_refuses_reserved_bits_ack_reads_zero() -> None:
    m = board()
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_INT, 0x41) is True
    assert m.read_msr(0, MSR_KVM_ASYNC_PF_INT) == 0x41
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_INT, 0x141) is False
    assert m.read_msr(0, MSR_KVM_ASYNC_PF_ACK) == 0
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_ACK, 1) is True  # nothing pending: harmless


def test_enable_posts_wake_all_and_the_next_waits_for_ack_and_a_free_token_slot() -> None:
    m = board()
    posted: list[tuple[int, int]] = []
    m.post_interrupt = lambda vcpu, vector: posted.append((vcpu, vector)) or True  # type: ignore[method-assign]
    m.write_msr(0, MSR_KVM_ASYNC_PF_INT, 0x41)
    assert m.write_msr(0, MSR_KVM_ASYNC_PF_EN, AREA | ENABLE) is True
    assert posted == [(0, 0x41)] and m.memory.read_u32(AREA + 4) == WAKE_ALL
    apf = next(s for s in m.services if s.name == "async-pf")
    faults: list[int] = []
    m.inject_page_fault = lambda vcpu, address: faults.append(address) or True  # type: ignore[method-assign]
    token = apf.page_not_present(0, 7, user_mode=True, interrupts_masked=False)  # type: ignore[attr-defined]
    assert token is not None and faults == [token] and m.memory.read_u32(AREA) == 1
    # flags still 1 (the guest has not cleared it): the next fault waits
    assert apf.page_not_present(0, 8, True, False) is None  # type: ignore[attr-defined]
    assert apf.page_not_present(0, 7, False, False) is None  # type: ignore[attr-defined]
    apf.page_ready(7)  # type: ignore[attr-defined]
    assert len(posted) == 1  # the wake-all is not acknowledged yet
    m.memory.write_u32(AREA + 4, 0)
    m.write_msr(0, MSR_KVM_ASYNC_PF_ACK, 1)
    assert posted == [(0, 0x41)] * 2 and m.memory.read_u32(AREA + 4) == token


def _apf_run(*extra: str) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    run = pvkit(
        "run", str(APF_X86), "--deterministic", "--stats", "--swap-out", "0x4000000+4M",
        "--swap-latency-ms", "1", *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "FAILED" not in run.stdout
    for i in range(4):
        assert f"apf: task {i} walked 256 pages x 2 passes" in run.stdout
    guest = {k: int(v) for k, v in re.findall(r"([a-z-]+)=(\d+)", _line(run.stdout, "apf: notif"))}
    host = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", _line(run.stderr, "pvkit: swap"))}
    apf_line = [ln for ln in run.stderr.splitlines() if ln.startswith("pvkit: async-pf")]
    host_apf = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", apf_line[0])} if apf_line else {}
    steal = int(re.search(r"steal_ns=(\d+)", run.stderr).group(1))  # type: ignore[union-attr]
    rounds = int(re.search(r"compute task ran (\d+) rounds", run.stdout).group(1))  # type: ignore[union-attr]
    return guest, host, host_apf | {"rounds": rounds}, steal


def _line(text: str, prefix: str) -> str:
    found = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, text
    return found[0]


def test_the_guest_counts_what_the_host_sent_and_keeps_working_while_pages_arrive() -> None:
    guest, host, apf, steal = _apf_run()
    assert host["touched"] == host["fetched"] == 1024  # every page of the region, once
    assert guest["not-present"] == apf["not_present"] > 0
    assert guest["ready"] + guest["unknown"] == apf["ready"]  # unknown: woken by wake-all
    assert guest["wake-all"] == apf["wake_all"] == 1
    assert apf["acks"] == apf["ready"] + apf["wake_all"]
    assert host["waits"] <= 4  # only a task that faults again on a page already told
    # such a wait ends when the fetch already under way does: less than a whole latency
    assert 0 <= steal <= host["waits"] * 1_000_000 and (steal > 0) == (host["waits"] > 0)


def test_without_the_service_the_same_guest_finishes_slower_and_the_wait_is_stolen() -> None:
    on = _apf_run()
    guest, host, apf, steal = _apf_run("--disable", "async-pf")
    assert guest["not-present"] == 0 and not apf.keys() - {"rounds"}
    assert host["waits"] == host["touched"] == 1024
    assert steal == 1024 * 1_000_000  # every wait exactly the latency, all stolen
    assert on[2]["rounds"] > 10 * apf["rounds"]  # the compute task ran meanwhile
