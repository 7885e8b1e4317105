"""Shared helpers: boot a guest image in-process and capture its console."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvkit.machine.vm import StopReason
from pvkit.platform.pc_x86 import PcConfig, PcX86
from pvkit.platform.virt_arm64 import VirtArm64, VirtConfig
from pvkit.trace.events import CallEvent, TraceHub, VmEvent

ROOT = Path(__file__).resolve().parent.parent
PREBUILT = ROOT / "guests" / "prebuilt"
SMP_HELLO = PREBUILT / "smp-hello.Image"
PSCI_WALK = PREBUILT / "psci-walk.Image"
X86_HELLO = PREBUILT / "x86-hello.elf"


def pvkit(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, as a user runs it (no input: the guest console reads EOF)."""
    return subprocess.run(
        [sys.executable, "-m", "pvkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


class Recorder:
    """A trace sink that keeps everything, for assertions."""

    def __init__(self) -> None:
        self.calls: list[CallEvent] = []
        self.events: list[VmEvent] = []

    def on_call(self, event: CallEvent) -> None:
        self.calls.append(event)

    def on_event(self, event: VmEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


@dataclass
class Boot:
    reason: StopReason
    console: str
    machine: VirtArm64
    trace: Recorder

    @property
    def lines(self) -> list[str]:
        return [ln.rstrip("\r") for ln in self.console.splitlines()]

    def results(self, section: str) -> dict[str, int]:
        """`<section> <label> = <value>` lines of the psci-walk guest."""
        out = {}
        for ln in self.lines:
            parts = ln.split()
            if len(parts) == 4 and parts[0] == section and parts[2] == "=":
                out[parts[1]] = int(parts[3], 0)
        return out


def boot(image: Path, timeout: float = 60, traced: bool = True, **kwargs: object) -> Boot:
    """Run `image`; `traced=False` leaves the answer table on (a trace turns it off)."""
    chunks: list[bytes] = []
    hub = TraceHub()
    rec = Recorder()
    if traced:
        hub.attach(rec)
    config = VirtConfig(console=chunks.append, **kwargs)  # type: ignore[arg-type]
    machine = VirtArm64(config, image, hub)
    reason = machine.run(timeout)
    return Boot(reason, b"".join(chunks).decode(errors="replace"), machine, rec)


@dataclass
class X86Boot:
    reason: StopReason
    console: str
    machine: PcX86
    trace: Recorder

    @property
    def lines(self) -> list[str]:
        return [ln.rstrip("\r") for ln in self.console.splitlines()]

    def line(self, prefix: str) -> str:
        """The one console line that starts with `prefix` (after "x86-hello: ")."""
        found = [ln for ln in self.lines if ln.startswith(f"x86-hello: {prefix}")]
        assert len(found) == 1, (prefix, self.console)
        return found[0]


def boot_x86(
    image: Path = X86_HELLO,
    timeout: float = 60,
    setup: object = None,
    traced: bool = True,
    **kwargs: object,
) -> X86Boot:
    """Run an x86-64 guest on the pc board, traced (or not: a trace takes every call off
    the trap's table and direct routes); `setup(machine)` runs before it starts."""
    chunks: list[bytes] = []
    hub = TraceHub()
    rec = Recorder()
    if traced:
        hub.attach(rec)
    machine = PcX86(PcConfig(console=chunks.append, **kwargs), image, hub)  # type: ignore[arg-type]
    if callable(setup):
        setup(machine)
    reason = machine.run(timeout)
    return X86Boot(reason, b"".join(chunks).decode(errors="replace"), machine, rec)


def assemble(tmp_path: Path, source: str, name: str = "guest") -> Path:
    """Build a tiny bare-metal ELF from assembly with the cross toolchain."""
    src = tmp_path / f"{name}.S"
    src.write_text(".text\n.globl _start\n_start:\n" + source + "\n")
    elf = tmp_path / f"{name}.elf"
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc",
            "-nostdlib",
            "-static",
            "-Wl,-Ttext=0x40080000",
            "-Wl,--build-id=none",
            "-o",
            str(elf),
            str(src),
        ],
        check=True,
    )
    return elf


_SPAWNED: list[subprocess.Popen[str]] = []


def spawn(command: list[str]) -> subprocess.Popen[str]:
    """A pvkit process a test talks to while it runs (stdout and stderr piped, text). It is
    killed after the test if it is still running: a failed assertion must not leave a VM
    running on after the test, holding a core."""
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


TRAP_PATHS = ("c", "ctypes")


@pytest.fixture(params=TRAP_PATHS)
def trap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per hypercall trap; `pytestmark = usefixtures("trap")` opts a module in."""
    path: str = request.param
    monkeypatch.setenv("PVKIT_TRAP", path)
    return path


@pytest.fixture
def asm(tmp_path: Path):  # type: ignore[no-untyped-def]
    return lambda source, name="guest": assemble(tmp_path, source, name)
