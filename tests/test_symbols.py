"""`--symbols System.map|kallsyms` names the PC of a fault as function+offset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvkit.loader.image import ImageError
from pvkit.loader.symbols import MAX_FUNCTION, SymbolTable

from .conftest import pvkit
from .test_boot_options import flat_binary, one_sentence

SYSTEM_MAP = """\
ffff800008000000 t _head
ffff800008010000 T _stext
ffff800008010000 T __exception_text_start
ffff800008010040 T do_undefinstr
ffff800008a00000 D some_data
ffff800008a00000 W weak_handler
"""


def table(tmp_path: Path, text: str = SYSTEM_MAP) -> SymbolTable:
    path = tmp_path / "System.map"
    path.write_text(text)
    return SymbolTable.load(path)


def test_a_pc_is_named_by_the_code_symbol_at_or_below_it(tmp_path: Path) -> None:
    t = table(tmp_path)
    assert t.describe(0xFFFF_8000_0801_0048) == "do_undefinstr+0x8"
    assert t.describe(0xFFFF_8000_0801_0040) == "do_undefinstr+0x0"
    assert t.describe(0xFFFF_8000_0800_0004) == "_head+0x4"
    # Data symbols hold no PC: the weak function at the same address names it.
    assert t.describe(0xFFFF_8000_08A0_0010) == "weak_handler+0x10"


def test_a_pc_outside_every_function_has_no_name(tmp_path: Path) -> None:
    t = table(tmp_path)
    assert t.describe(0x4008_0000) is None  # below the first symbol
    assert t.describe(0xFFFF_8000_08A0_0000 + MAX_FUNCTION) is None  # far past the last


def test_a_file_without_code_symbols_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="holds no code symbols"):
        table(tmp_path, "not a map\nffff800008a00000 D some_data\n")


# Firmware at 0 whose second function is an undefined instruction: it has no vectors, so
# pvkit stops with a fault at that PC.
FAULTING = """
    nop
    b crash_here
crash_here:
    nop
    udf #0
"""


def test_a_fault_message_names_the_function_from_the_guests_own_map(tmp_path: Path) -> None:
    fw = flat_binary(tmp_path, FAULTING, "fw")
    nm = subprocess.run(
        ["aarch64-linux-gnu-nm", str(tmp_path / "fw.elf")],
        capture_output=True,
        text=True,
        check=True,
    )
    symbols = tmp_path / "System.map"
    symbols.write_text(nm.stdout)
    r = pvkit("run", "--bios", str(fw), "--symbols", str(symbols), "--timeout", "30")
    assert r.returncode == 1, r.stderr
    said = " ".join(r.stderr.split())  # the console wraps long lines (issue 15)
    assert "undefined instruction" in said and "at PC 0xc" in said, said
    assert said.endswith("(crash_here+0x4)"), said
    without = pvkit("run", "--bios", str(fw), "--timeout", "30")
    assert "crash_here" not in without.stderr


def test_an_unreadable_symbol_file_is_one_sentence(tmp_path: Path) -> None:
    line = one_sentence(
        pvkit("run", "--bios", str(tmp_path / "fw"), "--symbols", str(tmp_path / "none"))
    )
    assert "cannot read the symbol file" in line
