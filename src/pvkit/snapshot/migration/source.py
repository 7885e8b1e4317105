"""The source side of a migration: offer, stop-and-copy, hand over, or run on.

1. Connect and greet; send the offer: the guest's `machine` and `firmware` sections,
   everything the destination's compatibility check reads (the same check as restore).
   A refusal is one sentence and nothing has stopped.
2. Pre-copy (precopy.py): RAM goes over in PAGES messages while the guest runs.
3. Stop the VM (`Holder.stand`), send the pages written since, then every other
   section as one snapshot (a 1.0 destination gets no PAGES: RAM is in the snapshot).
4. The destination answers RESUMED once it has rebuilt the VM: the source's VM is
   then the destination's and the caller ends the run. Any failure before that (a
   refusal of the state, a broken connection) lets the source's VM run on.

Downtime is the host time from the VM stopping to the destination's RESUMED.
"""

from __future__ import annotations

import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pvkit.platform.pc_x86 import PcX86
from pvkit.services.firmware import Firmware
from pvkit.snapshot import config
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Snapshot, encode, json_section
from pvkit.snapshot.migration.address import TcpAddress
from pvkit.snapshot.migration.precopy import Copied, PreCopy
from pvkit.snapshot.migration.precopy import MigrationError as MigrationError
from pvkit.snapshot.migration.stream import Channel, Kind, StreamError

CONNECT_TIMEOUT_S = 10.0
ANSWER_LIMIT = 4096  # a verdict is one sentence
RESUME_TIMEOUT_S = 600.0  # rebuilding a large guest takes a while


class Holder(Protocol):
    """How the VM is stopped for the copy, and let go again if the move fails."""

    def stand(self, ram: bool) -> tuple[Snapshot, int]:
        """Stop the VM and capture it (`ram`: RAM too): the snapshot and its clock (ns)."""
        ...

    def release(self) -> None:
        """The migration failed, before or after `stand`: the VM runs on as it was
        before the migration began (any thread)."""
        ...

    @property
    def runs(self) -> bool:
        """Whether the VM runs until `stand` (else it stands already)."""
        ...

    def briefly(self) -> AbstractContextManager[None]:
        """Stand the VM for a moment (MigrationError if it does not stand)."""
        ...


@dataclass(frozen=True)
class Migrated:
    address: TcpAddress
    downtime_ns: int  # host time from the stop to the destination's RESUMED
    bytes_sent: int  # everything the source wrote on the connection
    clock_ns: int  # the VM's clock when it stopped
    copied: Copied  # the pre-copy rounds and pages

    def sentence(self) -> str:
        c = self.copied
        return (
            f"migrated to {self.address} at {self.clock_ns} ns: downtime "
            f"{self.downtime_ns / 1e6:.1f} ms, {self.bytes_sent} bytes sent "
            f"({c.pages} pages in {c.rounds} pre-copy round{'' if c.rounds == 1 else 's'}, "
            f"{c.final_pages} stopped)"
        )


def offer(board: config.Board, image: Path) -> Snapshot:
    """What the destination checks before anything moves."""
    x86 = isinstance(board, PcX86)
    snap = Snapshot("x86_64" if x86 else "arm64")
    snap.sections[config.STATE_SECTION] = config.machine_section(board, image)
    if not isinstance(board, PcX86):
        state = board.firmware.save_state()
        snap.sections[Firmware.STATE_SECTION] = json_section(Firmware.STATE_VERSION, state)
    return snap


def migrate(
    board: config.Board, image: Path | None, address: TcpAddress, holder: Holder
) -> Migrated:
    """Move the VM to `address`; MigrationError (the VM runs on) if it did not move."""
    try:
        return _move(board, image, address, holder)
    except MigrationError:
        holder.release()
        raise


def _move(board: config.Board, image: Path | None, address: TcpAddress, holder: Holder) -> Migrated:
    why = config.unsupported(board, image)
    if why is not None:
        raise MigrationError(f"this VM cannot be migrated yet: {why}")
    assert image is not None
    channel = _connect(address)
    precopy: PreCopy | None = None
    stood = False
    try:
        paged = channel.greet(source=True) >= 1
        channel.send(Kind.OFFER, encode(offer(board, image)))
        kind, answer = channel.receive({Kind.ACCEPT: 0, Kind.REFUSE: ANSWER_LIMIT})
        if kind is Kind.REFUSE:
            raise MigrationError(f"{address} refused the guest: {_text(answer)}")
        if paged:
            precopy = PreCopy(board.memory, channel, holder.briefly if holder.runs else None)
            precopy.run()
        start = time.monotonic_ns()
        snapshot, clock = holder.stand(ram=precopy is None)
        stood = True
        copied = precopy.finish() if precopy is not None else Copied()
        channel.send(Kind.STATE, encode(snapshot))
        channel.sock.settimeout(RESUME_TIMEOUT_S)
        kind, answer = channel.receive({Kind.RESUMED: 0, Kind.FAILED: ANSWER_LIMIT})
        if kind is Kind.FAILED:
            raise MigrationError(f"{address} could not take the VM: {_text(answer)}")
        done = Migrated(address, time.monotonic_ns() - start, channel.bytes_sent, clock, copied)
        precopy = None
        return done
    except StreamError as exc:
        raise MigrationError(f"migration to {address} failed: {exc}") from None
    except SnapshotError as exc:
        raise MigrationError(str(exc)) from None
    finally:
        if precopy is not None:
            precopy.abandon(stood)
        channel.close()


def _connect(address: TcpAddress) -> Channel:
    try:
        sock = socket.create_connection((address.host, address.port), CONNECT_TIMEOUT_S)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise MigrationError(f"cannot reach a destination at {address} ({why})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Channel(sock, str(address))


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace").strip() or "no reason given"
