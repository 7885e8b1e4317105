"""What a service is, and the narrow view of the VM it is allowed to use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.machine.power import PowerOnResult, PowerState, StartRequest
from pvkit.snapshot.state import Fields

if TYPE_CHECKING:
    from pvkit.services.firmware import Register


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

    def vcpu_for_apic_id(self, apic_id: int) -> int | None:
        """x86: the vCPU with this APIC ID (None elsewhere or when there is none)."""

    def wake(self, vcpu: int) -> bool:
        """End a halt (WFI/HLT) of `vcpu`; False if it was not halted."""

    def post_interrupt(self, vcpu: int, vector: int) -> bool:
        """Make `vector` pending on `vcpu` (and wake it); False if the VM has no such path."""

    def set_ppi(self, vcpu: int, intid: int, level: bool) -> bool:
        """arm64: drive a private interrupt of `vcpu` (level); False where there is none."""

    def inject_page_fault(self, vcpu: int, address: int) -> bool:
        """x86: `vcpu` takes #PF with CR2 = `address` before its next instruction (it is
        between instructions: the board calls services from its exits); False elsewhere."""

    def stolen_ns(self, vcpu: int) -> int:
        """Nanoseconds `vcpu` was runnable but not running since it was powered on."""

    def now_ns(self, vcpu: int) -> int:
        """The hypervisor clock as `vcpu` sees it (its guest counter, in ns)."""

    def wall_clock_ns(self, vcpu: int) -> tuple[int, int]:
        """(real time in ns since the Unix epoch, `now_ns(vcpu)`), sampled at one instant."""

    def store_u64(self, address: int, value: int) -> bool:
        """One aligned 64-bit store into guest RAM; False if `address` is not RAM."""

    def guest_view(self, address: int, size: int) -> memoryview | None:
        """A writable view of guest RAM, checked once; None if it is not all RAM."""

    def write_guest(self, address: int, data: bytes) -> bool:
        """Write guest RAM (a record the guest named); False if it is not all RAM."""

    def is_ram(self, address: int, size: int) -> bool:
        """Is [address, address + size) all guest RAM (for a block the guest names)?"""

    def read_guest_u32(self, address: int) -> int | None:
        """A 32-bit word of guest RAM; None if it is not all RAM."""

    @property
    def deterministic(self) -> bool:
        """Is time virtual (derived from instructions) rather than the host's?"""


@runtime_checkable
class PageNotifier(Protocol):
    """A service that tells the guest about pages the host does not hold (asynchronous
    page faults), so the vCPU runs another task instead of waiting (platform/swap.py)."""

    def page_not_present(
        self, vcpu: int, page: int, user_mode: bool, interrupts_masked: bool
    ) -> int | None:
        """`vcpu` touched absent `page`: the token the guest was given, or None if this
        vCPU cannot be told now (then it waits for the page)."""

    def page_ready(self, page: int) -> list[tuple[int, int]]:
        """`page` is present again: the (vcpu, token) notifications this queued."""


@dataclass(frozen=True, slots=True)
class Msr:
    """An MSR a service implements: `write` answers False for a value that faults (#GP)."""

    name: str
    read: Callable[[int], int]  # (vcpu) -> value
    write: Callable[[int, int], bool]  # (vcpu, value) -> accepted


class Service(ABC):
    """A PV service: the IDs it claims, the functions it serves, its handlers."""

    name: str
    abis: ClassVar[frozenset[Abi]] = frozenset({Abi.SMCCC})
    # The bit this service owns in KVM_CPUID_FEATURES EAX on x86 (Linux
    # Documentation/virt/kvm/x86/cpuid.rst); its hypercalls answer -KVM_ENOSYS and its
    # MSRs do not exist while the bit is hidden.
    cpuid_feature_bit: ClassVar[int | None] = None
    cpuid_more_bits: ClassVar[tuple[int, ...]] = ()  # further bits it sets (hints, legacy)
    # The version of the interface a guest can read from it, if it has one ("1.1"), and
    # where it reads it, as listings show it. `revisions` and `revision_in_use` say which
    # revisions pvkit can serve and which one this VM serves (snapshots record it).
    revision: ClassVar[str | None] = None
    # arm64: the firmware bitmap bit that gates this service, as KVM gates its own
    # (("std-hyp-bmap", 0) for PV time; services/firmware.py). A clear bit hides it.
    firmware_gate: ClassVar[tuple[str, int] | None] = None
    # How a guest finds the service, where its IDs do not say it all (`pvkit services`).
    discovery: ClassVar[str | None] = None
    # Guest headers (`pvkit header`): a prefix for C names that lack it, the service's own
    # status codes if it has a code space of its own (PSCI's, TRNG's).
    c_prefix: ClassVar[str] = ""
    return_codes: ClassVar[type[IntEnum] | None] = None
    # Snapshots: a service that remembers anything about a guest overrides save_state
    # and restore_state; one that remembers nothing says so with STATELESS. A service
    # that does neither cannot be snapshotted (the snapshot names it).
    STATELESS: ClassVar[bool] = False
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self._platform: Platform | None = None

    def bind(self, platform: Platform) -> None:
        self._platform = platform

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            raise RuntimeError(f"service {self.name} used before it was bound to a VM")
        return self._platform

    def reserved_bytes(self, abi: Abi, vcpu_count: int) -> int:
        """Guest RAM the platform must reserve for this service (records, pages)."""
        return 0

    def place(self, base: int) -> None:  # noqa: B027  # optional hook
        """Where the platform put the `reserved_bytes` (64 KiB aligned)."""

    def reset(self) -> None:  # noqa: B027  # optional hook
        """A system reset (and first boot): forget what the guest set up."""

    def on_vcpu_entry(self, vcpu: int) -> None:  # noqa: B027  # optional hook
        """Called each time `vcpu` is about to run guest code (keep it cheap)."""

    def save_state(self) -> dict[str, object]:
        """What the guest set up with this service, as plain data (snapshot/state.py)."""
        raise NotImplementedError(f"service {self.name!r} does not say what state it has")

    def restore_state(self, state: Fields) -> None:
        """Take back what `save_state` gave (the VM is stopped)."""
        raise NotImplementedError(f"service {self.name!r} does not say what state it has")

    def revisions(self, abi: Abi) -> tuple[str, ...]:
        """Every revision of its interface this service can serve a guest on `abi`, oldest
        first: by default only the one `revision` names."""
        return (self.revision.split()[0],) if self.revision else ()

    def revision_in_use(self) -> str | None:
        """The revision this VM serves its guest (the newest, unless a firmware register
        chose another): what a snapshot records and a restore must serve again."""
        for abi in sorted(self.abis, key=lambda a: a.value):
            served = self.revisions(abi)
            if served:
                return served[-1]
        return None

    def firmware_registers(self) -> list[Register]:
        """arm64: the firmware registers this service's answers follow (firmware.py)."""
        return []

    def hidden_function_ids(self) -> frozenset[int]:
        """IDs its firmware registers hide from the guest now (calls newer than the
        version a register sets); they answer NOT_SUPPORTED, as if nobody served them."""
        return frozenset()

    def msrs(self, abi: Abi) -> dict[int, Msr]:
        """x86 model-specific registers this service implements, by index."""
        return {}

    def c_name(self, fn: Function) -> str:
        """The C macro for `fn`'s ID in a generated guest header: its name as an identifier,
        with `c_prefix` in front unless it already starts with it."""
        ident = "".join(ch if ch.isalnum() else "_" for ch in fn.name.upper())
        return ident if ident.startswith(self.c_prefix) else self.c_prefix + ident

    @abstractmethod
    def claims(self, abi: Abi = Abi.SMCCC) -> list[IdRange]:
        """The number ranges this service owns in `abi`'s namespace (one of `abis`)."""

    @abstractmethod
    def functions(self, abi: Abi = Abi.SMCCC) -> list[Function]:
        """What it serves in `abi`'s namespace (one of `abis`)."""
