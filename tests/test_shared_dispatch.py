"""The dispatcher behaviours every ABI shares, checked by one test body per architecture.

The same service object is served through SMCCC (arm64) and KVM's x86 ABI; each test
sends registers in through the ABI and reads registers out, so decode, policy, namespace,
handler and write-back are all on the path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER as SMCCC_NOT_SUPPORTED
from pvkit.abi.arm64_smccc import SmcccAbi
from pvkit.abi.x86_kvm import NOT_SUPPORTED_ANSWER as KVM_NOT_SUPPORTED
from pvkit.abi.x86_kvm import KvmHypercallAbi
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Abi, Claim, Function, IdRange, Namespace
from pvkit.hypercall.policy import Action, Policy, Rule
from pvkit.services.base import Service
from pvkit.trace.events import TraceHub

from .conftest import Recorder

IDS = {Abi.SMCCC: 0xC300_0010, Abi.KVM_X86: 0x1000}


class AddService(Service):
    """ADD(a, b) -> a + b, and BOOM, which raises: one meaning, two ABIs."""

    name = "add"
    abis = frozenset({Abi.SMCCC, Abi.KVM_X86})

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(IDS[abi], IDS[abi] + 1)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [
            Function(IDS[abi], "ADD", lambda c: c.answer(c.arg(1) + c.arg(2))),
            Function(IDS[abi] + 1, "BOOM", self._boom),
        ]

    def _boom(self, call: Call) -> None:
        raise RuntimeError("handler bug")


@dataclass
class Rig:
    call: Callable[..., int]  # (id, *args) -> the first result register
    base: int
    not_supported: int
    dispatcher: Dispatcher
    trace: Recorder


@pytest.fixture(params=[Abi.SMCCC, Abi.KVM_X86], ids=["arm64", "x86_64"])
def rig(request: pytest.FixtureRequest) -> Callable[..., Rig]:
    abi: Abi = request.param

    def build(rules: list[Rule] | None = None) -> Rig:
        service = AddService()
        claims = [Claim(service.name, r) for r in service.claims(abi)]
        ns = Namespace(claims, [(service.name, f) for f in service.functions(abi)])
        hub = TraceHub()
        rec = Recorder()
        hub.attach(rec)

        def namer(fid: int) -> str:
            fn = ns.lookup(fid)
            return fn.name if fn else "unknown"

        dispatcher = Dispatcher(ns, Policy(rules or []), hub, namer)
        if abi is Abi.SMCCC:
            smccc = SmcccAbi(dispatcher)

            def call(fid: int, *args: int) -> int:
                regs = [fid, *args] + [0] * (7 - len(args))
                return smccc.on_hypercall(regs, Conduit.HVC, 0, 0).results[0]

            return Rig(call, IDS[abi], SMCCC_NOT_SUPPORTED[0], dispatcher, rec)
        kvm = KvmHypercallAbi(dispatcher, {}, 0)

        def call_x86(nr: int, *args: int) -> int:
            regs = [nr, *args] + [0] * (4 - len(args))
            return kvm.on_hypercall(regs, Conduit.VMCALL, 0, True, 0).results[0]

        return Rig(call_x86, IDS[abi], KVM_NOT_SUPPORTED[0], dispatcher, rec)

    return build


def test_a_served_call_reaches_its_handler(rig: Callable[..., Rig]) -> None:
    r = rig()
    assert r.call(r.base, 2, 40) == 42
    assert [c.name for c in r.trace.calls] == ["ADD"] and r.trace.calls[0].action == "handle"


def test_an_unknown_id_answers_the_abis_not_supported(rig: Callable[..., Rig]) -> None:
    r = rig()
    assert r.call(r.base + 7, 1) == r.not_supported
    assert r.trace.calls[0].action == "unknown"


def test_a_deny_rule_wins_over_the_service(rig: Callable[..., Rig]) -> None:
    base = rig().base
    r = rig([Rule(IdRange(base, base), Action.DENY)])
    assert r.call(r.base, 2, 40) == r.not_supported
    assert r.trace.calls[0].action == "deny"


def test_a_forward_rule_hands_the_call_to_the_user(rig: Callable[..., Rig]) -> None:
    base = rig().base
    r = rig([Rule(IdRange(base, base), Action.FORWARD, lambda c: c.answer(c.arg(1) * 10))])
    assert r.call(base, 7, 0) == 70
    assert r.trace.calls[0].action == "forward"


def test_a_failing_handler_is_contained(rig: Callable[..., Rig]) -> None:
    r = rig()
    assert r.call(r.base + 1) == r.not_supported
    assert r.dispatcher.internal_errors == 1
    assert [e.kind for e in r.trace.events] == ["handler_error"]
    assert r.call(r.base, 1, 1) == 2  # and the next call is served normally
