"""Firmware registers: the VM's PV configuration as KVM's pseudo-registers model it.

KVM (Linux Documentation/virt/kvm/arm/fw-pseudo-registers.rst) lets the VMM read and
write, through KVM_GET/SET_ONE_REG, what a guest may discover about its firmware
interface: the PSCI version, the SMCCC workaround levels and three feature bitmaps. They
are VM state: set before the first vCPU runs, saved and restored with the VM, and
refused on a host that cannot honour them. pvkit keeps the same registers under readable
names (KVM's name without `KVM_REG_ARM_`, in lower case with hyphens) and one of its own,
`pv-time-revision` (the stolen-time record revision; seed 003's "PV config as pseudo
registers").

A service owns the registers that change its answers (`Service.firmware_registers`) and
says which bitmap bit gates it (`Service.firmware_gate`); this module holds them together
as one register file per VM, with KVM's rules:
- a value the host cannot serve is refused (EINVAL): an unknown bitmap bit, a bit whose
  service this VM does not have, a level better than the host's, a version pvkit lacks;
- a register this VM does not have is refused (ENOENT);
- once a vCPU has run, a change is refused (EBUSY) and writing the same value is accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from pvkit.hypercall.namespace import Abi

if TYPE_CHECKING:
    from pvkit.services.base import Service

MASK64 = (1 << 64) - 1


def shown(reg: Register, value: int) -> str:
    """A register value as people write it: a revision in decimal, the others in hex."""
    return str(value) if reg.decimal else f"{value:#x}"


class Refusal(Enum):
    """What KVM_SET_ONE_REG answers in each case (its errno)."""

    NO_SUCH_REGISTER = "ENOENT"
    INVALID = "EINVAL"
    BUSY = "EBUSY"


class FirmwareError(ValueError):
    """A register write refused as KVM refuses it; the message is one sentence."""

    def __init__(self, message: str, refusal: Refusal):
        super().__init__(f"{message} ({refusal.value})")
        self.refusal = refusal


@dataclass
class Register:
    """One register: its names, its default (what a new VM gets) and what it accepts."""

    name: str
    kvm_name: str | None  # None: pvkit's own register, KVM has none
    kvm_id: int | None
    default: int
    allowed: str  # the values it takes, in words (`pvkit fw --list`)
    summary: str  # what it changes for the guest
    # Why a value is refused (a phrase), or None; the bitmaps' checks are built here.
    refuse: Callable[[int], str | None]
    decimal: bool = False  # shown in decimal (a revision number), not hex (bits, versions)
    value: int = field(init=False)

    def __post_init__(self) -> None:
        self.value = self.default


@dataclass(frozen=True, slots=True)
class Bitmap:
    """A feature bitmap register and the bits KVM defines in it."""

    name: str
    kvm_name: str
    kvm_id: int
    bits: Mapping[int, str]  # bit -> KVM's name for what it gates
    summary: str


# Linux arch/arm64/include/uapi/asm/kvm.h (KVM_REG_ARM_FW_FEAT_BMAP registers).
BITMAPS = (
    Bitmap("std-bmap", "KVM_REG_ARM_STD_BMAP", 0x6030_0000_0016_0000, {0: "TRNG_V1_0"},
           "standard services (owner 4) beside PSCI"),
    Bitmap("std-hyp-bmap", "KVM_REG_ARM_STD_HYP_BMAP", 0x6030_0000_0016_0001, {0: "PV_TIME"},
           "standard hypervisor services (owner 5)"),
    Bitmap("vendor-hyp-bmap", "KVM_REG_ARM_VENDOR_HYP_BMAP", 0x6030_0000_0016_0002,
           {0: "FUNC_FEAT", 1: "PTP"},
           "vendor hypervisor functions 0..63 (owner 6): what the features bitmap reports"),
)  # fmt: skip
BITMAP_NAMES = {b.name for b in BITMAPS}


def _bitmap_register(bitmap: Bitmap, owners: Mapping[int, str]) -> Register:
    """`owners`: the bits this VM serves, each with its service's name."""
    served = sum(1 << b for b in owners)

    def refuse(value: int) -> str | None:
        for bit in range(64):
            if not value >> bit & 1:
                continue
            if bit not in bitmap.bits:
                return f"bit {bit} is not a bit KVM defines in {bitmap.kvm_name}"
            if bit not in owners:
                return f"bit {bit} ({bitmap.bits[bit]}) gates a service this VM does not serve"
        return None

    bits = ", ".join(
        f"bit {b} {n} ({owners.get(b, 'not served here')})" for b, n in sorted(bitmap.bits.items())
    )
    return Register(
        bitmap.name, bitmap.kvm_name, bitmap.kvm_id, served, f"any of: {bits}",
        f"{bitmap.summary}; a clear bit hides its service: NOT_SUPPORTED to its calls "
        "and its FEATURES probes", refuse,
    )  # fmt: skip


class Firmware:
    """The firmware registers of one arm64 VM, made from its services."""

    STATE_SECTION = "firmware"
    STATE_VERSION = 1

    def __init__(self, services: Iterable[Service], on_change: Callable[[str], None] | None = None):
        self._services = list(services)
        self._on_change = on_change  # the board's follow-up (its device tree)
        self._gates: dict[str, dict[int, Service]] = {b.name: {} for b in BITMAPS}
        for s in self._services:
            if s.firmware_gate is not None and Abi.SMCCC in s.abis:
                bitmap, bit = s.firmware_gate
                if bitmap not in self._gates:
                    raise ValueError(f"{s.name!r} names no bitmap register: {bitmap!r}")
                self._gates[bitmap][bit] = s
        registers = [r for s in self._services for r in s.firmware_registers()]
        registers += [
            _bitmap_register(b, {bit: s.name for bit, s in self._gates[b.name].items()})
            for b in BITMAPS
        ]
        registers.sort(key=lambda r: MASK64 if r.kvm_id is None else r.kvm_id)  # KVM's order
        self._registers = {r.name: r for r in registers}
        self._kvm_names = {r.kvm_name: r.name for r in registers if r.kvm_name}
        self.frozen = False
        self._lock = threading.Lock()  # the monitor writes while a vCPU may start

    # -- the registers -------------------------------------------------------------------
    def registers(self) -> list[Register]:
        return list(self._registers.values())

    def register(self, name: str) -> Register:
        """By pvkit's name or KVM's; FirmwareError (ENOENT) if this VM has no such one."""
        found = self._registers.get(self._kvm_names.get(name, name))
        if found is None:
            known = ", ".join(self._registers)
            raise FirmwareError(
                f"firmware register {name!r}: this VM has none (it has {known})",
                Refusal.NO_SUCH_REGISTER,
            )
        return found

    def get(self, name: str) -> int:
        return self.register(name).value

    def set(self, name: str, value: int) -> None:
        """Write a register before the VM first runs, as KVM_SET_ONE_REG does."""
        with self._lock:
            reg = self.register(name)
            what = f"firmware register {reg.name}"
            if not 0 <= value <= MASK64:
                raise FirmwareError(f"{what} = {value}: not a 64-bit value", Refusal.INVALID)
            if self.frozen and value != reg.value:
                raise FirmwareError(
                    f"{what} cannot change from {shown(reg, reg.value)} to {shown(reg, value)}: "
                    "a vCPU of the VM has run, so the guest may have read it",
                    Refusal.BUSY,
                )
            why = reg.refuse(value)
            if why is not None:
                raise FirmwareError(f"{what} = {shown(reg, value)}: {why}", Refusal.INVALID)
            changed = value != reg.value
            reg.value = value
            if changed and self._on_change is not None:
                self._on_change(reg.name)

    def freeze(self) -> None:
        """Called when a vCPU first runs: from now on the registers only read."""
        with self._lock:
            self.frozen = True

    # -- what the values hide ------------------------------------------------------------
    def hidden_services(self) -> list[str]:
        """Services whose bitmap bit is clear: the guest cannot discover or call them."""
        out = []
        for bitmap, gates in self._gates.items():
            value = self._registers[bitmap].value
            out += [s.name for bit, s in gates.items() if not value >> bit & 1]
        return sorted(out)

    def hidden_ids(self) -> frozenset[int]:
        """Function IDs the guest is not served: hidden services' and those each service
        hides itself (PSCI calls newer than the PSCI version)."""
        hidden = set(self.hidden_services())
        ids: set[int] = set()
        for s in self._services:
            if s.name in hidden:
                ids.update(f.function_id for f in s.functions(Abi.SMCCC))
            else:
                ids.update(s.hidden_function_ids())
        return frozenset(ids)

    # -- snapshots -----------------------------------------------------------------------
    def save_state(self) -> dict[str, object]:
        """Every register, except those of services the guest cannot see (whose setting
        does not matter to it and need not exist where it moves)."""
        hidden = set(self.hidden_services())
        skip = {r.name for s in self._services if s.name in hidden for r in s.firmware_registers()}
        return {"registers": {r.name: r.value for r in self.registers() if r.name not in skip}}

    def load_values(self, values: Mapping[str, int]) -> None:
        """Set registers from a snapshot (before the VM runs); FirmwareError names the
        first one this VM cannot take. A register the file lacks keeps its default (as
        QEMU merges a register list it loads), never the host's chosen value."""
        for reg in self._registers.values():
            if reg.value != reg.default:
                self.set(reg.name, reg.default)
        for name, value in values.items():
            self.set(name, value)
