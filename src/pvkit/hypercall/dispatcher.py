"""The dispatcher: policy first, then the namespace, then the handler; one trace event per call.

A handler that raises is a host bug, not a guest one: the guest gets the ABI's
"not supported" answer, the error is traced and counted, and the host keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pvkit.hypercall.call import Call, Conduit, Outcome
from pvkit.hypercall.namespace import Namespace
from pvkit.hypercall.policy import Action, Policy
from pvkit.trace.events import CallEvent, TraceHub, VmEvent

Namer = Callable[[int], str]


class Dispatcher:
    def __init__(self, namespace: Namespace, policy: Policy, trace: TraceHub, namer: Namer):
        self.namespace = namespace
        self.policy = policy
        self.trace = trace
        self._namer = namer
        self._functions = namespace.by_id
        self._tracing = False
        trace.watch(self._on_trace_change)
        self.internal_errors = 0

    def _on_trace_change(self, active: bool) -> None:
        self._tracing = active

    def dispatch(self, call: Call, preset: tuple[int, ...]) -> None:
        """Serve `call` in place; `preset` is the ABI's not-supported answer."""
        if not (self._tracing or self.policy.has_rules or call.rejected is not None):
            # The common case, kept to one lookup and one handler call.
            fn = self._functions.get(call.function_id)
            if fn is not None:
                try:
                    fn.handler(call)
                except Exception as exc:
                    self._handler_failed(call, preset, exc)
            return
        tracing = self._tracing
        start = time.perf_counter_ns() if tracing else 0
        action, detail = self._serve(call, preset)
        if tracing:
            end = time.perf_counter_ns()
            resumes = call.outcome is Outcome.RESUME  # else the guest never reads results
            self.trace.call(
                CallEvent(
                    vcpu=call.vcpu,
                    conduit=call.conduit.value,
                    function_id=call.function_id,
                    name=self._namer(call.function_id),
                    args=call.args,
                    results=tuple(call.results) if resumes else (),
                    action=action,
                    duration_ns=end - start,
                    time_ns=end,
                    detail=detail,
                    outcome=call.outcome.value,
                )
            )

    def _serve(self, call: Call, preset: tuple[int, ...]) -> tuple[str, str | None]:
        if call.rejected is not None:
            return "rejected", call.rejected
        rule = self.policy.rule_for(call.function_id)
        if rule is not None and rule.action is Action.DENY:
            return "deny", None
        if rule is not None and rule.handler is not None:
            handler = rule.handler
            action = "forward"
        else:
            fn = self.namespace.lookup(call.function_id)
            if fn is None:
                return ("hidden" if self.namespace.is_hidden(call.function_id) else "unknown"), None
            handler = fn.handler
            action = "handle"
        try:
            handler(call)
        except Exception as exc:
            return "error", self._handler_failed(call, preset, exc)
        return action, None

    def _handler_failed(self, call: Call, preset: tuple[int, ...], exc: Exception) -> str:
        self.internal_errors += 1
        call.results[:] = preset
        detail = f"{type(exc).__name__}: {exc}"
        self.trace.event(
            VmEvent("handler_error", time.perf_counter_ns(), call.vcpu, {"error": detail})
        )
        return detail

    def direct_failed(
        self, preset: tuple[int, ...], vcpu: int, function_id: int, exc: Exception
    ) -> tuple[int, ...]:
        """A direct handler (answer_table.py) raised: what a failed handler gets here."""
        call = Call(Conduit.HVC, function_id, (), vcpu, list(preset))
        self._handler_failed(call, preset, exc)
        return preset

    def serves(self, function_id: int) -> bool:
        """Would a call to `function_id` reach a handler (for FEATURES-style queries)?"""
        rule = self.policy.rule_for(function_id)
        if rule is not None:
            return rule.action is Action.FORWARD
        return self.namespace.lookup(function_id) is not None
