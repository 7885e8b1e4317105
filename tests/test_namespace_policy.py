"""Namespace clash checks and the policy step before dispatch."""

import pytest

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER, SmcccAbi
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Claim, Function, IdRange, Namespace, NamespaceClash
from pvkit.hypercall.policy import Action, Policy, PolicyError, Rule
from pvkit.services.smccc_arch import ARCH_RANGES
from pvkit.trace.events import TraceHub


def _nop(call: Call) -> None:
    call.answer(0)


def test_overlapping_claims_are_refused_naming_both_claimants() -> None:
    with pytest.raises(NamespaceClash) as err:
        Namespace(
            [
                Claim("psci", IdRange(0x8400_0000, 0x8400_001F)),
                Claim("trng", IdRange(0x8400_0010, 0x8400_0053)),
            ],
            [],
        )
    assert "psci" in str(err.value) and "trng" in str(err.value)


def test_a_service_cannot_serve_outside_its_claims() -> None:
    with pytest.raises(NamespaceClash, match="outside its own claims"):
        Namespace([Claim("a", IdRange(1, 2))], [("a", Function(3, "X", _nop))])


def test_a_service_cannot_serve_in_another_services_claim() -> None:
    claims = [Claim("a", IdRange(1, 2)), Claim("b", IdRange(3, 4))]
    with pytest.raises(NamespaceClash):
        Namespace(claims, [("a", Function(3, "X", _nop))])


def test_the_arm_architecture_range_cannot_be_filtered() -> None:
    policy = Policy(protected=ARCH_RANGES)
    with pytest.raises(PolicyError, match="unfilterable"):
        policy.add(Rule(IdRange(0x8000_0000, 0x8000_0001), Action.DENY))


def test_overlapping_rules_are_refused() -> None:
    policy = Policy([Rule(IdRange(10, 20), Action.DENY)])
    with pytest.raises(PolicyError):
        policy.add(Rule(IdRange(20, 30), Action.DENY))


def _dispatcher(rules: list[Rule]) -> Dispatcher:
    ns = Namespace(
        [Claim("svc", IdRange(0x8600_0000, 0x8600_FFFF))],
        [("svc", Function(0x8600_0001, "ONE", lambda c: c.answer(7)))],
    )
    return Dispatcher(ns, Policy(rules), TraceHub(), lambda fid: "?")


def _call(fid: int, *args: int) -> Call:
    x = [fid, *args] + [0] * (8 - 1 - len(args))
    return SmcccAbi.decode(x, Conduit.HVC, 0, vcpu=0)


def test_handle_reaches_the_service() -> None:
    call = _call(0x8600_0001)
    _dispatcher([]).dispatch(call, NOT_SUPPORTED_ANSWER)
    assert call.results == [7, 0, 0, 0]


def test_deny_answers_not_supported() -> None:
    call = _call(0x8600_0001)
    d = _dispatcher([Rule(IdRange(0x8600_0000, 0x8600_00FF), Action.DENY)])
    d.dispatch(call, NOT_SUPPORTED_ANSWER)
    assert call.results == list(NOT_SUPPORTED_ANSWER)
    assert not d.serves(0x8600_0001)


def test_forward_answers_with_the_user_handlers_result() -> None:
    def user(call: Call) -> None:
        call.answer(call.arg(1) * 2, 1, 2, 3)

    call = _call(0x8600_0042, 21)
    d = _dispatcher([Rule(IdRange(0x8600_0040, 0x8600_004F), Action.FORWARD, user)])
    d.dispatch(call, NOT_SUPPORTED_ANSWER)
    assert call.results == [42, 1, 2, 3]
    assert d.serves(0x8600_0042)


def test_a_raising_handler_answers_not_supported_and_is_counted() -> None:
    def broken(call: Call) -> None:
        call.results[0] = 99
        raise RuntimeError("bug")

    call = _call(0x8600_0042)
    d = _dispatcher([Rule(IdRange(0x8600_0040, 0x8600_004F), Action.FORWARD, broken)])
    d.dispatch(call, NOT_SUPPORTED_ANSWER)
    assert call.results == list(NOT_SUPPORTED_ANSWER)
    assert d.internal_errors == 1


def test_smc32_arguments_are_narrowed_and_smc64_are_not() -> None:
    assert _call(0x8400_0003, 0xFFFF_FFFF_0000_0001).args[0] == 1
    assert _call(0xC400_0003, 0xFFFF_FFFF_0000_0001).args[0] == 0xFFFF_FFFF_0000_0001


def test_nonzero_immediate_is_rejected_before_dispatch() -> None:
    call = SmcccAbi.decode([0x8600_0001] + [0] * 7, Conduit.HVC, 1, vcpu=0)
    _dispatcher([]).dispatch(call, NOT_SUPPORTED_ANSWER)
    assert call.results == list(NOT_SUPPORTED_ANSWER)
