"""A UART's console data path in C (backends/_uart.c), where the extension is built.

The device model (devices/pl011.py) keeps two facts current on the path: whether a data
write is nothing but "send this byte", and the status register's value. With those the
engine answers a console's two accesses per byte without Python, and hands the bytes to
the model's output a line at a time. Without the extension (or with PVKIT_UART=python)
every access goes through the model, as it always did.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from unicorn import Uc  # type: ignore[attr-defined]  # re-exported name

from pvkit.backends.trap import uc_function_addresses
from pvkit.machine.memory import Region

try:
    from pvkit.backends import _uart  # type: ignore[attr-defined]
except ImportError:  # the optional extension was not built on this machine
    _uart = None


class TxPath(Protocol):
    """What the model publishes (`tx_fast`, `status`) and what stops the buffering."""

    tx_fast: int
    status: int
    fast_writes: int
    fast_reads: int

    def flush(self) -> None:
        """Hand the buffered bytes to the output now (the engine does at each stop)."""


def make_tx_path(
    output: Callable[[bytes], None], data_offset: int, status_offset: int
) -> TxPath | None:
    """A C path writing to `output`, or None where there is none (or it is turned off)."""
    if _uart is None or os.environ.get("PVKIT_UART") == "python":
        return None
    path: TxPath = _uart.TxPath(output, data_offset, status_offset)
    return path


def map_tapped(
    uc: Uc,
    region: Region,
    path: TxPath,
    read: Callable[[int, int], int],
    write: Callable[[int, int, int], None],
) -> object:
    """Map `region` in `uc` with the C callbacks; keep the result as long as the engine."""
    assert _uart is not None  # make_tx_path gave a path, so the extension is there
    if uc._uch is None:
        raise ValueError("the engine is already closed")
    (mmio_map,) = uc_function_addresses("uc_mmio_map")
    tap: object = _uart.UartTap(
        uc=uc._uch.value,
        mmio_map=mmio_map,
        base=region.base,
        size=region.size,
        tx=path,
        read=read,
        write=write,
    )
    return tap
