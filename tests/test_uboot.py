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

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .console_session import ConsoleSession, fetched

FETCH_SECONDS = 60.0  # a 1.8 MB package
RUN_SECONDS = 90.0  # pvkit's own --timeout: a stuck run ends by itself
BOOT_SECONDS = 45.0  # power-on (or reset) to the autoboot countdown: a few seconds
COMMAND_SECONDS = 20.0  # a command's answer and the prompt after it
EXIT_SECONDS = 20.0
BANNER = r"U-Boot 2023\.01\+dfsg-2\+deb12u3 \("
AUTOBOOT = "Hit any key to stop autoboot"
PROMPT = "\n=> "

pytestmark = [pytest.mark.linux, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def uboot() -> Path:
    return fetched("fetch-uboot.sh", FETCH_SECONDS)


class Console(ConsoleSession):
    """pvkit running U-Boot from flash, typed into at its prompt."""

    def __init__(self, bios: Path, *extra: str) -> None:
        super().__init__(["--bios", str(bios), "-m", "512M", "--timeout", str(RUN_SECONDS), *extra])

    def boot_to_prompt(self) -> str:
        """From power-on or a reset: the banner, the countdown stopped, the prompt. Returns
        what U-Boot printed from the banner on."""
        banner = self.expect(BANNER, BOOT_SECONDS)
        self.expect(AUTOBOOT, BOOT_SECONDS)
        self.send("")
        self.expect(PROMPT, COMMAND_SECONDS)
        return self.since(banner.start())

    def command(self, line: str, seconds: float = COMMAND_SECONDS) -> str:
        """Type `line` at the prompt; returns its echo and answer, up to the next prompt."""
        start = self.position
        self.send(line)
        self.expect(PROMPT, seconds)
        return self.since(start)[: -len(PROMPT)]

    def finish(self, line: str) -> tuple[int, str]:
        """Type `line`, which ends the run; returns pvkit's exit code and last line."""
        self.send(line)
        code = self.wait(EXIT_SECONDS)
        lines = [s for s in self.text.splitlines() if s.strip()]
        return code, lines[-1] if lines else ""


@pytest.fixture
def console(uboot: Path) -> Iterator[Console]:
    c = Console(uboot)
    yield c
    c.kill()


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
    console.send("reset")
    console.expect(r"resetting \.\.\.", COMMAND_SECONDS)
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
    console.send("reset")
    console.expect(r"resetting \.\.\.", COMMAND_SECONDS)
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
        console.kill()
