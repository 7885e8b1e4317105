"""Differential test: the same Image under QEMU's own PSCI gives the same spec-fixed answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvkit.bench.probes import qemu_command

from .conftest import PSCI_WALK, SMP_HELLO, boot
from .test_guests import SPEC_ANSWERS

pytestmark = pytest.mark.usefixtures("trap")  # every test runs on both traps


def qemu(image: str, smp: int) -> list[str]:
    out = subprocess.run(
        qemu_command(Path(image), smp=smp),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return out.stdout.decode().replace("\r", "").splitlines()


def spec_lines(lines: list[str]) -> dict[str, int]:
    return {p[1]: int(p[3], 0) for ln in lines if len(p := ln.split()) == 4 and p[0] == "spec"}


def test_psci_answers_match_qemu() -> None:
    ours = boot(PSCI_WALK, smp=2)
    theirs = spec_lines(qemu(str(PSCI_WALK), 2))
    assert theirs == SPEC_ANSWERS  # QEMU agrees with the spec table...
    assert ours.results("spec") == theirs  # ...and so do we, line by line


def test_smp_hello_runs_unmodified_on_both() -> None:
    theirs = qemu(str(SMP_HELLO), 4)
    ours = boot(SMP_HELLO, smp=4).lines
    hellos = [ln for ln in theirs if ln.startswith("hello from cpu")]
    assert len(hellos) == 4
    assert hellos == [ln for ln in ours if ln.startswith("hello from cpu")]
