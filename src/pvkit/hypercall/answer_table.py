"""Answers a trap may give without entering the dispatcher: per-VM constants.

A service marks a function `Memo.CONSTANT` (versions, UIDs, feature bitmaps) or
`Memo.BY_QUERIED_ID` (FEATURES queries: the answer depends only on which function ID the
first argument names). The values are computed by running the real handler once per key
when the VM boots, so the table can never disagree with the dispatcher.

What stays out of the table, so that policy and tracing behave the same on every path:
functions a policy rule covers; BY_QUERIED_ID functions whenever any rule exists (the
answers of FEATURES queries depend on the rules); everything while a trace sink is
attached (`enabled` is False then).

The same table names the functions a trap may hand straight to their `direct` handler
(vCPU, x1, x2, x3 as integers in, a results tuple out: no Call, no decode, no dispatcher),
under the same conditions: no rule covers the ID, nothing traces, immediate 0. A direct
handler that raises is answered as the dispatcher answers a failed handler (`on_error`).

A function with `by_vcpu_state` answers (PSCI AFFINITY_INFO) is answered from the VM's
array of power-state bytes when x1 is some vCPU's ID (its MPIDR) and x2 is 0: the answer
for that vCPU's state, without Python. Any other call of it goes on to its handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from pvkit.hypercall.call import Call, Conduit
from pvkit.hypercall.namespace import DirectHandler, Memo, Namespace
from pvkit.hypercall.policy import Policy

MASK32 = 0xFFFF_FFFF
MASK64 = (1 << 64) - 1
SMC64_BIT = 1 << 30  # SMCCC: a 64-bit convention call sees all of x1..x3, else w1..w3


# (vCPU, function ID, the exception) -> the results the guest gets instead
DirectError = Callable[[int, int, Exception], tuple[int, ...]]


def _no_recovery(vcpu: int, function_id: int, exc: Exception) -> tuple[int, ...]:
    raise exc


class EntryKind(Enum):
    """Matches the C table's kinds (ANY = 0, KEYED = 1, DEFAULT = 2)."""

    ANY = 0
    KEYED = 1
    DEFAULT = 2


@dataclass(frozen=True, slots=True)
class Entry:
    function_id: int
    kind: EntryKind
    key: int
    results: tuple[int, ...]

    def as_tuple(self) -> tuple[int, int, int, tuple[int, ...]]:
        return (self.function_id, self.kind.value, self.key, self.results)


@dataclass(frozen=True, slots=True)
class VcpuStates:
    """The vCPUs as a state query names them (`ids[i]`: vCPU i's MPIDR) and the array of
    their power-state bytes (machine/power.py), which the trap reads as it answers."""

    ids: Sequence[int]
    codes: bytearray


@dataclass(frozen=True, slots=True)
class StateQuery:
    """One function answered by vCPU state: x0 by state code, vCPU index by x1."""

    function_id: int
    answers: tuple[int, ...]
    targets: dict[int, int] = field(default_factory=dict)


def table_key(function_id: int, arg1: int) -> int:
    """The queried function ID: w1, whatever the convention (a function ID is 32 bits, so
    a 64-bit FEATURES call such as PV_TIME_FEATURES also reads only w1, as KVM does)."""
    return arg1 & MASK32


class AnswerTable:
    """The table as Python sees it; the C trap compiles the same entries into a hash."""

    def __init__(
        self,
        entries: Iterable[Entry],
        nresults: int,
        direct: Iterable[tuple[int, DirectHandler]] = (),
        on_error: DirectError = _no_recovery,
        state_queries: Iterable[StateQuery] = (),
        states: bytearray | None = None,
    ):
        self.nresults = nresults
        self.entries = tuple(entries)
        self.direct = dict(direct)
        self.on_error = on_error
        self.state_queries = {q.function_id: q for q in state_queries}
        self.states = states
        self.enabled = True
        self._any: dict[int, tuple[int, ...]] = {}
        self._keyed: dict[tuple[int, int], tuple[int, ...]] = {}
        self._default: dict[int, tuple[int, ...]] = {}
        for e in self.entries:
            if len(e.results) != nresults:
                raise ValueError(f"entry {e.function_id:#x} needs {nresults} results")
            if e.kind is EntryKind.ANY:
                self._any[e.function_id] = e.results
            elif e.kind is EntryKind.KEYED:
                self._keyed[(e.function_id, e.key)] = e.results
            else:
                self._default[e.function_id] = e.results

    def lookup(self, function_id: int, key: int) -> tuple[int, ...] | None:
        """Results for a call, or None when it must reach the dispatcher."""
        found = self._any.get(function_id)
        if found is None:
            found = self._keyed.get((function_id, key))
            if found is None:
                found = self._default.get(function_id)
        return found

    def lookup_direct(self, function_id: int) -> DirectHandler | None:
        """The direct handler of a function outside the constant entries, if it has one."""
        return self.direct.get(function_id)

    def lookup_state(self, function_id: int, x1: int, x2: int) -> tuple[int, ...] | None:
        """The answer from the vCPU state array (x1, x2 narrowed as the ABI does), or None."""
        query = self.state_queries.get(function_id)
        if query is None or x2 != 0 or self.states is None:
            return None
        index = query.targets.get(x1)
        if index is None:
            return None
        code = self.states[index]
        if code >= len(query.answers):
            return None
        return (query.answers[code],) + (0,) * (self.nresults - 1)


def build_answer_table(
    namespace: Namespace,
    policy: Policy,
    not_supported: tuple[int, ...],
    on_error: DirectError = _no_recovery,
    vcpus: VcpuStates | None = None,
) -> AnswerTable:
    """Run every memoizable handler once per key and record what it answered.

    A BY_QUERIED_ID function gets one KEYED entry per served function ID, and a DEFAULT
    entry holding its answer for an ID nobody serves. Functions with a direct handler and
    no rule are listed for the direct route, and, given `vcpus`, those answered by vCPU
    state with the value each vCPU ID has in their convention (w1 for 32-bit IDs).
    """
    entries: list[Entry] = []
    direct = [
        (fn.function_id, fn.direct)
        for fn in namespace.functions
        if fn.direct is not None and fn.memo is None and policy.rule_for(fn.function_id) is None
    ]
    has_rules = bool(policy.rules)
    served = [f.function_id for f in namespace.functions]
    for fn in namespace.functions:
        if fn.memo is None or policy.rule_for(fn.function_id) is not None:
            continue
        if fn.memo is Memo.CONSTANT:
            results = _answer(fn.handler, fn.function_id, 0, not_supported)
            entries.append(Entry(fn.function_id, EntryKind.ANY, 0, results))
            continue
        if has_rules:
            continue
        keys = sorted({table_key(fn.function_id, k) for k in served})
        for key in keys:
            results = _answer(fn.handler, fn.function_id, key, not_supported)
            entries.append(Entry(fn.function_id, EntryKind.KEYED, key, results))
        probe = _probe_outside(keys)
        default = _answer(fn.handler, fn.function_id, probe, not_supported)
        entries.append(Entry(fn.function_id, EntryKind.DEFAULT, 0, default))
    queries = []
    if vcpus is not None:
        for fn in namespace.functions:
            if fn.by_vcpu_state is None or policy.rule_for(fn.function_id) is not None:
                continue
            wide = bool(fn.function_id & SMC64_BIT)
            targets = {v: i for i, v in enumerate(vcpus.ids) if wide or v <= MASK32}
            queries.append(StateQuery(fn.function_id, fn.by_vcpu_state, targets))
    states = vcpus.codes if vcpus is not None else None
    return AnswerTable(entries, len(not_supported), direct, on_error, queries, states)


def _answer(
    handler: Callable[[Call], None], function_id: int, arg1: int, preset: tuple[int, ...]
) -> tuple[int, ...]:
    call = Call(
        conduit=Conduit.HVC,
        function_id=function_id,
        args=(arg1,),
        vcpu=0,
        results=list(preset),
    )
    handler(call)
    return tuple(v & MASK64 for v in call.results)


def _probe_outside(keys: list[int]) -> int:
    """A function ID nobody serves: the reserved SMCCC owner 7 range."""
    probe = 0x8700_0000
    taken = set(keys)
    while probe in taken:
        probe += 1
    return probe
