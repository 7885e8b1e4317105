"""The gdb remote protocol's framing: checksums, escapes, run-length encoding, and a
reader that turns any byte stream into events without raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pvkit.debug.packets import (
    MAX_PACKET,
    Ack,
    Interrupt,
    Packet,
    PacketReader,
    checksum,
    decode,
    encode,
    frame,
)


def test_checksum_is_the_byte_sum_modulo_256() -> None:
    assert checksum(b"") == 0
    assert checksum(b"OK") == (ord("O") + ord("K")) % 256 == 0x9A
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"qSupported", rle=False) == b"$qSupported#37"  # as gdb sends it


def test_special_characters_are_escaped() -> None:
    assert encode(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert decode(b"a}\x03b}\x04c}]d}\x0ae") == b"a#b$c}d*e"


def test_run_length_encoding() -> None:
    assert encode(b"0" * 3) == b"000"  # too short to gain
    assert encode(b"0" * 4) == b"0* "  # '0' and 3 more: ' ' is 32 = 3 + 29
    assert decode(b"0* ") == b"0000"
    # A repeat count whose character would be '#', '$', '+' or '-' is never produced.
    for n in range(1, 300):
        body = encode(b"x" * n)
        counts = [body[i + 1] for i in range(len(body) - 1) if body[i] == ord("*")]
        assert all(chr(c) not in "#$+-" and 32 <= c <= 126 for c in counts), (n, body)
        assert decode(body) == b"x" * n
    assert decode(b"00000000*\x1d") == b"0" * 8  # a count of 0 repeats nothing


@given(st.binary(max_size=600))
def test_encode_decode_round_trip(data: bytes) -> None:
    assert decode(encode(data)) == data
    assert decode(encode(data, rle=False)) == data
    framed = frame(data)
    assert framed.count(b"#") == 1 and framed.rindex(b"#") == len(framed) - 3
    events = PacketReader().feed(framed)
    assert events == [Packet(data)]


def test_reader_splits_acks_interrupts_and_packets_across_reads() -> None:
    reader = PacketReader()
    stream = b"+" + frame(b"g") + b"-\x03" + frame(b"m1,2")
    events = []
    for i in range(len(stream)):
        events += reader.feed(stream[i : i + 1])  # a byte at a time
    assert events == [Ack(True), Packet(b"g"), Ack(False), Interrupt(), Packet(b"m1,2")]


def test_bad_checksums_and_junk() -> None:
    reader = PacketReader()
    assert reader.feed(b"$g#00") == [Packet(b"g", valid=False)]
    assert reader.feed(b"$g#zz") == [Packet(b"g", valid=False)]
    assert reader.feed(b"$g# 67") == [Packet(b"g", valid=False)]
    assert reader.feed(b"garbage\xff\x00#12") == []  # noise between packets
    assert reader.feed(b"$half$g#67") == [Packet(b"g")]  # a packet cut off by the next
    assert reader.feed(b"}") == []
    assert reader.feed(frame(b"?")) == [Packet(b"?")]


def test_a_packet_longer_than_any_is_dropped_and_reading_goes_on() -> None:
    reader = PacketReader()
    events = reader.feed(b"$" + b"a" * (4 * MAX_PACKET) + b"#00" + frame(b"qC"))
    assert events == [Packet(b"", valid=False), Packet(b"qC")]


@given(st.binary(max_size=2000))
def test_the_reader_never_raises(data: bytes) -> None:
    for event in PacketReader().feed(data):
        assert isinstance(event, Packet | Ack | Interrupt)
