"""The dirty log live migration's pre-copy reads (machine/dirty_log.py, UC_CTL_DIRTY_PAGES).

A page is in a take when the guest or the host wrote it since the last take, and only then;
a window a service keeps on RAM counts as written in every take; stopping the log stops it.
"""

from __future__ import annotations

import struct

import pytest
from unicorn import (  # type: ignore[attr-defined]
    UC_ARCH_ARM64,
    UC_ARCH_X86,
    UC_MODE_64,
    UC_MODE_ARM,
    UC_PROT_ALL,
    Uc,
)
from unicorn import arm64_const as a
from unicorn import x86_const as x

from pvkit.backends import uc_controls
from pvkit.machine.memory import GuestMemory

BASE = 0x4000_0000
PAGE = 4096
PAGES = 64


class Engine:
    """A bare engine on GuestMemory that stores `value` at two addresses, as the
    architecture's own store instructions do."""

    def __init__(self, arch: str, memory: GuestMemory):
        self.arch, self.memory = arch, memory
        if arch == "arm64":
            self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
            code = struct.pack("<II", 0xF9000001, 0xF9000041)  # str x1, [x0]; str x1, [x2]
            self.regs = (a.UC_ARM64_REG_X0, a.UC_ARM64_REG_X2, a.UC_ARM64_REG_X1)
        else:
            self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
            code = bytes.fromhex("48891848891a")  # mov [rax], rbx; mov [rdx], rbx
            self.regs = (x.UC_X86_REG_RAX, x.UC_X86_REG_RDX, x.UC_X86_REG_RBX)
        self.uc.mem_map_ptr(memory.base, memory.size, UC_PROT_ALL, memory.host_address)
        memory.write(BASE, code)
        self.end = BASE + len(code)

        def arm(address: int | None) -> None:
            uc_controls.set_dirty_pages(self.uc, address, memory.dirty.base, memory.dirty.pages)

        memory.dirty.join(id(self), arm)

    def store(self, first: int, second: int, value: int = 7) -> None:
        for reg, v in zip(self.regs, (first, second, value), strict=True):
            self.uc.reg_write(reg, v)
        self.uc.emu_start(BASE, self.end)


def pages(runs: list[tuple[int, int]]) -> list[int]:
    return [p for first, n in runs for p in range(first, first + n)]


@pytest.fixture
def memory() -> GuestMemory:
    return GuestMemory(BASE, PAGES * PAGE)


@pytest.fixture(params=["arm64", "x86_64"])
def logging(request: pytest.FixtureRequest, memory: GuestMemory) -> Engine:
    """An engine of each architecture on `memory`, the log started."""
    engine = Engine(request.param, memory)
    memory.dirty.start()
    return engine


def test_the_pages_a_guest_stores_to_are_in_the_take_and_no_others(
    logging: Engine, memory: GuestMemory
) -> None:
    logging.store(BASE + 3 * PAGE + 16, BASE + 9 * PAGE)
    assert pages(memory.dirty.take()) == [3, 9]
    assert memory.dirty.take() == []  # nothing written since


def test_a_page_written_again_after_a_take_is_in_the_next_take(
    logging: Engine, memory: GuestMemory
) -> None:
    """The take re-arms the engine: the TLB entry that lost its mark at the first write
    is marked again, so the same page's next write is seen."""
    logging.store(BASE + 5 * PAGE, BASE + 6 * PAGE)
    assert pages(memory.dirty.take()) == [5, 6]
    logging.store(BASE + 5 * PAGE + 8, BASE + 5 * PAGE + 8)
    assert pages(memory.dirty.take()) == [5]


def test_a_guest_that_rewrites_its_own_code_dirties_that_page(
    logging: Engine, memory: GuestMemory
) -> None:
    logging.store(BASE + 0x800, BASE + 2 * PAGE)
    assert pages(memory.dirty.take()) == [0, 2]


def test_an_engine_built_while_logging_logs_from_its_first_write(memory: GuestMemory) -> None:
    memory.dirty.start()
    engine = Engine("arm64", memory)
    memory.dirty.take()  # the code the test wrote
    engine.store(BASE + 12 * PAGE, BASE + 13 * PAGE)
    assert pages(memory.dirty.take()) == [12, 13]


def test_host_writes_are_logged_page_by_page(memory: GuestMemory) -> None:
    memory.dirty.start()
    memory.write(BASE + 2 * PAGE - 4, b"12345678")  # across a page boundary
    memory.write_u32(BASE + 7 * PAGE, 1)
    memory.store_u64(BASE + 10 * PAGE + 8, 2)
    memory.write_u64(BASE + 11 * PAGE, 3)
    assert memory.dirty.take() == [(1, 2), (7, 1), (10, 2)]


def test_a_reset_that_clears_ram_dirties_every_page(memory: GuestMemory) -> None:
    memory.dirty.start()
    memory.clear()
    assert memory.dirty.take() == [(0, PAGES)]


def test_a_window_a_service_keeps_on_ram_is_in_every_take(memory: GuestMemory) -> None:
    """Stores through the view bypass GuestMemory: the log cannot see them, so it
    assumes them (a stolen-time record is written whenever its vCPU is scheduled)."""
    view = memory.view(BASE + 20 * PAGE + 64, 64)
    memory.dirty.start()
    view[0] = 1
    assert memory.dirty.take() == [(20, 1)]
    assert memory.dirty.take() == [(20, 1)]


def test_a_stopped_log_sees_nothing_and_costs_the_engine_nothing(memory: GuestMemory) -> None:
    engine = Engine("arm64", memory)
    memory.dirty.start()
    memory.dirty.stop()
    engine.store(BASE + 4 * PAGE, BASE + 5 * PAGE)
    memory.write(BASE + 6 * PAGE, b"x")
    assert not memory.dirty.active
    memory.dirty.start()  # a new migration starts from an empty map
    assert memory.dirty.take() == []


def test_taking_a_log_that_is_not_active_is_a_host_bug(memory: GuestMemory) -> None:
    with pytest.raises(RuntimeError, match="not active"):
        memory.dirty.take()
