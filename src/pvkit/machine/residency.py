"""Guest RAM pages the host does not hold (swapped out on the host), and their fetches.

The host's view is one byte per 4 KiB page in a buffer every vCPU engine reads
(UC_CTL_ABSENT_PAGES of pvkit's engine patch): an access to an absent page traps, an
access to any other page costs nothing extra. A vCPU's first touch of an absent page starts
the host's fetch, which completes `latency_ns` later on the hypervisor clock; a page stays
present once fetched. Which pages start absent is a `SwapSpec`, applied at every boot.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
DEFAULT_LATENCY_NS = 10_000_000
_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """SplitMix64's finaliser: a fixed, well-spread hash, so a fraction picks the same
    pages in every run and on every host (Python's hash() is salted per process)."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass(frozen=True, slots=True)
class SwapSpec:
    """Which pages are absent at boot (a fraction of RAM and/or ranges) and how long the
    host takes to bring one back."""

    latency_ns: int = DEFAULT_LATENCY_NS
    fraction: float = 0.0
    ranges: tuple[tuple[int, int], ...] = field(default=())  # (first, end) guest-physical

    @property
    def active(self) -> bool:
        return self.fraction > 0 or bool(self.ranges)


def parse_swap_out(text: str) -> float | tuple[int, int]:
    """`--swap-out` as QEMU-style users write it: FRACTION (0..1), FIRST-LAST (inclusive)
    or FIRST+SIZE (a size may end in K, M or G). ValueError names what is wrong."""
    text = text.strip()
    try:
        if "+" in text:
            first_s, size_s = text.split("+", 1)
            first, size = int(first_s, 0), _size(size_s)
            if size <= 0:
                raise ValueError
            return first, first + size
        if "-" in text.lstrip("-"):
            first_s, last_s = text.split("-", 1)
            first, last = int(first_s, 0), int(last_s, 0)
            if last < first:
                raise ValueError
            return first, last + 1
        fraction = float(text)
    except ValueError:
        raise ValueError(
            f"--swap-out {text!r} is not a fraction (0..1), FIRST-LAST or FIRST+SIZE"
        ) from None
    if not 0.0 <= fraction <= 1.0:  # also refuses nan
        raise ValueError(f"--swap-out {text!r}: a fraction must lie between 0 and 1")
    return fraction


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip()
    scale = units.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale != 1 else text, 0) * scale


@dataclass
class ResidencyStats:
    """The host's ground truth, for --stats and for tests to check the guest against."""

    absent_at_boot: int = 0
    touched: int = 0  # absent pages a vCPU touched (fetches started)
    fetched: int = 0  # fetches completed
    waits: int = 0  # times a vCPU waited for a page instead of being told


class HostResidency:
    """The absent-page map and the fetches in flight. Thread-safe."""

    def __init__(self, base: int, size: int, spec: SwapSpec):
        self.base = base
        self.pages = size >> PAGE_SHIFT
        self.spec = spec
        self.map = (ctypes.c_uint8 * self.pages)()
        self.stats = ResidencyStats()
        self._lock = threading.Lock()
        self._fetching: dict[int, int] = {}  # page number -> when it is present again
        self._boot_map: bytes | None = None  # the spec's pages, worked out once

    def page_of(self, address: int) -> int | None:
        page = (address - self.base) >> PAGE_SHIFT
        return page if address >= self.base and page < self.pages else None

    def address_of(self, page: int) -> int:
        return self.base + (page << PAGE_SHIFT)

    def apply(self) -> None:
        """Boot state: the spec's pages absent, every other page present."""
        if self._boot_map is None:  # the same pages at every reset: select them once
            self._boot_map = self._select()
        ctypes.memmove(self.map, self._boot_map, self.pages)
        with self._lock:
            self._fetching.clear()
            self.stats = ResidencyStats()
        self.stats.absent_at_boot = self._boot_map.count(1)

    def _select(self) -> bytes:
        spec = self.spec
        chosen = bytearray(self.pages)
        if spec.fraction > 0:
            threshold = int(spec.fraction * (1 << 64))
            for page in range(self.pages):
                if _mix(page) < threshold:
                    chosen[page] = 1
        for first, end in spec.ranges:
            lo = self.page_of(max(first, self.base))
            hi = min((end - self.base + PAGE_SIZE - 1) >> PAGE_SHIFT, self.pages)
            if lo is not None and hi > lo:
                chosen[lo:hi] = b"\x01" * (hi - lo)
        return bytes(chosen)

    def is_absent(self, address: int) -> bool:
        page = self.page_of(address)
        return page is not None and self.map[page] != 0

    def touch(self, page: int, now_ns: int) -> int:
        """A vCPU touched absent `page` at `now_ns`: when it is present again (its fetch
        starts now unless one is already under way)."""
        with self._lock:
            ready = self._fetching.get(page)
            if ready is None:
                if not self.map[page]:
                    return now_ns  # it arrived meanwhile
                ready = now_ns + self.spec.latency_ns
                self._fetching[page] = ready
                self.stats.touched += 1
            return ready

    def complete_due(self, now_ns: int) -> list[int]:
        """Make present every page whose fetch is done by `now_ns`; those pages."""
        with self._lock:
            if not self._fetching:
                return []
            done = [p for p, ready in self._fetching.items() if ready <= now_ns]
            for page in done:
                del self._fetching[page]
                self.map[page] = 0
            self.stats.fetched += len(done)
            return done

    def next_ready_ns(self) -> int | None:
        with self._lock:
            return min(self._fetching.values(), default=None)

    def ready_ns(self, page: int) -> int | None:
        with self._lock:
            return self._fetching.get(page)

    def count_wait(self) -> None:
        with self._lock:
            self.stats.waits += 1
