"""Start-up is part of every boot: `pvkit run` of an arm64 guest imports only what it uses.

The CLI is run in a fresh interpreter, as a user runs it, and asked at exit which modules it
had loaded (sys.modules): no benchmark, no x86 board or engine, no other verb, no plotting,
no trace writer or table printer that the options did not ask for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import SMP_HELLO

# Run the CLI as `python -m pvkit` does and write the loaded modules' names at exit (a
# `pvkit run` process skips the interpreter's teardown, but its exit handlers still run:
# without them there would be no file to read).
_PROBE = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["pvkit", *sys.argv[2:]]
runpy.run_module("pvkit", run_name="__main__")
"""

FORBIDDEN = (
    "pvkit.bench",
    "pvkit.platform.pc_x86",
    "pvkit.backends.x86",
    "pvkit.loader.x86_boot",
    "pvkit.devices.uart16550",
    "pvkit.devices.local_apic",
    "pvkit.discovery.cpuid",
    "pvkit.fuzz",
    "pvkit.debug",  # no --gdb
    "pvkit.cli.bench",
    "pvkit.cli.fuzz",
    "pvkit.cli.plot",
    "pvkit.cli.decode",
    "pvkit.trace.timeline",  # no --timeline
    "pvkit.trace.jsonl",  # no --trace
    "rich",  # no --stats: nothing to print as a table
    "typer",  # plain options: cli/direct.py reads them without the CLI library
    "click",
    "pvkit.cli.tree",
    "matplotlib",
    "numpy",
    "pydantic",
)


def loaded_modules(tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(out.read_text())
    return names


def forbidden_in(names: list[str]) -> list[str]:
    return [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]


def test_an_arm64_run_imports_no_bench_no_x86_board_and_no_other_verb(tmp_path: Path) -> None:
    names = loaded_modules(tmp_path, "run", str(SMP_HELLO), "--smp", "2")
    assert "pvkit.platform.virt_arm64" in names  # the probe really saw the run
    assert forbidden_in(names) == []


def test_the_probe_sees_a_module_an_option_asks_for(tmp_path: Path) -> None:
    """The same check fails when something forbidden is loaded: --stats prints a table."""
    names = loaded_modules(tmp_path, "run", str(SMP_HELLO), "--stats")
    assert "rich" in forbidden_in(names)


def test_a_line_the_direct_parser_declines_goes_to_typer(tmp_path: Path) -> None:
    """An option given twice is click's to settle (the last wins), so typer parses it."""
    names = loaded_modules(tmp_path, "run", str(SMP_HELLO), "--smp", "1", "--smp", "2")
    assert {"typer", "pvkit.cli.tree"} <= set(forbidden_in(names))
