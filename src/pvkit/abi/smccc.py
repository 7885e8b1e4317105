"""The Arm SMC Calling Convention function identifier (DEN0028) and its return codes.

Numbers come from Arm DEN0028: the identifier's bit layout in §2.5 (Table 2-1), the owning
entity ranges in §6; the return codes as Linux's include/linux/arm-smccc.h names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

_FAST_BIT = 1 << 31
_SMC64_BIT = 1 << 30
_OWNER_SHIFT = 24
_OWNER_MASK = 0x3F
_MBZ_MASK = 0x00FE_0000  # bits 23:17 must be zero for fast calls
_SVE_HINT = 1 << 16  # SMCCC 1.3 "no live SVE state" hint
_NUMBER_MASK = 0xFFFF


class Owner(IntEnum):
    """Owning Entity Numbers (bits 29:24); values 7..47 are reserved."""

    ARCH = 0
    CPU = 1
    SIP = 2
    OEM = 3
    STANDARD_SECURE = 4
    STANDARD_HYP = 5
    VENDOR_HYP = 6
    TRUSTED_APP = 48
    TRUSTED_OS = 50


def owner_name(owner: int) -> str:
    """Human name of an OEN, including the ranges that span several numbers."""
    if 48 <= owner <= 49:
        return "Trusted Application"
    if 50 <= owner <= 63:
        return "Trusted OS"
    names = {
        0: "Arm Architecture",
        1: "CPU Service",
        2: "SiP Service",
        3: "OEM Service",
        4: "Standard Secure Service",
        5: "Standard Hypervisor Service",
        6: "Vendor Specific Hypervisor Service",
    }
    return names.get(owner, "Reserved")


class SmcccReturn(IntEnum):
    """Generic SMCCC status values (services such as PSCI keep their own code spaces)."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    NOT_REQUIRED = -2
    INVALID_PARAMETER = -3


# Per-range general queries: same function number in every owner range.
CALL_COUNT = 0xFF00
CALL_UID = 0xFF01
REVISION = 0xFF03


@dataclass(frozen=True, slots=True)
class FunctionId:
    """A decoded 32-bit SMCCC function identifier (the value of W0)."""

    fast: bool
    smc64: bool
    owner: int
    number: int
    sve_hint: bool = False
    mbz: int = 0

    @classmethod
    def decode(cls, value: int) -> FunctionId:
        """Decode W0; the upper half of X0 is ignored, as KVM and Linux do."""
        value &= MASK32
        return cls(
            fast=bool(value & _FAST_BIT),
            smc64=bool(value & _SMC64_BIT),
            owner=(value >> _OWNER_SHIFT) & _OWNER_MASK,
            number=value & _NUMBER_MASK,
            sve_hint=bool(value & _SVE_HINT),
            mbz=(value & _MBZ_MASK) >> 17,
        )

    def encode(self) -> int:
        if not 0 <= self.owner <= _OWNER_MASK:
            raise ValueError(f"owner {self.owner} does not fit in 6 bits")
        if not 0 <= self.number <= _NUMBER_MASK:
            raise ValueError(f"function number {self.number:#x} does not fit in 16 bits")
        if not 0 <= self.mbz <= 0x7F:
            raise ValueError(f"must-be-zero field {self.mbz:#x} does not fit in 7 bits")
        return (
            (_FAST_BIT if self.fast else 0)
            | (_SMC64_BIT if self.smc64 else 0)
            | (self.owner << _OWNER_SHIFT)
            | (self.mbz << 17)
            | (_SVE_HINT if self.sve_hint else 0)
            | self.number
        )

    @property
    def well_formed(self) -> bool:
        """A fast call whose bits 23:17 are set is an unknown function (TF-A rule)."""
        return not (self.fast and self.mbz)

    @property
    def convention(self) -> str:
        return "SMC64/HVC64" if self.smc64 else "SMC32/HVC32"

    @property
    def call_type(self) -> str:
        return "fast" if self.fast else "yielding"


def fast_call(owner: int, number: int, *, smc64: bool = False) -> int:
    """Compose the function ID of a fast call."""
    return FunctionId(fast=True, smc64=smc64, owner=owner, number=number).encode()


def canonical(function_id: int) -> int:
    """The ID with the SMCCC 1.3 SVE hint cleared; services are keyed on this value."""
    return function_id & MASK32 & ~_SVE_HINT


def to_u64(value: int) -> int:
    """A signed result as the 64-bit register value (-1 becomes all ones)."""
    return value & MASK64


def uuid_words(uuid_bytes: bytes) -> tuple[int, int, int, int]:
    """Pack a 16-byte UUID into W0..W3, bytes 4i..4i+3 little-endian (SMCCC 5.3)."""
    if len(uuid_bytes) != 16:
        raise ValueError("a UUID is 16 bytes")
    w = tuple(int.from_bytes(uuid_bytes[i : i + 4], "little") for i in range(0, 16, 4))
    if w[0] == MASK32:
        raise ValueError("a UID whose first word is 0xFFFFFFFF reads as NOT_SUPPORTED")
    return (w[0], w[1], w[2], w[3])
