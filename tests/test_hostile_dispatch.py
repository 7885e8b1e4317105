"""Hostile guests at the dispatcher: any W0 and any arguments get an architectural answer."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi
from pvkit.hypercall.call import Conduit, Outcome
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.psci import FUNCTIONS, SMC32_BASE, SMC64_BASE, PsciReturn

from .conftest import SMP_HELLO

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
M = VirtArm64(VirtConfig(smp=4, console=lambda b: None), Path(SMP_HELLO))
PSCI_CODES = {int(r) & ((1 << 64) - 1) for r in PsciReturn} | {0, 1, 2, 0x1_0001}
# Calls that act on the system or the caller rather than answer.


def registers(results: list[int]) -> list[int]:
    """What the ABI writes to x0..x3."""
    return [r & ((1 << 64) - 1) for r in results]


ACTING = {"CPU_OFF", "SYSTEM_OFF", "SYSTEM_RESET", "SYSTEM_RESET2"}


@settings(max_examples=500, deadline=None)
@given(st.integers(0, (1 << 32) - 1), st.lists(u64, min_size=7, max_size=7))
def test_any_function_id_and_arguments_answer_without_host_error(fid: int, args: list[int]) -> None:
    call = SmcccAbi.decode([fid, *args], Conduit.HVC, 0, vcpu=1)
    if M.name_of(fid).removesuffix("64") in ACTING:
        return  # exercised below with their own expectations
    M.dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
    assert M.dispatcher.internal_errors == 0
    regs = registers(call.results)
    assert all(0 <= r < 1 << 64 for r in regs)
    if M.namespace.lookup(fid) is None:
        assert regs == list(NOT_SUPPORTED_ANSWER)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([n for n in FUNCTIONS if n[0] not in ACTING]),
    st.booleans(),
    st.lists(u64, min_size=7, max_size=7),
)
def test_garbage_arguments_to_every_psci_call_get_a_psci_code(
    fn: tuple[str, int, bool, int], wide: bool, args: list[int]
) -> None:
    name, number, has64, _since = fn
    fid = (SMC64_BASE if wide and has64 else SMC32_BASE) + number
    call = SmcccAbi.decode([fid, *args], Conduit.SMC, 0, vcpu=0)
    M.dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
    assert registers(call.results)[0] in PSCI_CODES, (name, call.results)
    assert call.outcome is Outcome.RESUME


@settings(max_examples=100, deadline=None)
@given(u64, u64)
def test_system_reset2_with_garbage_is_refused_or_resets(reset_type: int, cookie: int) -> None:
    m = VirtArm64(VirtConfig(smp=1, console=lambda b: None), Path(SMP_HELLO))
    call = SmcccAbi.decode([0xC400_0012, reset_type, cookie, 0, 0, 0, 0, 0], Conduit.HVC, 0, 0)
    m.dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
    t = reset_type & 0xFFFF_FFFF
    if t == 0 or t & (1 << 31):
        assert call.outcome is Outcome.STOP_VM
    else:
        assert call.results[0] == PsciReturn.INVALID_PARAMETERS
        assert call.outcome is Outcome.RESUME
