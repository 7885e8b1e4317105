"""The gdb remote serial protocol's framing (gdb manual, "Remote Protocol", "Overview").

A packet is `$payload#cs`: cs is the sum of the payload bytes modulo 256 in two hex
digits. In the payload `}` escapes the next byte (sent XOR 0x20), and `X*n` repeats X
(n - 29) more times (run-length encoding; n is printable and neither `#` nor `$`). Out
of packets, `+` and `-` acknowledge one and ask for it again, and a 0x03 byte is an
interrupt (gdb's Ctrl-C). The reader never raises: whatever bytes arrive become events.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PACKET = 0x4000  # what pvkit advertises as PacketSize (and reads, with room to spare)
_SPECIAL = frozenset(b"$#}*")
_HEX = frozenset("0123456789abcdefABCDEF")
_RLE_MIN = 4  # shorter runs cost more encoded than plain
_RLE_MAX = 126 - 29  # the count character must stay printable ASCII
_RLE_FORBIDDEN = frozenset({ord("#") - 29, ord("$") - 29, ord("+") - 29, ord("-") - 29})


@dataclass(frozen=True, slots=True)
class Packet:
    """A whole packet; `valid` False when the checksum is wrong or it was cut off."""

    payload: bytes
    valid: bool = True


@dataclass(frozen=True, slots=True)
class Ack:
    positive: bool


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


Event = Packet | Ack | Interrupt


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


class PacketReader:
    """Turns the byte stream from gdb into events, whatever it contains."""

    def __init__(self, limit: int = 2 * MAX_PACKET + 16):
        self._limit = limit
        self._buf = bytearray()
        self._state = "idle"  # idle, payload, sum1, sum2
        self._sum = ""

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            event = self._byte(byte)
            if event is not None:
                events.append(event)
        return events

    def _byte(self, byte: int) -> Event | None:
        state = self._state
        if state == "idle":
            if byte == ord("$"):
                self._buf.clear()
                self._state = "payload"
            elif byte in (ord("+"), ord("-")):
                return Ack(byte == ord("+"))
            elif byte == 0x03:
                return Interrupt()
            return None  # noise between packets is ignored
        if state == "payload":
            if byte == ord("#"):
                self._state = "sum1"
            elif byte == ord("$"):
                self._buf.clear()  # a new packet starts: the one before was cut off
            elif len(self._buf) >= self._limit:
                self._state = "idle"  # too long for any packet gdb sends us: drop it
                self._buf.clear()
                return Packet(b"", valid=False)
            else:
                self._buf.append(byte)
            return None
        if state == "sum1":
            self._sum = chr(byte)
            self._state = "sum2"
            return None
        self._state = "idle"
        text = self._sum + chr(byte)
        raw = bytes(self._buf)
        valid = all(c in _HEX for c in text) and int(text, 16) == checksum(raw)
        return Packet(decode(raw) if valid else raw, valid)


def decode(raw: bytes) -> bytes:
    """Undo escapes and run-length encoding."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == ord("}") and i + 1 < n:
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif byte == ord("*") and i + 1 < n and out:
            out += bytes((out[-1],)) * max(0, raw[i + 1] - 29)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def encode(payload: bytes, rle: bool = True) -> bytes:
    """Escape (and with `rle` compress runs of) a payload for sending."""
    out = bytearray()
    i = 0
    n = len(payload)
    while i < n:
        byte = payload[i]
        if byte in _SPECIAL:
            out += bytes((ord("}"), byte ^ 0x20))
            i += 1
            continue
        run = 1
        while rle and i + run < n and payload[i + run] == byte and run < _RLE_MAX + 1:
            run += 1
        repeat = run - 1
        while repeat in _RLE_FORBIDDEN:
            repeat -= 1
        if repeat >= _RLE_MIN - 1:
            out += bytes((byte, ord("*"), repeat + 29))
            i += repeat + 1
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def frame(payload: bytes, rle: bool = True) -> bytes:
    body = encode(payload, rle)
    return b"$" + body + b"#" + b"%02x" % checksum(body)
