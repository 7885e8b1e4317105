"""`pvkit run` and `pvkit decode` for x86_64 guests, as a user drives them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SMP_HELLO, X86_HELLO, pvkit


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_run_detects_x86_and_exits_with_the_guests_status(vendor: str, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = pvkit("run", str(X86_HELLO), "--smp", "2", "--cpu-vendor", vendor, "--trace", str(trace))
    assert r.returncode == 1, r.stderr  # isa-debug-exit value 0 -> status (0 << 1) | 1
    assert "x86-hello: done" in r.stdout
    assert "isa-debug-exit: the guest wrote 0x0 (exit status 1)" in r.stderr
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [x["type"] for x in records].count("patch") == 1
    assert any(x.get("name") == "KVM_HC_SEND_IPI" for x in records)


def test_run_options_for_x86(tmp_path: Path) -> None:
    r = pvkit(
        "run", str(X86_HELLO), "--arch", "x86_64", "--no-fix-hypercall", "--boot", "multiboot",
        "--cpuid-base", "0x40000100", "--profile", "pvkit", "--append", "hi",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "booted by multiboot" in r.stdout and "cmdline 'hi'" in r.stdout
    assert "at CPUID 0x40000100" in r.stdout and "(unchanged), #UD taken 1" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu-vendor", "via"], "--cpu-vendor 'via' is not intel or amd"),
        (["--cpuid-base", "0x40000080"], "must be a multiple of 0x100"),
        (["--cpuid-base", "forty"], "--cpuid-base 'forty' is not a number"),
        (["--dtb", "x.dtb"], "apply to arm64 guests only"),
        (["--boot", "uefi"], "boot protocol 'uefi' is not pvh, multiboot or auto"),
    ],
)
def test_bad_x86_options_are_one_sentence(args: list[str], message: str) -> None:
    r = pvkit("run", str(X86_HELLO), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_x86_options_on_an_arm64_guest_are_refused() -> None:
    r = pvkit("run", str(SMP_HELLO), "--cpu-vendor", "amd")
    assert r.returncode == 2 and "apply to x86_64" in r.stderr


def test_decode_explains_a_kvm_hypercall_number() -> None:
    r = pvkit("decode", "--arch", "x86_64", "12")
    assert r.returncode == 0
    assert "KVM_HC_MAP_GPA_RANGE" in r.stdout and "RBX, RCX, RDX, RSI" in r.stdout
    ipi = pvkit("decode", "--arch", "x86_64", "10")
    assert "bit 11 (PV_SEND_IPI)" in ipi.stdout and "kvm, pvkit" in ipi.stdout
    unknown = pvkit("decode", "--arch", "x86_64", "4242")
    assert "not a KVM hypercall" in unknown.stdout and "no profile" in unknown.stdout
