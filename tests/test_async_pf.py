"""arm64 asynchronous page faults, as docs/services/async-pf.md specifies them.

Through the real board and the SMCCC ABI: discovery, the sub-functions, the enable/ack
protocol, one notification in flight, the EL0-only rule and hostile arguments. The PPI
line is observed where the service drives it (the board's set_ppi).
"""

from __future__ import annotations

import re

import pytest

from pvkit.abi.arm64_smccc import SmcccAbi
from pvkit.hypercall.call import Conduit
from pvkit.hypercall.namespace import NamespaceClash
from pvkit.hypercall.vendor_numbers import KVM_NUMBERS, PVKIT_NUMBERS
from pvkit.platform.virt_arm64 import RAM_BASE, VirtArm64, VirtConfig
from pvkit.services.async_pf import (
    REASON_NOT_PRESENT,
    REASON_READY,
    SLOTS,
    WAKE_ALL,
    AsyncPfService,
)
from pvkit.services.profiles import NONE, PVKIT
from tests.conftest import PREBUILT, SMP_HELLO, pvkit

M64 = (1 << 64) - 1
FID = 0x8600_007E
FEATURES = 0x8600_0000
VERSION, SLOTS_Q, SDEI, IRQ, ENABLE, IRQ_ACK = range(6)
NOT_SUPPORTED, NOT_REQUIRED, INVALID = M64, M64 - 1, M64 - 2
BLOCK = RAM_BASE + 0x0100_0000
PAGE = 5  # a page number the tests pretend the vCPU touched


class Board:
    def __init__(self, **config: object):
        self.machine = VirtArm64(VirtConfig(console=lambda b: None, smp=2, **config), SMP_HELLO)  # type: ignore[arg-type]
        self.abi = SmcccAbi(self.machine.dispatcher)
        self.lines: dict[int, bool] = {}
        self.machine.set_ppi = self._set_ppi  # type: ignore[method-assign]
        service = next(s for s in self.machine.services if s.name == "async-pf")
        assert isinstance(service, AsyncPfService)
        self.apf = service

    def _set_ppi(self, vcpu: int, intid: int, level: bool) -> bool:
        assert intid == 17
        self.lines[vcpu] = level
        return True

    def hvc(self, *regs: int, vcpu: int = 0) -> list[int]:
        padded = [*regs] + [0] * (8 - len(regs))
        return [r & M64 for r in self.abi.on_hypercall(padded, Conduit.HVC, 0, vcpu).results]

    def apf_call(self, sub: int, w2: int = 0, w3: int = 0, vcpu: int = 0) -> list[int]:
        return self.hvc(FID, sub, w2, w3, vcpu=vcpu)

    def enable(self, block: int = BLOCK, flags: int = 1, vcpu: int = 0) -> int:
        return self.apf_call(ENABLE, (block | flags) & 0xFFFF_FFFF, block >> 32, vcpu)[0]

    def block(self, block: int = BLOCK) -> tuple[int, int]:
        mem = self.machine.memory
        return mem.read_u32(block), mem.read_u32(block + 4)

    def ack(self, vcpu: int = 0) -> int:
        return self.apf_call(IRQ_ACK, vcpu=vcpu)[0]


def test_the_features_bitmap_has_bit_126_and_the_call_answers_version_slots_irq() -> None:
    b = Board()
    assert b.hvc(FEATURES)[3] & (1 << 30)
    assert b.apf_call(VERSION)[:2] == [0, 0x01_00_00]
    assert b.apf_call(SLOTS_Q)[:2] == [0, SLOTS]
    assert b.apf_call(IRQ)[:2] == [0, 17]
    assert b.apf_call(SDEI)[0] == NOT_SUPPORTED  # both notifications ride the PPI
    assert b.apf_call(0x1234)[0] == NOT_SUPPORTED


def test_the_pvkit_profile_serves_it_and_no_hypervisor_does_not() -> None:
    assert Board(profile=PVKIT).apf_call(VERSION)[0] == 0
    with pytest.raises(StopIteration):
        Board(profile=NONE)


def test_disabling_the_service_clears_its_bit() -> None:
    m = VirtArm64(VirtConfig(console=lambda b: None, disabled=frozenset({"async-pf"})), SMP_HELLO)
    assert not any(s.name == "async-pf" for s in m.services)


def test_enable_sends_wake_all_and_waits_for_the_ack() -> None:
    b = Board()
    assert b.enable() == 0
    assert b.block() == (REASON_READY, WAKE_ALL) and b.lines[0]
    assert b.ack() == 0
    assert not b.lines[0]
    assert b.ack() == NOT_REQUIRED  # nothing in flight now
    assert b.apf.stats.wake_all == 1 and b.apf.stats.acks == 1


def test_enable_twice_is_not_required_and_disable_when_off_too() -> None:
    b = Board()
    assert b.enable(flags=0) == NOT_REQUIRED
    assert b.enable() == 0
    assert b.enable() == NOT_REQUIRED
    assert b.enable(flags=0) == 0
    assert b.enable(flags=0) == NOT_REQUIRED


@pytest.mark.parametrize("flags", [0b101, 0b1001, 0b10001, 0b100001])
def test_a_reserved_control_bit_is_invalid(flags: int) -> None:
    b = Board()
    assert b.enable(flags=flags) == INVALID
    assert not b.apf.state(0).enabled and b.block() == (0, 0)


@pytest.mark.parametrize("block", [RAM_BASE - 64, RAM_BASE + (256 << 20), 1 << 40, 0])
def test_a_block_outside_ram_is_invalid(block: int) -> None:
    b = Board()
    assert b.enable(block=block) == INVALID
    assert not b.apf.state(0).enabled


def enabled_board(**config: object) -> Board:
    b = Board(**config)
    assert b.enable() == 0
    b.machine.memory.write(BLOCK, bytes(8))
    assert b.ack() == 0  # the wake-all
    return b


def test_page_not_present_writes_reason_and_token_and_raises_the_ppi() -> None:
    b = enabled_board()
    token = b.apf.page_not_present(0, PAGE, user_mode=True, interrupts_masked=False)
    assert token == (1 << 12) | 0  # (n << 12) | vcpu, n from 1
    assert b.block() == (REASON_NOT_PRESENT, token) and b.lines[0]


def test_only_el0_is_told_unless_the_guest_asked_for_send_always() -> None:
    b = enabled_board()
    assert b.apf.page_not_present(0, PAGE, user_mode=False, interrupts_masked=False) is None
    assert b.enable(flags=0b11) == 0  # SEND_ALWAYS: EL1 too
    b.ack()
    assert b.apf.page_not_present(0, PAGE, user_mode=False, interrupts_masked=False) is not None


def test_masked_irqs_mean_the_vcpu_waits() -> None:
    b = enabled_board()
    assert b.apf.page_not_present(0, PAGE, user_mode=True, interrupts_masked=True) is None


def test_one_notification_in_flight_the_next_waits_for_the_ack() -> None:
    b = enabled_board()
    first = b.apf.page_not_present(0, PAGE, True, False)
    assert b.apf.page_not_present(0, PAGE + 1, True, False) is None  # in flight: wait
    assert b.apf.page_ready(PAGE) == [(0, first)]
    assert b.block() == (REASON_NOT_PRESENT, first)  # the ready waits behind the ack
    b.machine.memory.write(BLOCK, bytes(8))
    assert b.ack() == 0
    assert b.block() == (REASON_READY, first) and b.lines[0]
    assert b.ack() == 0 and not b.lines[0]


def test_each_vcpu_has_its_own_block_tokens_and_line() -> None:
    b = enabled_board()
    other = BLOCK + 64
    assert b.enable(block=other, vcpu=1) == 0
    b.ack(vcpu=1)
    t0 = b.apf.page_not_present(0, PAGE, True, False)
    t1 = b.apf.page_not_present(1, PAGE, True, False)
    assert t0 is not None and t1 is not None and t0 & 0xFFF == 0 and t1 & 0xFFF == 1
    assert b.lines == {0: True, 1: True}
    b.ack(0), b.ack(1)
    assert sorted(b.apf.page_ready(PAGE)) == [(0, t0), (1, t1)]
    assert b.block(BLOCK) == (REASON_READY, t0) and b.block(other) == (REASON_READY, t1)


def test_no_more_than_slots_tokens_are_outstanding() -> None:
    b = enabled_board()
    for n in range(SLOTS):
        assert b.apf.page_not_present(0, 100 + n, True, False) is not None
        b.ack()
    assert b.apf.page_not_present(0, 100 + SLOTS, True, False) is None


def test_disable_drops_outstanding_tokens_and_lowers_the_line() -> None:
    b = enabled_board()
    assert b.apf.page_not_present(0, PAGE, True, False) is not None
    assert b.enable(flags=0) == 0
    assert not b.lines[0]
    assert b.apf.page_ready(PAGE) == []  # nobody is told about it any more
    assert b.apf.stats.dropped == 1


def test_a_reset_forgets_everything() -> None:
    b = enabled_board()
    b.apf.reset()
    assert not b.apf.state(0).enabled and b.apf.stats.wake_all == 0


def test_a_block_can_be_anywhere_in_ram_up_to_its_last_64_bytes() -> None:
    b = Board()
    assert b.enable(block=RAM_BASE + (256 << 20) - 64) == 0


# -- end to end: the apf guest against the host's ground truth -----------------------------
def _stats(*extra: str) -> tuple[dict[str, int], dict[str, int], dict[str, int], int]:
    run = pvkit(
        "run", str(PREBUILT / "apf.Image"), "--deterministic", "--stats",
        "--swap-out", "0x48000000+4M", "--swap-latency-ms", "1", *extra,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "FAILED" not in run.stdout
    for i in range(4):
        assert f"apf: task {i} walked 256 pages x 2 passes" in run.stdout
    figures = {}
    for prefix, text in (("apf: notifications:", run.stdout), ("pvkit: swap", run.stderr),
                         ("pvkit: async-pf", run.stderr)):  # fmt: skip
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        figures[prefix] = (
            {k: int(v) for k, v in re.findall(r"([\w-]+)=(\d+)", lines[0])} if lines else {}
        )
    steal = int(re.search(r"steal_ns=(\d+)", run.stderr).group(1))  # type: ignore[union-attr]
    return figures["apf: notifications:"], figures["pvkit: swap"], figures["pvkit: async-pf"], steal


def test_the_guest_counts_exactly_what_the_host_sent() -> None:
    guest, swap, apf, steal = _stats()
    assert swap["touched"] == swap["fetched"] == 1024
    assert guest["not-present"] == apf["not_present"] > 1000
    assert guest["ready"] + guest["unknown"] == apf["ready"] == apf["not_present"]
    assert guest["wake-all"] == apf["wake_all"] == 1
    assert apf["acks"] == apf["not_present"] + apf["ready"] + apf["wake_all"]  # one per IRQ
    assert swap["waits"] + apf["not_present"] >= swap["touched"]  # told, or else waited
    assert steal <= swap["waits"] * 1_000_000


def test_with_the_service_off_every_page_is_a_wait_of_the_whole_latency() -> None:
    guest, swap, apf, steal = _stats("--disable", "async-pf")
    assert guest["not-present"] == 0 and apf == {}
    assert swap["waits"] == swap["touched"] == 1024
    assert steal == 1024 * 1_000_000


# -- the number: pvkit's assignment in the vendor range, and the guest SDK agrees ------------
def test_the_number_is_pvkits_own_and_none_of_kvms() -> None:
    assert PVKIT_NUMBERS["async-pf"] == 126 and 126 not in KVM_NUMBERS
    assert {1, 2} <= KVM_NUMBERS  # the series' own numbers: KVM's PTP and a pKVM function
    assert Board().apf.function_id == FID


def test_the_guest_sdk_header_has_the_hosts_number() -> None:
    # apf.h names the generated header's constants (tests/test_guest_headers.py checks that
    # the generated header is what pvkit writes from this service's definition).
    include = PREBUILT.parent / "sdk" / "include" / "pvkit"
    apf_h = (include / "apf.h").read_text()
    assert "#include <pvkit/gen/async-pf.h>" in apf_h
    assert re.search(r"#define APF_FUNC ASYNC_PF\b", apf_h)
    assert re.search(r"#define APF_FUNC_NUMBER ASYNC_PF_FEATURE_BIT\b", apf_h)
    header = (include / "gen" / "async-pf.h").read_text()
    fid = re.search(r"#define ASYNC_PF (0x[0-9a-f]+)u", header)
    number = re.search(r"#define ASYNC_PF_FEATURE_BIT (\d+)", header)
    assert fid is not None and number is not None
    assert int(fid.group(1), 16) == FID and int(number.group(1)) == FID & 0xFFFF


def test_a_service_claiming_the_same_number_clashes_at_build_time() -> None:
    class Other(AsyncPfService):
        name = "my-apf"

    with pytest.raises(NamespaceClash, match="async-pf"):
        VirtArm64(VirtConfig(console=lambda b: None, extra_services=[Other()]), SMP_HELLO)
