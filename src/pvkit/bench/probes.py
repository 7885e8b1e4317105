"""One timed run each: the bench guest on pvkit, on a bare Unicorn engine, under QEMU.

Every probe times the guest's loop between the console lines "bench: begin" and
"bench: end" (guests/bench/bench.c), so boot and power-off are never in the figure; the
`irq` loop times itself with the guest's counter and reports it in a "bench: irq" line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc  # type: ignore[attr-defined]
from unicorn import arm64_const as r

from pvkit.backends.arm64.engine import Arm64Engine
from pvkit.backends.host_heap import use_one_malloc_arena
from pvkit.bench.service import BenchService
from pvkit.devices.pl011 import Pl011
from pvkit.loader.image import load_image
from pvkit.machine.memory import GuestMemory
from pvkit.machine.residency import SwapSpec
from pvkit.platform.virt_arm64 import (
    RAM_BASE,
    UART_BASE,
    UART_SIZE,
    VirtArm64,
    VirtConfig,
    virt_device_tree,
)
from pvkit.services.profiles import NONE

GUESTS = Path(__file__).resolve().parents[3] / "guests" / "prebuilt"
BENCH_IMAGE = GUESTS / "bench.Image"
SMP_HELLO = GUESTS / "smp-hello.Image"
QEMU = "qemu-system-aarch64"
QEMU_CPU = "cortex-a57"  # the hypercall and speed probes' CPU, as they were first measured
# The exception probes run under the CPU and GIC pvkit's virt board gives the guest.
QEMU_EXCEPTION_CPU = "max"
QEMU_EXCEPTION_GIC = 3
_TCG_BUFFER = 32 << 20  # the same translation cache pvkit's engines get


class BenchError(RuntimeError):
    """A probe did not produce its markers; the message says what the guest printed."""


@dataclass
class MarkerClock:
    """A console that timestamps the begin/end marker lines as their newline arrives."""

    begin: float | None = None
    end: float | None = None
    text: bytearray = field(default_factory=bytearray)
    _line: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        now = time.perf_counter()
        for byte in data:
            if byte != 0x0A:
                self._line.append(byte)
                continue
            line = bytes(self._line)
            self._line.clear()
            self.text += line + b"\n"
            if line.startswith(b"bench: begin"):
                self.begin = now
            elif line.startswith(b"bench: end"):
                self.end = now

    def irq_latency_us(self, what: str) -> float:
        """Mean µs from deadline to IRQ vector, from "bench: irq n N ticks T hz F"."""
        for line in self.text.decode(errors="replace").splitlines():
            words = line.split()
            if words[:3] == ["bench:", "irq", "n"] and len(words) == 8:
                n, ticks, hz = int(words[3]), int(words[5]), int(words[7])
                if n > 0 and hz > 0:
                    return ticks / n / hz * 1e6
        shown = self.text.decode(errors="replace").strip() or "(nothing)"
        raise BenchError(f"{what}: the bench guest reported no interrupt latency: {shown}")

    def seconds(self, what: str) -> float:
        if self.begin is None or self.end is None:
            shown = self.text.decode(errors="replace").strip() or "(nothing)"
            raise BenchError(f"{what}: the bench guest printed no begin/end markers: {shown}")
        if self.end <= self.begin:
            # Both markers arrived in one read: the loop was shorter than the reader's wakeup.
            raise BenchError(f"{what}: the loop ended before it could be timed; make it longer")
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class PvkitCounts:
    table_hits: int
    python_calls: int


def pvkit_loop(
    bootargs: str,
    *,
    trap: str = "auto",
    floor: bool = False,
    timeout: float = 120,
    swap: SwapSpec | None = None,
) -> tuple[float, PvkitCounts]:
    """Seconds the bench loop took inside a pvkit VM (every pvkit hook installed); with
    `swap`, RAM pages absent on the host as well."""
    clock, counts = _pvkit_run(bootargs, trap, floor, timeout, swap)
    return clock.seconds(f"pvkit {bootargs!r}"), counts


def pvkit_irq(n: int, timeout: float = 120) -> float:
    """Mean µs from timer deadline to IRQ vector over `n` interrupts inside a pvkit VM."""
    clock, _ = _pvkit_run(f"irq {n}", "auto", False, timeout, None)
    return clock.irq_latency_us(f"pvkit 'irq {n}'")


def _pvkit_run(
    bootargs: str, trap: str, floor: bool, timeout: float, swap: SwapSpec | None
) -> tuple[MarkerClock, PvkitCounts]:
    clock = MarkerClock()
    config = VirtConfig(
        console=clock.feed,
        bootargs=bootargs,
        trap=trap,
        extra_services=[BenchService()],
        swap=swap,
    )
    machine = VirtArm64(config, BENCH_IMAGE)
    engines: list[Arm64Engine] = []

    def attach(engine: Arm64Engine) -> None:
        engine.trap.floor = floor
        engines.append(engine)

    machine.on_engine = attach
    machine.run(timeout)
    counts = PvkitCounts(
        sum(e.trap.table_hits for e in engines), sum(e.trap.python_calls for e in engines)
    )
    return clock, counts


def bare_loop(bootargs: str, timeout: float = 120) -> float:
    """Seconds the same loop took on a bare Unicorn engine: RAM, a UART, nothing else."""
    use_one_malloc_arena()  # the watchdog thread below must not get an arena of its own
    clock = MarkerClock()
    memory = GuestMemory(RAM_BASE, 256 << 20)
    image = load_image(BENCH_IMAGE, memory.region)
    dtb = virt_device_tree(VirtConfig(profile=NONE, bootargs=bootargs), ram=memory.region)
    for seg in image.segments:
        memory.write(seg.address, seg.data)
    dtb_address = (image.end + 0xFFFF) & ~0xFFFF
    memory.write(dtb_address, dtb)
    uart = Pl011(UART_BASE, clock.feed, UART_SIZE)

    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_tcg_buffer_size(_TCG_BUFFER)  # type: ignore[attr-defined]
    uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
    uc.mmio_map(
        UART_BASE,
        UART_SIZE,
        lambda _uc, off, size, _u: uart.read(off, size),
        None,
        lambda _uc, off, size, value, _u: uart.write(off, size, value),
        None,
    )
    uc.hook_add(UC_HOOK_INTR, lambda u, _intno, _user: u.emu_stop())  # any exception ends it
    uc.reg_write(r.UC_ARM64_REG_X0, dtb_address)
    watchdog = threading.Timer(timeout, uc.emu_stop)
    watchdog.start()
    try:
        uc.emu_start(image.entry, 0)  # returns at the guest's final WFI
    finally:
        watchdog.cancel()
    return clock.seconds(f"bare engine {bootargs!r}")


def pvkit_cli_loop(bootargs: str, timeout: float = 120) -> float:
    """Seconds the bench loop took under `pvkit run`, its console read from a pipe as a
    user's terminal or script reads it (the console path end to end: UART, buffering,
    stdout)."""
    cmd = [sys.executable, "-m", "pvkit", "run", str(BENCH_IMAGE), "--append", bootargs]
    return _piped(cmd, timeout).seconds(f"pvkit run {bootargs!r}")


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def qemu_command(
    image: Path,
    smp: int = 1,
    bootargs: str | None = None,
    *,
    cpu: str = QEMU_CPU,
    gic: int | None = None,
) -> list[str]:
    """`gic` None: the board's default GIC (version 2)."""
    board = "virt" if gic is None else f"virt,gic-version={gic}"
    cmd = [QEMU, "-M", board, "-cpu", cpu, "-accel", "tcg", "-smp", str(smp)]
    cmd += ["-m", "256M", "-nographic", "-monitor", "none", "-serial", "stdio"]
    cmd += ["-nic", "none", "-kernel", str(image)]  # no NIC: its option ROM may be absent
    return cmd + (["-append", bootargs] if bootargs is not None else [])


def qemu_loop(bootargs: str, timeout: float = 120, *, exceptions: bool = False) -> float:
    """Seconds the same loop took under QEMU's own TCG and PSCI (`exceptions`: under the
    CPU and GIC of the exception probes)."""
    return _qemu_run(bootargs, timeout, exceptions).seconds(f"QEMU {bootargs!r}")


def qemu_irq(n: int, timeout: float = 120) -> float:
    """Mean µs from timer deadline to IRQ vector over `n` interrupts under QEMU."""
    return _qemu_run(f"irq {n}", timeout, True).irq_latency_us(f"QEMU 'irq {n}'")


def _qemu_run(bootargs: str, timeout: float, exceptions: bool) -> MarkerClock:
    cmd = (
        qemu_command(BENCH_IMAGE, bootargs=bootargs, cpu=QEMU_EXCEPTION_CPU, gic=QEMU_EXCEPTION_GIC)
        if exceptions
        else qemu_command(BENCH_IMAGE, bootargs=bootargs)
    )
    return _piped(cmd, timeout)


def _piped(cmd: list[str], timeout: float) -> MarkerClock:
    """Run `cmd`, timestamping its stdout's marker lines as they come out of the pipe."""
    clock = MarkerClock()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            clock.feed(chunk)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return clock


def wall_time(cmd: list[str], timeout: float) -> float | None:
    """Wall seconds of a command that must exit 0 within `timeout`, else None."""
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.perf_counter() - start
    return elapsed if done.returncode == 0 else None
