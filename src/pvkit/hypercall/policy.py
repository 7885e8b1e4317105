"""Policy decided before dispatch, modelled on KVM's SMCCC filter (Linux
Documentation/virt/kvm/devices/vm.rst, KVM_ARM_VM_SMCCC_FILTER; arch/arm64/kvm/hypercalls.c)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import IdRange

UserHandler = Callable[[Call], None]


class Action(Enum):
    HANDLE = "handle"
    DENY = "deny"
    FORWARD = "forward"


class PolicyError(ValueError):
    """A rule the host asked for cannot be installed."""


@dataclass(frozen=True, slots=True)
class Rule:
    ids: IdRange
    action: Action
    handler: UserHandler | None = None

    def __post_init__(self) -> None:
        if (self.action is Action.FORWARD) != (self.handler is not None):
            raise PolicyError("a FORWARD rule needs a handler and only FORWARD rules take one")


class Policy:
    """Non-overlapping rules; IDs no rule covers are HANDLEd.

    `protected` ranges (the Arm Architecture calls on arm64) cannot be filtered, like
    KVM refusing filters over 0x80000000..0x8000FFFF with EEXIST.
    """

    def __init__(self, rules: Iterable[Rule] = (), protected: Iterable[IdRange] = ()):
        self._protected = tuple(protected)
        self._rules: list[Rule] = []
        self._starts: list[int] = []
        self._frozen = False
        self.has_rules = False  # read on every call: a plain attribute, not a property
        for rule in rules:
            self.add(rule)

    def freeze(self) -> None:
        """Called when the VM first runs; rules are then fixed, as KVM's filter is."""
        self._frozen = True

    def add(self, rule: Rule) -> None:
        if self._frozen:
            raise PolicyError("the VM has already run; policy rules can no longer change")
        for p in self._protected:
            if rule.ids.overlaps(p):
                raise PolicyError(f"range {rule.ids} overlaps the unfilterable range {p}")
        for r in self._rules:
            if rule.ids.overlaps(r.ids):
                raise PolicyError(f"range {rule.ids} overlaps the existing rule for {r.ids}")
        i = bisect.bisect_left(self._starts, rule.ids.first)
        self._rules.insert(i, rule)
        self._starts.insert(i, rule.ids.first)
        self.has_rules = True

    def rule_for(self, function_id: int) -> Rule | None:
        if not self._rules:
            return None
        i = bisect.bisect_right(self._starts, function_id) - 1
        if i >= 0 and function_id in self._rules[i].ids:
            return self._rules[i]
        return None

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)
