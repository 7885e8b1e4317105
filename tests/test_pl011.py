"""PL011 UART (ARM DDI 0183): flags, the receive FIFO, the interrupt line, stored registers."""

from __future__ import annotations

import threading

import pytest

from pvkit.devices.pl011 import (
    BACKLOG_LIMIT,
    FIFO_DEPTH,
    FR_BUSY,
    FR_RXFE,
    FR_RXFF,
    FR_TXFE,
    FR_TXFF,
    INT_RT,
    INT_RX,
    INT_TX,
    LCR_H_FEN,
    PL011_ID,
    UARTCR,
    UARTDMACR,
    UARTDR,
    UARTFBRD,
    UARTFR,
    UARTIBRD,
    UARTICR,
    UARTIFLS,
    UARTIMSC,
    UARTLCR_H,
    UARTMIS,
    UARTRIS,
    Pl011,
)

CR_LBE = 1 << 7


class Uart:
    def __init__(self) -> None:
        self.out = bytearray()
        self.changes: list[bool] = []
        self.dev = Pl011(0x0900_0000, self.out.extend, irq=self.changes.append)

    def fr(self) -> int:
        return self.dev.read(UARTFR, 4)


def test_reset_flags_say_tx_empty_rx_empty_not_busy() -> None:
    u = Uart()
    assert u.fr() & (FR_TXFE | FR_RXFE | FR_TXFF | FR_RXFF | FR_BUSY) == FR_TXFE | FR_RXFE
    assert u.dev.read(UARTRIS, 4) == 0 and u.changes == []


def test_reset_values_of_cr_and_ifls() -> None:
    u = Uart()
    assert u.dev.read(UARTCR, 4) == 0x300 and u.dev.read(UARTIFLS, 4) == 0x12


def test_transmit_goes_to_output_and_flags_stay_empty() -> None:
    u = Uart()
    for b in b"ok\n":
        u.dev.write(UARTDR, 4, 0xF00 | b)
    assert bytes(u.out) == b"ok\n"
    assert u.fr() & (FR_TXFE | FR_TXFF | FR_BUSY) == FR_TXFE


def test_feed_fills_the_fifo_and_uartdr_pops_in_order() -> None:
    u = Uart()
    u.dev.write(UARTLCR_H, 4, LCR_H_FEN)
    u.dev.feed(b"hi")
    assert not u.fr() & FR_RXFE
    assert u.dev.read(UARTDR, 4) == ord("h")
    assert u.dev.read(UARTDR, 4) == ord("i")
    assert u.fr() & FR_RXFE
    assert u.dev.read(UARTDR, 4) == 0  # empty FIFO reads zero


def test_rxff_at_32_entries_with_fifo_enabled_and_the_rest_waits_in_the_backlog() -> None:
    u = Uart()
    u.dev.write(UARTLCR_H, 4, LCR_H_FEN)
    data = bytes(range(40))
    u.dev.feed(data)
    assert u.fr() & FR_RXFF
    got = bytes(u.dev.read(UARTDR, 4) for _ in range(FIFO_DEPTH))
    assert got == data[:FIFO_DEPTH]
    assert not u.fr() & FR_RXFF  # the backlog refilled 8 bytes, not a full FIFO
    assert bytes(u.dev.read(UARTDR, 4) for _ in range(8)) == data[FIFO_DEPTH:]
    assert u.fr() & FR_RXFE


def test_with_fifo_disabled_one_byte_makes_the_holding_register_full() -> None:
    u = Uart()
    u.dev.feed(b"ab")
    assert u.fr() & FR_RXFF and not u.fr() & FR_RXFE
    assert u.dev.read(UARTDR, 4) == ord("a")
    assert u.fr() & FR_RXFF  # "b" moved in from the backlog
    assert u.dev.read(UARTDR, 4) == ord("b")
    assert u.fr() & FR_RXFE and not u.fr() & FR_RXFF


def test_toggling_fen_flushes_the_fifo() -> None:
    u = Uart()
    u.dev.feed(b"x")
    u.dev.write(UARTLCR_H, 4, LCR_H_FEN)
    assert u.fr() & FR_RXFE
    assert u.dev.read(UARTLCR_H, 4) == LCR_H_FEN


def test_backlog_is_bounded_and_counts_what_it_drops() -> None:
    u = Uart()
    u.dev.feed(bytes(BACKLOG_LIMIT + 10))
    assert u.dev.dropped == 9  # one byte is in the holding register, the limit waits


def test_rx_and_rt_rise_as_soon_as_a_byte_arrives_and_fall_when_the_fifo_empties() -> None:
    u = Uart()
    u.dev.write(UARTIMSC, 4, INT_RX | INT_RT)
    u.dev.feed(b"a")
    assert u.dev.read(UARTRIS, 4) & (INT_RX | INT_RT) == INT_RX | INT_RT
    assert u.dev.read(UARTMIS, 4) == INT_RX | INT_RT
    assert u.changes == [True]
    u.dev.read(UARTDR, 4)
    assert u.dev.read(UARTRIS, 4) & (INT_RX | INT_RT) == 0
    assert u.changes == [True, False]


def test_rt_alone_unmasked_still_interrupts_on_receive() -> None:
    u = Uart()
    u.dev.write(UARTIMSC, 4, INT_RT)
    u.dev.feed(b"z")
    assert u.changes == [True] and u.dev.read(UARTMIS, 4) == INT_RT


def test_tx_raw_status_rises_after_each_transmitted_byte_not_at_reset() -> None:
    u = Uart()
    u.dev.write(UARTIMSC, 4, INT_TX)
    assert u.changes == [] and u.dev.read(UARTRIS, 4) & INT_TX == 0
    u.dev.write(UARTDR, 4, ord("x"))
    assert u.dev.read(UARTRIS, 4) & INT_TX and u.changes == [True]


def test_icr_clears_tx_until_the_next_byte_is_sent() -> None:
    u = Uart()
    u.dev.write(UARTDR, 4, ord("x"))
    u.dev.write(UARTIMSC, 4, INT_TX)
    assert u.changes == [True]
    u.dev.write(UARTICR, 4, INT_TX)
    assert u.dev.read(UARTRIS, 4) & INT_TX == 0 and u.changes == [True, False]
    u.dev.write(UARTDR, 4, ord("y"))
    assert u.changes == [True, False, True]


def test_linux_start_tx_sequence_gets_its_interrupt() -> None:
    """amba-pl011 pio: write bytes while TXFF is clear, then unmask TXIM and wait for IRQ."""
    u = Uart()
    for b in b"abc":
        assert not u.fr() & FR_TXFF
        u.dev.write(UARTDR, 4, b)
    u.dev.write(UARTIMSC, 4, INT_TX | INT_RX | INT_RT)
    assert u.changes == [True] and u.dev.read(UARTMIS, 4) == INT_TX


def test_masking_lowers_the_line_and_level_changes_are_reported_once() -> None:
    u = Uart()
    u.dev.feed(b"a")
    u.dev.write(UARTIMSC, 4, INT_RX)
    u.dev.write(UARTIMSC, 4, INT_RX)
    u.dev.feed(b"b")
    u.dev.write(UARTIMSC, 4, 0)
    assert u.changes == [True, False]


def test_loopback_sends_tx_to_rx_and_ignores_host_input() -> None:
    u = Uart()
    u.dev.write(UARTLCR_H, 4, LCR_H_FEN)
    u.dev.write(UARTCR, 4, 0x301 | CR_LBE)
    u.dev.feed(b"host")
    u.dev.write(UARTDR, 4, ord("L"))
    u.dev.write(UARTDR, 4, ord("M"))  # TXRIS is already set: still looped back
    assert u.dev.read(UARTDR, 4) == ord("L")
    assert u.dev.read(UARTDR, 4) == ord("M")
    assert u.fr() & FR_RXFE
    assert bytes(u.out) == b"LM"  # the line still carries what was sent
    u.dev.write(UARTCR, 4, 0x301)
    u.dev.feed(b"h")
    assert u.dev.read(UARTDR, 4) == ord("h")


def test_programming_registers_are_stored_with_their_widths_and_dmacr_reads_zero() -> None:
    u = Uart()
    u.dev.write(UARTIBRD, 4, 0x1_0027)
    u.dev.write(UARTFBRD, 4, 0xFF)
    u.dev.write(UARTLCR_H, 4, 0x70)
    u.dev.write(UARTCR, 4, 0x301)
    u.dev.write(UARTIFLS, 4, 0x24)
    u.dev.write(UARTDMACR, 4, 7)
    assert u.dev.read(UARTIBRD, 4) == 0x27
    assert u.dev.read(UARTFBRD, 4) == 0x3F
    assert u.dev.read(UARTLCR_H, 4) == 0x70
    assert u.dev.read(UARTCR, 4) == 0x301
    assert u.dev.read(UARTIFLS, 4) == 0x24
    assert u.dev.read(UARTDMACR, 4) == 0


def test_read_only_status_registers_ignore_writes() -> None:
    u = Uart()
    u.dev.feed(b"a")
    before = (u.fr(), u.dev.read(UARTRIS, 4), u.dev.read(UARTMIS, 4))
    for offset in (UARTFR, UARTRIS, UARTMIS):
        u.dev.write(offset, 4, 0xFFFF_FFFF)
    assert (u.fr(), u.dev.read(UARTRIS, 4), u.dev.read(UARTMIS, 4)) == before


def test_id_registers() -> None:
    u = Uart()
    assert [u.dev.read(0xFE0 + 4 * i, 4) for i in range(8)] == list(PL011_ID)


@pytest.mark.parametrize(("offset", "size"), [(0x01, 4), (UARTDR, 8), (0x2000, 4), (-4, 4)])
def test_hostile_accesses_are_raz_wi(offset: int, size: int) -> None:
    u = Uart()
    u.dev.feed(b"k")
    assert u.dev.read(offset, size) == 0
    u.dev.write(offset, size, 0x41)
    assert u.out == b"" and u.dev.read(UARTDR, 4) == ord("k")


def test_feed_from_many_threads_loses_nothing_and_keeps_each_chunk_in_order() -> None:
    u = Uart()
    u.dev.write(UARTLCR_H, 4, LCR_H_FEN)
    chunks = [bytes([i]) * 50 for i in range(1, 9)]
    threads = [threading.Thread(target=u.dev.feed, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    got = bytearray()
    while any(t.is_alive() for t in threads) or not u.fr() & FR_RXFE:
        if not u.fr() & FR_RXFE:
            got.append(u.dev.read(UARTDR, 4))
    for t in threads:
        t.join()
    assert sorted(got) == sorted(b"".join(chunks))
