"""Debian 12's U-Boot for QEMU's arm64 virt board (u-boot-qemu, qemu_arm64) runs on pvkit.

scripts/fetch-uboot.sh downloads the pinned package once into pvkit's cache (outside git);
`pvkit run --bios u-boot.bin` then puts it in flash bank 0 and starts it at 0x0, in a
subprocess, as a user would run it, with the PL011 console on the subprocess's stdin and
stdout. The tests type at U-Boot's `=>` prompt as a user would: never before U-Boot asks
(the autoboot countdown is stopped with a newline once it is shown, which saves its 2 s
and the failed distro boot after it), and each command only once the prompt is back.

Bank 1 (at 0x04000000) starts erased, so the first boot warns about the environment's
CRC; U-Boot sees each bank as one x16 device of 256 x 128 KiB sectors, 32 MB (the same
as on QEMU's virt, whose flash answers CFI queries the same way). What `saveenv` writes
there stays across a reset within the run.
"""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from .conftest import ROOT

FETCH = ROOT / "scripts" / "fetch-uboot.sh"
FETCH_SECONDS = 60.0  # a 1.8 MB package
RUN_SECONDS = 90.0  # pvkit's own --timeout: a stuck run ends by itself
BOOT_SECONDS = 45.0  # power-on (or reset) to the autoboot countdown: a few seconds
COMMAND_SECONDS = 20.0  # a command's answer and the prompt after it
EXIT_SECONDS = 20.0
BANNER = r"U-Boot 2023\.01\+dfsg-2\+deb12u3 \("
AUTOBOOT = "Hit any key to stop autoboot"
PROMPT = "\n=> "

pytestmark = [pytest.mark.linux, pytest.mark.slow, pytest.mark.timeout(180)]


def fetch_uboot() -> Path:
    try:
        done = subprocess.run(
            ["bash", str(FETCH)],
            capture_output=True,
            text=True,
            timeout=FETCH_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/fetch-uboot.sh did not finish in {FETCH_SECONDS:.0f} s")
    if done.returncode != 0:
        pytest.fail(done.stderr.strip() or f"scripts/fetch-uboot.sh exited {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def uboot() -> Path:
    return fetch_uboot()


class Console:
    """pvkit running U-Boot, its stdout and stderr in one stream, read by a thread, with
    expect-style waits: each `expect` searches the output after the previous match."""

    def __init__(self, bios: Path, *extra: str) -> None:
        cmd = [
            sys.executable, "-m", "pvkit", "run", "--bios", str(bios), "-m", "512M",
            "--timeout", str(RUN_SECONDS), *extra,
        ]  # fmt: skip
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.text = ""
        self.pos = 0  # where the next expect starts looking
        self.ended = False  # the output is closed: pvkit has exited
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            with self._changed:
                self.text += decoder.decode(chunk).replace("\r", "")
                self._changed.notify_all()
        with self._changed:
            self.text += decoder.decode(b"", final=True)
            self.ended = True
            self._changed.notify_all()

    def tail(self, lines: int = 25) -> str:
        with self._changed:
            return "\n".join(self.text.splitlines()[-lines:])

    def fail(self, what: str) -> NoReturn:
        seconds = time.monotonic() - self.start
        pytest.fail(
            f"{what} ({seconds:.1f} s into the run); the console ended with:\n{self.tail()}"
        )

    def expect(self, pattern: str, seconds: float = COMMAND_SECONDS) -> re.Match[str]:
        """Wait for `pattern` (a regular expression) in the output after the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                found = regex.search(self.text, self.pos)
                if found:
                    self.pos = found.end()
                    return found
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    break
                self._changed.wait(left)
        why = f"pvkit exited ({self.proc.poll()})" if self.ended else f"not in {seconds:.0f} s"
        self.fail(f"waited for {pattern!r}: {why}")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def boot_to_prompt(self) -> str:
        """From power-on or a reset: the banner, the countdown stopped, the prompt. Returns
        what U-Boot printed from the banner on."""
        banner = self.expect(BANNER, BOOT_SECONDS)
        self.expect(AUTOBOOT, BOOT_SECONDS)
        self.send("\n")
        self.expect(PROMPT)
        return self.text[banner.start() : self.pos]

    def command(self, line: str, seconds: float = COMMAND_SECONDS) -> str:
        """Type `line` at the prompt; returns its echo and answer, up to the next prompt."""
        start = self.pos
        self.send(line + "\n")
        self.expect(PROMPT, seconds)
        return self.text[start : self.pos - len(PROMPT)]

    def finish(self, line: str) -> tuple[int, str]:
        """Type `line`, which ends the run; returns pvkit's exit code and last line."""
        self.send(line + "\n")
        try:
            code = self.proc.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.fail(f"pvkit still runs {EXIT_SECONDS:.0f} s after {line!r}")
        self._reader.join(5)
        lines = [s for s in self.text.splitlines() if s.strip()]
        return code, lines[-1] if lines else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._reader.join(5)


@pytest.fixture
def console(uboot: Path) -> Iterator[Console]:
    c = Console(uboot)
    yield c
    c.close()


def test_uboot_reaches_its_prompt_answers_version_and_powers_off(console: Console) -> None:
    boot = console.boot_to_prompt()
    # The environment lives in bank 1, which starts erased.
    assert "DRAM:  512 MiB" in boot
    assert "Loading Environment from Flash... *** Warning - bad CRC" in boot
    assert re.search(r"^In: +pl011@9000000$", boot, re.MULTILINE), boot

    answer = console.command("version")
    assert re.search(rf"^{BANNER}", answer, re.MULTILINE), answer

    code, last = console.finish("poweroff")
    assert code == 0, console.tail()
    assert "PSCI SYSTEM_OFF" in last and "reset" not in last, console.tail()


def test_reset_restarts_uboot_in_the_same_run(console: Console) -> None:
    console.boot_to_prompt()
    console.send("reset\n")
    console.expect(r"resetting \.\.\.")
    console.boot_to_prompt()  # a second banner, countdown and prompt
    code, last = console.finish("poweroff")
    assert code == 0, console.tail()
    assert "after 1 reset(s)" in last and "PSCI SYSTEM_OFF" in last, console.tail()
    assert len(re.findall(BANNER, console.text)) == 2, console.tail()


def test_flash_banks_and_what_saveenv_wrote_survive_a_reset(console: Console) -> None:
    console.boot_to_prompt()
    answer = console.command("flinfo")
    banks = re.findall(
        r"^Bank # (\d): CFI conformant flash \((\d+) x (\d+)\) +Size: (\d+) MB in (\d+) Sectors$"
        r"\n +Intel Extended command set, Manufacturer ID: 0x89, Device ID: 0x0018$"
        r"(?:\n.*)*?\n +Sector Start Addresses:\n +([0-9A-F]{8}) ",
        answer,
        re.MULTILINE,
    )
    # As on QEMU's virt: U-Boot's probe takes each bank for one x16 device, of 32 MB.
    assert banks == [
        ("1", "16", "16", "32", "256", "00000000"),
        ("2", "16", "16", "32", "256", "04000000"),
    ], answer

    console.command("setenv pvkit_test 42")
    saved = console.command("saveenv")
    assert re.search(r"Saving Environment to Flash\.\.\.(?:.*\n)*OK$", saved), saved
    console.send("reset\n")
    console.expect(r"resetting \.\.\.")
    again = console.boot_to_prompt()
    assert "Loading Environment from Flash... OK" in again, again
    answer = console.command("printenv pvkit_test")
    assert answer.splitlines()[1:] == ["pvkit_test=42"], answer

    code, last = console.finish("poweroff")
    assert code == 0, console.tail()
    assert "after 1 reset(s)" in last, console.tail()


def test_reset_with_no_reboot_ends_the_run(uboot: Path) -> None:
    console = Console(uboot, "--no-reboot")
    try:
        console.boot_to_prompt()
        code, last = console.finish("reset")
        assert code == 0, console.tail()
        assert "PSCI SYSTEM_RESET" in last, console.tail()
        assert len(re.findall(BANNER, console.text)) == 1, console.tail()
    finally:
        console.close()
