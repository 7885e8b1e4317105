"""Managed function-ID namespace: services claim ranges; clashes fail at VM build time."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from pvkit.hypercall.call import Call

Handler = Callable[[Call], None]
# (vCPU, x1, x2, x3) -> results: a function a trap may call without building a Call
# (docs/hot-path.md, "Direct handlers"); the arguments arrive narrowed as the ABI does.
DirectHandler = Callable[[int, int, int, int], tuple[int, ...]]


class Abi(Enum):
    """A calling convention, and with it a function-number namespace of its own."""

    SMCCC = "smccc"  # arm64 HVC/SMC: 32-bit function IDs in W0
    KVM_X86 = "kvm-x86"  # x86 VMCALL/VMMCALL: KVM_HC_* numbers in RAX


class Memo(Enum):
    """May a trap answer this function from the per-VM answer table (answer_table.py)?"""

    CONSTANT = "constant"  # the answer never depends on arguments or state
    BY_QUERIED_ID = "by_queried_id"  # it depends only on which function ID w1 names


class NamespaceClash(ValueError):
    """Two claimants want overlapping function IDs."""


@dataclass(frozen=True, slots=True)
class IdRange:
    """Inclusive range of function IDs."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"empty ID range {self.first:#x}..{self.last:#x}")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    def overlaps(self, other: IdRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        if self.first == self.last:
            return f"{self.first:#010x}"
        return f"{self.first:#010x}..{self.last:#010x}"


@dataclass(frozen=True, slots=True)
class Function:
    """One served function: its ID, its spec name and its handler."""

    function_id: int
    name: str
    handler: Handler
    feature: int = 0  # value ARCH_FEATURES-style queries answer for this ID
    memo: Memo | None = None  # set when a trap may answer from the per-VM answer table
    direct: DirectHandler | None = None  # set when a trap may call it with plain integers
    # x0 answers by the power state (machine/power.py POWER_ORDER) of the vCPU whose ID x1
    # is, when x2 is 0: a trap may answer those calls from the VM's state array
    by_vcpu_state: tuple[int, ...] | None = None

    @classmethod
    def served_directly(
        cls, function_id: int, name: str, direct: DirectHandler, feature: int = 0
    ) -> Function:
        """A function whose dispatcher handler is `direct` itself, so the trap's direct
        route and the dispatcher's give the same answers and side effects."""
        return cls(function_id, name, _call_through(direct), feature, direct=direct)

    def answered_by_vcpu_state(self, answers: tuple[int, ...]) -> Function:
        """The same function, also answered from the vCPUs' state array (see the field)."""
        return dataclasses.replace(self, by_vcpu_state=answers)


def _call_through(direct: DirectHandler) -> Handler:
    def handler(call: Call) -> None:
        args = call.args
        n = len(args)
        call.answer(
            *direct(
                call.vcpu,
                args[0] if n > 0 else 0,
                args[1] if n > 1 else 0,
                args[2] if n > 2 else 0,
            )
        )

    return handler


@dataclass(frozen=True, slots=True)
class Claim:
    owner: str
    ids: IdRange


class Namespace:
    """Built once per VM; lookups are a dict probe on the hot path."""

    def __init__(self, claims: Iterable[Claim], functions: Iterable[tuple[str, Function]]):
        self._claims = sorted(claims, key=lambda c: c.ids.first)
        for before, after in zip(self._claims, self._claims[1:], strict=False):
            if before.ids.overlaps(after.ids):
                raise NamespaceClash(
                    f"function IDs {after.ids} claimed by {after.owner!r} overlap "
                    f"{before.ids} already claimed by {before.owner!r}"
                )
        self._starts = [c.ids.first for c in self._claims]
        self._functions: dict[int, Function] = {}
        for owner, fn in functions:
            claim = self.claim_for(fn.function_id)
            if claim is None or claim.owner != owner:
                raise NamespaceClash(
                    f"{owner!r} serves {fn.name} ({fn.function_id:#010x}) outside its own claims"
                )
            if fn.function_id in self._functions:
                raise NamespaceClash(f"{owner!r} registers {fn.function_id:#010x} twice")
            self._functions[fn.function_id] = fn
        self._all = dict(self._functions)
        self._hidden: frozenset[int] = frozenset()

    def hide(self, ids: frozenset[int]) -> None:
        """Serve none of `ids` (the firmware registers hid them) and every other function;
        the IDs stay claimed by their owners. Called before the VM runs."""
        self._hidden = frozenset(i for i in ids if i in self._all)
        self._functions.clear()  # in place: by_id views stay live
        self._functions.update((i, f) for i, f in self._all.items() if i not in self._hidden)

    def is_hidden(self, function_id: int) -> bool:
        return function_id in self._hidden

    def defined(self, function_id: int) -> Function | None:
        """The function with this ID, served or hidden (to name it in traces)."""
        return self._all.get(function_id)

    def claim_for(self, function_id: int) -> Claim | None:
        i = bisect.bisect_right(self._starts, function_id) - 1
        if i >= 0 and function_id in self._claims[i].ids:
            return self._claims[i]
        return None

    def lookup(self, function_id: int) -> Function | None:
        return self._functions.get(function_id)

    @property
    def by_id(self) -> Mapping[int, Function]:
        """The served functions keyed by ID (read-only view, for dispatch tables)."""
        return MappingProxyType(self._functions)

    @property
    def claims(self) -> list[Claim]:
        return list(self._claims)

    @property
    def functions(self) -> list[Function]:
        return sorted(self._functions.values(), key=lambda f: f.function_id)
