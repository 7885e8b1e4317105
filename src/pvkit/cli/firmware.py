"""`--fw NAME=VALUE` and `--pv-time-revision N`: firmware registers from the command line.

`pvkit run` sets them on the VM before it first runs, as a VMM writes KVM's registers
with KVM_SET_ONE_REG; a value the VM cannot take is one sentence and exit 2, naming KVM's
errno. `pvkit restore` takes the registers from the snapshot instead: there
`--pv-time-revision` is only what this host would give a new VM, and the guest keeps the
revision it uses (docs/firmware.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from pvkit.cli.options import fail, say
from pvkit.platform.virt_arm64 import VirtArm64
from pvkit.services.firmware import FirmwareError
from pvkit.services.stolen_time import StolenTimeService

PV_TIME_REGISTER = "pv-time-revision"


def firmware_settings(
    fw: Sequence[str], pv_time_revision: int | None, arch: str
) -> list[tuple[str, str, int]]:
    """(option as given, register, value) in the order given; bad text exits with one
    sentence."""
    if (fw or pv_time_revision is not None) and arch != "arm64":
        raise fail(
            "--fw and --pv-time-revision apply to arm64 guests (KVM's arm64 firmware "
            "registers); an x86_64 VM's PV features are its CPUID bits"
        )
    out = []
    for text in fw:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise fail(f"--fw {text!r}: give NAME=VALUE, e.g. psci-version=0x10000")
        try:
            out.append((f"--fw {text}", name.strip(), int(value.strip(), 0)))
        except ValueError:
            raise fail(f"--fw {text!r}: {value!r} is not a number (use 0x... for hex)") from None
    if pv_time_revision is not None:
        out.append((f"--pv-time-revision {pv_time_revision}", PV_TIME_REGISTER, pv_time_revision))
    return out


def apply_firmware(machine: VirtArm64, settings: Sequence[tuple[str, str, int]]) -> None:
    """Write the registers before the VM runs; refused writes exit 2."""
    for option, name, value in settings:
        try:
            machine.firmware.set(name, value)
        except FirmwareError as exc:
            raise fail(f"{option}: {exc}") from None


def restored_revision_notice(board: object, pv_time_revision: int | None) -> None:
    """`pvkit restore --pv-time-revision N`: say that the guest keeps its own revision."""
    if pv_time_revision is None:
        return
    service = next(
        (s for s in getattr(board, "services", ()) if isinstance(s, StolenTimeService)), None
    )
    if not isinstance(board, VirtArm64) or service is None:
        raise fail("--pv-time-revision applies to an arm64 VM that has stolen time")
    refused = service.record_revision.refuse(pv_time_revision)
    if refused is not None:
        raise fail(f"--pv-time-revision {pv_time_revision}: {refused}")
    in_use = service.record_revision.value
    if in_use != pv_time_revision:
        say(
            f"pvkit: stolen-time: the guest keeps record revision {in_use}, as saved; "
            f"--pv-time-revision {pv_time_revision} is what this host gives a VM booted here"
        )
