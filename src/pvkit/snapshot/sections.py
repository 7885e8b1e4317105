"""Every section kind a snapshot may hold, with the newest version this pvkit reads.

Built from the components' own declarations, so a component that adds state adds its
section here by existing; a file with a kind missing here is refused, naming it.
"""

from __future__ import annotations

from pvkit.backends.arm64 import cpu_state as arm64_cpu
from pvkit.backends.x86 import cpu_state as x86_cpu
from pvkit.devices.arm64 import gic_state
from pvkit.devices.arm64.generic_timer import GenericTimer
from pvkit.devices.local_apic import LocalApic
from pvkit.devices.pl011 import Pl011
from pvkit.devices.pl031 import Pl031
from pvkit.devices.uart16550 import Uart16550
from pvkit.machine import vm_state
from pvkit.machine.virtual_scheduler import VirtualScheduler
from pvkit.machine.wall_scheduler import WallScheduler
from pvkit.platform import pc_state
from pvkit.platform.virt_cpu import VirtCpuDevices
from pvkit.services.firmware import Firmware
from pvkit.snapshot import config, ram

SERVICE = "service"  # "service:NAME", versioned by each service's STATE_VERSION
SERVICE_VERSION = 1

KNOWN: dict[str, int] = {
    config.STATE_SECTION: config.STATE_VERSION,
    "ram": ram.RAM_VERSION,
    vm_state.STATE_SECTION: vm_state.STATE_VERSION,
    VirtualScheduler.STATE_SECTION: VirtualScheduler.STATE_VERSION,
    WallScheduler.STATE_SECTION: WallScheduler.STATE_VERSION,
    arm64_cpu.STATE_SECTION: max(arm64_cpu.STATE_VERSION, x86_cpu.STATE_VERSION),
    gic_state.STATE_SECTION: gic_state.STATE_VERSION,
    GenericTimer.STATE_SECTION: GenericTimer.STATE_VERSION,
    VirtCpuDevices.STATE_SECTION: VirtCpuDevices.STATE_VERSION,
    Pl011.STATE_SECTION: Pl011.STATE_VERSION,
    Pl031.STATE_SECTION: Pl031.STATE_VERSION,
    Uart16550.STATE_SECTION: Uart16550.STATE_VERSION,
    LocalApic.STATE_SECTION: LocalApic.STATE_VERSION,
    pc_state.STATE_SECTION: pc_state.STATE_VERSION,
    Firmware.STATE_SECTION: Firmware.STATE_VERSION,
    SERVICE: SERVICE_VERSION,
}
