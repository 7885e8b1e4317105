"""docs/library.md runs as written (issue 14, item 3): its files are written to an empty
directory, its excerpts are checked against the sources they quote, and its console
blocks are run there, each command's output compared with what the page shows.

Matching: `...` stands for any number of lines; a number with a decimal point (a timing)
matches any such number; otherwise lines match token by token (spacing aside).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT

DOC = ROOT / "docs" / "library.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
_MARK = re.compile(r"<!-- doctest: (.*?) -->\s*$")
_FLOAT = re.compile(r"^\d+\.\d+$")


@dataclass
class Block:
    lang: str
    text: str
    mark: str | None


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


def blocks() -> list[Block]:
    text = DOC.read_text()
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").splitlines()
        mark = _MARK.match(before[-1]) if before else None
        out.append(Block(m.group(1), m.group(2), mark.group(1) if mark else None))
    return out


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            out.append(Command(line[2:]))
        else:
            out[-1].expected.append(line)
    return out


def _same(expected: str, actual: str) -> bool:
    e, a = expected.split(), actual.split()
    return len(e) == len(a) and all(
        x == y or (_FLOAT.match(x) is not None and _FLOAT.match(y) is not None)
        for x, y in zip(e, a, strict=True)
    )


def matches(expected: list[str], actual: list[str]) -> bool:
    i, skipping = 0, False
    for e in expected:
        if e == "...":
            skipping = True
            continue
        while skipping and i < len(actual) and not _same(e, actual[i]):
            i += 1
        if i >= len(actual) or not _same(e, actual[i]):
            return False
        i, skipping = i + 1, False
    return skipping or i == len(actual)


def test_the_matcher_allows_timings_and_elisions_only() -> None:
    assert matches(["│ 0x1 │ A │ 3 │ 4.7 │"], ["│ 0x1  │ A │ 3 │ 12.0 │"])
    assert not matches(["│ 0x1 │ A │ 3 │ 4.7 │"], ["│ 0x1 │ A │ 4 │ 4.7 │"])
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert not matches(["a", "d"], ["a", "b", "d"]) and not matches(["a"], ["a", "b"])


def test_library_md_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    env["PVKIT"] = str(ROOT)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ran = 0
    for block in blocks():
        mark = block.mark or ""
        if mark.startswith("file "):
            name = mark.split()[1]
            (tmp_path / name).write_text(block.text)
            if "guests/examples/" in mark:
                committed = ROOT / "guests" / "examples" / name
                assert committed.read_text() == block.text, f"{name} differs from {committed}"
        elif mark.startswith("excerpt "):
            source = (ROOT / mark.split()[1]).read_text()
            assert block.text in source, f"the excerpt is not in {mark.split()[1]}"
        elif block.lang == "console":
            if mark.startswith("needs ") and shutil.which(mark.split()[1]) is None:
                continue
            for cmd in commands(block):
                r = subprocess.run(
                    ["bash", "-c", "set -o pipefail; " + cmd.line],
                    cwd=tmp_path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=180,
                )
                actual = [ln.rstrip() for ln in r.stdout.splitlines()]
                assert r.returncode == 0, (cmd.line, r.stdout)
                assert matches([e.rstrip() for e in cmd.expected], actual), (
                    cmd.line,
                    "\n".join(actual),
                )
                ran += 1
    assert ran >= 11  # every console block ran (bar the build without a cross compiler)


def test_the_clash_the_page_quotes_is_the_one_pvkit_reports() -> None:
    from pvkit import IdRange, NamespaceClash, arm64_virt

    sys.path.insert(0, str(ROOT / "guests" / "examples"))
    try:
        from myhv import MyService  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)

    class Taken(MyService):  # type: ignore[misc]
        def claims(self, abi: object = None) -> list[IdRange]:
            return [IdRange(0x8600_0001, 0x8600_0001)]

        def functions(self, abi: object = None) -> list[object]:
            return []

    with pytest.raises(NamespaceClash) as err:
        arm64_virt(ROOT / "guests" / "prebuilt" / "vendor-call.Image", services=[Taken()])
    assert f"`{err.value}`" in " ".join(DOC.read_text().split())
