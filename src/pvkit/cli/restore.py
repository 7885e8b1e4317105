"""`pvkit restore FILE`: continue a saved VM, with the host's side chosen anew."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pvkit.cli import params
from pvkit.cli.firmware import restored_revision_notice
from pvkit.cli.options import fail, parse_host_cpus, parse_slice_ms, parse_timeout
from pvkit.cli.params import argument, option, repeated
from pvkit.cli.plugins import load_services
from pvkit.cli.policy import RuleCounter, policy_rules
from pvkit.cli.session import Session, run_and_report
from pvkit.devices.console import BufferedConsole
from pvkit.hypercall.policy import Rule
from pvkit.platform import pc_x86
from pvkit.snapshot.config import HostChoices
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import read_snapshot
from pvkit.snapshot.resume import restore as restore_board
from pvkit.snapshot.sections import KNOWN

PARAMS = (
    argument("file", Path, "a snapshot written by --save-at/--save or savevm"),
    option("host_cpus", int, None, "host CPUs the vCPUs share (default: as saved)"),
    option("slice_ms", float, None, "scheduler time slice in ms (default: as saved)"),
    repeated("disable", "leave this service out (refused if the guest has it)"),
    params.SERVICE,
    params.DENY,
    params.FORWARD,
    params.TRACE,
    params.STATS,
    params.TIMEOUT,
    params.TIMELINE,
    params.GDB,
    params.GDB_DEFAULT,
    params.FREEZE,
    params.MONITOR,
    params.SAVE_AT,
    params.SAVE,
    option(
        "pv_time_revision",
        int,
        None,
        "arm64: the revision a VM booted here gets; the guest keeps its own",
    ),
    params.MIGRATE_AT,
    params.MIGRATE_TO,
)


def host_choices(
    host_cpus: int | None,
    slice_ms: float | None,
    timeline: Path | None,
    disable: list[str] | None,
    service: list[str] | None,
    rules: Sequence[Rule],
    console: BufferedConsole,
    host_vendor: str | None = None,
) -> HostChoices:
    """What a VM that arrives whole (a snapshot here, a migration for `run --incoming`)
    lets this host choose anew; its own services and rules must be the saved VM's."""
    return HostChoices(
        host_cpus=parse_host_cpus(host_cpus),
        keep_host_cpus=host_cpus is None,
        slice_ns=parse_slice_ms(slice_ms) if slice_ms is not None else None,
        record_slices=timeline is not None,
        disabled=frozenset(disable or ()),
        console=console,
        host_vendor=host_vendor,
        extra_services=tuple(load_services(service or [])),
        rules=tuple(rules),
    )


def restore(
    file: Path,
    host_cpus: int | None = None,
    slice_ms: float | None = None,
    disable: list[str] | None = None,
    service: list[str] | None = None,
    deny: list[str] | None = None,
    forward: list[str] | None = None,
    trace: Path | None = None,
    stats: bool = False,
    timeout: float | None = None,
    timeline: Path | None = None,
    gdb: str | None = None,
    gdb_default: bool = False,
    freeze: bool = False,
    monitor: str | None = None,
    save_at: float | None = None,
    save: Path | None = None,
    pv_time_revision: int | None = None,
    migrate_at: float | None = None,
    migrate_to: str | None = None,
) -> None:
    """Continue the VM saved in FILE; refuses, before anything runs, one this host cannot serve."""
    session = Session(
        trace, stats, timeline, parse_timeout(timeout), gdb, gdb_default, freeze, monitor,
        save_at, save, migrate_at, migrate_to,
    )  # fmt: skip
    session.check()
    console = BufferedConsole()
    try:
        snapshot = read_snapshot(file, KNOWN)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    rules = policy_rules(deny or [], forward or [], snapshot.arch)
    choices = host_choices(host_cpus, slice_ms, timeline, disable, service, rules, console)
    try:
        board, image = restore_board(snapshot, choices)
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    restored_revision_notice(board, pv_time_revision)
    arch = "x86_64" if isinstance(board, pc_x86.PcX86) else "arm64"
    run_and_report(board, arch, image, session, console, RuleCounter(rules) if rules else None)
