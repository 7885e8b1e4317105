"""pvkit: a hypervisor built around the paravirtual interface.

The public API (pvkit/api.py, docs/library.md) is importable from here; it is loaded on
first use, so `import pvkit` stays cheap (no engine, no boards) for `pvkit --version`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the lazy attributes below resolve to, for type checkers
    from pvkit.api import (
        PROFILES,
        Abi,
        Action,
        Call,
        CallEvent,
        CallStats,
        Conduit,
        ConfigError,
        Function,
        FunctionStats,
        HostProfile,
        IdRange,
        ImageError,
        JsonLinesSink,
        KvmError,
        Machine,
        Memo,
        Msr,
        NamespaceClash,
        Outcome,
        PcConfig,
        PcX86,
        Platform,
        PluginError,
        Policy,
        PolicyError,
        Rule,
        RunResult,
        Service,
        ServiceInfo,
        SmcccReturn,
        StopKind,
        StopReason,
        SystemEvent,
        TimelineSink,
        TraceHub,
        TraceSink,
        UserHandler,
        VirtArm64,
        VirtConfig,
        VmEvent,
        arm64_virt,
        describe_service,
        load_handler,
        load_service,
        run,
        x86_pc,
    )

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
    "__version__",
    "arm64_virt",
    "describe_service",
    "load_handler",
    "load_service",
    "run",
    "x86_pc",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from pvkit import api

        value: object = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'pvkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
