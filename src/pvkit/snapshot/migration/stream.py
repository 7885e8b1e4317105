"""The migration stream: a greeting each way, then framed messages.

Wire format (little-endian, as the snapshot file): each side first sends the magic
"PVKMIGR\\0" and its stream version (u16 major, u16 minor); the source's major must be
the destination's and its minor no newer, the rule the snapshot format keeps; a source
speaks a 1.0 destination's stream (no pre-copy: the STATE carries RAM). Then
messages: u8 kind | u64 length | payload. The state travels as snapshot containers
(format.py, with their own versions and SHA-256), so the stream adds no encoding of
its own for the VM. A receiver refuses a message of a kind it does not expect now or
longer than it allows, before reading its payload: a hostile peer cannot make it
allocate without bound.
"""

from __future__ import annotations

import socket
import struct
from enum import IntEnum

MAGIC = b"PVKMIGR\0"
MAJOR = 1
MINOR = 1  # 1.1: PAGES before the STATE, which then has no RAM (pre-copy)
_HELLO = struct.Struct("<8sHH")
_HEAD = struct.Struct("<BQ")
IO_TIMEOUT_S = 60.0  # a peer silent this long is gone


class Kind(IntEnum):
    OFFER = 1  # source: the machine the guest needs (a snapshot of `machine`, `firmware`)
    ACCEPT = 2  # destination: it can serve that guest
    REFUSE = 3  # destination: why not (one sentence, UTF-8)
    PAGES = 4  # source: guest RAM pages while the guest runs (pre-copy)
    STATE = 5  # source: the VM, stopped (a whole snapshot)
    RESUMED = 6  # destination: it took the VM and runs it
    FAILED = 7  # destination: it could not take the VM (one sentence)


class StreamError(Exception):
    """The stream broke or carried something it should not (one sentence)."""


class Channel:
    """One side of a migration connection; counts the bytes it sends."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock = sock
        self.peer = peer
        self.bytes_sent = 0
        sock.settimeout(IO_TIMEOUT_S)

    def close(self) -> None:
        self.sock.close()

    def greet(self, source: bool) -> int:
        """Send our greeting, read and check the peer's; the peer's minor version. A
        destination refuses a newer source; a source speaks the destination's minor."""
        self._send(_HELLO.pack(MAGIC, MAJOR, MINOR))
        magic, major, minor = _HELLO.unpack(self._exactly(_HELLO.size, "its greeting"))
        if magic != MAGIC:
            raise StreamError(f"{self.peer} is not a pvkit migration peer")
        if major != MAJOR or (not source and minor > MINOR):
            raise StreamError(
                f"{self.peer} speaks migration stream {major}.{minor}; this pvkit speaks "
                f"{MAJOR}.0 to {MAJOR}.{MINOR}"
            )
        return int(minor)

    def send(self, kind: Kind, payload: bytes = b"") -> None:
        self._send(_HEAD.pack(kind, len(payload)) + payload)

    def receive(self, expected: dict[Kind, int]) -> tuple[Kind, bytes]:
        """The next message; `expected` maps each kind acceptable now to its longest
        payload. StreamError for anything else."""
        raw_kind, length = _HEAD.unpack(self._exactly(_HEAD.size, "a message"))
        try:
            kind = Kind(raw_kind)
        except ValueError:
            raise StreamError(f"{self.peer} sent a message of unknown kind {raw_kind}") from None
        if kind not in expected:
            raise StreamError(f"{self.peer} sent {kind.name} out of turn")
        if length > expected[kind]:
            raise StreamError(
                f"{self.peer} sent a {kind.name} of {length} bytes; at most "
                f"{expected[kind]} fit this VM"
            )
        return kind, self._exactly(length, f"its {kind.name}")

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise StreamError(f"{self.peer} stopped reading for {IO_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise StreamError(f"the connection to {self.peer} broke ({_why(exc)})") from None
        self.bytes_sent += len(data)

    def _exactly(self, n: int, what: str) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                chunk = self.sock.recv(min(n - got, 1 << 20))
            except TimeoutError:
                raise StreamError(f"{self.peer} sent nothing for {IO_TIMEOUT_S:g} s") from None
            except OSError as exc:
                raise StreamError(f"the connection to {self.peer} broke ({_why(exc)})") from None
            if not chunk:
                raise StreamError(f"{self.peer} closed the connection before {what}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
