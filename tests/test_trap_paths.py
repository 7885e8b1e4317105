"""The hypercall trap: the C and ctypes paths behave alike, and the answer table never lies.

The table may answer a call only when the dispatcher would give the same answer; policy
rules and tracing take calls out of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvkit.abi.arm64_smccc import NOT_SUPPORTED_ANSWER
from pvkit.backends import trap as trap_module
from pvkit.backends.arm64.engine import Arm64Engine
from pvkit.backends.trap import TrapPath, compile_table, resolve_path
from pvkit.hypercall.answer_table import (
    AnswerTable,
    Entry,
    EntryKind,
    StateQuery,
    build_answer_table,
)
from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.namespace import IdRange
from pvkit.hypercall.policy import Action, PolicyError, Rule
from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.profiles import PVKIT
from pvkit.trace.events import TraceHub

from .conftest import PSCI_WALK, SMP_HELLO, Recorder

pytestmark = pytest.mark.usefixtures("trap")

PSCI_VERSION = 0x8400_0000
PSCI_FEATURES = 0x8400_000A
SYSTEM_OFF = 0x8400_0008
RESULT = 0x4010_0000  # where the test guests store what they got


def call_guest(asm, *calls: int) -> Path:  # type: ignore[no-untyped-def]
    """A guest that makes each call (w1 = PSCI_VERSION), stores x0 at RESULT+8*i, powers off."""
    body = f"ldr x20, ={RESULT:#x}\n"
    for fid in calls:
        body += f"ldr x0, ={fid:#x}\nldr x1, ={PSCI_VERSION:#x}\nhvc #0\nstr x0, [x20], #8\n"
    body += f"ldr x0, ={SYSTEM_OFF:#x}\nhvc #0\nb ."
    return asm(body)  # type: ignore[no-any-return]


def run(image: Path, traced: bool = False, **kwargs: object) -> tuple[VirtArm64, list[Arm64Engine]]:
    hub = TraceHub()
    if traced:
        hub.attach(Recorder())
    machine = VirtArm64(VirtConfig(console=lambda b: None, **kwargs), image, hub)  # type: ignore[arg-type]
    engines: list[Arm64Engine] = []
    machine.on_engine = engines.append
    reason = machine.run(30)
    assert reason.kind is StopKind.SHUTDOWN, reason
    return machine, engines


def results(machine: VirtArm64, n: int) -> list[int]:
    return [machine.memory.read_u64(RESULT + 8 * i) for i in range(n)]


def test_constant_calls_are_answered_from_the_table_and_the_rest_by_the_dispatcher(asm) -> None:  # type: ignore[no-untyped-def]
    machine, engines = run(call_guest(asm, PSCI_VERSION, PSCI_VERSION, PSCI_FEATURES))
    assert results(machine, 3) == [0x1_0001, 0x1_0001, 0]
    trap = engines[0].trap
    assert (trap.table_hits, trap.python_calls) == (3, 1)  # SYSTEM_OFF is not a constant


def test_a_trace_sink_sends_every_call_through_the_dispatcher(asm) -> None:  # type: ignore[no-untyped-def]
    machine, engines = run(call_guest(asm, PSCI_VERSION, PSCI_FEATURES), traced=True)
    assert results(machine, 2) == [0x1_0001, 0]
    assert (engines[0].trap.table_hits, engines[0].trap.python_calls) == (0, 3)


def test_a_policy_rule_takes_its_ids_and_every_features_query_out_of_the_table(asm) -> None:  # type: ignore[no-untyped-def]
    deny = Rule(IdRange(PSCI_VERSION, PSCI_VERSION), Action.DENY)
    machine, engines = run(call_guest(asm, PSCI_VERSION, PSCI_FEATURES), rules=[deny])
    # Denied: NOT_SUPPORTED; and PSCI_FEATURES(PSCI_VERSION) now says so too.
    assert results(machine, 2) == [2**64 - 1, 2**64 - 1]
    assert engines[0].trap.table_hits == 0


def test_rules_freeze_when_the_vm_first_runs(asm) -> None:  # type: ignore[no-untyped-def]
    machine, _ = run(call_guest(asm))
    with pytest.raises(PolicyError, match="already run"):
        machine.policy.add(Rule(IdRange(PSCI_VERSION, PSCI_VERSION), Action.DENY))


def test_the_table_holds_what_the_handlers_answer() -> None:
    machine = VirtArm64(VirtConfig(console=lambda b: None, profile=PVKIT), SMP_HELLO)
    table = build_answer_table(machine.namespace, machine.policy, NOT_SUPPORTED_ANSWER)
    assert table.entries, "the default services have constant calls"
    for entry in table.entries:
        key = 0x8700_0000 if entry.kind is EntryKind.DEFAULT else entry.key
        call = Call(Conduit.HVC, entry.function_id, (key,), 0, list(NOT_SUPPORTED_ANSWER))
        machine.dispatcher.dispatch(call, NOT_SUPPORTED_ANSWER)
        assert tuple(v % 2**64 for v in call.results) == entry.results, hex(entry.function_id)


def test_a_failure_inside_the_trap_stops_the_vm_with_a_fault_not_a_traceback(asm) -> None:  # type: ignore[no-untyped-def]
    image = call_guest(asm, 0xC400_0001)  # CPU_SUSPEND64: never a table answer
    machine = VirtArm64(VirtConfig(console=lambda b: None), image)

    def broken(call: Call, preset: tuple[int, ...]) -> None:
        raise RuntimeError("dispatcher bug")

    machine.dispatcher.dispatch = broken  # type: ignore[method-assign]
    reason = machine.run(30)
    assert reason.kind is StopKind.FAULT
    assert "internal error in the hypercall trap" in reason.message
    assert "dispatcher bug" in reason.message


def test_psci_walk_counts_the_same_calls_on_both_paths() -> None:
    _, engines = run(PSCI_WALK, smp=2)
    hits = sum(e.trap.table_hits for e in engines)
    python = sum(e.trap.python_calls for e in engines)
    assert hits > 20 and python > 20  # both paths really served part of the walk


def test_auto_picks_c_when_built_and_a_bad_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVKIT_TRAP")
    assert resolve_path("auto") is TrapPath.C  # the project's build always builds it
    with pytest.raises(ValueError, match="not auto, c or ctypes"):
        resolve_path("fast")
    monkeypatch.setattr(trap_module, "_trap", None)
    assert resolve_path("auto") is TrapPath.CTYPES
    with pytest.raises(trap_module.TrapUnavailable):
        resolve_path("c")


_ENTRIES = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),
        st.sampled_from(list(EntryKind)),
        st.integers(0, 2**64 - 1),
        st.tuples(*[st.integers(0, 2**64 - 1)] * 4),
    ),
    max_size=40,
    unique_by=lambda e: (e[0], e[1], e[2] if e[1] is EntryKind.KEYED else 0),
)


@settings(max_examples=150, deadline=None)
@given(_ENTRIES, st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))))
def test_the_c_table_looks_up_exactly_like_the_python_table(
    raw: list[tuple[int, EntryKind, int, tuple[int, ...]]], probes: list[tuple[int, int]]
) -> None:
    entries = [Entry(f, k, key if k is EntryKind.KEYED else 0, r) for f, k, key, r in raw]
    python = AnswerTable(entries, 4)
    c = compile_table(python, TrapPath.C)
    asked = probes + [(e.function_id, e.key) for e in entries]
    for fid, key in asked:
        assert c.lookup(fid, key) == python.lookup(fid, key)


_QUERIES = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),  # function ID
        st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4),  # answers by state
        st.dictionaries(st.integers(0, 2**64 - 1), st.integers(0, 7), max_size=8),  # ID: vCPU
    ),
    max_size=4,
    unique_by=lambda q: q[0],
)


@settings(max_examples=150, deadline=None)
@given(
    _QUERIES,
    st.binary(min_size=8, max_size=8),  # 8 vCPUs' state bytes, some without an answer
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2))),
)
def test_the_c_table_answers_by_vcpu_state_exactly_like_the_python_table(
    raw: list[tuple[int, list[int], dict[int, int]]],
    codes: bytes,
    probes: list[tuple[int, int, int]],
) -> None:
    queries = [StateQuery(fid, tuple(answers), targets) for fid, answers, targets in raw]
    python = AnswerTable([], 4, state_queries=queries, states=bytearray(b % 5 for b in codes))
    c = compile_table(python, TrapPath.C)
    asked = probes + [(q.function_id, key, 0) for q in queries for key in q.targets]
    for fid, x1, x2 in asked:
        assert c.lookup_state(fid, x1, x2) == python.lookup_state(fid, x1, x2)
