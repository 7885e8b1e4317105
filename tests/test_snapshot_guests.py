"""Save a deterministic guest mid-run, restore it, and get the uninterrupted run back.

The guest-visible proof is the console, byte for byte (the steal guests print what their
PV-time records and MSR_KVM_STEAL_TIME said); the host-side proof is the per-vCPU
run/steal/idle ground truth `--stats` prints, which counts instructions under
--deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PREBUILT, pvkit

STEAL = str(PREBUILT / "steal.Image")
STEAL_X86 = str(PREBUILT / "steal-x86.elf")
SMP_HELLO = str(PREBUILT / "smp-hello.Image")
VCPU_LINE = re.compile(r"vcpu (\d+) run_ns=(\d+) steal_ns=(\d+) idle_ns=(\d+)")


@dataclass
class Split:
    whole: object  # the uninterrupted run
    saved: object
    restored: object
    snapshot: Path


def times(stderr: str) -> list[tuple[int, ...]]:
    return [tuple(int(g) for g in m.groups()) for m in VCPU_LINE.finditer(stderr)]


def split_run(tmp: Path, image: str, at_ms: str, *args: str) -> Split:
    run = [image, *args, "--deterministic", "--stats"]
    snap = tmp / "vm.snap"
    whole = pvkit("run", *run)
    saved = pvkit("run", *run, "--save-at", at_ms, "--save", str(snap))
    restored = pvkit("restore", str(snap), "--stats")
    return Split(whole, saved, restored, snap)


@pytest.fixture(scope="module")
def arm64_steal(tmp_path_factory: pytest.TempPathFactory) -> Split:
    return split_run(tmp_path_factory.mktemp("arm"), STEAL, "300", "--smp", "4",
                     "--host-cpus", "1")  # fmt: skip


@pytest.fixture(scope="module")
def x86_steal(tmp_path_factory: pytest.TempPathFactory) -> Split:
    return split_run(tmp_path_factory.mktemp("x86"), STEAL_X86, "150", "--smp", "2",
                     "--host-cpus", "1")  # fmt: skip


def test_arm64_saved_and_restored_equals_the_uninterrupted_run(arm64_steal: Split) -> None:
    s = arm64_steal
    assert s.saved.returncode == 0, s.saved.stderr
    assert "pvkit: saved: saved the VM at" in s.saved.stderr
    assert s.restored.returncode == s.whole.returncode == 0, s.restored.stderr
    assert s.saved.stdout + s.restored.stdout == s.whole.stdout
    assert "steal: cpu 3 stolen" in s.restored.stdout  # the stolen-time guest went on
    assert times(s.restored.stderr) == times(s.whole.stderr)
    assert len(times(s.whole.stderr)) == 4


def test_guest_ram_is_stored_sparsely(arm64_steal: Split) -> None:
    assert arm64_steal.snapshot.stat().st_size < (256 << 20) // 1000  # 256 MiB of RAM


def test_x86_saved_and_restored_equals_the_uninterrupted_run(x86_steal: Split) -> None:
    s = x86_steal
    assert s.saved.returncode == 0, s.saved.stderr
    assert s.restored.returncode == s.whole.returncode, s.restored.stderr
    assert s.saved.stdout + s.restored.stdout == s.whole.stdout
    assert "steal: cpu 1 stolen" in s.restored.stdout
    assert times(s.restored.stderr) == times(s.whole.stderr)
    assert len(times(s.whole.stderr)) == 2


def test_smp_guest_on_shared_host_cpus_restores_exactly(tmp_path: Path) -> None:
    s = split_run(tmp_path, SMP_HELLO, "15", "--smp", "4", "--host-cpus", "2")
    assert (s.saved.returncode, s.restored.returncode) == (0, 0), s.restored.stderr
    assert s.saved.stdout + s.restored.stdout == s.whole.stdout
    assert times(s.restored.stderr) == times(s.whole.stderr)


def test_a_guest_booted_with_its_own_dtb_restores_with_it_and_refuses_a_changed_one(
    tmp_path: Path,
) -> None:
    """--dtb: the file is named by path and SHA-256, as the image is (a reset lays it out
    again), and the restored run goes on as the uninterrupted one."""
    dtb = tmp_path / "own.dtb"
    assert pvkit("dtb", "--smp", "4", "-o", str(dtb)).returncode == 0
    s = split_run(tmp_path, SMP_HELLO, "15", "--smp", "4", "--host-cpus", "2", "--dtb", str(dtb))
    assert (s.saved.returncode, s.restored.returncode) == (0, 0), s.restored.stderr
    assert s.saved.stdout + s.restored.stdout == s.whole.stdout
    dtb.write_bytes(dtb.read_bytes() + b"\0")
    changed = pvkit("restore", str(s.snapshot))
    assert changed.returncode == 2 and changed.stdout == ""
    assert changed.stderr.strip() == f"pvkit: boot file {dtb} changed since the snapshot was taken"


def test_restore_on_more_host_cpus_runs_on_with_less_stolen(arm64_steal: Split) -> None:
    more = pvkit("restore", str(arm64_steal.snapshot), "--host-cpus", "4", "--stats")
    assert more.returncode == 0, more.stderr
    assert "steal: cpu 0 stolen" in more.stdout
    steal = [t[2] for t in times(more.stderr)]
    before = [t[2] for t in times(arm64_steal.whole.stderr)]
    assert len(steal) == 4 and all(a < b for a, b in zip(steal, before, strict=True))


def test_snapshot_info_explains_the_file(arm64_steal: Split) -> None:
    info = pvkit("snapshot", "info", str(arm64_steal.snapshot))
    assert info.returncode == 0, info.stderr
    out = info.stdout
    assert "pvkit snapshot format 1.0, arm64" in out
    assert re.search(r"cpu:3\s+version 2", out) and re.search(r"gic\s+version 1", out)
    assert re.search(r"^  stolen-time\s+0$", out, re.M)  # the record revision the guest uses
    assert re.search(r"^  psci\s+1\.1$", out, re.M)
    assert re.search(r"^  pv-time-revision\s+0x0$", out, re.M)
    assert re.search(r"^  vendor-hyp-bmap\s+0x3$", out, re.M)
    assert "restorable here: yes" in out


def test_restore_refuses_a_host_without_a_service_the_guest_has(arm64_steal: Split) -> None:
    out = pvkit("restore", str(arm64_steal.snapshot), "--disable", "stolen-time")
    assert out.returncode == 2
    assert out.stdout == ""  # nothing ran
    assert out.stderr.strip().splitlines() == [
        "pvkit: cannot restore here: service 'stolen-time' revision 0: the guest may use it, "
        "but this host leaves it out"
    ]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "is truncated"),
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "SHA-256 checksum does not match"),
        (lambda b: b"NOTASNAP" + b[8:], "is not a pvkit snapshot (wrong magic)"),
        (lambda b: b[:8] + b"\x07\x00" + b[10:], "has snapshot format 7.0"),
    ],
)
def test_a_damaged_snapshot_is_one_sentence_and_nothing_runs(
    arm64_steal: Split, tmp_path: Path, damage: object, message: str
) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(damage(arm64_steal.snapshot.read_bytes()))  # type: ignore[operator]
    for verb in (["restore"], ["snapshot", "info"]):
        out = pvkit(*verb, str(bad))
        assert out.returncode == 2
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pvkit: ") and message in lines[0]


def test_save_needs_a_directory_and_both_options(tmp_path: Path) -> None:
    nowhere = pvkit("run", SMP_HELLO, "--deterministic", "--save-at", "5", "--save",
                    str(tmp_path / "no" / "a.snap"))  # fmt: skip
    assert nowhere.returncode == 2 and "no directory" in nowhere.stderr
    half = pvkit("run", SMP_HELLO, "--deterministic", "--save-at", "5")
    assert half.returncode == 2 and "--save-at and --save go together" in half.stderr


def test_an_x86_vcpu_still_in_its_boot_code_is_not_saved(tmp_path: Path) -> None:
    target = tmp_path / "early.snap"
    out = pvkit("run", STEAL_X86, "--smp", "2", "--deterministic", "--save-at", "0",
                "--save", str(target))  # fmt: skip
    assert out.returncode == 2
    assert "is not in 64-bit mode yet" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no file, not even a temporary one
