"""Direct handlers: the trap's short routes give the dispatcher's answers and side effects.

A function a service serves `directly` is handed (vCPU, x1, x2, x3) by the trap, with no
Call, decode or dispatcher, while no rule covers it, nothing traces and the immediate is 0;
AFFINITY_INFO at level 0 is answered from the vCPUs' power-state bytes without Python at
all (docs/hot-path.md). A trace sink sends every call through the dispatcher, so one guest
run untraced and once traced must store the same results and leave the same guest memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvkit.bench.service import BENCH_SUM, BenchService
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.hypercall.policy import Action, Rule
from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.base import Service
from pvkit.services.psci import function_id
from pvkit.services.stolen_time import PV_TIME_FEATURES, PV_TIME_ST
from pvkit.trace.events import TraceHub

from .conftest import Recorder, assemble

pytestmark = pytest.mark.usefixtures("trap")

RESULT = 0x4100_0000  # the guest stores x0..x3 of call i at RESULT + 32 * i
SYSTEM_OFF = 0x8400_0008
NOT_SUPPORTED = 2**64 - 1
FLAKY = 0xC200_0010  # SiP range (owner 2): nobody else claims it
AFFINITY_INFO = function_id("AFFINITY_INFO")
AFFINITY_INFO64 = function_id("AFFINITY_INFO", smc64=True)
DIRECT_IDS = (BENCH_SUM, PV_TIME_ST, AFFINITY_INFO, AFFINITY_INFO64, FLAKY)
OTHER_IDS = (PV_TIME_FEATURES, function_id("PSCI_VERSION"), function_id("CPU_SUSPEND"), 0x8700_0000)
SVE_HINT = 1 << 16  # SMCCC 1.3: set on a fast call, the dispatcher rejects the ID
SMP = 2  # vCPU 1 stays off: AFFINITY_INFO sees both states
MASK32 = 0xFFFF_FFFF


class FlakyService(Service):
    """A direct handler that fails on odd x1 and answers no sequence when bit 1 is set: the
    guest must get what a failed handler gets, both times."""

    name = "flaky"

    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        return [IdRange(FLAKY, FLAKY)]

    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        return [Function.served_directly(FLAKY, "FLAKY", self._flaky)]

    @staticmethod
    def _flaky(vcpu: int, x1: int, x2: int, x3: int) -> tuple[int, ...]:
        if x1 & 1:
            raise ValueError("odd")
        if x1 & 2:
            return 5  # type: ignore[return-value]  # not a sequence of results
        return (x1, x2 + 1, x3, vcpu)  # x2 + 1 may need 65 bits: the registers wrap


def call_guest(calls: list[tuple[int, int, int, int]], directory: Path) -> Path:
    """Each call with x0..x3 from the table; results stored at RESULT; then SYSTEM_OFF."""
    table = "".join(f".quad {x0:#x}, {x1:#x}, {x2:#x}, {x3:#x}\n" for x0, x1, x2, x3 in calls)
    source = f"""
        ldr x20, ={RESULT:#x}
        adr x21, calls
        mov x22, #{len(calls)}
    1:  ldp x0, x1, [x21], #16
        ldp x2, x3, [x21], #16
        hvc #0
        stp x0, x1, [x20], #16
        stp x2, x3, [x20], #16
        subs x22, x22, #1
        b.ne 1b
        ldr x0, ={SYSTEM_OFF:#x}
        hvc #0
        b .
        .balign 8
    calls:
        {table}
    """
    return assemble(directory, source)


def by_state(x0: int, x1: int, x2: int) -> bool:
    """Answered from the state array: AFFINITY_INFO of a vCPU's MPIDR (0 or 1) at level 0."""
    fid = x0 & MASK32
    mask = 2**64 - 1 if fid == AFFINITY_INFO64 else MASK32
    return fid in (AFFINITY_INFO, AFFINITY_INFO64) and x1 & mask < SMP and x2 & mask == 0


def run(image: Path, traced: bool, rules: list[Rule] | None = None) -> tuple[VirtArm64, int]:
    hub = TraceHub()
    if traced:
        hub.attach(Recorder())
    config = VirtConfig(
        console=lambda b: None,
        smp=SMP,
        deterministic=True,  # the same stolen time in both runs
        extra_services=[BenchService(), FlakyService()],
        rules=rules or [],
    )
    machine = VirtArm64(config, image, hub)
    direct: list[int] = []
    engines = []
    machine.on_engine = engines.append
    reason = machine.run(30)
    assert reason.kind is StopKind.SHUTDOWN, reason
    direct.extend(e.trap.direct_calls for e in engines)
    return machine, sum(direct)


def guest_state(machine: VirtArm64, n: int) -> tuple[bytes, bytes]:
    """What the guest can see: its stored results and the stolen-time records."""
    records = [r for r in machine.reserved if "stolen" in r.name]
    assert records, [r.name for r in machine.reserved]
    return (
        machine.memory.read(RESULT, 32 * n),
        b"".join(machine.memory.read(r.base, r.size) for r in records),
    )


_WORD = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2, 3, 4, 2**32, 2**63]))
_FID = st.one_of(
    st.sampled_from(DIRECT_IDS + OTHER_IDS),
    st.sampled_from(DIRECT_IDS).map(lambda f: f | SVE_HINT),  # rejected: slow path only
    st.tuples(st.sampled_from(DIRECT_IDS), st.integers(1, 2**32 - 1)).map(
        lambda t: t[0] | t[1] << 32  # junk above W0: the ID is W0
    ),
)
_CALLS = st.lists(st.tuples(_FID, _WORD, _WORD, _WORD), min_size=1, max_size=24)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_CALLS)
def test_direct_and_dispatched_calls_leave_the_guest_the_same_answers_and_memory(
    calls: list[tuple[int, int, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        image = call_guest(calls, Path(tmp))
        direct, direct_count = run(image, traced=False)
        dispatched, dispatched_count = run(image, traced=True)
    assert guest_state(direct, len(calls)) == guest_state(dispatched, len(calls))
    assert direct.dispatcher.internal_errors == dispatched.dispatcher.internal_errors
    eligible = sum(1 for x0, x1, x2, _ in calls if x0 & MASK32 in DIRECT_IDS)
    answered = sum(1 for x0, x1, x2, _ in calls if by_state(x0, x1, x2))
    assert direct_count == eligible - answered  # every eligible call took a short route...
    assert dispatched_count == 0  # ...and none while tracing


def test_a_direct_handler_that_raises_answers_not_supported_and_is_counted(tmp_path: Path) -> None:
    image = call_guest([(FLAKY, 3, 0, 0), (FLAKY, 2, 0, 0), (FLAKY, 4, 5, 6)], tmp_path)
    machine, direct = run(image, traced=False)
    words = [machine.memory.read_u64(RESULT + 8 * i) for i in range(12)]
    assert words[:4] == [NOT_SUPPORTED, 0, 0, 0]  # raised
    assert words[4:8] == [NOT_SUPPORTED, 0, 0, 0]  # answered no sequence
    assert words[8:] == [4, 6, 6, 0]
    assert direct == 3 and machine.dispatcher.internal_errors == 2


def test_affinity_info_at_level_0_is_answered_from_the_power_state_bytes(
    tmp_path: Path,
) -> None:
    image = call_guest(
        [(AFFINITY_INFO, 0, 0, 0), (AFFINITY_INFO64, 1, 0, 0), (AFFINITY_INFO, 1, 1, 0)],
        tmp_path,
    )
    hub = TraceHub()
    machine = VirtArm64(VirtConfig(console=lambda b: None, smp=SMP), image, hub)
    engines: list = []  # type: ignore[type-arg]
    machine.on_engine = engines.append
    assert machine.run(30).kind is StopKind.SHUTDOWN
    answers = [machine.memory.read_u64(RESULT + 32 * i) for i in range(3)]
    assert answers == [0, 1, 0]  # vCPU 0 ON, vCPU 1 OFF; level 1: cluster 0 has one ON
    trap = engines[0].trap
    assert trap.direct_calls == 1  # only the level-1 query reached Python
    assert list(machine.vm.power_codes) == [2, 0]  # ON, OFF (machine/power.py's codes)


def test_a_policy_rule_takes_a_function_off_the_direct_route(tmp_path: Path) -> None:
    image = call_guest([(BENCH_SUM, 1, 2, 3), (PV_TIME_ST, 0, 0, 0)], tmp_path)
    deny = Rule(IdRange(BENCH_SUM, BENCH_SUM), Action.DENY)
    machine, direct = run(image, traced=False, rules=[deny])
    assert machine.memory.read_u64(RESULT) == NOT_SUPPORTED  # the dispatcher denied it
    assert machine.memory.read_u64(RESULT + 32) != NOT_SUPPORTED  # the record's address
    assert direct == 1  # PV_TIME_ST, which no rule covers, still went direct


def test_a_non_zero_immediate_is_rejected_on_the_dispatcher_path(tmp_path: Path) -> None:
    source = f"""
        ldr x20, ={RESULT:#x}
        ldr x0, ={BENCH_SUM:#x}
        hvc #1
        str x0, [x20]
        ldr x0, ={SYSTEM_OFF:#x}
        hvc #0
        b .
    """
    machine, direct = run(assemble(tmp_path, source), traced=False)
    assert machine.memory.read_u64(RESULT) == NOT_SUPPORTED
    assert direct == 0


def test_the_dispatcher_handler_of_a_direct_function_is_the_direct_handler() -> None:
    fn = Function.served_directly(BENCH_SUM, "BENCH_SUM", lambda v, a, b, c: (a + b, c, v))
    call = Call(Conduit.HVC, BENCH_SUM, (4, 5), 2, [7] * 4)
    fn.handler(call)
    assert call.results == [9, 0, 2, 0]  # x3 absent reads as 0; unnamed results are 0
