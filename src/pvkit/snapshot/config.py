"""The "machine" section: what a VM was built from, to build it again on restore.

It holds the board configuration (not the command line), the boot files by path and
SHA-256 (a guest reset after a restore boots them again), and the services the guest can
see with the revision it is served of each (a service its firmware registers hide is not
among them), so that a restore can say before anything runs why this pvkit cannot serve
the guest. Version 1 listed every service, revisions as their listing text.

What may differ on restore is the host's side: host CPUs, tracing, timelines; what the
guest has seen (vCPUs, RAM, services, the GIC, the CPU vendor) may not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvkit.hypercall.namespace import Abi
from pvkit.hypercall.policy import Rule
from pvkit.machine.residency import SwapSpec
from pvkit.platform import pc_x86, virt_arm64
from pvkit.platform.board import ConfigError
from pvkit.services.base import Service
from pvkit.services.plugins import spec_of
from pvkit.services.profiles import PROFILES
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Section, json_section
from pvkit.snapshot.state import Fields, State

STATE_SECTION = "machine"
# 2: "deterministic" (wall-clock VMs too); only the services the guest sees. 3: the services
# and policy rules of the user's own, and a --dtb file (written only for a VM that has one
# of them, so that a plain VM's snapshot still restores on a pvkit that reads version 2)
STATE_VERSION = 3
PLAIN_VERSION = 2
Board = virt_arm64.VirtArm64 | pc_x86.PcX86
ARCHES = ("arm64", "x86_64")


def hidden_services(board: Board) -> list[str]:
    """Services the guest cannot discover: their firmware bitmap bit is clear (arm64)."""
    return board.firmware.hidden_services() if isinstance(board, virt_arm64.VirtArm64) else []


def visible_revisions(board: Board) -> dict[str, str | None]:
    """Each service the guest can see, with the revision it is served."""
    hidden = set(hidden_services(board))
    return {s.name: s.revision_in_use() for s in board.services if s.name not in hidden}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _boot_file(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    return {"path": str(path.resolve()), "sha256": file_digest(path)}


def unsupported(board: Board, image: Path | None) -> str | None:
    """Why this VM cannot be snapshotted yet (one phrase), or None."""
    c = board.config
    if c.swap is not None and c.swap.active:
        return "it has --swap-out (not yet held by snapshots)"
    arm = board.config if isinstance(board, virt_arm64.VirtArm64) else None
    if arm is not None and arm.bios is not None:
        return "it boots --bios (not yet held by snapshots)"
    if image is None:
        return "it has no boot image file"
    return None


def machine_section(board: Board, image: Path) -> Section:
    state = save_machine(board, image)
    return json_section(STATE_VERSION if _VERSION_3_KEYS & set(state) else PLAIN_VERSION, state)


_VERSION_3_KEYS = {"extra_services", "rules", "dtb"}  # a version-2 reader would lose them


def save_machine(board: Board, image: Path) -> State:
    c = board.config
    common: State = {
        "smp": c.smp, "memory": c.memory, "profile": c.profile.name,
        "bootargs": c.bootargs, "disabled": sorted(c.disabled), "slice_ns": c.slice_ns,
        "host_cpus": c.host_cpus, "reboot": c.reboot, "image": _boot_file(image),
        "deterministic": c.deterministic,
        "services": visible_revisions(board),
    }  # fmt: skip
    if c.extra_services or c.rules:  # by name only: a restore is given them again
        common["extra_services"] = [spec_of(type(s)) for s in c.extra_services]
        common["rules"] = [_rule_state(r) for r in c.rules]
    if isinstance(board, virt_arm64.VirtArm64):
        a = board.config
        arm64: State = {**common, "arch": "arm64", "conduit": a.conduit, "gic": a.gic,
                        "initrd": _boot_file(a.initrd)}  # fmt: skip
        if a.dtb is not None:  # the file a reset lays out again, patched as at boot
            arm64["dtb"] = _boot_file(a.dtb)
        return arm64
    x = board.config
    return {**common, "arch": "x86_64", "vendor": x.vendor, "cpuid_base": x.cpuid_base,
            "fix_hypercall": x.fix_hypercall, "boot": x.boot,
            "hidden_features": x.hidden_features}  # fmt: skip


@dataclass(frozen=True)
class HostChoices:
    """What a restore may choose differently from the saved run."""

    host_cpus: int | None = None
    keep_host_cpus: bool = True  # None above means "as saved", not "one each"
    slice_ns: int | None = None
    record_slices: bool = False
    disabled: frozenset[str] = frozenset()  # services this host leaves out
    console: Callable[[bytes], None] | None = None  # where the arm64 UART writes
    host_vendor: str | None = None  # x86: the host's CPU vendor, if not the guest's model's
    # The user's own services and policy rules, given again: the snapshot names them, but
    # importing code a file names is the host's decision, not the file's (as QEMU's
    # destination is started with the source's -device options)
    extra_services: tuple[Service, ...] = ()
    rules: tuple[Rule, ...] = ()


def _boot_path(state: Fields, key: str) -> Path | None:
    if state.raw(key) is None:
        return None
    f = state.sub(key)
    path = Path(f.text("path"))
    try:
        digest = file_digest(path)
    except OSError as exc:
        raise SnapshotError(
            f"boot file {path} of the snapshot cannot be read ({exc.strerror}); a guest reset "
            "boots it again, so a restore needs it"
        ) from None
    if digest != f.text("sha256"):
        raise SnapshotError(f"boot file {path} changed since the snapshot was taken")
    return path


def build_board(state: Fields, host: HostChoices) -> tuple[Board, Path]:
    """The VM the snapshot was taken of, with the host's choices; SnapshotError if this
    pvkit cannot build it."""
    arch = state.text("arch")
    if arch not in ARCHES:
        raise _foreign(arch)
    profile = PROFILES.get(state.text("profile"))
    if profile is None:
        raise SnapshotError(f"the snapshot's host profile {state.text('profile')!r} is unknown")
    image = _boot_path(state, "image")
    if image is None:
        raise SnapshotError("the snapshot names no boot image")
    _same_user_parts(state, host)
    saved_cpus = state.opt_int("host_cpus", 1, 4096)
    timing = {
        "host_cpus": saved_cpus if host.keep_host_cpus else host.host_cpus,
        "deterministic": state.flag("deterministic") if state.has("deterministic") else True,
        "slice_ns": host.slice_ns or state.integer("slice_ns", 1000),
        "record_slices": host.record_slices,
    }
    common = {
        "smp": state.integer("smp", 1, 4096), "memory": state.integer("memory", 1),
        "profile": profile, "bootargs": state.text("bootargs"),
        "disabled": frozenset(_names(state, "disabled")) | host.disabled,
        "reboot": state.flag("reboot"), "swap": SwapSpec(),
        "extra_services": list(host.extra_services), "rules": list(host.rules),
    }  # fmt: skip
    try:
        if arch == "arm64":
            config = virt_arm64.VirtConfig(
                **common, **timing, conduit=state.text("conduit"),  # type: ignore[arg-type]
                gic=state.integer("gic", 2, 3), initrd=_boot_path(state, "initrd"),
                dtb=_boot_path(state, "dtb") if state.has("dtb") else None,
            )  # fmt: skip
            if host.console is not None:
                config.console = host.console
            return virt_arm64.VirtArm64(config, image), image
        if arch == "x86_64":
            pc = pc_x86.PcConfig(
                **common, **timing, vendor=state.text("vendor"),  # type: ignore[arg-type]
                cpuid_base=state.integer("cpuid_base"), boot=state.text("boot"),
                fix_hypercall=state.flag("fix_hypercall"),
                hidden_features=state.integer("hidden_features", hi=0xFFFF_FFFF),
            )  # fmt: skip
            return pc_x86.PcX86(pc, image), image
    except ConfigError as exc:
        raise SnapshotError(f"this host cannot build the snapshot's VM: {exc}") from None
    raise _foreign(arch)


RuleKey = tuple[int, int, str, str | None]  # first ID, last ID, action, handler's name


def _rule_key(rule: Rule) -> RuleKey:
    handler = spec_of(rule.handler) if rule.handler is not None else None
    return (rule.ids.first, rule.ids.last, rule.action.value, handler)


def _rule_state(rule: Rule) -> State:
    first, last, action, handler = _rule_key(rule)
    return {"ids": [first, last], "action": action, "handler": handler}


def _rule_option(key: RuleKey) -> str:
    first, last, action, handler = key
    ids = f"{first:#x}" if first == last else f"{first:#x}-{last:#x}"
    return f"--deny {ids}" if action == "deny" else f"--forward {ids}={handler}"


def _saved_rules(state: Fields) -> list[RuleKey]:
    value = state.raw("rules") if state.has("rules") else []
    if not isinstance(value, list):
        raise state.bad("rules", "a list of policy rules")
    keys: list[RuleKey] = []
    for r in value:
        if not (isinstance(r, dict) and set(r) == {"ids", "action", "handler"}):
            raise state.bad("rules", "a list of policy rules")
        ids, action, handler = r["ids"], r["action"], r["handler"]
        if not (
            isinstance(ids, list)
            and len(ids) == 2
            and all(type(i) is int for i in ids)
            and 0 <= ids[0] <= ids[1] < 1 << 64
            and (action, handler is None) in (("deny", True), ("forward", False))
            and (handler is None or isinstance(handler, str))
        ):
            raise state.bad("rules", "a list of policy rules")
        keys.append((ids[0], ids[1], action, handler))
    return sorted(keys)


def _same_user_parts(state: Fields, host: HostChoices) -> None:
    """The services and rules of the user's own that the saved VM had are given again."""
    saved = _names(state, "extra_services") if state.has("extra_services") else []
    given = [spec_of(type(s)) for s in host.extra_services]
    if sorted(saved) != sorted(given):
        raise _differ(
            "--service", [f"--service {n}" for n in saved], [f"--service {n}" for n in given]
        )
    rules = _saved_rules(state)
    mine = sorted(_rule_key(r) for r in host.rules)
    if rules != mine:
        raise _differ(
            "--deny and --forward",
            [_rule_option(r) for r in rules],
            [_rule_option(r) for r in mine],
        )


def _differ(kind: str, saved: list[str], given: list[str]) -> SnapshotError:
    if not saved:
        return SnapshotError(
            f"the saved VM had no {kind} options: restore it without them "
            f"(given: {', '.join(given)})"
        )
    return SnapshotError(
        f"the saved VM had {', '.join(saved)}: restore it with the same {kind} options "
        f"(given: {', '.join(given) or 'none'})"
    )


def _foreign(arch: str) -> SnapshotError:
    return SnapshotError(
        f"cannot restore here: machine: the guest is a {arch!r} VM; this pvkit builds "
        f"{' and '.join(ARCHES)} VMs"
    )


def _names(state: Fields, key: str) -> list[str]:
    value = state.raw(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise state.bad(key, "a list of names")
    return value


def saved_services(state: Fields) -> dict[str, str | None]:
    """Service -> revision the guest uses (version 1's listing text: its first word)."""
    value = state.raw("services")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or (isinstance(v, str) and v.split()))
        for k, v in value.items()
    ):
        raise state.bad("services", "a map of service names to revisions")
    return {k: v.split()[0] if v else None for k, v in value.items()}


def service_mismatch(saved: dict[str, str | None], board: Board) -> str | None:
    """Why `board` (its firmware registers already the guest's) cannot serve a guest that
    sees `saved` services, or None: each must be here, visible, at the same revision, and
    no service the guest could not see may appear."""
    hidden = set(hidden_services(board))
    here = {s.name: s for s in board.services}
    abi = Abi.KVM_X86 if isinstance(board, pc_x86.PcX86) else Abi.SMCCC
    for name, revision in sorted(saved.items()):
        rev = f" revision {revision}" if revision else ""
        service = here.get(name)
        if service is None or name in hidden:
            where = "this host leaves it out" if service is None else "its firmware bit is clear"
            return f"service {name!r}{rev}: the guest may use it, but {where}"
        in_use = service.revision_in_use()
        if in_use != revision:
            served = ", ".join(service.revisions(abi)) or "none"
            return (
                f"service {name!r}: the guest uses revision {revision}, this host serves "
                f"revision {in_use} (of {served}) and cannot switch"
            )
    extra = sorted(set(here) - set(saved) - hidden)
    if extra:
        return f"service {extra[0]!r}: this host adds it, but the guest was booted without it"
    return None
