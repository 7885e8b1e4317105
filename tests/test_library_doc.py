"""docs/library.md runs as written (issue 14): its files are written to an empty
directory, its excerpts are checked against the sources they quote, and its console
blocks are run there, each command's output compared with what the page shows. One test
follows its steps as a new user would, to a guest of their own, and checks what the run says.

Matching: `...` stands for any number of lines; a number with a decimal point (a timing)
matches any such number; otherwise lines match token by token (spacing aside).
"""

from __future__ import annotations

import json
import os
import re
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


def doc_env() -> dict[str, str]:
    """A user's shell: `pvkit` on PATH, PVKIT naming the checkout, nothing of the test's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    env["PVKIT"] = str(ROOT)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def write_file_block(block: Block, where: Path) -> None:
    name = (block.mark or "").split()[1]
    (where / name).write_text(block.text)
    if "guests/examples/" in (block.mark or ""):
        committed = ROOT / "guests" / "examples" / name
        assert committed.read_text() == block.text, f"{name} differs from {committed}"


def shell(cmd: Command, where: Path, env: dict[str, str]) -> list[str]:
    """Run one `$ ` line of the page in `where`; it must succeed. Its output, stripped."""
    r = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + cmd.line],
        cwd=where,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, (cmd.line, r.stdout)
    return [ln.rstrip() for ln in r.stdout.splitlines()]


def test_library_md_runs_as_written(tmp_path: Path) -> None:
    env = doc_env()
    ran = 0
    for block in blocks():
        mark = block.mark or ""
        if mark.startswith("file "):
            write_file_block(block, tmp_path)
        elif mark.startswith("excerpt "):
            source = (ROOT / mark.split()[1]).read_text()
            assert block.text in source, f"the excerpt is not in {mark.split()[1]}"
        elif block.lang == "console":
            for cmd in commands(block):
                actual = shell(cmd, tmp_path, env)
                assert matches([e.rstrip() for e in cmd.expected], actual), (
                    cmd.line,
                    "\n".join(actual),
                )
                ran += 1
    assert ran >= 17  # every console block ran


RUN = "pvkit run --service myhv:MyService --stats --trace t.jsonl vendor-call.Image"


def test_a_new_user_adds_a_hypercall_builds_a_guest_from_the_template_and_runs_it(
    tmp_path: Path,
) -> None:
    """Issue 14's "done when", by the page's own steps from an empty directory: a vendor
    hypercall in under 20 lines of Python, its guest header, a guest built from `pvkit sdk
    new` with the real cross compiler that discovers and calls it, and the run with
    --stats and --trace; then what the guest printed, the stats row and the trace say."""
    env = doc_env()
    steps: list[str] = []
    output: list[str] = []
    for block in blocks():
        if (block.mark or "").startswith("file "):
            write_file_block(block, tmp_path)
        elif block.lang == "console" and RUN not in steps:
            for cmd in commands(block):
                output = shell(cmd, tmp_path, env)
                steps.append(cmd.line)
                if cmd.line == RUN:
                    break
    code = [ln for ln in (tmp_path / "myhv.py").read_text().splitlines() if ln.strip()]
    assert len(code) < 20, code
    assert f"{len(code)} lines of code" in DOC.read_text()  # as the page says
    assert RUN in steps, f"docs/library.md no longer runs `{RUN}`"
    before = steps[: steps.index(RUN)]  # the header written and the guest built first
    assert "pvkit header myhv:MyService -o myhv.h" in before
    assert "pvkit sdk new ." in before and "make -s" in before
    template = ROOT / "guests" / "sdk" / "template" / "Makefile"
    assert (tmp_path / "Makefile").read_bytes() == template.read_bytes()
    assert (tmp_path / "vendor-call.elf").is_file()  # built here, not copied

    assert output[:4] == [
        "vendor-call: hypervisor KVM",
        *(f"vendor-call: MYHV_ADD(40, {i}) = {40 + i} (status 0, call {i})" for i in (1, 2, 3)),
    ]
    stats = re.compile(r"^│ 0xc6000042\s+│ MYHV_ADD\s+│\s+3 │\s+\d+\.\d │$")
    assert sum(1 for ln in output if stats.match(ln)) == 1, output
    assert output[-1] == "pvkit: shutdown: PSCI SYSTEM_OFF from vCPU 0"

    records = [json.loads(ln) for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    calls = [r for r in records if r["type"] == "call" and r["fid"] == "0xc6000042"]
    assert [(c["name"], c["action"], c["vcpu"], c["conduit"]) for c in calls] == [
        ("MYHV_ADD", "handle", 0, "hvc")
    ] * 3
    assert [c["args"][:2] for c in calls] == [["0x28", hex(i)] for i in (1, 2, 3)]
    assert [c["results"][:3] for c in calls] == [["0x0", hex(40 + i), hex(i)] for i in (1, 2, 3)]


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
