"""apf-x86 without async page faults: the same work, done correctly, and an "off" line.

The guest (guests/x86/examples/apf.c) runs four walker tasks and a compute task at CPL 3 under
a cooperative scheduler; without KVM_FEATURE_ASYNC_PF in CPUID it must say so, touch every
page of its work region twice, check the pattern, and power off through ACPI S5 (status 0).
These runs leave the async-pf service out, so they stay valid once pvkit serves it on x86.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from pvkit.machine.vm import StopKind
from pvkit.services.profiles import PROFILES

from .conftest import PREBUILT, boot_x86, pvkit

APF_X86 = PREBUILT / "apf-x86.elf"
WITHOUT_SERVICE = frozenset({"async-pf"})
WALKERS, PAGES, PASSES = 4, 256, 2  # 1 MiB slices of 4 KiB pages, two passes
OFF = re.compile(r"apf: async page faults off \((.+)\)")
DONE = re.compile(r"apf: done in (\d+) us")


def _apf_lines(console: str) -> list[str]:
    return [ln.rstrip("\r") for ln in console.splitlines() if ln.startswith("apf:")]


def _check_off_run(lines: list[str], reason: str) -> None:
    off = [m[1] for m in map(OFF.fullmatch, lines) if m]
    assert off == [reason], lines
    assert not any(ln.startswith("apf: async page faults on") for ln in lines)
    for i in range(WALKERS):
        assert f"apf: task {i} walked {PAGES} pages x {PASSES} passes" in lines, lines
    [rounds] = [ln for ln in lines if ln.startswith("apf: compute task ran ")]
    assert int(rounds.split()[4]) > 0
    assert "apf: notifications: not-present=0 ready=0 wake-all=0 unknown=0" in lines
    assert any(DONE.match(ln) for ln in lines), lines
    assert not any("FAILED" in ln for ln in lines), lines


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "no KVM_FEATURE_ASYNC_PF"),
        ({"deterministic": True}, "no KVM_FEATURE_ASYNC_PF"),
        ({"vendor": "amd"}, "no KVM_FEATURE_ASYNC_PF"),
        ({"profile": PROFILES["pvkit"]}, "no KVM_FEATURE_ASYNC_PF"),
        ({"profile": PROFILES["none"]}, "no hypervisor"),
        ({"bootargs": "no-kvmapf"}, "no KVM_FEATURE_ASYNC_PF"),  # discovery says so first
    ],
    ids=["kvm", "deterministic", "amd", "pvkit", "none", "cmdline"],
)
def test_apf_guest_without_async_pf_does_the_work(kwargs: dict[str, Any], reason: str) -> None:
    b = boot_x86(APF_X86, disabled=WITHOUT_SERVICE, **kwargs)
    # ACPI S5, not isa-debug-exit: `pvkit run` exits 0
    assert b.reason.kind is StopKind.SHUTDOWN and b.reason.status is None, b.console
    assert "ACPI S5" in b.reason.message
    _check_off_run(_apf_lines(b.console), reason)


def test_apf_guest_times_itself_with_kvmclock_or_the_tsc() -> None:
    with_clock = _apf_lines(boot_x86(APF_X86, disabled=WITHOUT_SERVICE).console)
    assert any(DONE.match(ln) and ln.endswith("us (kvmclock)") for ln in with_clock)
    bare = _apf_lines(boot_x86(APF_X86, profile=PROFILES["none"]).console)
    assert any(DONE.match(ln) and "(TSC" in ln for ln in bare)


def test_apf_guest_deterministic_runs_repeat() -> None:
    runs = [
        _apf_lines(boot_x86(APF_X86, disabled=WITHOUT_SERVICE, deterministic=True).console)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_apf_guest_refuses_too_little_ram() -> None:
    b = boot_x86(APF_X86, disabled=WITHOUT_SERVICE, memory=64 << 20)
    assert b.reason.kind is StopKind.SHUTDOWN and b.reason.status == (0x7C << 1) | 1
    assert any("not enough RAM" in ln for ln in _apf_lines(b.console))


@pytest.mark.parametrize(
    "flags", [[], ["--deterministic"], ["--cpu-vendor", "amd"], ["--profile", "none"]]
)
def test_apf_guest_from_the_cli_exits_0(flags: list[str]) -> None:
    run = pvkit("run", str(APF_X86), "--arch", "x86_64", "--disable", "async-pf", *flags)
    assert run.returncode == 0, run.stdout + run.stderr
    reason = "no hypervisor" if "none" in flags else "no KVM_FEATURE_ASYNC_PF"
    _check_off_run(_apf_lines(run.stdout), reason)
