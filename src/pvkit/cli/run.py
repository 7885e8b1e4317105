"""`pvkit run IMAGE`: boot a guest, stream its console, exit with what stopped it.

Start-up is part of every boot, so the board of the other architecture, the trace and
timeline writers and the table printer are imported only when a run needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pvkit.cli import params
from pvkit.cli.firmware import apply_firmware, firmware_settings
from pvkit.cli.options import (
    fail,
    parse_host_cpus,
    parse_profile,
    parse_size,
    parse_slice_ms,
    parse_timeout,
    say,
    write_file,
)
from pvkit.cli.params import argument, option, repeated
from pvkit.cli.plugins import load_services
from pvkit.cli.policy import RuleCounter, policy_rules
from pvkit.cli.session import Session, run_and_report
from pvkit.cli.swap import swap_spec
from pvkit.devices.console import BufferedConsole
from pvkit.hypercall.namespace import NamespaceClash
from pvkit.hypercall.policy import PolicyError
from pvkit.loader.detect import ARCHES, detect_arch
from pvkit.loader.image import ImageError
from pvkit.loader.symbols import SymbolTable
from pvkit.machine.memory import HostMemoryError
from pvkit.platform import virt_arm64
from pvkit.platform.board import ConfigError
from pvkit.trace.events import TraceHub

if TYPE_CHECKING:
    from pvkit.platform import pc_x86


PARAMS = (
    argument("image", Path, "arm64 Image/ELF, or x86_64 PVH/multiboot ELF", None),
    option("kernel", Path, None, "the kernel (same as IMAGE)", "--kernel", "-kernel"),
    option("initrd", Path, None, "arm64: initial ramdisk", "--initrd", "-initrd"),
    option(
        "dtb", Path, None, "arm64: boot with this DTB (pvkit patches RAM, chosen)", "--dtb", "-dtb"
    ),
    option("dump_dtb", Path, None, "arm64: also write the generated DTB here"),
    option("bios", Path, None, "arm64: firmware for flash bank 0", "--bios", "-bios"),
    option(
        "no_reboot", bool, False, "a guest reset ends the run (exit 0)", "--no-reboot", "-no-reboot"
    ),
    option("symbols", Path, None, "System.map or kallsyms: name a fault's PC as function+offset"),
    option("arch", str, None, "arm64 or x86_64 (default: from the image)"),
    option("smp", int, 1, "number of vCPUs", "--smp", "-smp"),
    option("mem", str, "256M", "guest RAM, e.g. 256M or 1G (bare number: MiB)", "--mem", "-m"),
    option("profile", str, "kvm", "kvm, pvkit or none"),
    params.TRACE,
    params.STATS,
    params.TIMEOUT,
    option("append", str, "", "kernel command line", "--append", "-append"),
    option("conduit", str, "hvc", "arm64: hvc or smc, advertised in the DT"),
    option("trap", str, "auto", "arm64: hypercall trap auto, c or ctypes"),
    option("gic", int, 3, "arm64: GIC version 3, or 2 (at most 8 vCPUs)"),
    option(
        "cpu_vendor", str, None, "x86_64: intel or amd (default intel); --incoming: this host's"
    ),
    option("cpuid_base", str, "0x40000000", "x86_64: hypervisor CPUID base"),
    option("fix_hypercall", bool, True, "x86_64: patch the other vendor's hypercall instruction"),
    option("boot", str, "auto", "x86_64: pvh, multiboot or auto"),
    repeated("disable", "leave this service out, e.g. stolen-time"),
    params.SERVICE,
    params.DENY,
    params.FORWARD,
    option("host_cpus", int, None, "host CPUs the vCPUs share (default: one each)"),
    option(
        "deterministic", bool, False, "time from guest instructions: the same run, the same times"
    ),
    option("slice_ms", float, None, "scheduler time slice in ms (default 10)"),
    params.TIMELINE,
    repeated("swap_out", "RAM absent on the host at boot: FRACTION, FIRST-LAST or FIRST+SIZE"),
    option("swap_latency_ms", float, 10.0, "how long the host takes to bring back an absent page"),
    params.GDB,
    params.GDB_DEFAULT,
    params.FREEZE,
    params.MONITOR,
    params.SAVE_AT,
    params.SAVE,
    repeated("fw", "arm64: set a firmware register, NAME=VALUE (pvkit fw --list)"),
    option("pv_time_revision", int, None, "arm64: stolen-time record revision, 0 (Linux's) or 1"),
    params.MIGRATE_AT,
    params.MIGRATE_TO,
    option("incoming", str, None, "wait for a migration on tcp:HOST:PORT and run the VM it brings"),
)


def run(
    image: Path | None = None,
    kernel: Path | None = None,
    initrd: Path | None = None,
    dtb: Path | None = None,
    dump_dtb: Path | None = None,
    bios: Path | None = None,
    no_reboot: bool = False,
    symbols: Path | None = None,
    arch: str | None = None,
    smp: int = 1,
    mem: str = "256M",
    profile: str = "kvm",
    trace: Path | None = None,
    stats: bool = False,
    timeout: float | None = None,
    append: str = "",
    conduit: str = "hvc",
    trap: str = "auto",
    gic: int = 3,
    cpu_vendor: str | None = None,
    cpuid_base: str = "0x40000000",
    fix_hypercall: bool = True,
    boot: str = "auto",
    disable: list[str] | None = None,
    service: list[str] | None = None,
    deny: list[str] | None = None,
    forward: list[str] | None = None,
    host_cpus: int | None = None,
    deterministic: bool = False,
    slice_ms: float | None = None,
    timeline: Path | None = None,
    swap_out: list[str] | None = None,
    swap_latency_ms: float = 10.0,
    gdb: str | None = None,
    gdb_default: bool = False,
    freeze: bool = False,
    monitor: str | None = None,
    save_at: float | None = None,
    save: Path | None = None,
    fw: list[str] | None = None,
    pv_time_revision: int | None = None,
    migrate_at: float | None = None,
    migrate_to: str | None = None,
    incoming: str | None = None,
) -> None:
    """Run IMAGE until it powers off, faults or idles; the exit code says which."""
    session = Session(
        trace, stats, timeline, parse_timeout(timeout), gdb, gdb_default, freeze, monitor,
        save_at, save, migrate_at, migrate_to,
    )  # fmt: skip
    if incoming is not None:
        from pvkit.cli.incoming import refuse_vm_options, run_incoming
        from pvkit.cli.restore import host_choices

        refuse_vm_options({
            "IMAGE": image is not None, "--kernel": kernel is not None,
            "--initrd": initrd is not None, "--dtb": dtb is not None,
            "--dump-dtb": dump_dtb is not None, "--bios": bios is not None,
            "--no-reboot": no_reboot, "--symbols": symbols is not None,
            "--arch": arch is not None, "--smp": smp != 1, "--mem": mem != "256M",
            "--profile": profile != "kvm", "--append": bool(append),
            "--conduit": conduit != "hvc", "--trap": trap != "auto", "--gic": gic != 3,
            "--cpuid-base": cpuid_base != "0x40000000",
            "--no-fix-hypercall": not fix_hypercall, "--boot": boot != "auto",
            "--deterministic": deterministic, "--swap-out": bool(swap_out),
            "--fw": bool(fw),
        })  # fmt: skip
        session.check()
        console = BufferedConsole()
        # the stream says the architecture later: IDs are checked against its rules
        rules = policy_rules(deny or [], forward or [], "x86_64")
        choices = host_choices(
            host_cpus, slice_ms, timeline, disable, service, rules, console, cpu_vendor
        )
        run_incoming(incoming, session, choices, console, pv_time_revision)
        return
    if image is not None and kernel is not None:
        raise fail("give the kernel once: as IMAGE or as --kernel, not both")
    image = image if image is not None else kernel
    if image is None and bios is None:
        raise fail("nothing to boot: give IMAGE (or --kernel FILE) or --bios FILE")
    session.check()
    hub = TraceHub()
    console = BufferedConsole()
    timing = {
        "host_cpus": parse_host_cpus(host_cpus),
        "deterministic": deterministic,
        "slice_ns": parse_slice_ms(slice_ms if slice_ms is not None else 10.0),
        "record_slices": timeline is not None,
    }
    swap = swap_spec(swap_out or [], swap_latency_ms)
    try:
        table = SymbolTable.load(symbols) if symbols is not None else None
        chosen = arch or (detect_arch(image) if image is not None else "arm64")
        if chosen not in ARCHES:
            raise fail(f"--arch {chosen!r} is not one of {', '.join(ARCHES)}")
        registers = firmware_settings(fw or [], pv_time_revision, chosen)
        extra = load_services(service or [])
        rules = policy_rules(deny or [], forward or [], chosen)
        machine: virt_arm64.VirtArm64 | pc_x86.PcX86
        if chosen == "x86_64":
            from pvkit.platform import pc_x86

            arm_only = (initrd, dtb, dump_dtb, bios)
            if any(arm_only) or conduit != "hvc" or trap != "auto" or gic != 3:
                raise fail(
                    "--initrd, --dtb, --dump-dtb, --bios, --conduit, --trap and --gic apply "
                    "to arm64 guests only"
                )
            if image is None:
                raise fail("an x86_64 VM boots a kernel: give IMAGE or --kernel FILE")
            machine = pc_x86.PcX86(
                pc_x86.PcConfig(
                    smp=smp,
                    memory=parse_size(mem),
                    vendor=cpu_vendor or "intel",
                    profile=parse_profile(profile),
                    cpuid_base=_number(cpuid_base, "--cpuid-base"),
                    fix_hypercall=fix_hypercall,
                    boot=boot,
                    bootargs=append,
                    disabled=frozenset(disable or ()),
                    extra_services=extra,
                    rules=rules,
                    reboot=not no_reboot,
                    swap=swap,
                    **timing,  # type: ignore[arg-type]
                ),
                image,
                hub,
            )
        else:
            if cpu_vendor is not None or cpuid_base != "0x40000000" or not fix_hypercall:
                raise fail("--cpu-vendor, --cpuid-base and --no-fix-hypercall apply to x86_64")
            arm = virt_arm64.VirtArm64(
                virt_arm64.VirtConfig(
                    smp=smp,
                    memory=parse_size(mem),
                    conduit=conduit,
                    profile=parse_profile(profile),
                    bootargs=append,
                    trap=trap,
                    gic=gic,
                    console=console,
                    disabled=frozenset(disable or ()),
                    extra_services=extra,
                    rules=rules,
                    initrd=initrd,
                    dtb=dtb,
                    bios=bios,
                    reboot=not no_reboot,
                    swap=swap,
                    **timing,  # type: ignore[arg-type]
                ),
                image,
                hub,
            )
            apply_firmware(arm, registers)
            if dump_dtb is not None:
                write_file(dump_dtb, arm.dtb)
            if arm.plan.dtb_changes:
                say(f"pvkit: booting with {dtb}; pvkit set {', '.join(arm.plan.dtb_changes)}")
            machine = arm
    except (ImageError, ConfigError, NamespaceClash, HostMemoryError) as exc:
        raise fail(str(exc)) from None
    except PolicyError as exc:
        raise fail(f"policy: {exc}") from None
    counter = RuleCounter(rules) if rules else None
    run_and_report(machine, chosen, image, session, console, counter, table)


def _number(text: str, option: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise fail(f"{option} {text!r} is not a number (use 0x... for hex)") from None
