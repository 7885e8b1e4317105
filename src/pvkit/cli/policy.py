"""`pvkit run --deny FID[-FID]` and `--forward FID[-FID]=module:function`: KVM's SMCCC filter
on the command line. Rules are applied before dispatch, frozen when the VM first runs, shown
in the trace's `action` field ("deny", "forward") and, with --stats, counted per rule."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pvkit.cli.options import fail, say
from pvkit.hypercall.policy import Action, Rule
from pvkit.hypercall.rule_spec import RuleSpecError, parse_id_range, split_forward
from pvkit.services.plugins import PluginError, load_handler, spec_of
from pvkit.trace.events import CallEvent, VmEvent

ID_LIMITS = {"arm64": 0xFFFF_FFFF, "x86_64": 0xFFFF_FFFF_FFFF_FFFF}
DENY_ANSWERS = {"arm64": "NOT_SUPPORTED", "x86_64": "-KVM_ENOSYS"}


def policy_rules(deny: Sequence[str], forward: Sequence[str], arch: str) -> list[Rule]:
    """The rules the options ask for; a mistake in one is one sentence, exit 2."""
    limit = ID_LIMITS.get(arch, ID_LIMITS["x86_64"])  # a file's unknown arch is refused later
    rules = []
    for text in deny:
        try:
            rules.append(Rule(parse_id_range(text, limit), Action.DENY))
        except RuleSpecError as exc:
            raise fail(f"--deny {exc}") from None
    for text in forward:
        try:
            ids, name = split_forward(text)
            rules.append(Rule(parse_id_range(ids, limit), Action.FORWARD, load_handler(name)))
        except (RuleSpecError, PluginError) as exc:
            raise fail(f"--forward {exc}") from None
    return rules


class RuleCounter:
    """A trace sink counting the calls each rule decided (for --stats)."""

    def __init__(self, rules: Sequence[Rule]):
        self._rules = list(rules)
        self._counts = [0] * len(self._rules)
        self._lock = threading.Lock()

    def on_call(self, event: CallEvent) -> None:
        if event.action not in ("deny", "forward", "error"):
            return
        for i, rule in enumerate(self._rules):
            if event.function_id in rule.ids:
                with self._lock:
                    self._counts[i] += 1
                return

    def on_event(self, event: VmEvent) -> None:
        pass

    def close(self) -> None:
        pass

    def print(self, arch: str) -> None:
        for rule, count in zip(self._rules, self._counts, strict=True):
            if rule.action is Action.DENY:
                what = f"deny {rule.ids} (answered {DENY_ANSWERS[arch]})"
            else:
                what = f"forward {rule.ids} to {spec_of(rule.handler)}"
            say(f"pvkit: policy {what}: {count} call(s)")
