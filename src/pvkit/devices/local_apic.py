"""A local APIC (xAPIC MMIO page), enough to identify a CPU and to send IPIs.

Each vCPU maps its own instance at 0xFEE00000. Writing ICR low sends: INIT and
STARTUP bring up application processors the way every x86 kernel does (INIT-SIPI-SIPI),
and fixed IPIs become interrupts pending on the target vCPU. There is no timer and no
priority logic; EOI is accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from pvkit.machine.memory import Region
from pvkit.snapshot.state import Fields, State

APIC_BASE = 0xFEE0_0000
APIC_SIZE = 0x1000
REG_ID = 0x20
REG_VERSION = 0x30
REG_EOI = 0xB0
REG_SVR = 0xF0
REG_ICR_LOW = 0x300
REG_ICR_HIGH = 0x310
VERSION = 0x0005_0014  # integrated APIC version 0x14, 6 LVT entries


class DeliveryMode(IntEnum):
    FIXED = 0
    INIT = 5
    STARTUP = 6


class Shorthand(IntEnum):
    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


@dataclass(frozen=True, slots=True)
class Ipi:
    source: int  # APIC ID of the sender
    destination: int  # APIC ID from ICR high bits 31:24 (when shorthand is NONE)
    shorthand: Shorthand
    mode: int  # a DeliveryMode value, or another (unsupported) mode number
    vector: int


class LocalApic:
    def __init__(self, apic_id: int, send: Callable[[Ipi], None], base: int = APIC_BASE):
        self.region = Region(base, APIC_SIZE, "local-apic")
        self.apic_id = apic_id
        self._send = send
        self._regs: dict[int, int] = {}

    STATE_SECTION = "local-apic"
    STATE_VERSION = 1

    def save_state(self) -> State:
        return {"regs": {str(k): v for k, v in sorted(self._regs.items())}}

    def restore_state(self, state: Fields) -> None:
        regs = state.int_map("regs", 0xFFFF_FFFF)
        if any(k >= APIC_SIZE or k & 3 for k in regs):
            raise state.bad("regs", "registers of the APIC page")
        self._regs = regs

    def read(self, offset: int, size: int) -> int:
        if offset == REG_ID:
            return self.apic_id << 24
        if offset == REG_VERSION:
            return VERSION
        return self._regs.get(offset & ~3, 0)  # ICR delivery status (bit 12) reads idle

    def write(self, offset: int, size: int, value: int) -> None:
        offset &= ~3
        value &= 0xFFFF_FFFF
        if offset == REG_EOI:
            return
        self._regs[offset] = value
        if offset == REG_ICR_LOW:
            self._send(
                Ipi(
                    source=self.apic_id,
                    destination=self._regs.get(REG_ICR_HIGH, 0) >> 24,
                    shorthand=Shorthand((value >> 18) & 3),
                    mode=(value >> 8) & 7,
                    vector=value & 0xFF,
                )
            )
