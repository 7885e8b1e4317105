"""UC_CTL_REG_POINTER: the engine tells where it keeps X0..X30 and PC, and the C trap, which
then loads and stores them itself, answers every kind of call as it does through
uc_reg_read_batch and uc_reg_write_batch."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from unicorn import (  # type: ignore[attr-defined]
    UC_ARCH_ARM64,
    UC_ARCH_X86,
    UC_MODE_32,
    UC_MODE_64,
    UC_MODE_ARM,
    Uc,
)
from unicorn.arm64_const import (  # type: ignore[attr-defined]
    UC_ARM64_REG_PC,
    UC_ARM64_REG_SP,
    UC_ARM64_REG_VBAR_EL1,
    UC_ARM64_REG_W3,
    UC_ARM64_REG_X0,
    UC_ARM64_REG_X29,
    UC_ARM64_REG_X30,
)
from unicorn.x86_const import (  # type: ignore[attr-defined]
    UC_X86_REG_CS,
    UC_X86_REG_R15,
    UC_X86_REG_RAX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
)

from pvkit.backends import trap as trap_module
from pvkit.backends.arm64.engine import Arm64Engine
from pvkit.backends.uc_controls import reg_pointer
from pvkit.backends.x86 import trap as x86_trap

from .conftest import boot_x86
from .test_trap_paths import run

RESULT = 0x4010_0000
CALLS = [  # (x0, x1, x2, x3): each kind of answer the C trap gives
    (0x8400_0000, 0, 0, 0),  # PSCI_VERSION: the table
    (0x8400_000A, 0x8400_0000, 0, 0),  # PSCI_FEATURES(PSCI_VERSION): the table, keyed by w1
    (0xC400_0004, 0, 0, 0),  # AFFINITY_INFO of vCPU 0: the power-state array
    (0xC400_0003, 0x99, 0x4008_0000, 7),  # CPU_ON of no such CPU: the dispatcher, x1..x3 read
    (0x8400_00FF, 0, 0, 0),  # a PSCI number with no function: the dispatcher
]


def test_the_engine_gives_where_x0_to_x30_and_pc_live_and_nothing_else() -> None:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    for reg, value in ((UC_ARM64_REG_X0, 5), (UC_ARM64_REG_X29, 29), (UC_ARM64_REG_X30, 30)):
        address = reg_pointer(uc, reg)
        assert address is not None
        uc.reg_write(reg, value)
        assert ctypes.c_uint64.from_address(address).value == value
        ctypes.c_uint64.from_address(address).value = value + 100
        assert uc.reg_read(reg) == value + 100
    pc = reg_pointer(uc, UC_ARM64_REG_PC)
    assert pc is not None
    uc.reg_write(UC_ARM64_REG_PC, 0x4008_0000)
    assert ctypes.c_uint64.from_address(pc).value == 0x4008_0000
    # kept otherwise (a 32-bit view, SP banked by EL, a system register): no pointer
    for reg in (UC_ARM64_REG_W3, UC_ARM64_REG_SP, UC_ARM64_REG_VBAR_EL1):
        assert reg_pointer(uc, reg) is None


def test_an_x86_engine_in_64_bit_mode_gives_its_general_registers_and_rip() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for reg, value in ((UC_X86_REG_RAX, 1), (UC_X86_REG_RSI, 2), (UC_X86_REG_R15, 3),
                       (UC_X86_REG_RIP, 0x10_0000)):  # fmt: skip
        address = reg_pointer(uc, reg)
        assert address is not None
        uc.reg_write(reg, value)
        assert ctypes.c_uint64.from_address(address).value == value
    assert reg_pointer(uc, UC_X86_REG_CS) is None  # a segment: selector and hidden parts
    assert reg_pointer(Uc(UC_ARCH_X86, UC_MODE_32), UC_X86_REG_RAX) is None


def guest(asm) -> Path:  # type: ignore[no-untyped-def]
    body = f"ldr x20, ={RESULT:#x}\n"
    for x in CALLS:
        body += "".join(f"ldr x{i}, ={v:#x}\n" for i, v in enumerate(x))
        body += "hvc #0\nstp x0, x1, [x20], #16\nstp x2, x3, [x20], #16\n"
    body += "ldr x0, =0x84000008\nhvc #0\nb ."
    return asm(body)  # type: ignore[no-any-return]


def answers(image: Path) -> tuple[list[int], Arm64Engine]:
    machine, engines = run(image)
    return [machine.memory.read_u64(RESULT + 8 * i) for i in range(4 * len(CALLS))], engines[0]


def test_the_c_trap_answers_alike_through_pointers_and_through_batch_calls(
    asm, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PVKIT_TRAP", "c")
    image = guest(asm)
    direct, engine = answers(image)
    assert engine.trap.pointers == 1
    assert (engine.trap.table_hits, engine.trap.python_calls) == (3, 3)
    monkeypatch.setattr(trap_module, "reg_pointers", lambda uc, regs: None)
    batched, engine = answers(image)
    assert engine.trap.pointers == 0
    assert direct == batched
    minus = lambda n: n % 2**64  # noqa: E731
    assert direct[0::4] == [0x1_0001, 0, 0, minus(-2), minus(-1)]  # x0 of each call
    assert direct[1:8] == [0, 0, 0, 0, 0, 0, 0]  # a table answer zeroes x1..x3 too


def test_the_x86_trap_answers_alike_through_pointers_and_through_register_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """x86-hello's hypercalls (table, direct and dispatcher answers, a patched site, CPL 3)
    print the same through RAX..RSI and RIP stored in place as through uc_reg_write."""
    monkeypatch.setenv("PVKIT_TRAP", "c")
    direct, traps = x86_hello()
    assert traps and all(t.pointers == 1 for t in traps)
    monkeypatch.setattr(x86_trap, "reg_pointers", lambda uc, regs: None)
    batched, traps = x86_hello()
    assert traps and all(t.pointers == 0 for t in traps)
    assert direct == batched
    assert "x86-hello: KICK_CPU -> 0, cpu 1 left HLT" in direct and direct.endswith(
        "x86-hello: done\r\n"
    )


def x86_hello() -> tuple[str, list[object]]:
    b = boot_x86(smp=2, traced=False)
    assert b.reason.status == 1  # isa-debug-exit: the guest passed
    return b.console, [e.trap for e in b.machine._engines.values()]
