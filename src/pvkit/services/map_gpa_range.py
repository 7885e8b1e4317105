"""KVM_HC_MAP_GPA_RANGE: a guest marks memory encrypted or shared; the VMM decides.

KVM validates the range and then exits to userspace (KVM_CAP_EXIT_HYPERCALL); pvkit
validates the same way and calls the VMM's handler, whose return value is RAX. Like
the capability, the service is opt-in: a VM has it only when it is given a handler
(`extra_services=[MapGpaRangeService(handler)]`). Needs KVM_FEATURE_HC_MAP_GPA_RANGE (bit 16).
"""

from __future__ import annotations

from collections.abc import Callable

from pvkit.abi.x86_kvm import MASK64, KvmError, KvmHypercall, kvm_error
from pvkit.hypercall.call import Call
from pvkit.hypercall.namespace import Abi, Function, IdRange
from pvkit.services.base import Service

PAGE = 4096
ATTR_PAGE_SIZE = 0xF  # 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB
ATTR_ENCRYPTED = 1 << 4
ATTR_MBZ = ~0x1F & MASK64

MapGpaHandler = Callable[[int, int, int], int]  # (gpa, pages, attributes) -> RAX


class MapGpaRangeService(Service):
    STATELESS = True  # its answers depend on the VM's configuration only
    name = "map-gpa-range"
    abis = frozenset({Abi.KVM_X86})
    cpuid_feature_bit = 16

    def __init__(self, handler: MapGpaHandler):
        super().__init__()
        self._handler = handler

    def claims(self, abi: Abi = Abi.KVM_X86) -> list[IdRange]:
        return [IdRange(KvmHypercall.MAP_GPA_RANGE, KvmHypercall.MAP_GPA_RANGE)]

    def functions(self, abi: Abi = Abi.KVM_X86) -> list[Function]:
        return [Function(KvmHypercall.MAP_GPA_RANGE, "KVM_HC_MAP_GPA_RANGE", self._map)]

    def _map(self, call: Call) -> None:
        gpa, pages, attributes = call.arg(1), call.arg(2), call.arg(3)
        if (
            gpa % PAGE
            or pages == 0
            or gpa + pages * PAGE > MASK64 + 1
            or attributes & ATTR_MBZ
            or attributes & ATTR_PAGE_SIZE > 2
        ):
            call.answer(kvm_error(KvmError.EINVAL))
            return
        call.answer(self._handler(gpa, pages, attributes) & MASK64)
