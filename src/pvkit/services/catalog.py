"""What a service offers a guest, as data: its claims, functions, MSRs and discovery bits.

`pvkit services`, `pvkit header` and `pvkit decode` read services through this module, and
`--disable` checks names against `builtin_names`, so that the host's definition is the one
source of every listing, header and check. Discovery is derived from the definition: a
function in the vendor-specific hypervisor range has the features-bitmap bit of its number;
another SMCCC function is found with SMCCC_ARCH_FEATURES when its `feature` answer is not
NOT_SUPPORTED (else by the service's own protocol, such as TRNG_VERSION); an x86 service
is gated by its KVM_CPUID_FEATURES bit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pvkit.abi.smccc import FunctionId, SmcccReturn
from pvkit.abi.x86_kvm import FEATURE_NAMES
from pvkit.hypercall.namespace import Abi, IdRange, NamespaceClash
from pvkit.hypercall.vendor_numbers import NUMBERS as BITMAP_FUNCTIONS
from pvkit.services.base import Service
from pvkit.services.profiles import PROFILES, HostProfile
from pvkit.services.registry import services_for

ARCH_OF = {Abi.SMCCC: "arm64", Abi.KVM_X86: "x86_64"}
ABI_OF = {arch: abi for abi, arch in ARCH_OF.items()}
VENDOR_OWNER = 6
FEATURES_LEAF_OFFSET = 1  # KVM_CPUID_FEATURES is the hypervisor base leaf + 1


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    function_id: int
    name: str
    c_name: str  # its macro in a generated guest header
    discovery: str  # how a guest learns it may call it, in words
    bitmap_bit: int | None = None  # its bit in the vendor features bitmap (owner 6)
    arch_features: int | None = None  # what SMCCC_ARCH_FEATURES answers for it


@dataclass(frozen=True, slots=True)
class CpuidBit:
    bit: int
    name: str  # KVM_FEATURE_* (or the service's own bit, named after it)
    gates: bool  # the service's hypercalls and MSRs exist only while this bit is shown


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    name: str
    abis: tuple[Abi, ...]
    abi: Abi  # the namespace the lists below are in
    claims: tuple[IdRange, ...]
    functions: tuple[FunctionInfo, ...]
    msrs: tuple[tuple[int, str], ...]
    cpuid_bits: tuple[CpuidBit, ...]
    revision: str | None
    discovery: str | None  # the service's own word on how it is found, if it has one

    @property
    def arch(self) -> str:
        return ARCH_OF[self.abi]


def vendor_bit(function_id: int) -> int | None:
    """The vendor features-bitmap bit of an SMCCC ID in owner 6 (None outside it)."""
    f = FunctionId.decode(function_id & 0xFFFF_FFFF)
    if f.owner == VENDOR_OWNER and f.call_type == "fast" and f.number < BITMAP_FUNCTIONS:
        return f.number
    return None


def smccc_discovery(function_id: int, feature: int) -> tuple[str, int | None, int | None]:
    """(how to discover it, its bitmap bit, its ARCH_FEATURES answer) for an SMCCC ID."""
    bit = vendor_bit(function_id)
    if bit is not None:
        return (
            f"SMCCC >= 1.1, a known vendor Call UID, then features bitmap bit {bit} "
            f"(W{bit // 32} bit {bit % 32})",
            bit,
            None,
        )
    if function_id & 0xFFFF >= 0xFF00:
        return "a general query of its owner range (SMCCC >= 1.1)", None, None
    if feature != SmcccReturn.NOT_SUPPORTED:
        return f"SMCCC >= 1.1, then SMCCC_ARCH_FEATURES(ID) answers {feature}", None, feature
    return "the service's own version call (SMCCC_ARCH_FEATURES does not report it)", None, None


def cpuid_bits(service: Service) -> tuple[CpuidBit, ...]:
    bits = []
    if service.cpuid_feature_bit is not None:
        bits.append(CpuidBit(service.cpuid_feature_bit, _feature_name(service, 0), True))
    for i, bit in enumerate(service.cpuid_more_bits, start=1):
        bits.append(CpuidBit(bit, _feature_name(service, i, bit), False))
    return tuple(bits)


def _feature_name(service: Service, index: int, bit: int | None = None) -> str:
    bit = service.cpuid_feature_bit if bit is None else bit
    known = FEATURE_NAMES.get(bit) if bit is not None else None
    if known is not None:
        return f"KVM_FEATURE_{known}"
    suffix = "" if index == 0 else f"_{index}"
    return f"{c_identifier(service.name)}_FEATURE{suffix}"


def c_identifier(text: str) -> str:
    """`my-call` -> `MY_CALL`: upper case, every other character an underscore."""
    out = "".join(ch if ch.isalnum() else "_" for ch in text.upper())
    return out if out[:1].isalpha() or out[:1] == "_" else f"_{out}"


def describe(service: Service, abi: Abi) -> ServiceInfo:
    """The guest-visible definition of `service` in `abi`'s namespace."""
    functions = []
    for fn in sorted(service.functions(abi), key=lambda f: f.function_id):
        if abi is Abi.SMCCC:
            how, bit, arch = smccc_discovery(fn.function_id, fn.feature)
            functions.append(
                FunctionInfo(fn.function_id, fn.name, service.c_name(fn), how, bit, arch)
            )
        else:
            how = _x86_discovery(service)
            functions.append(FunctionInfo(fn.function_id, fn.name, service.c_name(fn), how))
    msrs = tuple(sorted((index, msr.name) for index, msr in service.msrs(abi).items()))
    return ServiceInfo(
        name=service.name,
        abis=tuple(sorted(service.abis, key=lambda a: a.value)),
        abi=abi,
        claims=tuple(sorted(service.claims(abi), key=lambda r: r.first)),
        functions=tuple(functions),
        msrs=msrs,
        cpuid_bits=cpuid_bits(service) if abi is Abi.KVM_X86 else (),
        revision=service.revision,
        discovery=service.discovery,
    )


def _x86_discovery(service: Service) -> str:
    bit = service.cpuid_feature_bit
    if bit is None:
        return "a known hypervisor CPUID signature (no feature bit gates it)"
    return f"a known hypervisor CPUID signature, then CPUID base+1 EAX bit {bit}"


def cpuid_features(services: Iterable[Service]) -> int:
    """KVM_CPUID_FEATURES EAX for `services`; two services claiming one bit is a clash."""
    owners: dict[int, str] = {}
    for s in services:
        for bit in (s.cpuid_feature_bit, *s.cpuid_more_bits):
            if bit is None:
                continue
            if not 0 <= bit < 32:
                raise NamespaceClash(f"{s.name!r} claims CPUID feature bit {bit}, not in 0..31")
            other = owners.setdefault(bit, s.name)
            if other != s.name:
                name = FEATURE_NAMES.get(bit)
                what = f"KVM_FEATURE_{name}" if name else "a free bit"
                raise NamespaceClash(
                    f"CPUID feature bit {bit} ({what}) claimed by {s.name!r} is already "
                    f"claimed by {other!r}; free bits: {_free_bits(owners)}"
                )
    return sum(1 << bit for bit in owners)


def _free_bits(owners: dict[int, str]) -> str:
    free = [b for b in range(32) if b not in owners and b not in FEATURE_NAMES]
    return ", ".join(str(b) for b in free)


def builtin_services(abi: Abi, profile: HostProfile | None = None) -> list[Service]:
    """Fresh built-in services speaking `abi`: the profile's, or every profile's (one each)."""
    profiles = [profile] if profile is not None else list(PROFILES.values())
    seen: dict[str, Service] = {}
    for p in profiles:
        for s in services_for(p, abi):
            seen.setdefault(s.name, s)
    return list(seen.values())


def builtin_names(abi: Abi) -> list[str]:
    """The names `--disable` accepts for `abi`: every built-in service of any profile."""
    return sorted(s.name for s in builtin_services(abi))
