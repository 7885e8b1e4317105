"""pvkit's public API: what a PV-interface designer builds on (docs/library.md).

Everything a service, a policy rule, a trace sink or a script needs is named here and
re-exported from `pvkit`; every other module is pvkit's implementation and may change.

- boards: `arm64_virt` and `x86_pc` build a VM (`VirtArm64`, `PcX86`) from an image, the
  user's own services, the built-ins to leave out and policy rules;
- services: `Service` and what it is made of (`Function`, `IdRange`, `Abi`, `Call`, ...);
- policy: `Rule`s of `Action` DENY or FORWARD (to a `UserHandler`), as KVM's SMCCC filter;
- trace: `TraceHub` and the sinks (`JsonLinesSink`, `TimelineSink`, `CallStats`);
- results: `run` gives a `RunResult`, the `StopReason` and the per-function statistics.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pvkit.abi.smccc import SmcccReturn
from pvkit.abi.x86_kvm import KvmError
from pvkit.hypercall.call import Call, Conduit, Outcome
from pvkit.hypercall.dispatcher import Dispatcher
from pvkit.hypercall.namespace import Abi, Function, IdRange, Memo, NamespaceClash
from pvkit.hypercall.policy import Action, Policy, PolicyError, Rule, UserHandler
from pvkit.loader.image import ImageError
from pvkit.machine.scheduling import Scheduler
from pvkit.machine.vm import StopKind, StopReason, VirtualMachine
from pvkit.platform.board import ConfigError
from pvkit.platform.pc_x86 import PcConfig, PcX86
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.services.base import Msr, Platform, Service, SystemEvent
from pvkit.services.catalog import ServiceInfo
from pvkit.services.catalog import describe as describe_service
from pvkit.services.plugins import PluginError, load_handler, load_service
from pvkit.services.profiles import PROFILES, HostProfile
from pvkit.trace.events import CallEvent, TraceHub, TraceSink, VmEvent
from pvkit.trace.jsonl import JsonLinesSink
from pvkit.trace.stats import CallStats, FunctionStats
from pvkit.trace.timeline import TimelineSink

__all__ = [
    "PROFILES",
    "Abi",
    "Action",
    "Call",
    "CallEvent",
    "CallStats",
    "Conduit",
    "ConfigError",
    "Function",
    "FunctionStats",
    "HostProfile",
    "IdRange",
    "ImageError",
    "JsonLinesSink",
    "KvmError",
    "Machine",
    "Memo",
    "Msr",
    "NamespaceClash",
    "Outcome",
    "PcConfig",
    "PcX86",
    "Platform",
    "PluginError",
    "Policy",
    "PolicyError",
    "Rule",
    "RunResult",
    "Service",
    "ServiceInfo",
    "SmcccReturn",
    "StopKind",
    "StopReason",
    "SystemEvent",
    "TimelineSink",
    "TraceHub",
    "TraceSink",
    "UserHandler",
    "VirtArm64",
    "VirtConfig",
    "VmEvent",
    "arm64_virt",
    "describe_service",
    "load_handler",
    "load_service",
    "run",
    "x86_pc",
]

ImagePath = str | os.PathLike[str]


class Machine(Protocol):
    """What both boards are to a script: a VM, its dispatcher, its trace hub, `run`."""

    vm: VirtualMachine
    dispatcher: Dispatcher
    trace: TraceHub
    policy: Policy
    services: list[Service]

    def run(self, timeout: float | None = None) -> StopReason: ...


def _profile(profile: str | HostProfile) -> HostProfile:
    if isinstance(profile, HostProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ConfigError(
            f"profile {profile!r} is unknown; choose one of {', '.join(PROFILES)}"
        ) from None


def arm64_virt(
    image: ImagePath | None,
    *,
    services: list[Service] | tuple[Service, ...] = (),
    disable: tuple[str, ...] | list[str] | frozenset[str] = (),
    rules: tuple[Rule, ...] | list[Rule] = (),
    profile: str | HostProfile = "kvm",
    trace: TraceHub | None = None,
    **config: Any,
) -> VirtArm64:
    """An arm64 `virt` VM booting `image` (an arm64 Image or ELF), with `services` added,
    the built-ins named in `disable` left out and `rules` applied before dispatch; any
    other `VirtConfig` field (smp, memory, console, deterministic, ...) as a keyword."""
    cfg = VirtConfig(
        profile=_profile(profile),
        extra_services=list(services),
        disabled=frozenset(disable),
        rules=tuple(rules),
        **config,
    )
    return VirtArm64(cfg, Path(image) if image is not None else None, trace)


def x86_pc(
    image: ImagePath,
    *,
    services: list[Service] | tuple[Service, ...] = (),
    disable: tuple[str, ...] | list[str] | frozenset[str] = (),
    rules: tuple[Rule, ...] | list[Rule] = (),
    profile: str | HostProfile = "kvm",
    trace: TraceHub | None = None,
    **config: Any,
) -> PcX86:
    """An x86-64 `pc` VM booting `image` (a PVH or multiboot ELF); the keywords as for
    `arm64_virt`, any other `PcConfig` field (smp, memory, vendor, ...) too."""
    cfg = PcConfig(
        profile=_profile(profile),
        extra_services=list(services),
        disabled=frozenset(disable),
        rules=tuple(rules),
        **config,
    )
    return PcX86(cfg, Path(image), trace)


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended and what the guest called on the way."""

    reason: StopReason
    calls: tuple[FunctionStats, ...]  # per function ID: name, count, host time
    events: dict[str, int]  # VM events by kind (power transitions, faults, ...)
    handler_errors: int  # calls whose handler raised (the guest got NOT_SUPPORTED)

    def count(self, name: str) -> int:
        """How many calls the function named `name` (as traced) served."""
        return sum(c.count for c in self.calls if c.name == name)


def run(
    machine: Machine,
    timeout: float | None = None,
    *,
    trace_file: ImagePath | None = None,
    timeline_file: ImagePath | None = None,
) -> RunResult:
    """Run `machine` to its stop; optionally write the JSON-lines trace and the Perfetto
    timeline that `pvkit run --trace/--timeline` write, on the same clock."""
    hub = machine.trace
    sched: Scheduler = machine.vm.scheduler
    stats = CallStats()
    hub.attach(stats)
    timeline = TimelineSink(sched.now_ns) if timeline_file is not None else None
    if timeline is not None:
        hub.attach(timeline)
    with contextlib.ExitStack() as stack:
        if trace_file is not None:
            stream = stack.enter_context(Path(trace_file).open("w", encoding="utf-8"))
            hub.attach(JsonLinesSink(stream, sched.now_ns))
        reason = machine.run(timeout)
        hub.close()
    if timeline is not None and timeline_file is not None:
        timeline.write(Path(timeline_file), sched)
    return RunResult(
        reason, tuple(stats.rows()), dict(stats.events), machine.dispatcher.internal_errors
    )
