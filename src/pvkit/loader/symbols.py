"""A guest kernel's symbols, to name a faulting PC as `function+0xoffset`.

Reads the `nm` format that a kernel's System.map and its /proc/kallsyms share: one
`ADDRESS TYPE NAME [MODULE]` line per symbol, the address in hex. Only code symbols
(types t, T, w, W) can hold a PC. A System.map gives link-time addresses: with KASLR the
running kernel is elsewhere, so boot it with `nokaslr` or use the /proc/kallsyms of the
same boot.
"""

from __future__ import annotations

import bisect
import contextlib
from pathlib import Path

from pvkit.loader.image import ImageError

_CODE_TYPES = frozenset("tTwW")
MAX_FUNCTION = 1 << 20  # past the last symbol, a PC this far on is not in that function


class SymbolTable:
    def __init__(self, symbols: list[tuple[int, str]]):
        ordered = sorted(symbols)
        self._addresses = [a for a, _ in ordered]
        self._names = [n for _, n in ordered]

    @classmethod
    def load(cls, path: Path) -> SymbolTable:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ImageError(f"cannot read the symbol file {path}: {exc.strerror}") from None
        symbols = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] in _CODE_TYPES:
                with contextlib.suppress(ValueError):  # not an address: not a symbol line
                    symbols.append((int(fields[0], 16), fields[2]))
        if not symbols:
            raise ImageError(
                f"{path} holds no code symbols; give a System.map or /proc/kallsyms "
                "(ADDRESS TYPE NAME lines)"
            )
        return cls(symbols)

    def describe(self, pc: int) -> str | None:
        """`name+0xoffset` for the code symbol at or below `pc`, None when there is none."""
        i = bisect.bisect_right(self._addresses, pc) - 1
        if i < 0:
            return None
        offset = pc - self._addresses[i]
        if i == len(self._addresses) - 1 and offset >= MAX_FUNCTION:
            return None
        return f"{self._names[i]}+{offset:#x}"
