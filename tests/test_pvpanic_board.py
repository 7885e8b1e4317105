"""pvpanic-mmio on the virt board: what each event does to the VM (QEMU docs/specs/
pvpanic.rst), where the device tree puts it, and what the trace records.

The SDK guest guests/prebuilt/pvpanic.Image finds the device from the DT as Linux's
driver does and sends the event its `event=` bootarg names.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import jsonschema
import libfdt
import pytest

from pvkit.devices.pvpanic import PVPANIC_MMIO_BASE
from pvkit.machine.vm import StopKind

from .conftest import PREBUILT, boot, pvkit

PVPANIC = PREBUILT / "pvpanic.Image"
SCHEMA = json.loads((Path(__file__).parent / "trace_event_schema.json").read_text())
PANICKED_STOP = "pvkit: panic: guest panicked (pvpanic PANICKED)"
CRASH_NOTICE = "pvkit: guest panicked; its crash kernel takes over (pvpanic CRASH_LOADED)"
SHUTDOWN_STOP = "pvkit: shutdown: the guest announced its shutdown (pvpanic SHUTDOWN)"
# One line of a --trace file for a pvpanic write.
PVPANIC_RECORD = {
    "type": "object",
    "required": ["type", "t_ns", "events"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "pvpanic"},
        "t_ns": {"type": "integer", "minimum": 0},
        "events": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": ["panicked", "crash-loaded", "shutdown"]},
        },
    },
}


def run_pvpanic(*args: str) -> subprocess.CompletedProcess[str]:
    r = pvkit("run", str(PVPANIC), "--timeout", "30", *args)
    # The guest found the device through the DT, not by falling back to the address.
    assert "pvpanic: qemu,pvpanic-mmio at 0x9060000 (2 bytes)" in r.stdout, r.stdout
    assert "pvpanic: supported events 0x7: panicked crash-loaded shutdown" in r.stdout
    return r


def stderr_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return r.stderr.strip().splitlines()


def pvpanic_records(trace: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    return [x for x in records if x["type"] == "pvpanic"]


# -- what each event does --------------------------------------------------------------
def test_panicked_stops_the_vm_with_exit_status_5(tmp_path: Path) -> None:
    """QEMU stops a guest that reports PANICKED; pvkit exits with its panic status, and a
    run that ends so still writes a valid --timeline."""
    timeline = tmp_path / "t.json"
    r = run_pvpanic("--append", "event=panic", "--timeline", str(timeline))
    assert r.returncode == 5, r.stderr
    assert "pvpanic: reporting PANICKED" in r.stdout
    assert stderr_lines(r)[-1] == PANICKED_STOP
    assert "Traceback" not in r.stderr
    jsonschema.validate(json.loads(timeline.read_text()), SCHEMA)


def test_crash_loaded_is_reported_and_the_guest_goes_on_to_a_clean_exit(tmp_path: Path) -> None:
    """CRASH_LOADED: a kdump kernel takes over, so the VM must not stop; pvkit says so once
    on stderr and the guest runs on (here to an orderly SHUTDOWN)."""
    trace = tmp_path / "t.jsonl"
    r = run_pvpanic("-append", "event=crash", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "pvpanic: crash loaded reported" in out
    assert out.index("crash loaded reported") < out.index("still running, as a kdump kernel")
    assert stderr_lines(r).count(CRASH_NOTICE) == 1
    assert stderr_lines(r)[-1] == SHUTDOWN_STOP
    records = pvpanic_records(trace)
    assert [x["events"] for x in records] == [["crash-loaded"], ["shutdown"]]
    for x in records:
        jsonschema.validate(x, PVPANIC_RECORD)


@pytest.mark.parametrize(
    "append", [[], ["--append", "event=shutdown"]], ids=["default", "shutdown"]
)
def test_shutdown_is_a_clean_exit(tmp_path: Path, append: list[str]) -> None:
    """SHUTDOWN (what Linux's power-off handler writes) ends the run as a power-off."""
    trace = tmp_path / "t.jsonl"
    r = run_pvpanic(*append, "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "pvpanic: reporting SHUTDOWN" in r.stdout
    assert stderr_lines(r) == [SHUTDOWN_STOP]
    (record,) = pvpanic_records(trace)
    assert record["events"] == ["shutdown"]
    jsonschema.validate(record, PVPANIC_RECORD)


def test_the_panic_trace_record_names_the_event(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    assert run_pvpanic("--append", "event=panic", "--trace", str(trace)).returncode == 5
    (record,) = pvpanic_records(trace)
    jsonschema.validate(record, PVPANIC_RECORD)
    assert record["events"] == ["panicked"]


# -- writes the SDK guest does not make (in-process, assembled guests) ------------------
PV = f"ldr x21, ={PVPANIC_MMIO_BASE:#x}\n"
OFF = "ldr x0, =0x84000008\nhvc #0\nb .\n"


def test_panicked_wins_when_one_write_carries_every_event(asm) -> None:  # type: ignore[no-untyped-def]
    """QEMU's handler checks PANICKED first: a write of 0x7 is a panic, not a shutdown."""
    b = boot(asm(PV + "mov w1, #7\nstrb w1, [x21]\nb ."))
    assert b.reason.kind is StopKind.PANIC
    assert b.reason.message == "guest panicked (pvpanic PANICKED)"
    (event,) = [e for e in b.trace.events if e.kind == "pvpanic"]
    assert event.fields == {"events": ["panicked", "crash-loaded", "shutdown"]}


def test_unknown_bits_are_reported_once_and_ignored(asm) -> None:  # type: ignore[no-untyped-def]
    """Bits outside the advertised set are logged once per bit (as QEMU logs them) and do
    not stop the guest; a 16-bit write whose event byte is 0 reports nothing."""
    notices: list[str] = []
    guest = asm(
        PV + "mov w1, #8\nstrb w1, [x21]\nstrb w1, [x21]\nmov w1, #0x400\nstrh w1, [x21]\n" + OFF
    )
    b = boot(guest, notice=notices.append)
    assert b.reason.kind is StopKind.SHUTDOWN
    assert b.reason.message == "PSCI SYSTEM_OFF from vCPU 0"
    assert notices == ["pvpanic: the guest wrote unknown event bits 0x8; ignored"]
    assert not [e for e in b.trace.events if e.kind == "pvpanic"]


# -- where the device tree puts it ------------------------------------------------------
def test_the_device_tree_describes_pvpanic_mmio_as_the_binding_asks(tmp_path: Path) -> None:
    """qemu,pvpanic-mmio.yaml: `reg = <0x0 0x9060000 0x0 0x2>` (2 bytes, not the page)."""
    out = tmp_path / "virt.dtb"
    r = pvkit("dtb", "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-q", str(out)], capture_output=True, check=True
    ).stdout.decode()
    assert "pvpanic-mmio@9060000 {" in text
    assert text.count('compatible = "qemu,pvpanic-mmio";') == 1
    fdt = libfdt.Fdt(out.read_bytes())
    node = fdt.path_offset("/pvpanic-mmio@9060000")
    assert bytes(fdt.getprop(node, "compatible")) == b"qemu,pvpanic-mmio\0"
    assert bytes(fdt.getprop(node, "reg")) == struct.pack(">QQ", 0x9060000, 2)
