"""The PL011's data path in C: the same console output, a line at a time.

With the C path (backends/uart_path.py) a UARTDR write that only sends its byte and every
UARTFR read are answered by the engine; the bytes reach the console at each line end,
before any other access reaches the device model, and when the vCPU stops. Without it
(PVKIT_UART=python) every access goes through the model. Both must print the same bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pvkit.devices.pl011 import FR_RXFE, FR_TXFE
from pvkit.machine.vm import StopKind
from pvkit.platform.virt_arm64 import UART_BASE, VirtArm64, VirtConfig

from .conftest import PSCI_WALK, SMP_HELLO

RESULT = 0x4100_0000
SYSTEM_OFF = 0x8400_0008
UARTICR = 0x44
INT_TX = 1 << 5


def boot(image: Path, monkeypatch: pytest.MonkeyPatch, path: str, smp: int = 1):  # type: ignore[no-untyped-def]
    if path == "python":
        monkeypatch.setenv("PVKIT_UART", "python")
    else:
        monkeypatch.delenv("PVKIT_UART", raising=False)
    chunks: list[bytes] = []
    machine = VirtArm64(VirtConfig(smp=smp, console=chunks.append), image)
    assert (machine.uart.fast_path is not None) == (path == "c")
    reason = machine.run(60)
    assert reason.kind is StopKind.SHUTDOWN, reason
    return machine, chunks


def put(byte: str) -> str:
    return f"mov w2, #{ord(byte)}\nstr w2, [x1]\n"


def test_bytes_go_out_at_line_ends_before_other_accesses_and_when_the_vcpu_stops(
    asm, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    source = (
        f"ldr x1, ={UART_BASE:#x}\nldr x20, ={RESULT:#x}\n"
        + put("a")  # the model's: TXRIS is not raised before the first byte
        + put("b")
        + put("\n")  # the line goes out
        + put("c")
        + "ldr w3, [x1, #0x18]\nstr w3, [x20]\n"  # UARTFR, answered in C
        + f"mov w2, #{INT_TX}\nstr w2, [x1, #{UARTICR:#x}]\n"  # the model's: "c" goes first
        + put("d")  # the model's again: TXRIS was just cleared
        + put("e")  # buffered until the vCPU stops
        + f"ldr x0, ={SYSTEM_OFF:#x}\nhvc #0\nb .\n"
    )
    image = asm(source)
    machine, chunks = boot(image, monkeypatch, "c")
    assert chunks == [b"a", b"b\n", b"c", b"d", b"e"]
    assert machine.memory.read_u32(RESULT) == FR_TXFE | FR_RXFE
    path = machine.uart.fast_path
    assert (path.fast_writes, path.fast_reads) == (4, 1)  # b, \n, c and e; the FR read
    python_machine, python_chunks = boot(image, monkeypatch, "python")
    assert b"".join(python_chunks) == b"".join(chunks)
    assert python_machine.memory.read_u32(RESULT) == machine.memory.read_u32(RESULT)


def test_a_prompt_goes_out_once_the_guest_polls_for_input(
    asm, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A console writing reads UARTFR once per byte; reading it twice in a row is a guest
    waiting for input (U-Boot after "=> "), so what it printed goes out then."""
    poll = "ldr w3, [x1, #0x18]\n" * 2
    source = (
        f"ldr x1, ={UART_BASE:#x}\n"
        + put("=")
        + put(">")
        + put(" ")
        + poll
        + put("v")
        + f"ldr x0, ={SYSTEM_OFF:#x}\nhvc #0\nb .\n"
    )
    _, chunks = boot(asm(source), monkeypatch, "c")
    assert chunks == [b"=", b"> ", b"v"]


@pytest.mark.parametrize(("image", "smp"), [(SMP_HELLO, 4), (PSCI_WALK, 2)])
def test_guests_print_the_same_bytes_on_both_paths(
    image: Path, smp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, c = boot(image, monkeypatch, "c", smp)
    _, python = boot(image, monkeypatch, "python", smp)
    assert b"".join(c) == b"".join(python)
    lines = b"".join(c).count(b"\n")
    assert len(c) <= lines + 2  # a line at a time (the first byte and the last part alone)


def cli(*args: str, uart: str) -> subprocess.CompletedProcess[bytes]:
    env = {**__import__("os").environ, "PVKIT_UART": uart}
    return subprocess.run(
        [sys.executable, "-m", "pvkit", "run", *args],
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_the_cli_prints_the_same_output_with_trace_and_timeline(tmp_path: Path) -> None:
    runs = {}
    for uart in ("c", "python"):
        trace, timeline = tmp_path / f"{uart}.jsonl", tmp_path / f"{uart}.json"
        r = cli(
            str(SMP_HELLO),
            "--smp",
            "4",
            "--trace",
            str(trace),
            "--timeline",
            str(timeline),
            uart=uart,
        )
        assert r.returncode == 0, r.stderr
        assert trace.stat().st_size > 0 and timeline.stat().st_size > 0
        runs[uart] = r
    assert runs["c"].stdout == runs["python"].stdout
    assert runs["c"].stderr == runs["python"].stderr  # pvkit's own lines, after the guest's
    assert runs["c"].stdout.endswith(b"powering off\r\n")  # the last line is there too
