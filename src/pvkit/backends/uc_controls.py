"""The controls pvkit's engine patch adds to Unicorn 2.1.4 (engine/unicorn-2.1.4-pvkit.patch).

They are `uc_ctl` calls the Python binding does not know, so they go through ctypes on the
library the binding loaded. A stock engine answers UC_ERR_ARG to all of them, which is how
`require_patched_engine` tells the two apart.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc  # type: ignore[attr-defined]
from unicorn.unicorn_py3.unicorn import uclib

# uc_control_type values appended by the patch after UC_CTL_CONTEXT_MODE (14).
UC_CTL_CPU_EXCEPTIONS = 15
UC_CTL_CPU_IRQ_LINE = 16
UC_CTL_TCG_PARALLEL = 17
UC_CTL_STOP_AT_BLOCK = 18
UC_CTL_ABSENT_PAGES = 19
UC_CTL_CPU_RAISE_EXCEPTION = 20
UC_CTL_DIRTY_PAGES = 21
UC_CTL_REG_POINTER = 22
_IO_WRITE, _IO_READ = 1, 2
LINE_IRQ, LINE_FIQ = 0, 1  # uc_cpu_line


class EngineUnavailable(RuntimeError):
    """The Unicorn library loaded is not pvkit's patched build."""


def _ctl(control: int, nargs: int, rw: int) -> int:
    return control | nargs << 26 | rw << 30  # UC_CTL() of unicorn.h


def _handle(uc: Uc) -> ctypes.c_void_p:
    if uc._uch is None:
        raise ValueError("the engine is already closed")
    handle: ctypes.c_void_p = uc._uch
    return handle


def _check(err: int, what: str) -> None:
    if err:
        raise EngineUnavailable(f"the engine refused {what} (error {err})")


def set_cpu_exceptions(uc: Uc, mask: int) -> None:
    """Exceptions (bit n = exception number n) the CPU takes through its own entry code."""
    err = uclib.uc_ctl(
        _handle(uc), _ctl(UC_CTL_CPU_EXCEPTIONS, 1, _IO_WRITE), ctypes.c_uint64(mask)
    )
    _check(err, "exception delivery")


def set_parallel(uc: Uc, enable: bool) -> None:
    """Atomic guest instructions become host atomics (engines sharing RAM across threads)."""
    err = uclib.uc_ctl(_handle(uc), _ctl(UC_CTL_TCG_PARALLEL, 1, _IO_WRITE), ctypes.c_int(enable))
    _check(err, "parallel translation")


def set_stop_at_block(uc: Uc, enable: bool) -> None:
    """Stops (kicks, slice ends) take effect at a block start, never by replaying the
    last load or store, which a device register would see twice."""
    err = uclib.uc_ctl(_handle(uc), _ctl(UC_CTL_STOP_AT_BLOCK, 1, _IO_WRITE), ctypes.c_int(enable))
    _check(err, "stopping at block starts")


def set_irq_line(uc: Uc, line: int, level: bool) -> None:
    """Thread-safe: set an interrupt input; a running engine takes it before its next block."""
    err = uclib.uc_ctl(
        _handle(uc),
        _ctl(UC_CTL_CPU_IRQ_LINE, 2, _IO_WRITE),
        ctypes.c_int(line),
        ctypes.c_int(level),
    )
    _check(err, "an interrupt line")


def set_absent_pages(uc: Uc, page_map: ctypes.Array[ctypes.c_uint8] | None, base: int) -> None:
    """Guest-physical pages from `base` the host does not have: one byte per 4 KiB page,
    non-zero = absent, read by the engine at every access to such a page. A load, store or
    fetch there calls the MEM_*_PROT hooks; unhandled, the run stops at the instruction.
    The map must outlive the engine (the engine keeps only its address)."""
    pages = len(page_map) if page_map is not None else 0
    err = uclib.uc_ctl(
        _handle(uc),
        _ctl(UC_CTL_ABSENT_PAGES, 3, _IO_WRITE),
        page_map,
        ctypes.c_uint64(base),
        ctypes.c_uint64(pages),
    )
    _check(err, "absent pages")


def set_dirty_pages(uc: Uc, page_map: int | None, base: int, pages: int) -> None:
    """Log guest writes to RAM from `base` into the byte map at address `page_map` (one
    byte per 4 KiB page, set to 1 at the first write to a page after this call: the
    call empties the TLB, so call it again to start a new round); None stops logging.
    Only while the engine is stopped; the map must outlive the logging."""
    err = uclib.uc_ctl(
        _handle(uc),
        _ctl(UC_CTL_DIRTY_PAGES, 3, _IO_WRITE),
        ctypes.c_void_p(page_map),
        ctypes.c_uint64(base),
        ctypes.c_uint64(pages if page_map is not None else 0),
    )
    _check(err, "dirty-page logging")


def reg_pointer(uc: Uc, reg: int) -> int | None:
    """The host address where the engine keeps 64-bit register `reg` (arm64 X0..X30 and
    PC; x86 in 64-bit mode the general registers and RIP), valid while the engine lives;
    None for one it does not keep so."""
    where = ctypes.c_void_p()
    err = uclib.uc_ctl(
        _handle(uc),
        _ctl(UC_CTL_REG_POINTER, 2, _IO_WRITE | _IO_READ),
        ctypes.c_int(reg),
        ctypes.byref(where),
    )
    return where.value if not err and where.value else None


def reg_pointers(uc: Uc, regs: Sequence[int]) -> list[int] | None:
    """Each of `regs`' addresses (reg_pointer), or None if the engine keeps one otherwise:
    a trap then makes register calls for all of them."""
    known = [p for r in regs if (p := reg_pointer(uc, r)) is not None]
    return known if len(known) == len(regs) else None


# Registers the patch adds after UC_ARM64_REG_FPSR (292): SVE's, whole (QEMU's largest
# vector length, 2048 bits; predicates 256 bits, FFR stored as the 17th predicate).
UC_ARM64_REG_Z0 = 293
UC_ARM64_REG_P0 = UC_ARM64_REG_Z0 + 32
UC_ARM64_REG_FFR = UC_ARM64_REG_P0 + 16
SVE_Z_BYTES = 256
SVE_P_BYTES = 32


def read_wide(uc: Uc, reg: int, size: int) -> int:
    """A register wider than the binding reads (uc_reg_read2), as an unsigned integer."""
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_size_t(size)
    err = uclib.uc_reg_read2(_handle(uc), ctypes.c_int(reg), buf, ctypes.byref(length))
    _check(err, f"reading register {reg}")
    return int.from_bytes(buf.raw[: length.value], "little")


def write_wide(uc: Uc, reg: int, size: int, value: int) -> None:
    buf = ctypes.create_string_buffer(value.to_bytes(size, "little"), size)
    length = ctypes.c_size_t(size)
    err = uclib.uc_reg_write2(_handle(uc), ctypes.c_int(reg), buf, ctypes.byref(length))
    _check(err, f"writing register {reg}")


def raise_exception(uc: Uc, vector: int, error_code: int = 0, software: bool = False) -> None:
    """x86: the CPU takes `vector` through its own entry code (privilege and stack
    switch from the TSS included) when emulation next starts; `software`: as INT n
    returning to the current RIP. The INTR hooks see it first."""
    err = uclib.uc_ctl(
        _handle(uc),
        _ctl(UC_CTL_CPU_RAISE_EXCEPTION, 3, _IO_WRITE),
        ctypes.c_int(vector),
        ctypes.c_uint64(error_code),
        ctypes.c_int(software),
    )
    _check(err, f"raising exception {vector}")


@functools.cache
def patched_engine() -> bool:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    mask = ctypes.c_uint64()
    err: int = uclib.uc_ctl(uc._uch, _ctl(UC_CTL_CPU_EXCEPTIONS, 1, _IO_READ), ctypes.byref(mask))
    return err == 0


def require_patched_engine() -> None:
    if not patched_engine():
        raise EngineUnavailable(
            "the Unicorn library loaded is a stock build, not pvkit's patched engine; "
            "run `make` (scripts/setup-engine.sh builds and installs it)"
        )


def installed_engine_key() -> str | None:
    """The build key scripts/setup-engine.sh left beside the installed engine, if any."""
    import unicorn

    marker = Path(unicorn.__file__).parent / "PVKIT_ENGINE"
    try:
        return marker.read_text().strip()
    except OSError:
        return None
