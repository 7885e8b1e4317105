"""The list of services a VM offers. Adding a service adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from pvkit.hypercall.namespace import Abi
from pvkit.services.async_pf import AsyncPfService
from pvkit.services.async_pf_x86 import KvmAsyncPfService
from pvkit.services.base import Service
from pvkit.services.kvmclock import KvmClockService
from pvkit.services.profiles import HostProfile
from pvkit.services.psci import PsciService
from pvkit.services.ptp_kvm import KvmPtpService
from pvkit.services.pv_ipi import PvIpiService
from pvkit.services.pv_unhalt import PvUnhaltService
from pvkit.services.sched_yield import SchedYieldService
from pvkit.services.smccc_arch import SmcccArchService
from pvkit.services.stolen_time import StolenTimeService
from pvkit.services.trng import TrngService
from pvkit.services.vendor_hyp import VendorHypService


def _vendor(profile: HostProfile) -> Service | None:
    if profile.vendor_uid is None:
        return None
    return VendorHypService(profile.vendor_uid.bytes, profile.features_name)


SERVICE_FACTORIES: tuple[Callable[[HostProfile], Service | None], ...] = (
    lambda p: SmcccArchService() if p.has_hypervisor else None,
    lambda p: PsciService() if p.has_hypervisor else None,
    lambda p: TrngService() if p.has_hypervisor else None,
    _vendor,
    lambda p: KvmPtpService() if p.vendor_uid is not None else None,
    lambda p: AsyncPfService() if p.vendor_uid is not None else None,
    lambda p: PvUnhaltService() if p.has_hypervisor else None,
    lambda p: PvIpiService() if p.has_hypervisor else None,
    lambda p: SchedYieldService() if p.has_hypervisor else None,
    lambda p: StolenTimeService() if p.has_hypervisor else None,
    lambda p: KvmClockService() if p.has_hypervisor else None,
    lambda p: KvmAsyncPfService() if p.has_hypervisor else None,
)


def services_for(profile: HostProfile, abi: Abi = Abi.SMCCC) -> list[Service]:
    """Fresh service objects for one VM (services hold per-VM state) that speak `abi`."""
    return [s for f in SERVICE_FACTORIES if (s := f(profile)) is not None and abi in s.abis]
