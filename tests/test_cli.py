"""The command line as a user drives it: exit codes, one-sentence errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SMP_HELLO

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps


def pvkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pvkit", *args], capture_output=True, text=True, timeout=120
    )


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


def test_bad_image_is_one_sentence_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello")
    r = pvkit("run", str(bad))
    assert r.returncode == 2
    assert (
        r.stderr.strip() == f"pvkit: {bad} is neither an ELF file nor an arm64 Image; give --arch"
    )
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
