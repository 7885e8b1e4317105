"""The snapshot container: magic, format version, named and versioned sections, SHA-256.

Layout (all integers little-endian):

    magic "PVKSNAP\\0" | u16 major | u16 minor | u64 file length | u8 n + arch (ASCII)
    | u32 section count | sections... | SHA-256 of every byte before it (32 bytes)
    section: u8 n + name (ASCII) | u16 version | u8 encoding | u64 length | payload

A section's payload is JSON (encoding 0: plain numbers, strings, lists and maps, nothing
that could run) or bytes (encoding 1: guest RAM, ram.py). Version rules follow
Firecracker's snapshot files: another major format is refused, and so is a newer minor;
a section newer than the code that reads it is refused, as QEMU refuses a vmstate whose
version_id is above its own. Writing goes through a temporary file in the target's
directory, fsync and rename, so a failure never leaves a half file under the target name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pvkit.snapshot.errors import SnapshotError

MAGIC = b"PVKSNAP\0"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
ENCODING_JSON = 0
ENCODING_BYTES = 1
_DIGEST = 32
_HEAD = struct.Struct("<8sHHQ")
_COUNT = struct.Struct("<I")
_SECTION = struct.Struct("<HBQ")


@dataclass(frozen=True, slots=True)
class Section:
    version: int
    payload: bytes
    encoding: int = ENCODING_JSON

    def json(self, name: str) -> dict[str, object]:
        """The payload of a JSON section, which must be a map."""
        if self.encoding != ENCODING_JSON:
            raise SnapshotError(f"section {name!r} holds bytes where its state should be")
        try:
            value = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise SnapshotError(f"section {name!r} is damaged: its state is not JSON") from None
        if not isinstance(value, dict):
            raise SnapshotError(f"section {name!r} is damaged: its state is not a map")
        return value


def json_section(version: int, state: Mapping[str, object]) -> Section:
    text = json.dumps(state, separators=(",", ":"), sort_keys=True)
    return Section(version, text.encode("utf-8"), ENCODING_JSON)


@dataclass
class Snapshot:
    arch: str
    sections: dict[str, Section] = field(default_factory=dict)
    format_version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    def section(self, name: str) -> Section:
        try:
            return self.sections[name]
        except KeyError:
            raise SnapshotError(f"the snapshot has no section {name!r}") from None


def encode(snapshot: Snapshot) -> bytes:
    arch = snapshot.arch.encode("ascii")
    parts = [bytes((len(arch),)), arch, _COUNT.pack(len(snapshot.sections))]
    for name, sec in snapshot.sections.items():
        raw = name.encode("ascii")
        if not 0 < len(raw) < 256:
            raise ValueError(f"section name {name!r} must be 1 to 255 ASCII characters")
        parts += [bytes((len(raw),)), raw, _SECTION.pack(sec.version, sec.encoding,
                  len(sec.payload)), sec.payload]  # fmt: skip
    body = b"".join(parts)
    total = _HEAD.size + len(body) + _DIGEST
    head = _HEAD.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, total)
    return head + body + hashlib.sha256(head + body).digest()


def write_snapshot(path: Path, snapshot: Snapshot) -> int:
    """Write atomically (temporary file, fsync, rename); the size written. OSError on failure,
    with nothing left behind."""
    data = encode(snapshot)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(data)


def read_snapshot(path: Path, known: Mapping[str, int]) -> Snapshot:
    """Read and check a snapshot file. `known` maps each section kind this pvkit reads to
    its newest version (a section "cpu:2" is of kind "cpu")."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror}") from None
    return decode(data, known, str(path))


def decode(data: bytes, known: Mapping[str, int], where: str = "the snapshot") -> Snapshot:
    if len(data) < _HEAD.size or not data.startswith(MAGIC):
        raise SnapshotError(f"{where} is not a pvkit snapshot (wrong magic)")
    _magic, major, minor, total = _HEAD.unpack_from(data)
    if major != FORMAT_MAJOR or minor > FORMAT_MINOR:
        raise SnapshotError(
            f"{where} has snapshot format {major}.{minor}; this pvkit reads format "
            f"{FORMAT_MAJOR}.0 to {FORMAT_MAJOR}.{FORMAT_MINOR} (written by another pvkit)"
        )
    if len(data) < total:
        raise SnapshotError(f"{where} is truncated: {len(data)} of its {total} bytes are there")
    if len(data) > total or total < _HEAD.size + _DIGEST:
        raise SnapshotError(f"{where} is damaged: its length does not match its header")
    body, digest = data[: total - _DIGEST], data[total - _DIGEST :]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{where} is damaged: its SHA-256 checksum does not match")
    return _sections(body, _HEAD.size, known, where)


def _sections(body: bytes, at: int, known: Mapping[str, int], where: str) -> Snapshot:
    def take(n: int) -> bytes:
        nonlocal at
        if at + n > len(body):
            raise SnapshotError(f"{where} is damaged: a section runs past the end")
        chunk = body[at : at + n]
        at += n
        return chunk

    try:
        arch = take(take(1)[0]).decode("ascii")
        (count,) = _COUNT.unpack(take(_COUNT.size))
        snapshot = Snapshot(arch)
        for _ in range(count):
            name = take(take(1)[0]).decode("ascii")
            version, encoding, length = _SECTION.unpack(take(_SECTION.size))
            kind = name.split(":", 1)[0]
            if kind not in known:
                raise SnapshotError(f"{where} has a section {name!r} that this pvkit does not know")
            if version > known[kind]:
                raise SnapshotError(
                    f"{where}: section {name!r} is version {version}; this pvkit reads "
                    f"it up to version {known[kind]}"
                )
            if name in snapshot.sections:
                raise SnapshotError(f"{where} is damaged: section {name!r} appears twice")
            snapshot.sections[name] = Section(version, take(length), encoding)
    except UnicodeDecodeError:
        raise SnapshotError(f"{where} is damaged: a name is not ASCII") from None
    if at != len(body):
        raise SnapshotError(f"{where} is damaged: bytes follow its last section")
    return snapshot
