"""The direct parser of `pvkit run` and `pvkit restore` (cli/direct.py) reads a command
line as the typer command built from the same declarations does, or declines it; and each
verb's declarations are its function's signature (tests/test_startup_imports.py checks
that a plain `pvkit run` then imports no CLI library)."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvkit.cli import restore, run
from pvkit.cli.direct import parse
from pvkit.cli.params import REQUIRED, Param
from pvkit.cli.typed import typer_command

from .conftest import SMP_HELLO

VERBS = {"run": run, "restore": restore}


def typer_values(module: ModuleType, args: list[str]) -> dict[str, Any] | None:
    """The values typer gives the verb for `args`, or None if typer refuses them."""
    seen: dict[str, Any] = {}
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    app.command(name="verb")(typer_command(lambda **values: seen.update(values), module.PARAMS))
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            app(args=["verb", *args], prog_name="pvkit", standalone_mode=False)
    except (typer.TyperException, typer.Exit):
        return None
    return comparable(seen) if seen else None


def comparable(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """NaN (`--timeout nan`) equal to itself."""
    if values is None:
        return None
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


@pytest.mark.parametrize("name", VERBS)
def test_each_verb_declares_exactly_the_parameters_its_function_takes(name: str) -> None:
    module = VERBS[name]
    signature = inspect.signature(getattr(module, name), eval_str=True)
    declared: tuple[Param, ...] = module.PARAMS
    assert [p.name for p in declared] == list(signature.parameters)
    for p in declared:
        parameter = signature.parameters[p.name]
        expected = inspect.Parameter.empty if p.default is REQUIRED else p.default
        assert parameter.default == expected, p.name
        assert parameter.annotation == p.annotation, p.name


PLAIN = [
    [str(SMP_HELLO)],
    [str(SMP_HELLO), "--smp", "4"],
    ["--smp", "4", str(SMP_HELLO), "--timeout", "60"],
    ["-kernel", "Image", "-initrd", "r.cpio", "-smp", "2", "-m", "512M", "-append", "a b"],
    ["--kernel=Image", "--mem=1G", "--append="],
    ["x.elf", "--arch", "x86_64", "--cpu-vendor", "amd", "--no-fix-hypercall"],
    ["i", "--stats", "--no-reboot", "-s", "-S", "--deterministic"],
    ["i", "--no-stats", "--fix-hypercall", "--no-deterministic"],
    ["i", "--disable", "stolen-time", "--disable", "trng", "--fw", "psci-version=0x10000"],
    ["i", "--swap-out", "0.5", "--swap-latency-ms", "1.5", "--host-cpus", "1"],
    ["i", "--save-at", "20", "--save", "s.pvkit", "--slice-ms", "2", "--timeout", "inf"],
    ["i", "--gdb", "tcp::1234", "--monitor", "unix:/tmp/m.sock", "--gic", "2"],
    ["--incoming", "tcp:127.0.0.1:4444", "--trace", "t.jsonl", "--timeline", "t.json"],
    ["i", "--smp", " 3 ", "--pv-time-revision", "1_0"],
    [],
]


@pytest.mark.parametrize("args", PLAIN, ids=" ".join)
def test_a_plain_run_line_gives_typers_values(args: list[str]) -> None:
    values = parse(args, run.PARAMS)
    assert values is not None
    assert comparable(values) == typer_values(run, args)


DECLINED = [
    ["--help"],
    ["i", "--"],
    ["i", "-"],
    ["i", "-sS"],
    ["i", "--smp=x"],
    ["i", "--smp", "x"],
    ["i", "--smp", "0x4"],
    ["i", "--stats=1"],
    ["i", "-m=512M"],
    ["i", "--smp", "2", "--smp", "3"],
    ["i", "--append", "-quiet"],
    ["i", "--timeout", "-1"],
    ["i", "--kernel"],
    ["i", "j"],
    ["i", "--bogus"],
    ["i", "--no-no-reboot"],
    ["i", "-smp4"],
]


@pytest.mark.parametrize("args", DECLINED, ids=" ".join)
def test_anything_unusual_is_left_to_typer(args: list[str]) -> None:
    assert parse(args, run.PARAMS) is None


def test_restore_needs_its_file_and_takes_it_as_typer_does() -> None:
    assert parse(["--stats"], restore.PARAMS) is None
    args = ["vm.pvkit", "--host-cpus", "2", "--disable", "trng", "-s"]
    assert parse(args, restore.PARAMS) == typer_values(restore, args)


def test_a_path_that_exists_but_cannot_be_read_is_left_to_typer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """typer refuses it ('is not readable'); as root everything reads, so the check is
    shown through os.access."""
    image = tmp_path / "Image"
    image.write_bytes(b"")
    assert parse([str(image)], run.PARAMS) is not None
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert parse([str(image)], run.PARAMS) is None
    assert parse([str(tmp_path / "absent")], run.PARAMS) is not None


GOOD: dict[type, list[str]] = {
    int: ["4", "0", "1_0", " 2"],
    float: ["1.5", "0", "nan", "inf", "1e3"],
    str: ["256M", "a b", "", "a=b", "tcp::1"],
    Path: ["Image", "a/b", ""],
}
ODD = ["-1", "x", "0x10", "-", "--", "-x", "--help", "-sS"]


@st.composite
def run_lines(draw: st.DrawFn) -> list[str]:
    """Options of `run` each at most once (a repeatable one maybe twice), with values of
    their kind — mostly good, sometimes odd — in any order and spelling."""
    words: list[str] = []
    for p in draw(st.lists(st.sampled_from(run.PARAMS), unique=True, max_size=7)):
        for _ in range(draw(st.integers(1, 2)) if p.multiple else 1):
            value = draw(st.sampled_from(GOOD[p.kind] if p.kind is not bool else [""]))
            if draw(st.integers(0, 9)) == 0:
                value = draw(st.sampled_from(ODD))
            if p.argument:
                words.append(value)
                continue
            flag = draw(st.sampled_from(sorted(p.spellings())))
            if p.kind is bool:
                words.append(flag if value == "" else f"{flag}={value}")
            elif draw(st.booleans()) and flag.startswith("--"):
                words.append(f"{flag}={value}")
            else:
                words += [flag, value]
    return words


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_lines())
def test_random_lines_are_read_as_typer_reads_them_or_declined(args: list[str]) -> None:
    values = parse(args, run.PARAMS)
    if values is not None:
        assert comparable(values) == typer_values(run, args)
