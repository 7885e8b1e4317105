"""Service revisions survive a snapshot (seed 003): the guest keeps the revision it uses.

Stolen time has two arm64 record revisions: 0 is DEN0057's record as Linux reads it, 1 is
pvkit's own extension (`updated_ns` at +16). A guest saved on revision 0 and restored on a
host configured for revision 1 is served revision 0; a host that cannot serve what the
guest uses refuses before anything runs, with one sentence naming the reason.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvkit.platform.virt_arm64 import RAM_BASE, VirtArm64, VirtConfig
from pvkit.services.stolen_time import RECORD_SIZE, StolenTimeService
from pvkit.snapshot.config import HostChoices
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Section, read_snapshot, write_snapshot
from pvkit.snapshot.resume import compatibility, restore
from pvkit.snapshot.sections import KNOWN
from tests.conftest import PREBUILT, pvkit

Asm = Callable[..., Path]
STEAL = str(PREBUILT / "steal.Image")
RUN = [STEAL, "--smp", "2", "--host-cpus", "1", "--deterministic", "--stats",
       "--append", "work_ms=60"]  # fmt: skip
RESULT = RAM_BASE + 0x20_0000


def record_words(board: VirtArm64, vcpu: int) -> tuple[int, int, int, int, bytes]:
    """(revision, attributes, stolen_ns, the u64 at +16, the rest) of a vCPU's record."""
    st = next(s for s in board.services if isinstance(s, StolenTimeService))
    raw = board.memory.read(st.record_address(vcpu), RECORD_SIZE)
    revision, attributes, stolen, at16 = struct.unpack_from("<IIQQ", raw)
    return revision, attributes, stolen, at16, raw[24:]


def steal_board(revision: int | None = None) -> tuple[VirtArm64, list[bytes]]:
    out: list[bytes] = []
    config = VirtConfig(smp=2, host_cpus=1, deterministic=True, bootargs="work_ms=60",
                        console=out.append)  # fmt: skip
    board = VirtArm64(config, Path(STEAL))
    if revision is not None:
        board.firmware.set("pv-time-revision", revision)
    return board, out


# -- the two revisions ----------------------------------------------------------------------
def test_revision_0_is_den0057s_record_byte_for_byte() -> None:
    board, _ = steal_board()
    board.run(60)
    for vcpu in (0, 1):
        revision, attributes, stolen, at16, rest = record_words(board, vcpu)
        assert (revision, attributes) == (0, 0) and stolen > 0
        assert at16 == 0 and rest == bytes(40)  # nothing beyond Linux's 16 bytes


def test_revision_1_adds_when_the_host_last_wrote_the_record() -> None:
    board, _ = steal_board(revision=1)
    board.run(60)
    for vcpu in (0, 1):
        revision, attributes, stolen, updated_ns, rest = record_words(board, vcpu)
        assert (revision, attributes) == (1, 0) and stolen > 0
        assert 0 < updated_ns <= board.scheduler.now_ns(vcpu)
        assert rest == bytes(40)


def test_a_revision_0_reader_sees_the_same_stolen_time_in_revision_1() -> None:
    (old, old_out), (new, new_out) = steal_board(0), steal_board(1)
    old.run(60)
    new.run(60)
    assert b"".join(new_out) == b"".join(old_out)  # the steal guest reads only +8
    assert [record_words(new, v)[2] for v in (0, 1)] == [record_words(old, v)[2] for v in (0, 1)]


def test_the_guest_reads_the_revision_the_register_chose(asm: Asm) -> None:
    image = asm(
        f"ldr x0, =0xC5000021\nhvc #0\nldr w1, [x0]\nldr x9, ={RESULT:#x}\nstr x1, [x9]\n"
        "ldr x0, =0x84000008\nhvc #0\nb .",
        "pvtime-st",
    )
    for revision in (0, 1):
        board = VirtArm64(VirtConfig(console=lambda b: None), image)
        board.firmware.set("pv-time-revision", revision)
        board.run(30)
        assert board.memory.read_u64(RESULT) == revision


# -- saved, moved, restored -----------------------------------------------------------------
@dataclass
class Saved:
    whole: object
    saved: object
    path: Path


def save(tmp: Path, name: str, *extra: str) -> Saved:
    path = tmp / f"{name}.snap"
    whole = pvkit("run", *RUN, *extra)
    saved = pvkit("run", *RUN, *extra, "--save-at", "50", "--save", str(path))
    assert saved.returncode == 0, saved.stderr  # type: ignore[attr-defined]
    return Saved(whole, saved, path)


@pytest.fixture(scope="module")
def rev0(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return save(tmp_path_factory.mktemp("rev0"), "rev0")


@pytest.fixture(scope="module")
def rev1(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return save(tmp_path_factory.mktemp("rev1"), "rev1", "--pv-time-revision", "1")


def test_a_revision_0_guest_on_a_revision_1_host_keeps_revision_0(rev0: Saved) -> None:
    out = pvkit("restore", str(rev0.path), "--stats", "--pv-time-revision", "1")
    assert out.returncode == 0, out.stderr
    assert (
        "pvkit: stolen-time: the guest keeps record revision 0, as saved; --pv-time-revision 1 "
        "is what this host gives a VM booted here" in out.stderr
    )
    whole = rev0.whole
    assert rev0.saved.stdout + out.stdout == whole.stdout  # type: ignore[attr-defined]
    assert out.stderr.splitlines()[-4:] == whole.stderr.splitlines()[-4:]  # type: ignore[attr-defined]


def test_the_restored_guest_is_written_revision_0_records(rev0: Saved) -> None:
    board, _ = restore(read_snapshot(rev0.path, KNOWN), HostChoices(console=lambda b: None))
    assert board.firmware.get("pv-time-revision") == 0
    board.run(60)
    for vcpu in (0, 1):
        revision, _, stolen, at16, rest = record_words(board, vcpu)  # type: ignore[arg-type]
        assert (revision, at16, rest) == (0, 0, bytes(40)) and stolen > 0


def test_a_revision_1_guest_stays_on_revision_1(rev1: Saved) -> None:
    board, _ = restore(read_snapshot(rev1.path, KNOWN), HostChoices(console=lambda b: None))
    board.run(60)
    assert record_words(board, 1)[0] == 1  # type: ignore[arg-type]
    info = pvkit("snapshot", "info", str(rev1.path))
    assert "  stolen-time      1" in info.stdout.splitlines()
    assert "  pv-time-revision         0x1" in info.stdout.splitlines()


def test_a_host_serving_only_older_revisions_refuses_the_guest(
    rev1: Saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StolenTimeService, "REVISIONS", (0,))  # an older pvkit
    with pytest.raises(SnapshotError) as info:
        compatibility(read_snapshot(rev1.path, KNOWN), HostChoices())
    assert str(info.value) == (
        "cannot restore here: firmware register pv-time-revision = 1: stolen-time serves "
        "record revisions 0, not 1 (EINVAL)"
    )


def test_a_host_without_the_service_refuses_naming_its_revision(rev1: Saved) -> None:
    out = pvkit("restore", str(rev1.path), "--disable", "stolen-time")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.strip().splitlines() == [
        "pvkit: cannot restore here: service 'stolen-time' revision 1: the guest may use it, "
        "but this host leaves it out"
    ]


def test_a_service_the_guest_could_not_see_need_not_be_there(tmp_path: Path) -> None:
    hidden = save(tmp_path, "hidden", "--fw", "std-hyp-bmap=0")
    assert "PV time not offered" in hidden.saved.stdout  # type: ignore[attr-defined]
    info = pvkit("snapshot", "info", str(hidden.path)).stdout.splitlines()
    seen = info[info.index("services the guest can see (the PV revision it uses):") + 1 :]
    seen = seen[: seen.index("firmware registers (KVM's pseudo-registers and pvkit's own):")]
    assert "psci" in " ".join(seen) and "stolen-time" not in " ".join(seen)
    moved = pvkit("restore", str(hidden.path), "--disable", "stolen-time")
    assert moved.returncode == 0, moved.stderr
    here = pvkit("restore", str(hidden.path))  # stolen time is here, and stays hidden
    assert here.returncode == 0 and here.stdout == moved.stdout


def rewrite(
    src: Path, dst: Path, change: Callable[[dict[str, dict[str, object]], object], None]
) -> Path:
    """A copy of a snapshot with JSON sections changed (a file from another pvkit)."""
    snap = read_snapshot(src, KNOWN)
    states = {n: snap.sections[n].json(n) for n in ("machine", "firmware")}
    change(states, snap)
    for name, state in states.items():
        old = snap.sections[name]
        snap.sections[name] = Section(old.version, json.dumps(state).encode())
    write_snapshot(dst, snap)
    return dst


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda s, _: s["firmware"]["registers"].update({"vendor-hyp-bmap": 0x7}),  # type: ignore[union-attr]
            "firmware register vendor-hyp-bmap = 0x7: bit 2 is not a bit KVM defines in "
            "KVM_REG_ARM_VENDOR_HYP_BMAP (EINVAL)",
        ),
        (
            lambda s, _: s["firmware"]["registers"].update({"pv-lock-revision": 1}),  # type: ignore[union-attr]
            "firmware register 'pv-lock-revision': this VM has none",
        ),
        (
            lambda s, snap: (s["machine"].update(arch="riscv64"), setattr(snap, "arch", "riscv64")),
            "machine: the guest is a 'riscv64' VM; this pvkit builds arm64 and x86_64 VMs",
        ),
        (
            lambda s, _: s["machine"]["services"].update({"trng": "2.0"}),  # type: ignore[union-attr]
            "service 'trng': the guest uses revision 2.0, this host serves revision 1.0",
        ),
    ],
)
def test_what_this_host_cannot_serve_is_refused_before_anything_runs(
    rev0: Saved, tmp_path: Path, change: Callable[..., None], reason: str
) -> None:
    bad = rewrite(rev0.path, tmp_path / "other.snap", change)
    out = pvkit("restore", str(bad))
    assert (out.returncode, out.stdout) == (2, "")
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvkit: cannot restore here: ")
    assert reason in lines[0]
    info = pvkit("snapshot", "info", str(bad))
    assert info.returncode == 1 and "restorable here: no: cannot restore here: " in info.stdout


def test_services_lists_the_revisions_each_can_serve() -> None:
    out = pvkit("services", "--arch", "arm64").stdout.splitlines()
    at = out.index("psci  (ABIs: smccc; revision 1.1 (PSCI_VERSION))")
    assert out[at + 1] == "  revisions served: 0.2, 1.0, 1.1 (a snapshot keeps the guest's)"
    assert "  revisions served: 0, 1 (a snapshot keeps the guest's)" in out
