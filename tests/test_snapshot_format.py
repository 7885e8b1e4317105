"""The snapshot container and its sparse RAM: what a damaged or foreign file gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pvkit.hypercall.namespace import Abi
from pvkit.machine.memory import GuestMemory
from pvkit.services.base import Service
from pvkit.services.catalog import builtin_services
from pvkit.snapshot import ram
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import (
    FORMAT_MAJOR,
    Snapshot,
    decode,
    encode,
    json_section,
    read_snapshot,
    write_snapshot,
)
from pvkit.snapshot.sections import KNOWN
from pvkit.snapshot.state import Fields

KINDS = {"vm": 1, "ram": 1}


def sample() -> Snapshot:
    snap = Snapshot("arm64")
    snap.sections["vm"] = json_section(1, {"power": ["on", "off"], "resets": 0})
    return snap


def test_a_snapshot_reads_back_section_by_section() -> None:
    back = decode(encode(sample()), KINDS)
    assert back.arch == "arm64"
    assert back.section("vm").json("vm") == {"power": ["on", "off"], "resets": 0}


def test_a_flipped_bit_anywhere_fails_the_checksum() -> None:
    data = bytearray(encode(sample()))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(SnapshotError, match="damaged: its SHA-256 checksum does not match"):
        decode(bytes(data), KINDS)


def test_a_truncated_file_says_how_much_is_missing() -> None:
    data = encode(sample())
    with pytest.raises(SnapshotError, match=rf"truncated: {len(data) - 7} of its {len(data)}"):
        decode(data[:-7], KINDS)


def test_another_file_is_refused_by_its_magic() -> None:
    with pytest.raises(SnapshotError, match="not a pvkit snapshot"):
        decode(b"\x7fELF" + bytes(60), KINDS)


def test_a_newer_format_is_refused() -> None:
    data = bytearray(encode(sample()))
    data[8:10] = (FORMAT_MAJOR + 1).to_bytes(2, "little")
    with pytest.raises(SnapshotError, match=f"format {FORMAT_MAJOR + 1}.0"):
        decode(bytes(data), KINDS)


def test_an_unknown_section_is_named() -> None:
    snap = sample()
    snap.sections["hpet"] = json_section(1, {})
    with pytest.raises(SnapshotError, match="section 'hpet' that this pvkit does not know"):
        decode(encode(snap), KINDS)


def test_a_section_newer_than_its_reader_is_named() -> None:
    snap = sample()
    snap.sections["vm"] = json_section(2, {})
    with pytest.raises(SnapshotError, match=r"section 'vm' is version 2; .* up to version 1"):
        decode(encode(snap), KINDS)


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "vm.snap"
    target.write_bytes(b"the old snapshot")
    bad = sample()
    bad.sections["x" * 300] = json_section(1, {})  # a name too long to encode
    with pytest.raises(ValueError):
        write_snapshot(target, bad)
    assert target.read_bytes() == b"the old snapshot"
    assert sorted(os.listdir(tmp_path)) == ["vm.snap"]


def test_a_written_file_is_readable_by_its_path(tmp_path: Path) -> None:
    target = tmp_path / "vm.snap"
    size = write_snapshot(target, sample())
    assert target.stat().st_size == size
    assert read_snapshot(target, KINDS).arch == "arm64"


def test_ram_skips_zero_pages_and_restores_every_byte() -> None:
    memory = GuestMemory(0x4000_0000, 64 << 20)
    memory.write(0x4000_0000, b"boot")
    memory.write(0x4123_4FFE, b"spans two pages")
    memory.write(0x43FF_FFF0, bytes(range(16)))
    section = ram.save_ram(memory)
    base, size, pages = ram.ram_pages(section)
    assert (base, size, pages) == (0x4000_0000, 64 << 20, 4)
    assert len(section.payload) < 2 * ram.PAGE  # 64 MiB of RAM, a few hundred bytes
    copy = GuestMemory(0x4000_0000, 64 << 20)
    ram.restore_ram(copy, section)
    for address, length in ((0x4000_0000, 4), (0x4123_4FFE, 15), (0x43FF_FFF0, 16)):
        assert copy.read(address, length) == memory.read(address, length)


def test_ram_of_another_size_is_refused() -> None:
    section = ram.save_ram(GuestMemory(0, 1 << 20))
    with pytest.raises(SnapshotError, match="holds 0x100000 bytes at 0x0, but this VM has"):
        ram.restore_ram(GuestMemory(0, 2 << 20), section)


def test_a_run_outside_ram_is_refused() -> None:
    memory = GuestMemory(0, 1 << 20)
    memory.write(0xFF000, b"x")
    payload = bytearray(ram.save_ram(memory, compress=False).payload)
    payload[25:33] = (1 << 40).to_bytes(8, "little")  # the run's first page
    forged = ram.Section(ram.RAM_VERSION, bytes(payload), ram.ENCODING_BYTES)
    with pytest.raises(SnapshotError, match="a run lies outside RAM"):
        ram.restore_ram(GuestMemory(0, 1 << 20), forged)


def test_an_ill_typed_field_names_section_and_field() -> None:
    with pytest.raises(SnapshotError, match="section 'timer:0' is damaged: 'cval' is not"):
        Fields("timer:0", {"cval": "soon"}).integer("cval")


@pytest.mark.parametrize("abi", [Abi.SMCCC, Abi.KVM_X86])
def test_every_service_declares_its_state_or_that_it_has_none(abi: Abi) -> None:
    """A new service cannot forget its section: it saves state or says it has none."""
    for service in builtin_services(abi):
        overrides = type(service).save_state is not Service.save_state
        restores = type(service).restore_state is not Service.restore_state
        assert overrides != service.STATELESS, service.name
        assert overrides == restores, service.name
        if overrides:
            assert isinstance(service.save_state(), dict)


def test_every_section_kind_a_board_writes_is_known() -> None:
    for kind in ("machine", "ram", "vm", "scheduler", "cpu", "gic", "timer", "cpu-devices",
                 "pl011", "pl031", "uart16550", "local-apic", "pc-board", "service"):  # fmt: skip
        assert kind in KNOWN
