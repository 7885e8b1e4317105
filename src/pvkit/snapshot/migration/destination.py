"""The destination side of a migration: listen, check the offer, take the VM.

The destination builds the VM the offer describes with this host's choices and runs
restore's compatibility check on it before any RAM moves; a refusal is sent back as
one sentence. RAM pages sent while the guest still runs at the source (PAGES) go
straight into that board's RAM, a page sent again overwriting the earlier copy; the
state that follows is restored onto that same board, checked again as a whole (its
`machine` section must be the offer's), and RESUMED tells the source that the VM is
now here.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

from pvkit.snapshot import config
from pvkit.snapshot.errors import SnapshotError
from pvkit.snapshot.format import Snapshot, decode
from pvkit.snapshot.migration.address import AddressError, TcpAddress
from pvkit.snapshot.migration.precopy import MESSAGE_LIMIT
from pvkit.snapshot.migration.stream import Channel, Kind, StreamError
from pvkit.snapshot.ram import apply_pages
from pvkit.snapshot.resume import compatibility, restore
from pvkit.snapshot.sections import KNOWN

OFFER_LIMIT = 1 << 20  # a machine and a firmware section
_STATE_SLACK = 64 << 20  # registers, devices, services: far less than this
_RESTORE_PREFIX = "cannot restore here: "


class IncomingError(Exception):
    """No VM came (one sentence)."""


def listen(address: TcpAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(1)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise AddressError(f"--incoming {address}: cannot listen there ({why})") from None
    return sock


def bound(sock: socket.socket) -> TcpAddress:
    host, port = sock.getsockname()[:2]
    return TcpAddress(host, port)


def receive(
    listener: socket.socket, host: config.HostChoices, on_bytes: Callable[[int], None]
) -> tuple[config.Board, Path]:
    """Wait for one source and take its VM; IncomingError if it did not come whole.
    `on_bytes(n)` hears how many bytes the pages and the state were."""
    try:
        conn, peer = listener.accept()
    finally:
        listener.close()
    channel = Channel(conn, f"the source at {peer[0]}:{peer[1]}")
    try:
        return _take(channel, host, on_bytes)
    except StreamError as exc:
        raise IncomingError(f"the migration failed: {exc}") from None
    finally:
        channel.close()


def _take(
    channel: Channel, host: config.HostChoices, on_bytes: Callable[[int], None]
) -> tuple[config.Board, Path]:
    channel.greet(source=False)
    _kind, payload = channel.receive({Kind.OFFER: OFFER_LIMIT})
    try:
        offer = decode(payload, KNOWN, "the migration offer")
        built = compatibility(offer, host)
    except SnapshotError as exc:
        why = str(exc).removeprefix(_RESTORE_PREFIX)
        _tell(channel, Kind.REFUSE, why)
        raise IncomingError(f"refused the incoming guest: {why}") from None
    channel.send(Kind.ACCEPT)
    memory = built[0].memory
    limits = {Kind.PAGES: MESSAGE_LIMIT, Kind.STATE: memory.size + memory.size // 64 + _STATE_SLACK}
    paged, received = False, 0
    try:
        while True:
            kind, payload = channel.receive(limits)
            received += len(payload)
            if kind is Kind.STATE:
                break
            apply_pages(memory, payload)  # RAM as it was when sent; later pages win
            paged = True
        on_bytes(received)
        snapshot = decode(payload, KNOWN, "the migration stream")
        _same_machine(offer, snapshot)
        board, image = restore(snapshot, host, built, ram_arrived=paged)
    except SnapshotError as exc:
        why = str(exc).removeprefix(_RESTORE_PREFIX)
        _tell(channel, Kind.FAILED, why)
        raise IncomingError(f"could not take the incoming VM: {why}") from None
    channel.send(Kind.RESUMED)
    return board, image


def _same_machine(offer: Snapshot, snapshot: Snapshot) -> None:
    if snapshot.arch != offer.arch or any(
        snapshot.section(name) != offer.sections[name] for name in offer.sections
    ):
        raise SnapshotError("the migration stream is damaged: its state is not of the VM offered")


def _tell(channel: Channel, kind: Kind, why: str) -> None:
    with contextlib.suppress(StreamError):
        channel.send(kind, why.encode("utf-8"))
