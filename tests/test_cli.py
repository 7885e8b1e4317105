"""The command line as a user drives it: exit codes, one-sentence errors, outputs."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import SMP_HELLO, pvkit

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps


def test_run_streams_the_console_and_exits_zero_on_system_off(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    r = pvkit("run", str(SMP_HELLO), "--smp", "4", "--stats", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "hello from cpu 3 (mpidr 0x3)" in r.stdout
    assert "AFFINITY_INFO64" in r.stderr and "mean µs" in r.stderr
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    calls = [x for x in records if x["type"] == "call"]
    assert {"vcpu", "conduit", "fid", "name", "args", "results", "duration_ns"} <= calls[0].keys()
    assert any(c["name"] == "SYSTEM_OFF" and c["fid"] == "0x84000008" for c in calls)


def test_guest_fault_exits_nonzero_with_the_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.Image"
    blob = bytearray(SMP_HELLO.read_bytes())
    blob[0:4] = (0x14000001).to_bytes(4, "little")  # b +4: run into code1 = 0, undefined
    junk.write_bytes(bytes(blob))
    r = pvkit("run", str(junk))
    assert r.returncode == 1
    assert "fault: vCPU 0: undefined instruction 0x00000000 at PC 0x40200004" in r.stderr


def test_a_raw_binary_runs_as_arm64_without_arch(tmp_path: Path) -> None:
    """Neither ELF nor Image: a raw binary, which only arm64 boots (as qemu-system-aarch64
    -kernel does), so no --arch is needed."""
    flat = tmp_path / "off.flat"
    # mov w0, #8; movk w0, #0x8400, lsl #16; hvc #0 (PSCI SYSTEM_OFF); b .
    flat.write_bytes(struct.pack("<4I", 0x52800100, 0x72B08000, 0xD4000002, 0x14000000))
    r = pvkit("run", str(flat), "--timeout", "30")
    assert r.returncode == 0, r.stderr


def test_bad_image_is_one_sentence_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "x.elf"
    bad.write_bytes(b"\x7fELF" + bytes(14) + (243).to_bytes(2, "little") + bytes(44))
    r = pvkit("run", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"pvkit: {bad} is an ELF file for machine 243, not arm64 or x86_64"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    r = pvkit("run", str(empty))
    assert r.returncode == 2 and "is empty" in r.stderr and "Traceback" not in r.stderr
    missing = pvkit("run", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cannot read guest image" in missing.stderr


def test_bad_options_fail_cleanly() -> None:
    r = pvkit("run", str(SMP_HELLO), "--mem", "lots")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = pvkit("run", str(SMP_HELLO), "--profile", "xen")
    assert r.returncode == 2 and "unknown profile" in r.stderr


def test_decode_explains_a_function_id() -> None:
    r = pvkit("decode", "0xC5000021")
    assert r.returncode == 0
    for text in ("SMC64/HVC64", "5 (Standard Hypervisor Service)", "0x0021", "PV_TIME_ST"):
        assert text in r.stdout
    served = pvkit("decode", "0x8600ff01").stdout
    assert "VENDOR_HYP_CALL_UID" in served and "kvm, pvkit" in served
    assert pvkit("decode", "banana").returncode == 2


def test_dtb_writes_a_blob_dtc_accepts(tmp_path: Path) -> None:
    out = tmp_path / "vm.dtb"
    r = pvkit("dtb", "--smp", "4", "-o", str(out))
    assert r.returncode == 0
    text = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-q", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert text.count('device_type = "cpu";') == 4


def test_an_unknown_trap_path_is_one_sentence_and_exit_2() -> None:
    r = pvkit("run", str(SMP_HELLO), "--trap", "fast")
    assert r.returncode == 2
    assert r.stderr.strip() == "pvkit: trap path 'fast' is not auto, c or ctypes"
