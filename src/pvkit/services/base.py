"""What a service is, and the narrow view of the VM it is allowed to use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Protocol

from pvkit.hypercall.namespace import Function, IdRange
from pvkit.machine.power import PowerOnResult, PowerState, StartRequest


class SystemEvent(Enum):
    SHUTDOWN = "shutdown"
    RESET = "reset"


class Platform(Protocol):
    """The VM as services see it: no engine, no registers, no ABI."""

    @property
    def vcpu_count(self) -> int: ...

    def mpidr(self, vcpu: int) -> int: ...

    def vcpu_for_mpidr(self, mpidr: int) -> int | None: ...

    def power_state(self, vcpu: int) -> PowerState: ...

    def power_on(self, vcpu: int, start: StartRequest) -> PowerOnResult: ...

    def is_valid_entry(self, address: int) -> bool: ...

    def system_event(self, event: SystemEvent, detail: str = "") -> None: ...

    def feature(self, function_id: int) -> int | None:
        """The FEATURES answer for an ID if this VM serves it, else None."""


class Service(ABC):
    """A PV service: the IDs it claims, the functions it serves, its handlers."""

    name: str

    def __init__(self) -> None:
        self._platform: Platform | None = None

    def bind(self, platform: Platform) -> None:
        self._platform = platform

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            raise RuntimeError(f"service {self.name} used before it was bound to a VM")
        return self._platform

    @abstractmethod
    def claims(self) -> list[IdRange]: ...

    @abstractmethod
    def functions(self) -> list[Function]: ...
