"""The list of services a VM offers. Adding a service adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from pvkit.services.base import Service
from pvkit.services.profiles import HostProfile
from pvkit.services.psci import PsciService
from pvkit.services.smccc_arch import SmcccArchService
from pvkit.services.vendor_hyp import VendorHypService


def _vendor(profile: HostProfile) -> Service | None:
    if profile.vendor_uid is None:
        return None
    return VendorHypService(profile.vendor_uid.bytes, profile.features_name)


SERVICE_FACTORIES: tuple[Callable[[HostProfile], Service | None], ...] = (
    lambda p: SmcccArchService() if p.has_hypervisor else None,
    lambda p: PsciService() if p.has_hypervisor else None,
    _vendor,
)


def services_for(profile: HostProfile) -> list[Service]:
    """Fresh service objects for one VM (services hold per-VM state)."""
    return [s for f in SERVICE_FACTORIES if (s := f(profile)) is not None]
